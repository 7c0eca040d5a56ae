"""numpy's own allocations taken from a pool (``pyshm.allocator``): shared, sent as handles, resized,
zeroed, nested, uninstalled, outliving their handler and their pool, across fork, and falling
back to private memory when the pool cannot serve them."""

from __future__ import annotations

import concurrent.futures
import gc
import os
import pickle
import threading
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import pyshm
import workers
from pyshm import _native
from pyshm._allocator import allocator, install_allocator, uninstall_allocator

try:
    from numpy._core.multiarray import get_handler_name
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import get_handler_name

N = 100_000  # float64: 800 kB, well above the default min_bytes (64 KiB)


@pytest.fixture(autouse=True)
def numpy_default_handler_around_each_test():
    assert get_handler_name() == "default_allocator"
    yield
    uninstall_allocator()
    assert get_handler_name() == "default_allocator", "a test left an allocator installed"


def settled_stats(pool=None):
    """(used bytes, arrays) of a pool and this process's live handler allocations, once garbage
    is collected."""
    gc.collect()
    p = pool or pyshm.default_pool()
    s = p.stats()
    return s.used, s.arrays, _native.allocator_stats()["allocations"]


def test_arrays_numpy_makes_inside_are_shared_and_small_ones_are_not():
    x = np.arange(float(N))
    with allocator():
        assert get_handler_name() == "pyshm"
        a = np.ones(N)
        b = x + 1
        small = np.ones(10)
        objects = np.empty(N, dtype=object)
    assert get_handler_name() == "default_allocator"
    assert get_handler_name(b) == "pyshm"
    assert pyshm.is_shared(a) and pyshm.is_shared(b)
    assert pyshm.is_shared(b[10:]) and pyshm.is_shared(b[::3]) and pyshm.is_shared(b.view(np.int64)[5:])
    assert not pyshm.is_shared(small) and not pyshm.is_shared(x)
    assert not pyshm.is_shared(a + 1), "outside the block numpy's own memory again"
    assert not pyshm.is_shared(objects), "Python objects mean nothing in another process"
    if hasattr(np.dtypes, "StringDType"):  # numpy 2: strings held by pointer
        with allocator():
            strings = np.array(["x" * 40] * 5000, dtype=np.dtypes.StringDType())
        assert not pyshm.is_shared(strings)
    assert np.array_equal(b, x + 1)
    assert pyshm.asarray(b) is b
    assert _native.pool_name_of(b) == pyshm.default_pool().name


