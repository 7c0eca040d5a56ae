"""Transfer tokens are never a cliff: a message too big for the token table arrives, a pickle
that fails gives back every token it took, and an explicit handle that cannot be made raises
TokenTableFullError (issue 13, item 5); a process beyond the pool's process slots gets
PoolFullError (item 6)."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import select
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import pyshm
import workers


def unpicklable():
    return lambda: 0  # a lambda pickles by reference, which fails


class Unpicklable:
    """Refuses every pickler, cloudpickle too (which pickles lambdas)."""

    def __reduce__(self):
        raise RuntimeError("this object refuses to be pickled")


def test_a_pickle_that_fails_half_way_gives_back_every_token_it_took():
    with pyshm.Pool() as pool:
        a = pool.zeros(10)
        b = pool.ones((4, 4))
        assert pool.stats().handles_in_flight == 0
        with pytest.raises((pickle.PicklingError, AttributeError)):
            ForkingPickler.dumps((a, b[1:], unpicklable()))
        assert pool.stats().handles_in_flight == 0, "the tokens of a and b[1:] are given back"
        parent, child = multiprocessing.Pipe()
        with pytest.raises((pickle.PicklingError, AttributeError)):
            parent.send([a, {"b": b}, unpicklable()])
        assert pool.stats().handles_in_flight == 0, "Connection.send gives them back too"
        arrays = pool.stats().arrays
        del a
        gc.collect()
        assert pool.stats().arrays == arrays - 1, "a is freed: no token keeps it alive"
        ok = ForkingPickler.dumps(b)
        assert pool.stats().handles_in_flight == 1, "a pickle that succeeds keeps its token"
        assert np.shares_memory(ForkingPickler.loads(ok), b)
        assert pool.stats().handles_in_flight == 0
        parent.close()
        child.close()


def test_a_loky_pickle_that_fails_gives_back_its_tokens():
    # joblib's process backend pickles with loky's pickler, not ForkingPickler (found in review:
    # its failed pickles kept their tokens until reclaim_handles).
    from joblib.externals.loky.backend import reduction

    with pyshm.Pool() as pool:
        a = pool.zeros(10)
        assert pyshm._pickle.register_loky()
        for _ in range(2):  # also with the class a later set_loky_pickler makes
            with pytest.raises(RuntimeError, match="refuses"):
                reduction.dumps([a, {"b": a[1:]}, Unpicklable()])
            assert pool.stats().handles_in_flight == 0
            reduction.set_loky_pickler(reduction.get_loky_pickler_name())
        ok = reduction.dumps(a)
        assert pool.stats().handles_in_flight == 1, "a pickle that succeeds keeps its token"
        assert np.shares_memory(pickle.loads(ok), a)
        assert pool.stats().handles_in_flight == 0


def test_a_pickle_inside_a_failing_pickle_gives_back_its_tokens_too():
    from pyshm._transfer import Payload

    with pyshm.Pool() as pool:
        a = pool.zeros(10)
        # The payload pickles its content (one handle) inside the outer pickle, which then fails.
        with pytest.raises((pickle.PicklingError, AttributeError)):
            ForkingPickler.dumps((Payload([a]), unpicklable()))
        assert pool.stats().handles_in_flight == 0


def test_a_queue_message_of_20000_pooled_arrays_arrives_and_tokens_return_to_baseline():
    with pyshm.Pool() as pool:
        slots = pool.stats().token_slots
        n = 20_000
        assert n > slots, "the message needs more tokens than the table has"
        arrays = [pool.full(3, float(i)) for i in range(n)]
        q = multiprocessing.get_context("fork").Queue()
        q.put(arrays)  # pickled by the queue's feeder thread
        got = q.get(timeout=120)
        assert len(got) == n
        assert all(g[0] == i and g.shape == (3,) for i, g in enumerate(got))
        shared = sum(np.shares_memory(g, a) for g, a in zip(got, arrays))
        assert shared == slots // 2, "as many as this process's share of tokens go as handles, the rest by value"
        assert pool.stats().handles_in_flight == 0, "unpickling claimed every token"
        after = pool.full(2, 7.0)
        assert np.shares_memory(ForkingPickler.loads(ForkingPickler.dumps(after)), after), "sending works"
        q.close()
        q.join_thread()


def test_a_message_bigger_than_the_table_reaches_another_process(ctx):
    with pyshm.Pool() as pool:
        n = pool.stats().token_slots + 500
        arrays = [pool.full(2, float(i)) for i in range(n)]
        q = ctx.Queue()
        q.put(arrays)
        p = ctx.Process(target=workers.check_numbered_arrays, args=(q, n))
        p.start()
        p.join(120)  # watchdog
        if p.is_alive():
            p.kill()
            p.join(10)
        assert p.exitcode == 0, "the child got every array with the right values"
        assert pool.stats().handles_in_flight == 0


def test_an_explicit_handle_beyond_this_processs_share_raises_token_table_full_error():
    with pyshm.Pool() as pool:
        a = pool.zeros(5)
        share = pool.stats().token_slots // 2
        made = []
        with pytest.raises(pyshm.TokenTableFullError, match=f"its share of the {2 * share} transfer token slots"):
            for _ in range(share + 1):
                made.append(pool.handle(a))
        assert len(made) == share
        assert isinstance(pyshm.TokenTableFullError("x"), pyshm.PoolFullError)
        with pytest.raises(pyshm.TokenTableFullError):
            with pyshm.handles():
                pickle.dumps(a)
        # multiprocessing's pickler sends the data instead: the message is not lost.
        b = ForkingPickler.loads(ForkingPickler.dumps(a))
        assert not np.shares_memory(a, b) and np.array_equal(a, b)
        # Another process of the pool still has its share of the table.
        def send_one(conn):
            conn.send(pool.full(2, 4.0))
            conn.recv()

        fork = multiprocessing.get_context("fork")
        parent, child = fork.Pipe()
        p = fork.Process(target=send_one, args=(child,))
        p.start()
        got = parent.recv() if parent.poll(60) else None
        assert got is not None and pyshm.is_shared(got) and (got == 4.0).all(), "the other process sent a handle"
        parent.send("bye")
        p.join(60)
        assert p.exitcode == 0
        del got
        for h in made:
            pyshm._handles.cancel(h)
        assert pool.stats().handles_in_flight == 0
        assert np.shares_memory(ForkingPickler.loads(ForkingPickler.dumps(a)), a), "handles again"


def _child_until_released(release: tuple[int, int], report_fd: int, job) -> None:
    """In a forked child: run ``job``, write its one-byte report, wait for the parent to close
    the release pipe (at most 120 s: a watchdog), and exit without running the parent's
    cleanup."""
    code = 1
    try:
        os.close(release[1])  # only the parent's write end keeps the pipe open
        os.write(report_fd, job())
        select.select([release[0]], [], [], 120)
        code = 0
    finally:
        os._exit(code)


def test_a_process_beyond_the_pools_process_slots_gets_pool_full_error_from_every_entry_point():
    # 300 slots, so that slots beyond 255 hold `a` (every child inherits it and holds it once
    # it joins: twelve inline holders, the rest in its overflow block); every process of the
    # full table is a forked interpreter (4,096 would be too many for a test).
    with pyshm.Pool(process_slots=300) as pool:
        a = pool.zeros(4)
        h = pool.handle(a)
        message = ForkingPickler.dumps(a)
        release_r, release_w = os.pipe()
        report_r, report_w = os.pipe()
        children = []

        def join():
            try:
                pool.zeros(1)
            except pyshm.PoolFullError:
                return b"F"
            return b"J"

        def every_entry_point():
            seen = []
            for attempt in (lambda: pool.zeros(1), lambda: pyshm.attach(h), lambda: ForkingPickler.loads(message)):
                try:
                    attempt()
                    seen.append("ok")
                except pyshm.PoolFullError as e:
                    seen.append("full" if "process slots taken by live processes" in str(e) else str(e))
                except BaseException as e:  # noqa: BLE001 - reported to the parent
                    seen.append(type(e).__name__)
            return b"Y" if seen == ["full"] * 3 else b"N"

        try:
            while len(children) < 320:  # 300 slots; the parent holds one
                pid = os.fork()
                if pid == 0:
                    _child_until_released((release_r, release_w), report_w, join)
                children.append(pid)
                ready, _, _ = select.select([report_r], [], [], 60)
                assert ready, "a child did not report within 60 s"
                if os.read(report_r, 1) == b"F":
                    break
            assert pool.stats().processes == len(children), "the parent and all but the last child joined"
            assert len(children) == 300, "300 processes in the pool: the parent and 299 children"
            pid = os.fork()
            if pid == 0:
                _child_until_released((release_r, release_w), report_w, every_entry_point)
            children.append(pid)
            ready, _, _ = select.select([report_r], [], [], 60)
            assert ready and os.read(report_r, 1) == b"Y", "zeros, attach and unpickling each raise PoolFullError"
        finally:
            os.close(release_w)  # every child exits now
            for pid in children:
                os.waitpid(pid, 0)
            os.close(release_r)
            os.close(report_r)
            os.close(report_w)
        pool.collect()
        assert pool.stats().processes == 1
        pyshm._handles.cancel(h)
        assert pool.stats().handles_in_flight == 1, "the message's token"
        assert np.shares_memory(ForkingPickler.loads(message), a)


def test_process_slots_are_configurable_and_checked():
    import subprocess
    import sys

    # Beyond MAX_PROCESSES, too large for the native int, and a bool are refused alike, by
    # configure too (it used to take them, and the first array failed; found in review).
    for bad in (0, -1, "9", 4097, 2**33, True):
        with pytest.raises(ValueError, match="process_slots"):
            pyshm.Pool(process_slots=bad)
        with pytest.raises(ValueError, match="process_slots"):
            pyshm.configure(process_slots=bad)
    # PYSHM_PROCESS_SLOTS sizes the default pool: with 2, the parent and one child fit, and a
    # second child (while the first still holds its slot) gets PoolFullError.
    code = (
        "import os, pyshm\n"
        "pyshm.zeros(1)\n"
        "r, w = os.pipe()\n"
        "first = os.fork()\n"
        "if first == 0:\n"
        "    pyshm.zeros(1); os.close(w); os.read(r, 1); os._exit(0)\n"
        "while pyshm.stats().processes < 2: pass\n"
        "second = os.fork()\n"
        "if second == 0:\n"
        "    try:\n"
        "        pyshm.zeros(1)\n"
        "    except pyshm.PoolFullError:\n"
        "        os._exit(7)\n"
        "    os._exit(0)\n"
        "_, status = os.waitpid(second, 0)\n"
        "os.close(w); os.waitpid(first, 0)\n"
        "print(os.waitstatus_to_exitcode(status))\n"
    )
    env = {**os.environ, "PYSHM_PROCESS_SLOTS": "2"}
    env.pop("PYSHM_POOL", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "7", "the third process got PoolFullError"
    env["PYSHM_PROCESS_SLOTS"] = "many"
    code = "import pyshm; pyshm.zeros(1)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "PYSHM_PROCESS_SLOTS" in out.stderr
