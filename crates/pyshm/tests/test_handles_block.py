"""``with pyshm.handles():`` changes plain pickle only inside the block, and puts back exactly
what it changed when it exits (normally, by an exception, nested, from several threads)."""

from __future__ import annotations

import copyreg
import os
import pickle
import threading
import warnings

import numpy as np
import pytest

import pyshm
from open_block import block_open_in_another_thread


def out_of_band(a, protocol=5):
    """``(pickle, buffers)`` of ``a`` with a buffer callback."""
    buffers = []
    data = pickle.dumps(a, protocol=protocol, buffer_callback=buffers.append)
    return data, buffers


def numpy_pickles_as_numpy_does(plain, reference):
    data, buffers = out_of_band(plain)
    assert data == reference[0], "the same bytes as before any handles() block"
    assert len(buffers) == 1 and len(buffers[0].raw()) == plain.nbytes, "one out-of-band buffer"


def pickled_size(a):
    """The size of ``pickle.dumps(a)``, unpickled once so that a handle's transfer token is
    given back (the array must be the same memory exactly when a handle was sent)."""
    data = pickle.dumps(a)
    assert np.shares_memory(pickle.loads(data), a) == (len(data) < 200)
    return len(data)


@pytest.fixture
def plain():
    return np.arange(2_000_000, dtype=np.float64)  # 16 MB


def test_after_the_block_plain_arrays_pickle_out_of_band_again(plain):
    before = out_of_band(plain)
    assert len(before[0]) < 200 and len(before[1]) == 1
    registered = copyreg.dispatch_table.get(np.ndarray)
    a = pyshm.zeros(1000)
    with pyshm.handles():
        assert pickled_size(a) < 200
    assert copyreg.dispatch_table.get(np.ndarray) is registered
    numpy_pickles_as_numpy_does(plain, before)
    assert pickled_size(a) > a.nbytes, "pooled arrays: the data again"


def test_inside_the_block_plain_arrays_stay_out_of_band(plain):
    with pyshm.handles():
        data, buffers = out_of_band(plain)
        assert len(data) < 300, len(data)
        assert len(buffers) == 1 and len(buffers[0].raw()) == plain.nbytes
        back = pickle.loads(data, buffers=buffers)
        assert type(back) is np.ndarray and np.array_equal(back, plain)
        for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
            small = np.arange(5, dtype=np.int16).reshape(5, 1)[::2]
            back = pickle.loads(pickle.dumps(small, protocol=protocol))
            assert np.array_equal(back, small) and back.dtype == small.dtype, protocol


def test_an_exception_inside_restores_the_registration(plain):
    before = out_of_band(plain)
    registered = copyreg.dispatch_table.get(np.ndarray)
    with pytest.raises(KeyError):
        with pyshm.handles():
            raise KeyError("inside")
    assert copyreg.dispatch_table.get(np.ndarray) is registered
    numpy_pickles_as_numpy_does(plain, before)


def test_nested_blocks_keep_handles_until_the_outer_one_exits(plain):
    before = out_of_band(plain)
    a = pyshm.zeros(1000)
    with pyshm.handles():
        with pyshm.handles():
            assert pickled_size(a) < 200
        assert pickled_size(a) < 200, "still inside the outer block"
    assert pickled_size(a) > a.nbytes
    numpy_pickles_as_numpy_does(plain, before)


def test_a_reducer_registered_before_is_used_inside_and_put_back():
    calls = []

    def mine(x):
        calls.append(x.shape)
        return (np.asarray, (x.tolist(),))

    copyreg.pickle(np.ndarray, mine)
    try:
        plain = np.arange(3)
        pooled = pyshm.asarray(np.arange(3))
        with pyshm.handles():
            assert np.array_equal(pickle.loads(pickle.dumps(plain)), plain)
            assert calls == [(3,)], "plain arrays still go through the earlier reducer"
            assert pickled_size(pooled) < 200, "pooled: a handle"
        assert copyreg.dispatch_table[np.ndarray] is mine
    finally:
        del copyreg.dispatch_table[np.ndarray]


def test_a_reducer_registered_inside_the_block_is_left_alone():
    def theirs(x):
        return (np.asarray, (x.tolist(),))

    try:
        with pyshm.handles():
            copyreg.pickle(np.ndarray, theirs)
        assert copyreg.dispatch_table[np.ndarray] is theirs
    finally:
        copyreg.dispatch_table.pop(np.ndarray, None)


def test_other_threads_pickle_data_while_one_thread_is_inside(plain):
    """The block is per thread (and asyncio task); the registration is per process, and lasts
    until the last thread leaves its block."""
    before = out_of_band(plain)
    a = pyshm.zeros(1000)
    inside, leave, done = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def holder():
        with pyshm.handles():
            seen["holder"] = pickled_size(a)
            inside.set()
            leave.wait(60)
        done.set()

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert inside.wait(60)
        assert seen["holder"] < 200
        assert pickled_size(a) > a.nbytes, "this thread is not inside a block: data"
        data, buffers = out_of_band(plain)
        assert len(buffers) == 1 and np.array_equal(pickle.loads(data, buffers=buffers), plain)
        with pyshm.handles():
            assert pickled_size(a) < 200
        assert copyreg.dispatch_table.get(np.ndarray) is not None, "the other thread is still inside"
    finally:
        leave.set()
        t.join(60)
    assert done.is_set()
    numpy_pickles_as_numpy_does(plain, before)


def test_a_child_forked_while_another_thread_is_inside_is_left_unchanged(plain):
    before = out_of_band(plain)
    registered = copyreg.dispatch_table.get(np.ndarray)
    functions = (pickle.dumps, pickle.dump)
    with block_open_in_another_thread():
        r, w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
            pid = os.fork()
        if pid == 0:  # pragma: no cover (child)
            try:
                os.close(r)
                data, buffers = out_of_band(plain)
                ok = copyreg.dispatch_table.get(np.ndarray) is registered and data == before[0] and len(buffers) == 1
                ok = ok and (pickle.dumps, pickle.dump) == functions
                os.write(w, b"ok" if ok else b"changed")
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            assert f.read() == b"ok"
        assert os.waitpid(pid, 0)[1] == 0


def test_an_object_array_that_contains_itself_pickles_inside_a_block_as_outside():
    # Plain pickle memoizes an array after its reduction's callable and args: an object array
    # holding itself is then found in the memo. Inside handles() the array's args are a fresh
    # wrapper whose state holds the array again, so it recurses forever (review).
    o = np.empty(1, dtype=object)
    o[0] = o
    back = pickle.loads(pickle.dumps(o))
    assert back[0] is back
    with pyshm.handles():
        data = pickle.dumps(o)
    back = pickle.loads(data)
    assert back[0] is back
