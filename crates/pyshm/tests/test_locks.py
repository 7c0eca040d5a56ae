"""pyshm.Lock and pyshm.Event: threading's semantics, across processes of every start method,
by name from unrelated programs, and a lock whose holder was SIGKILLed."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

import pyshm

WATCHDOG = 60  # seconds: every wait on another process is bounded by this


def hold_until_killed(lock: pyshm.Lock, holding: pyshm.Event) -> None:
    lock.acquire()
    holding.set()
    time.sleep(WATCHDOG * 10)  # the test SIGKILLs us long before


def wait_then_answer(go: pyshm.Event, answer: pyshm.Event) -> None:
    if go.wait(WATCHDOG):
        answer.set()


def count_under_lock(lock: pyshm.Lock, counter: np.ndarray, n: int) -> int:
    for _ in range(n):
        with lock:
            value = int(counter[0])
            time.sleep(0)  # invite a switch between the read and the write
            counter[0] = value + 1
    return os.getpid()


def test_threading_semantics():
    lock = pyshm.Lock()
    assert not lock.locked() and lock.holder is None
    assert lock.acquire() and lock.locked() and lock.holder == os.getpid() and not lock.owner_died
    assert lock.acquire(blocking=False) is False
    assert lock.acquire(timeout=0.05) is False
    lock.release()
    with pytest.raises(RuntimeError, match="release unlocked lock"):
        lock.release()
    with pytest.raises(ValueError, match="non-blocking"):
        lock.acquire(False, 1)
    with pytest.raises(ValueError, match="non-negative"):
        lock.acquire(timeout=-2)
    with lock:
        assert "locked by pid" in repr(lock)
    assert not lock.locked()

    event = pyshm.Event()
    assert not event.is_set() and event.wait(0.01) is False
    event.set()
    assert event.is_set() and event.wait() is True and event.wait(0) is True
    event.clear()
    assert not event.is_set()


def test_a_plain_pickle_refuses_rather_than_copy():
    with pytest.raises(TypeError, match="without its shared state"):
        pickle.loads(pickle.dumps(pyshm.Lock()))
    with pyshm.handles():
        data = pickle.dumps(pyshm.Event())
    assert isinstance(pickle.loads(data), pyshm.Event)


def test_a_holder_killed_inside_surfaces_as_owner_died(ctx):
    lock, holding = pyshm.Lock(), pyshm.Event()
    p = ctx.Process(target=hold_until_killed, args=(lock, holding))
    p.start()
    try:
        assert holding.wait(WATCHDOG), "the child never took the lock"
        assert lock.holder == p.pid
        assert lock.acquire(timeout=0.05) is False  # a live holder keeps it
        os.kill(p.pid, signal.SIGKILL)
        p.join(WATCHDOG)
        assert lock.acquire(timeout=WATCHDOG) and lock.owner_died
        lock.release()
        assert lock.acquire(timeout=WATCHDOG) and not lock.owner_died
        lock.release()
    finally:
        if p.is_alive():
            p.kill()
        p.join(WATCHDOG)


def test_an_event_wakes_another_process(ctx):
    go, answer = pyshm.Event(), pyshm.Event()
    p = ctx.Process(target=wait_then_answer, args=(go, answer))
    p.start()
    try:
        go.set()
        assert answer.wait(WATCHDOG)
    finally:
        p.join(WATCHDOG)
        if p.is_alive():
            p.kill()
            p.join(WATCHDOG)


def test_the_lock_excludes_across_executor_workers(ctx):
    lock, counter = pyshm.Lock(), pyshm.zeros(1, np.int64)
    with pyshm.ProcessPoolExecutor(2, ctx) as ex:
        futures = [ex.submit(count_under_lock, lock, counter, 200) for _ in range(4)]
        for f in futures:
            f.result(timeout=WATCHDOG)
    assert counter[0] == 800


def test_named_ones_are_found_by_unrelated_programs():
    name = f"lock{uuid.uuid4().hex[:8]}"
    lock, ready = pyshm.Lock(name), pyshm.Event(name)
    code = (
        "import pyshm, sys\n"
        f"lock, ready = pyshm.Lock({name!r}), pyshm.Event({name!r})\n"
        "print(lock.holder, lock.acquire(timeout=0.05))\n"
        "ready.set()\n"
    )
    try:
        with lock:
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WATCHDOG)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [str(os.getpid()), "False"]
        assert ready.is_set()
        assert name not in pyshm.list()  # not array names
    finally:
        pyshm.Lock.unlink(name)
        pyshm.Event.unlink(name)
    with pytest.raises(FileNotFoundError):
        pyshm.Lock.unlink(name)


def test_array_names_cannot_reach_the_names_of_locks_and_events():
    # A lock's name is hidden behind a NUL byte: no array function may create, attach or delete
    # one (an array published there would be taken for the lock's state by the next Lock(name)).
    name = f"hidden{uuid.uuid4().hex[:8]}"
    lock = pyshm.Lock(name)
    try:
        for call in (
            lambda: pyshm.create(f"\x00lock:{name}", 4, np.uint64),
            lambda: pyshm.attach(f"\x00lock:{name}"),
            lambda: pyshm.delete(f"\x00lock:{name}"),
            lambda: pyshm.create(f"shm://\x00lock:{name}", 4),
        ):
            with pytest.raises(ValueError, match="NUL byte"):
                call()
        with lock:  # untouched
            assert lock.holder == os.getpid()
        assert pyshm.Lock(name).holder is None
    finally:
        pyshm.Lock.unlink(name)


class Interrupted(Exception):
    pass


def test_a_wait_is_interrupted_by_a_signal():
    lock, event = pyshm.Lock(), pyshm.Event()
    lock.acquire()

    def interrupt(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        for wait in (lock.acquire, event.wait):  # both would wait forever
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(Interrupted):
                wait()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        lock.release()
