"""Inside ``with pyshm.handles():`` a plain ``pickle.dumps``/``pickle.dump`` that fails at any
point gives back every token it took, nested in or around other pickles too; a pickle that
succeeds keeps them; and after the last block ``pickle`` is exactly as before (issue 13, item 5;
``_pickle`` invariants 4 and 5)."""

from __future__ import annotations

import concurrent.futures
import copyreg
import gc
import io
import multiprocessing
import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import pyshm
from open_block import block_open_in_another_thread
from pyshm._transfer import Payload

ORIGINAL_DUMPS, ORIGINAL_DUMP = pickle.dumps, pickle.dump


class Unpicklable:
    """Refuses every pickler."""

    def __reduce__(self):
        raise RuntimeError("this object refuses to be pickled")


class Interrupts:
    """Raises ``KeyboardInterrupt`` (not an ``Exception``) when pickled."""

    def __reduce__(self):
        raise KeyboardInterrupt


class PicklesInside:
    """Pickles ``content`` with ``dumps`` while it is itself being pickled, and travels as those
    bytes: a pickle inside another pickle."""

    def __init__(self, content, dumps):
        self.content = content
        self.dumps = dumps

    def __reduce__(self):
        return (pickle.loads, (bytes(self.dumps(self.content)),))


def in_flight(pool):
    return pool.stats().handles_in_flight


def test_a_plain_pickle_failing_half_way_inside_handles_gives_back_its_tokens():
    # Failed on main: the token made for `a` stayed taken, so `a` was never freed.
    with pyshm.Pool() as pool:
        a = pool.zeros(10)
        b = pool.ones((4, 4))
        assert in_flight(pool) == 0
        with pyshm.handles():
            with pytest.raises((pickle.PicklingError, AttributeError)):
                pickle.dumps((a, b[1:], lambda: 0))
            assert in_flight(pool) == 0, "the tokens of a and b[1:] are given back"
            with pytest.raises(RuntimeError, match="refuses"):
                pickle.dump([a, {"b": b}, Unpicklable()], io.BytesIO())
            assert in_flight(pool) == 0, "pickle.dump gives them back too"
            with pytest.raises(KeyboardInterrupt):
                pickle.dumps((a, Interrupts()), protocol=5)
            assert in_flight(pool) == 0, "a BaseException gives them back too"
        arrays = pool.stats().arrays
        del a
        gc.collect()
        assert pool.stats().arrays == arrays - 1, "a is freed: no token keeps it alive"


def test_a_plain_pickle_that_succeeds_keeps_its_tokens():
    with pyshm.Pool() as pool:
        a = pool.zeros(10)
        with pyshm.handles():
            message = pickle.dumps((a, a[2:]))
            f = io.BytesIO()
            pickle.dump(a, f)
        assert in_flight(pool) == 3, "one token per handle sent, until the receiver attaches"
        back, view = pickle.loads(message)
        assert np.shares_memory(back, a) and np.shares_memory(view, a)
        assert np.shares_memory(pickle.loads(f.getvalue()), a)
        assert in_flight(pool) == 0


def test_after_the_last_block_pickle_and_copyreg_are_as_before():
    registered = copyreg.dispatch_table.get(np.ndarray)
    with pyshm.Pool() as pool:
        a = pool.zeros(10)
        assert pickle.dumps is ORIGINAL_DUMPS and pickle.dump is ORIGINAL_DUMP
        with pyshm.handles():
            assert pickle.dumps is not ORIGINAL_DUMPS and pickle.dump is not ORIGINAL_DUMP
            assert pickle.dumps.__wrapped__ is ORIGINAL_DUMPS, "it calls the function it replaced"
            with pyshm.handles():
                pickle.loads(pickle.dumps(a))
            assert pickle.dumps is not ORIGINAL_DUMPS, "still inside the outer block"
            with pytest.raises(KeyError):
                with pyshm.handles():
                    raise KeyError("inside")
        assert pickle.dumps is ORIGINAL_DUMPS and pickle.dump is ORIGINAL_DUMP
        assert copyreg.dispatch_table.get(np.ndarray) is registered
        assert len(pickle.dumps(a)) > a.nbytes, "the data again"
        assert in_flight(pool) == 0


def test_a_function_replaced_inside_the_block_is_left_alone():
    def theirs(obj, *args, **kwargs):
        return ORIGINAL_DUMPS(obj, *args, **kwargs)

    try:
        with pyshm.handles():
            tracking = pickle.dumps
            pickle.dumps = theirs
        assert pickle.dumps is theirs, "theirs stays"
        assert pickle.dump is ORIGINAL_DUMP, "the other one is put back"
        with pyshm.handles():
            assert pickle.dumps.__wrapped__ is theirs, "the next block wraps theirs"
        assert pickle.dumps is theirs
        # A tracking function kept after its block still works (and gives the data).
        a = pyshm.zeros(1000)
        assert len(tracking(a)) > a.nbytes
    finally:
        pickle.dumps = ORIGINAL_DUMPS


