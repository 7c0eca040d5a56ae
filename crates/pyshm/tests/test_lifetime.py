"""Lifetime and failure: dead workers, a dead parent, full pools, waiting, crafted handles."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyshm
import workers
from conftest import shm_entries

PYTHON = sys.executable
TESTS = os.path.dirname(__file__)


def test_a_worker_killed_holding_arrays_is_collected_back_to_where_it_was(ctx):
    pyshm.collect()
    # Handles earlier tests made and never attached (pyshm.handle() on purpose) are reclaimed
    # first, so that the count below is this test's own.
    pyshm.default_pool().reclaim_handles(older_than=0)
    before = pyshm.stats()
    assert before.handles_in_flight == 0
    parent, child = ctx.Pipe()
    p = ctx.Process(target=workers.hold_and_die, args=(3, child))
    p.start()
    assert parent.recv() == 5
    assert pyshm.stats().used > before.used
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    report = pyshm.collect()
    assert report.dead_processes == 1 and report.arrays_freed == 3
    # The two handles it sent stay attachable (they may sit in a queue) until reclaimed.
    assert pyshm.default_pool().reclaim_handles(older_than=0) == 2
    after = pyshm.stats()
    assert (after.used, after.processes) == (before.used, before.processes)
    pyshm.default_pool().check()


def test_a_killed_parent_leaves_nothing_once_clean_has_run():
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        import multiprocessing as mp
        import pyshm

        def hold(a, conn):
            b = pyshm.zeros(1000)
            conn.send("ready")
            time.sleep(60)

        if __name__ == "__main__":
            a = pyshm.full(10_000, 1.0)
            r, w = mp.Pipe()
            p = mp.get_context("fork").Process(target=hold, args=(a, w))
            p.start()
            r.recv()
            print(pyshm.default_pool().name, flush=True)
            os.kill(p.pid, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = dict(os.environ)
    env.pop("PYSHM_POOL", None)
    out = subprocess.run([PYTHON, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    name = out.stdout.strip()
    assert any(e.startswith(f"pyshm-{name}") for e in shm_entries()), "the dead parent's pool is left over"
    ls = subprocess.run([PYTHON, "-m", "pyshm", "ls"], capture_output=True, text=True, timeout=60)
    assert name in ls.stdout
    clean = subprocess.run([PYTHON, "-m", "pyshm", "clean"], capture_output=True, text=True, timeout=60)
    assert f"removed {name}" in clean.stdout
    assert not any(e.startswith(f"pyshm-{name}") for e in shm_entries())
    assert pyshm.default_pool().name not in clean.stdout, "a live pool is never cleaned"
    assert pyshm.is_shared(pyshm.empty(3))


def test_an_exhausted_pool_raises_memory_error_with_the_numbers():
    # max_size counts held bytes: two 1 MiB segments with their metadata (about 20 KiB each).
    with pyshm.Pool(size=1 << 20, max_size=(2 << 20) + (128 << 10)) as pool:
        keep = [pool.empty(1 << 20, dtype=np.uint8) for _ in range(2)]
        with pytest.raises(MemoryError) as e:
            pool.empty(1 << 20, dtype=np.uint8)
        msg = str(e.value)
        for needle in ("1048576 bytes requested", "bytes free", "largest free block", "/dev/shm has", "max_size", "PYSHM_MAX_SIZE", "PYSHM_WAIT"):
            assert needle in msg, msg
        del keep
        assert pool.empty(1 << 20, dtype=np.uint8).size == 1 << 20


def test_an_allocation_waits_for_memory_another_process_frees(ctx):
    name = f"testwait{uuid.uuid4().hex[:10]}"
    with pyshm.Pool(name, size=1 << 20, max_size=1 << 20, persistent=False) as pool:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_hold_then_free, args=(name, child))
        p.start()
        assert parent.recv() == "holding"
        with pytest.raises(MemoryError):
            pool.empty(600_000, dtype=np.uint8)
        pool.wait = 30.0
        parent.send("go")
        a = pool.empty(600_000, dtype=np.uint8)  # waits until the child frees its array
        assert a.size == 600_000
        p.join(30)
        assert p.exitcode == 0
        del a


def _hold_then_free(name, conn):
    pool = pyshm.Pool.open(name)
    a = pool.empty(600_000, dtype=np.uint8)
    conn.send("holding")
    conn.recv()
    time.sleep(0.2)
    del a


def test_a_pool_that_no_longer_exists_is_named_in_the_error(tmp_path):
    with pytest.raises(pyshm.PoolNotFoundError, match="nosuchpool"):
        pyshm.Pool.open("nosuchpool")
    name = f"testgone{uuid.uuid4().hex[:10]}"
    pool = pyshm.Pool(name, persistent=False)
    h = pyshm.handle(pool.zeros(10))
    (tmp_path / "h.pickle").write_bytes(pickle.dumps(h))
    pool.close()
    code = f"import pickle, pyshm; pyshm.attach(pickle.load(open({str(tmp_path / 'h.pickle')!r}, 'rb')))"
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "PoolNotFoundError" in out.stderr and name in out.stderr, out.stderr


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_corrupted_handles_are_value_errors_never_a_read_outside_the_block(data):
    a = pyshm.zeros(64, dtype=np.uint8)
    neighbour = pyshm.full(4096, 7, dtype=np.uint8)
    h = pyshm.handle(a[8:40])
    raw = bytearray(h.data)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    try:
        b = pyshm.attach(pyshm.Handle(h.pool, bytes(raw)))
    except ValueError:
        return
    # Accepted: it must be a view inside `a`'s block, never the neighbour's memory.
    assert np.shares_memory(b, a) or b.size == 0
    assert not np.shares_memory(b, neighbour)


@settings(max_examples=100, deadline=None)
@given(offset=st.integers(-(2**40), 2**40), n=st.integers(-3, 2**20), stride=st.integers(-(2**20), 2**20))
def test_crafted_views_with_another_dtype_stay_inside_their_block(offset, n, stride):
    a = pyshm.zeros(256, dtype=np.uint8)
    h = pyshm.handle(a.view(np.float64)[1:3])
    assert h.retype is not None
    crafted = pyshm.Handle(h.pool, h.data, (np.dtype("<f8"), offset, (n,), (stride,)))
    try:
        b = pyshm.attach(crafted)
    except ValueError:
        return
    lo = offset + min(0, (n - 1) * stride)
    hi = offset + max(0, (n - 1) * stride) + 8
    assert n == 0 or (lo >= 0 and hi <= 256)
    assert b.size == 0 or np.shares_memory(b, a)


def test_garbage_handles_and_pickles_are_value_errors():
    for bad in (b"", b"PSH1", b"\x00" * 64, os.urandom(200)):
        with pytest.raises(ValueError):
            pyshm.attach(pyshm.Handle(pyshm.default_pool().name, bad))
    with pytest.raises(ValueError):
        pyshm.attach(pyshm.Handle("../../etc/passwd", b"PSH1"))
    with pytest.raises(TypeError):
        pyshm.attach(42)


def test_the_environment_sets_up_the_default_pool():
    code = textwrap.dedent(
        """
        import numpy as np, pyshm
        a = pyshm.empty(1 << 20, dtype=np.uint8)
        b = pyshm.empty(1 << 20, dtype=np.uint8)
        try:
            pyshm.empty(1 << 20, dtype=np.uint8)
        except MemoryError as e:
            print("full", pyshm.default_pool().wait)
        """
    )
    env = {**os.environ, "PYSHM_SIZE": "1M", "PYSHM_MAX_SIZE": "2176K", "PYSHM_WAIT": "0.1"}
    env.pop("PYSHM_POOL", None)
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["full", "0.1"]
    env["PYSHM_MAX_SIZE"] = "lots"
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0 and "PYSHM_MAX_SIZE='lots'" in out.stderr


def test_a_waiting_allocation_releases_the_gil():
    # The only thread that can free memory is this one: if the waiting thread held the GIL,
    # the free could not run before the wait ran out and the allocation failed.
    import threading

    with pyshm.Pool(size=1 << 20, max_size=1 << 20, wait=30.0) as pool:
        big = pool.empty(600_000, dtype=np.uint8)
        got = []
        t = threading.Thread(target=lambda: got.append(pool.empty(600_000, dtype=np.uint8).size))
        t.start()
        time.sleep(0.2)  # let it start waiting (no assertion depends on this timing)
        assert t.is_alive(), "it waits: the pool is full"
        del big
        t.join(30)
        assert got == [600_000]


def test_views_with_huge_or_too_many_dimensions_are_refused():
    a = pyshm.zeros(16, dtype=np.uint8)
    h = pyshm.handle(a.view(np.int32))
    big = 2**63 - 1
    for retype in (
        (np.dtype("V0"), 0, (big,) * 4, (big,) * 4),  # zero-size items: numpy checks no size
        (np.dtype("u1"), 0, (1,) * 65, (1,) * 65),
        (np.dtype("u1"), 0, (2,) * 40, (big,) * 40),
    ):
        with pytest.raises(ValueError):
            pyshm.attach(pyshm.Handle(h.pool, h.data, retype))


def test_a_deep_chain_of_views_is_not_followed_and_does_not_crash():
    class A(np.ndarray):
        pass

    class B(np.ndarray):
        pass

    x = pyshm.zeros(4)
    for i in range(20_000):  # numpy does not collapse bases across these subclasses
        x = x.view((A, B, np.ndarray)[i % 3])
    assert pyshm.is_shared(x) is False
    del x


def test_a_closed_pool_is_gone_for_this_process_too():
    name = f"testclosed{uuid.uuid4().hex[:10]}"
    p = pyshm.Pool(name, persistent=False)
    a = p.zeros(10)
    h = pyshm.handle(a)
    p.close()
    with pytest.raises(pyshm.PoolNotFoundError, match=name):
        pyshm.attach(h)
    a[:] = 1  # still mapped: touching it cannot crash
    q = pyshm.Pool(name, persistent=False)  # a new pool of that name, not the old one
    assert q.stats().arrays == 0
    q.close()


def test_a_forked_and_exec_ed_program_does_not_join_the_pool():
    a = pyshm.zeros(10)
    before = pyshm.stats().processes
    proc = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: None)  # fork, Python code, exec
    try:
        assert pyshm.stats().processes == before
    finally:
        proc.kill()
        proc.wait()
    del a


def test_read_only_views_arrive_read_only():
    from multiprocessing.reduction import ForkingPickler

    a = pyshm.zeros(10)
    ro = np.broadcast_to(a[:1], (5, 3))
    got = ForkingPickler.loads(ForkingPickler.dumps(ro))
    assert np.shares_memory(got, a) and not got.flags.writeable and got.strides == (0, 0)


DAEMONS_AT_EXIT = textwrap.dedent(
    """
    import threading, time
    import pyshm

    pool = pyshm.Pool()
    a = pool.zeros(1 << 20)  # collect() then has an array to look at
    def busy():
        while True:  # each call releases the GIL and takes it back
            pool.collect()
            pool.stats()
    for _ in range(4):
        threading.Thread(target=busy, daemon=True).start()
    time.sleep(0.05)
    print("exiting", flush=True)
    """
)


def test_daemon_threads_inside_pyshm_calls_do_not_crash_the_exit():
    # Up to Python 3.13 a thread taking the GIL back after finalization began is ended with
    # pthread_exit, a forced unwind through the native frames on its stack: with the wheel (its
    # own unwinder) a segfault at every exit before pyshm parked such threads instead
    # (crates/pyshm/src/gil.rs).
    for run in range(12):
        out = subprocess.run([PYTHON, "-c", DAEMONS_AT_EXIT], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"run {run}: exit status {out.returncode}\n{out.stderr}"
        assert out.stdout == "exiting\n"