def test_the_threshold_is_min_bytes():
    with allocator(min_bytes=1 << 20):
        below = np.ones((1 << 20) // 8 - 1)
        at = np.ones((1 << 20) // 8)
    assert not pyshm.is_shared(below) and pyshm.is_shared(at)
    with allocator(min_bytes=0):
        tiny = np.ones(3)
    assert pyshm.is_shared(tiny)


def test_a_handle_and_attach_give_the_same_memory():
    with allocator():
        a = np.linspace(0, 1, N).reshape(100, -1)
    h = pyshm.handle(a[2:5, ::4])
    b = pyshm.attach(h)
    assert isinstance(b.base, _native.Block), "the receiver gets an ordinary pooled array"
    assert np.shares_memory(b, a) and np.array_equal(b, a[2:5, ::4])
    b[...] = -1
    assert (a[2:5, ::4] == -1).all()
    u8 = pyshm.attach(pyshm.handle(a.view(np.uint8)[7:30]))
    assert np.shares_memory(u8, a) and np.array_equal(u8, a.view(np.uint8)[7:30])
    with allocator():
        records = np.zeros(20_000, dtype=[("t", "<f8"), ("n", "<i4"), ("s", "S3")])
    records["s"] = b"abc"
    back = pyshm.attach(pyshm.handle(records[::2]))
    assert back.dtype == records.dtype and np.array_equal(back, records[::2])


def test_forking_pickler_sends_a_handle_and_plain_pickle_the_data():
    with allocator():
        a = np.arange(float(N)) * 3
    message = ForkingPickler.dumps(a[5:])
    assert len(message) <= 300, len(message)
    b = ForkingPickler.loads(message)
    assert np.shares_memory(a, b) and np.array_equal(b, a[5:])
    data = pickle.dumps(a)
    assert len(data) > a.nbytes
    c = pickle.loads(data)
    assert not pyshm.is_shared(c) and np.array_equal(c, a)
    with allocator():
        objects = np.array([None] * N)
    assert not pyshm.is_shared(objects)
    assert ForkingPickler.loads(ForkingPickler.dumps(objects[:3])).tolist() == [None] * 3, "by value"


def test_workers_receive_them_as_handles_and_their_writes_come_back(ctx):
    with allocator():
        a = np.zeros((6, N // 6))
        x = a + 1  # a ufunc's output
    views = [a[1], a[:, 3], a[::2, ::3], a[5:3:-1, 9:6:-1], a.view(np.int64)[4, 1:3]]
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        got = list(ex.map(workers.describe, views + [x]))
        for (shape, strides, dt, shared, _), v in zip(got, views + [x]):
            assert (shape, strides, dt, shared) == (v.shape, v.strides, v.dtype.str, True)
        for v, value in zip(views[:4], [1.0, 2.0, 3.0, 4.0]):  # in order: the views overlap
            ex.submit(workers.fill, v, value).result()
        back = ex.submit(workers.fill, x[2], 9.0).result()
    expect = np.zeros_like(a)
    for v, value in zip([expect[1], expect[:, 3], expect[::2, ::3], expect[5:3:-1, 9:6:-1]], [1, 2, 3, 4]):
        v[...] = value
    assert np.array_equal(a, expect)
    assert (x[2] == 9).all() and np.shares_memory(back, x)


def test_resize_grows_in_place_moves_and_shrinks_out_of_the_pool():
    before = settled_stats()
    with allocator():
        a = np.arange(float(N))  # 800 kB in a 1 MiB block
        start = a.ctypes.data
        a.resize(120_000)  # 960 kB: still fits its block
        assert a.ctypes.data == start and pyshm.is_shared(a)
        a.resize(300_000)  # 2.4 MB: moves to a larger block
        assert pyshm.is_shared(a) and np.array_equal(a[:N], np.arange(float(N))) and not a[N:].any()
        a.resize(10)  # below min_bytes: moves to numpy's memory
        assert not pyshm.is_shared(a) and np.array_equal(a, np.arange(10.0))
        a.resize(N)  # and back into the pool
        assert pyshm.is_shared(a) and np.array_equal(a[:10], np.arange(10.0)) and not a[10:].any()
        small = np.arange(1000.0)
        small.resize(N)
        assert pyshm.is_shared(small) and np.array_equal(small[:1000], np.arange(1000.0))
    h = pyshm.handle(a)
    del a, small
    assert settled_stats()[2] == before[2], "the handle in flight keeps the block, not this process"
    b = pyshm.attach(h)
    assert b.shape == (N,) and np.array_equal(b[:10], np.arange(10.0))
    del b
    assert settled_stats() == before


@pytest.mark.parametrize("nbytes", [600_000, 5_000_000])
def test_zeros_are_zero_in_reused_memory(nbytes):
    capacity = 1 << (nbytes - 1).bit_length()
    # One block, so it must be reused: max_size counts held bytes, one segment's pages and its
    # metadata (about 20 KiB), and no room for a second segment.
    with pyshm.Pool(size=capacity, max_size=capacity + (64 << 10)) as pool:
        with allocator(pool=pool):
            a = np.empty(nbytes, dtype=np.uint8)
            a[:] = 7
            where = a.ctypes.data
            del a
            b = np.zeros(nbytes, dtype=np.uint8)
        assert b.ctypes.data == where and pyshm.is_shared(b)
        assert not b.any()
        del b


def test_nested_blocks_use_their_own_pool_and_restore_each_other():
    with pyshm.Pool() as inner_pool:
        with allocator():
            with allocator(min_bytes=1 << 20, pool=inner_pool) as p:
                assert p is inner_pool
                big = np.ones(200_000)
                mid = np.ones(N)  # below the inner threshold: numpy's memory, not the outer pool
            after = np.ones(N)
        outside = np.ones(N)
        assert _native.pool_name_of(big) == inner_pool.name
        assert not pyshm.is_shared(mid)
        assert _native.pool_name_of(after) == pyshm.default_pool().name
        assert not pyshm.is_shared(outside)
        del big


def test_an_exception_inside_restores_the_previous_allocator():
    with pytest.raises(KeyError):
        with allocator():
            raise KeyError
    assert get_handler_name() == "default_allocator"


def test_install_and_uninstall_and_other_threads():
    install_allocator()
    a = np.ones(N)
    in_thread = []
    t = threading.Thread(target=lambda: in_thread.append(pyshm.is_shared(np.ones(N))))
    t.start()
    t.join()
    install_allocator(min_bytes=1 << 20)  # replaces it
    b = np.ones(N)
    assert uninstall_allocator() is True
    c = np.ones(N)
    assert uninstall_allocator() is False
    assert pyshm.is_shared(a) and not pyshm.is_shared(b) and not pyshm.is_shared(c)
    assert in_thread == [False], "a new thread starts with numpy's default"
    a += 1  # still fine after uninstall
    assert (a == 2).all()


def test_arrays_outlive_their_handler_and_nothing_leaks():
    before = settled_stats()
    handlers = _native.allocator_stats()["handlers"]
    keep = []
    for i in range(20):
        with allocator():
            keep.append(np.full(N, float(i)))
    gc.collect()
    assert _native.allocator_stats()["handlers"] == handlers + 20, "each array keeps its handler"
    assert all(pyshm.is_shared(k) and k[0] == i for i, k in enumerate(keep))
    del keep
    assert settled_stats() == before
    assert _native.allocator_stats()["handlers"] == handlers, "handlers go with their last array"


def test_arrays_outlive_the_pool_being_closed():
    pool = pyshm.Pool()
    with allocator(pool=pool):
        a = np.full(N, 2.0)
        pool.close()  # leaves the pool: a no longer keeps its memory, but stays mapped
        b = np.full(N, 3.0)  # the handler takes nothing more from a closed pool
    assert pyshm.is_shared(a) and not pyshm.is_shared(b)
    a[:] = 5.0
    assert a.sum() == 5.0 * N
    with pytest.raises(ValueError, match="closed"):
        with allocator(pool=pool):
            pass
    del a, b
    gc.collect()
    assert _native.allocator_stats()["allocations"] == 0


def _allocate_and_free() -> int:
    """Allocates under the allocator, which registers a forked child in the pool (it then
    re-acquires, under its own slot, every array it inherited), frees, and returns this
    process's live handler allocations."""
    with allocator():
        t = np.ones(N)
        assert pyshm.is_shared(t)
        del t
    gc.collect()
    return _native.allocator_stats()["allocations"]


@pytest.mark.parametrize("join_first", [False, True])
def test_a_forked_child_freeing_inherited_arrays_leaves_the_parents_alone(join_first):
    with allocator():
        a = np.full(N, 5.0)
    before = settled_stats()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child frees the inherited array (before or after joining), then exits
        code = 1
        try:
            left = _allocate_and_free() if join_first else None
            del a
            gc.collect()
            freed = _native.allocator_stats()["allocations"]
            left = _allocate_and_free()
            os.write(w, b"%d %d" % (freed, left))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    got = os.read(r, 64).split()
    os.close(r)
    assert os.waitpid(pid, 0)[1] == 0
    assert got == [str(before[2] - 1).encode()] * 2, "the child's map lost the inherited array"
    pyshm.collect()  # the child exited without leaving: its slot is a dead process's
    assert settled_stats() == before, "the parent still holds its array, and only that"
    with allocator():  # new allocations must not get the parent's block
        others = [np.full(N, 9.0) for _ in range(4)]
    assert (a == 5.0).all()
    b = pyshm.attach(pyshm.handle(a))
    assert np.shares_memory(a, b)
    del others, b


def _report_allocations(conn) -> None:
    conn.send(_allocate_and_free())


def test_a_multiprocessing_child_that_inherited_arrays_releases_only_its_own_hold():
    import multiprocessing as mp

    with allocator():
        a = np.full(N, 5.0)
    before = settled_stats()
    parent, child = mp.Pipe()
    p = mp.get_context("fork").Process(target=_report_allocations, args=(child,))
    p.start()
    assert parent.recv() == before[2], "the child inherited the parent's map"
    p.join(30)
    assert p.exitcode == 0  # it left the pool at exit, releasing the holds it re-acquired
    assert settled_stats() == before
    assert (a == 5.0).all() and pyshm.is_shared(a)
    del a


def test_a_full_pool_falls_back_to_private_memory():
    # max_size counts held bytes: two 1 MiB segments with their metadata (about 20 KiB each).
    with pyshm.Pool(size=1 << 20, max_size=(2 << 20) + (128 << 10)) as pool:
        with allocator(pool=pool):
            a, b = np.ones(N), np.ones(N)  # one 1 MiB block each: the pool is full
            c = np.ones(N)
            c += 1
        assert pyshm.is_shared(a) and pyshm.is_shared(b) and not pyshm.is_shared(c)
        assert c.sum() == 2.0 * N
        assert np.array_equal(ForkingPickler.loads(ForkingPickler.dumps(c)), c), "sent by value"
        del a, b


def test_a_pool_that_waits_is_not_used_because_the_allocator_never_waits():
    with pyshm.Pool(wait=5.0) as pool:
        with allocator(pool=pool):
            a = np.ones(N)
        assert not pyshm.is_shared(a)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        with allocator(min_bytes=-1):
            pass
    with pytest.raises(TypeError):
        with allocator(min_bytes="64K"):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError):
        install_allocator(pool="default")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mem_handler"):
        _native.set_handler(object())


def test_uninstall_inside_a_with_block_keeps_the_install_recorded():
    from pyshm._allocator import allocator, install_allocator, uninstall_allocator

    install_allocator()
    try:
        with allocator():
            assert uninstall_allocator() is False  # the with block's handler is in effect
        assert pyshm.is_shared(np.ones(100_000))  # the install is back in effect
    finally:
        assert uninstall_allocator() is True
    assert not pyshm.is_shared(np.ones(100_000))