def test_a_plain_pickle_inside_a_failing_forking_pickle_gives_back_its_tokens():
    with pyshm.Pool() as pool:
        a = pool.zeros(10)
        b = pool.ones(3)
        with pyshm.handles():
            inner = PicklesInside(a, pickle.dumps)
            with pytest.raises(RuntimeError, match="refuses"):
                ForkingPickler.dumps((b, inner, Unpicklable()))
            assert in_flight(pool) == 0, "the inner plain pickle's token goes back with the outer one's"
            with pytest.raises(RuntimeError, match="refuses"):
                pickle.dumps((b, PicklesInside(a, pickle.dumps), Unpicklable()))
            assert in_flight(pool) == 0, "a plain pickle inside a plain pickle too"
            message = ForkingPickler.dumps((b, inner))
            assert in_flight(pool) == 2, "both succeeded: both tokens stay"
        back_b, back_a = ForkingPickler.loads(message)
        assert np.shares_memory(back_a, a) and np.shares_memory(back_b, b)
        assert in_flight(pool) == 0


def test_a_forking_pickle_or_payload_inside_a_failing_plain_pickle_gives_back_its_tokens():
    with pyshm.Pool() as pool:
        a = pool.zeros(10)
        b = pool.ones(3)
        with pyshm.handles():
            with pytest.raises(RuntimeError, match="refuses"):
                pickle.dumps((b, PicklesInside(a, ForkingPickler.dumps), Unpicklable()))
            assert in_flight(pool) == 0
            with pytest.raises(RuntimeError, match="refuses"):
                pickle.dumps((b, Payload([a, a[1:]]), Unpicklable()))
            assert in_flight(pool) == 0, "the payload's handles go back with the outer pickle's"
            message = pickle.dumps((b, Payload([a])))
            assert in_flight(pool) == 2
        back_b, payload = pickle.loads(message)
        assert np.shares_memory(back_b, b) and np.shares_memory(payload[0], a)
        assert in_flight(pool) == 0


def test_a_failing_plain_pickle_outside_any_block_gives_back_what_a_pickle_inside_it_sent():
    # Another thread's block is what puts the tracking function in place: this thread is in
    # none, so its own arrays go by value, but a ForkingPickler pickle inside sends handles.
    with pyshm.Pool() as pool:
        a = pool.zeros(10)
        with block_open_in_another_thread():
            with pytest.raises(RuntimeError, match="refuses"):
                pickle.dumps((a, PicklesInside(a, ForkingPickler.dumps), Unpicklable()))
            assert in_flight(pool) == 0


def test_another_threads_plain_pickle_gives_data_while_a_block_is_open():
    with pyshm.Pool() as pool:
        a = pool.full(1000, 3.0)
        seen = {}

        with block_open_in_another_thread(lambda: seen.update(handle=pickle.dumps(a))):
            assert pickle.dumps is not ORIGINAL_DUMPS, "the tracking function is in place"
            data = pickle.dumps(a)
            f = io.BytesIO()
            pickle.dump(a, f)
            assert len(data) > a.nbytes and len(f.getvalue()) > a.nbytes, "data, not handles"
            for message in (data, f.getvalue()):
                back = pickle.loads(message)
                assert not np.shares_memory(back, a) and np.array_equal(back, a)
            assert in_flight(pool) == 1, "only the block's own handle"
            with pytest.raises(RuntimeError, match="refuses"):
                pickle.dumps((a, Unpicklable()))
            assert in_flight(pool) == 1, "a failure outside the block takes nothing"
        assert pickle.dumps is ORIGINAL_DUMPS
        assert np.shares_memory(pickle.loads(seen["handle"]), a)
        assert in_flight(pool) == 0


def write_through(message: bytes, value: float) -> bool:
    """In a spawned child: unpickle the array sent as a handle and write into it."""
    a = pickle.loads(message)
    a[...] = value
    return bool(pyshm.is_shared(a))


def test_a_successful_plain_pickle_is_attached_by_a_spawned_child():
    with pyshm.Pool() as pool:
        a = pool.zeros((4, 5))
        with pyshm.handles():
            message = pickle.dumps(a[1:3])
        assert in_flight(pool) == 1
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as ex:
            shared = ex.submit(write_through, message, 7.0).result(timeout=120)  # watchdog
        assert shared, "the child attached the array in the pool"
        assert (a[1:3] == 7.0).all() and (a[0] == 0).all() and (a[3] == 0).all()
        assert in_flight(pool) == 0, "the child's attach claimed the token"


def test_a_plain_pickle_that_runs_out_of_tokens_half_way_takes_nothing():
    with pyshm.Pool() as pool:
        a = pool.zeros(5)
        share = pool.stats().token_slots // 2
        made = [pool.handle(a) for _ in range(share - 1)]  # one token left to this process
        try:
            with pyshm.handles():
                with pytest.raises(pyshm.TokenTableFullError):
                    pickle.dumps((a, a[1:], a[2:]))
            assert in_flight(pool) == share - 1, "the token a took is given back"
        finally:
            for h in made:
                pyshm._handles.cancel(h)
        assert in_flight(pool) == 0
