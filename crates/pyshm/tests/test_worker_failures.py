"""Dead owners, dead workers: pyshm's workers never outlive the process that started them, and
a dead worker never leaves the executor hanging (issue 13, items 4 and 8)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from conftest import METHODS, shm_entries

PYTHON = sys.executable
TESTS = os.path.dirname(os.path.abspath(__file__))

# A parent that starts two workers (an executor's or a ProcessContext's), leaves them idle or
# busy in a long task, prints its pool's name and the workers' pids, and waits to be killed.
OWNER = textwrap.dedent(
    """
    import sys, threading, time
    import multiprocessing as mp
    import numpy as np
    import pyshm
    import frontend_workers as fw

    def main(method, kind, state):
        then_sleep = 600.0 if state == "busy" else 0.0
        flags = pyshm.zeros(2, dtype=np.int8)
        held = pyshm.ones(1000)  # something of the parent's in the pool
        if kind == "executor":
            ex = pyshm.ProcessPoolExecutor(2, mp_context=mp.get_context(method))
            futures = [ex.submit(fw.rendezvous, flags, i, then_sleep) for i in range(2)]
            if state == "idle":
                for f in futures:
                    f.result(timeout=60)
            get = lambda: ex
        else:
            pc = pyshm.ProcessContext(2, method)

            def kernel(worker_id, index, value):
                fw.rendezvous(flags, worker_id, then_sleep)

            t = threading.Thread(target=pc.map, args=(kernel, 2), daemon=True)
            t.start()
            if state == "idle":
                t.join(60)
            get = lambda: pc._executor
        deadline = time.monotonic() + 60
        while not flags.all() and time.monotonic() < deadline:
            time.sleep(0.01)
        pids = list(get()._processes)
        print(pyshm.default_pool().name, *pids, flush=True)
        time.sleep(600)

    main(*sys.argv[1:])
    """
)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: an orphan is reaped by whoever adopted it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return got[0] if got else ""


def _env() -> dict:
    env = dict(os.environ)
    env.pop("PYSHM_POOL", None)  # a pool of the owner's own, whose files we then look for
    env["PYTHONPATH"] = os.pathsep.join([TESTS] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


@pytest.mark.parametrize("state", ["idle", "busy"])
@pytest.mark.parametrize("kind", ["executor", "context"])
@pytest.mark.parametrize("method", METHODS)
def test_workers_exit_when_their_owner_is_killed_and_clean_removes_the_pool(method, kind, state):
    # stderr goes to a file: workers that outlive the owner would hold a pipe open.
    with tempfile.TemporaryFile("w+") as err:
        args = [PYTHON, "-c", OWNER, method, kind, state]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True, env=_env())
        try:
            line = _first_line(proc, timeout=120)
        finally:
            killed_at = time.monotonic()
            proc.kill()  # SIGKILL: no exit handler of the owner runs
            proc.wait(60)
            proc.stdout.close()
        err.seek(0)
        assert line, f"the owner never reported its workers: {err.read()}"
    name, *pids = line.split()
    workers = [int(p) for p in pids]
    assert len(workers) == 2, line
    # Promptly after the owner's death: they exit within milliseconds (a pidfd wakes them); the
    # bound, from the kill, is that (the issue asks for 1 s) with room for a stalled, loaded CI.
    deadline = killed_at + 5.0
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = [p for p in workers if _alive(p)]
    for p in left:  # never leave them behind, even when failing
        os.kill(p, signal.SIGKILL)
    assert not left, f"workers {left} outlived their owner ({method}, {kind}, {state})"
    clean = subprocess.run([PYTHON, "-m", "pyshm", "clean"], capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0, clean.stderr
    assert not [e for e in shm_entries() if e.startswith(f"pyshm-{name}")], clean.stdout


# Two idle workers; kill one and shut down at once. The killed one may have held the call
# queue's read lock (one idle worker always waits holding it), and shutdown's wake-up may hide
# the death from the manager thread: CPython's executor then waits forever for the others.
SHUTDOWN_RACE = textwrap.dedent(
    """
    import os, signal, sys, time
    import multiprocessing as mp
    import numpy as np
    import pyshm
    import frontend_workers as fw

    ctx = mp.get_context(sys.argv[1])
    for trial in range(int(sys.argv[2])):
        ex = pyshm.ProcessPoolExecutor(2, mp_context=ctx)
        flags = pyshm.zeros(2, dtype=np.int8)
        pids = [f.result(timeout=60) for f in [ex.submit(fw.rendezvous, flags, i, 0.0) for i in range(2)]]
        print("pids", *pids, flush=True)
        time.sleep(0.02)  # both idle: one holds the call queue's read lock, the other waits for it
        os.kill(pids[trial % 2], signal.SIGKILL)
        ex.shutdown(wait=True)
        print("trial", trial, flush=True)
    print("done", flush=True)
    """
)


def test_shutdown_never_hangs_after_an_idle_worker_was_killed():
    trials = 30
    try:
        out = subprocess.run(
            [PYTHON, "-c", SHUTDOWN_RACE, "fork", str(trials)], capture_output=True, text=True, timeout=120, env=_env()
        )
    except subprocess.TimeoutExpired as e:  # the watchdog
        lines = [ln.split() for ln in (e.stdout or b"").decode().splitlines()]
        for pid in [int(p) for ln in lines if ln[0] == "pids" for p in ln[1:]]:
            if _alive(pid):  # the hung executor's other worker
                os.kill(pid, signal.SIGKILL)
        done = sum(ln[0] == "trial" for ln in lines)
        pytest.fail(f"shutdown hung after {done} of {trials} trials")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "done"


MID_RESULT = textwrap.dedent(
    """
    import sys
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool
    import numpy as np
    import pyshm
    import frontend_workers as fw

    ex = pyshm.ProcessPoolExecutor(2, mp_context=mp.get_context(sys.argv[1]))
    flags = pyshm.zeros(2, dtype=np.int8)
    print("pids", *[f.result(60) for f in [ex.submit(fw.rendezvous, flags, i, 0.0) for i in range(2)]], flush=True)
    # In order, whatever the start-up times: `running` returns only once `doomed` holds the
    # result queue's write lock, so its result always waits behind the dead writer.
    flag = pyshm.zeros(1, dtype=np.int8)
    running = ex.submit(fw.wait_for_flag, flag, 60.0)
    doomed = ex.submit(fw.die_mid_result, flag)
    for f in (doomed, running):
        try:
            f.result()
        except BrokenProcessPool:
            print("broken", flush=True)
    ex.shutdown(wait=True)
    print("done", flush=True)
    """
)


def _run_watched(script: str, method: str, timeout: float, hung: str) -> subprocess.CompletedProcess:
    """Run ``script`` with ``method``; past ``timeout`` (the watchdog) kill the workers whose
    pids it printed on a ``pids`` line, and fail with ``hung``."""
    try:
        return subprocess.run([PYTHON, "-c", script, method], capture_output=True, text=True, timeout=timeout, env=_env())
    except subprocess.TimeoutExpired as e:
        lines = [ln.split() for ln in (e.stdout or b"").decode().splitlines()]
        for pid in {int(p) for ln in lines if ln and ln[0] == "pids" for p in ln[1:]}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"{hung}: {lines}")


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_killed_while_sending_its_result_breaks_the_pool(method):
    # The manager thread reads the result pipe: a message that stops after its length header
    # (the writer died) would keep it reading forever, every other worker blocked on the write
    # lock the dead one held, and every future pending.
    out = _run_watched(MID_RESULT, method, 60, "result() or shutdown hung after a worker died mid-result")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-3:] == ["broken", "broken", "done"], out.stdout


FULL_CALL_PIPE = textwrap.dedent(
    """
    import fcntl, os, signal, sys, time
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool
    import pyshm
    import frontend_workers as fw

    ex = pyshm.ProcessPoolExecutor(1, mp_context=mp.get_context(sys.argv[1]))
    worker = ex.submit(fw.pid).result()
    print("pids", worker, flush=True)
    fcntl.fcntl(ex._call_queue._writer.fileno(), 1031, 4096)  # F_SETPIPE_SZ: one page
    flag = pyshm.zeros(2)
    busy = ex.submit(fw.announce_then_wait, flag, 60.0)
    while flag[1] == 0:  # the worker took it: the next calls stay in the pipe
        time.sleep(0.001)
    calls = [ex.submit(fw.call_number, b"y" * 3000) for _ in range(3)]  # the feeder writes the 2nd
    time.sleep(0.2)
    os.kill(worker, signal.SIGKILL)
    for f in [busy] + calls:
        try:
            f.result()
        except BrokenProcessPool:
            print("broken", flush=True)
    ex.shutdown(wait=True)
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_killed_while_the_feeder_writes_to_a_full_call_pipe_breaks_the_pool(method):
    # A call the pipe cannot take (a direct write handed it to the feeder) blocks the feeder in
    # its write; the worker dies. The manager breaks the pool and joins the feeder, which CPython
    # before 3.12 (gh-94777) left writing to a pipe whose read end only this process holds.
    out = _run_watched(FULL_CALL_PIPE, method, 90, "shutdown hung after a worker died with the call pipe full")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-5:] == ["broken"] * 4 + ["done"], out.stdout
