"""Functions and classes for the front-end tests' worker processes (importable under spawn
and forkserver)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

import pyshm


def add_one(x):
    return x + 1


def report(x) -> tuple:
    """What the worker received: (is it shared, its sum)."""
    return bool(pyshm.is_shared(x)), float(np.asarray(x, dtype=float).sum())


def add_one_and_report(x) -> tuple:
    y = x + 1
    return y, bool(pyshm.is_shared(y))


def nested(obj):
    """Doubles every array in a tuple/list/dict structure, reporting whether each was shared."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.names:  # structured: double the first field
            out = obj.copy()
            out[obj.dtype.names[0]] *= 2
            return (out, bool(pyshm.is_shared(obj)))
        return (obj * 2, bool(pyshm.is_shared(obj)))
    if isinstance(obj, dict):
        return {k: nested(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(nested(v) for v in obj)
    return obj


def write_index(x, i: int) -> None:
    x[i] = i


def fill_with(x, value) -> None:
    x[...] = value


def scalar_array(v):
    return np.array(v)


def big_full(i: int, n: int = 4_000_000):
    return np.full(n, i, dtype=np.float64)


def object_array():
    return np.array([{"a": 1}, None, "x"], dtype=object)


def row_sum(x, i: int) -> float:
    return float(x[i].sum())


def fail(msg: str):
    raise ValueError(msg)


def pid() -> int:
    return os.getpid()


def hold_then_die(x) -> None:
    """Hold a received array and a new one, then die by SIGKILL."""
    keep = [x, pyshm.ones(1000)]
    os.kill(os.getpid(), signal.SIGKILL)
    return keep


def send_then_die(n: int) -> None:
    """Make a handle to a new array of ``n`` ones, as a result written to a pipe nobody will
    read again, then die by SIGKILL."""
    pyshm.handle(pyshm.ones(n))
    os.kill(os.getpid(), signal.SIGKILL)


def handle_to_full(n: int, value: float):
    """A handle to a new array of ``n`` times ``value``, as the task's result (the caller
    attaches it when it wants)."""
    return pyshm.handle(pyshm.full(n, value))


def handle_wait_then_die(flag, n: int) -> None:
    """Make a handle to a new array of ``n`` ones (as a result pickled and not written yet),
    set ``flag[1]``, wait for ``flag[0]``, then die by SIGKILL."""
    pyshm.handle(pyshm.ones(n))
    flag[1] = 1
    wait_for_flag(flag, 60.0)
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_then(seconds: float, value):
    time.sleep(seconds)
    return value


def announce_then_wait(flag, timeout: float) -> bool:
    """Set ``flag[1]``, then wait until ``flag[0]`` is set by another process."""
    flag[1] = 1
    return wait_for_flag(flag, timeout)


def wait_for_flag(flag, timeout: float) -> bool:
    """Wait until ``flag[0]`` is set by another process; False if it never is."""
    deadline = time.monotonic() + timeout
    while flag[0] == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def chunk_total(chunk) -> float:
    return float(chunk.sum())


def chunk_double(chunk) -> tuple:
    chunk *= 2
    return chunk.shape


class Image:
    """A wrapper whose own pickling turns its array into bytes."""

    def __init__(self, data: np.ndarray, meta: dict) -> None:
        self.data = data
        self.meta = meta

    def __reduce__(self):
        return (_image_from_bytes, (self.data.tobytes(), self.data.dtype.str, self.data.shape, self.meta))


def _image_from_bytes(raw: bytes, dtype: str, shape: tuple, meta: dict) -> Image:
    return Image(np.frombuffer(raw, dtype=dtype).reshape(shape).copy(), meta)


class Slotted:
    __slots__ = ("array", "label")

    def __init__(self, array: np.ndarray, label: str) -> None:
        self.array = array
        self.label = label

    def __reduce__(self):
        return (Slotted, (self.array.tolist(), self.label))


def touch_image(img: Image) -> tuple:
    img.data[0] = -1
    return bool(pyshm.is_shared(img.data)), img.meta, type(img).__name__


def touch_slotted(s: Slotted) -> tuple:
    s.array[0] = -1
    return bool(pyshm.is_shared(s.array)), s.label


def refuse_outside(pid: int):
    """Unpickles only in the process `pid` (a task a worker cannot unpickle)."""
    if os.getpid() != pid:
        raise ValueError("not here")
    return None


class Unloadable:
    """Pickles fine; unpickling it in another process fails."""

    def __reduce__(self):
        return (refuse_outside, (os.getpid(),))


def with_lock():
    import threading

    return np.ones(200_000), threading.Lock()


def top5(n: int):
    return np.sort(np.random.default_rng(n).random(1_000_000))[-5:]


def exit_outside(pid: int):
    """Raises ``SystemExit`` in any process but ``pid``."""
    if os.getpid() != pid:
        raise SystemExit(3)
    return None


class ExitsWhenLoaded:
    """Pickles fine; unpickling it in another process raises ``SystemExit``."""

    def __reduce__(self):
        return (exit_outside, (os.getpid(),))


def interrupt_outside(pid: int):
    """Raises ``KeyboardInterrupt`` in any process but ``pid``."""
    if os.getpid() != pid:
        raise KeyboardInterrupt
    return None


class InterruptsWhenLoaded:
    """Pickles fine; unpickling it in another process raises ``KeyboardInterrupt``."""

    def __reduce__(self):
        return (interrupt_outside, (os.getpid(),))


def rendezvous(flags, i: int, then_sleep: float) -> int:
    """Mark ``flags[i]``, wait (bounded) until every flag is marked, so that each call runs in a
    worker of its own, then sleep ``then_sleep`` seconds. Returns the worker's pid."""
    flags[i] = 1
    deadline = time.monotonic() + 60
    while not flags.all() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(then_sleep)
    return os.getpid()


def die_mid_result(flag=None) -> None:
    """Die by SIGKILL in the middle of sending a result: holding the result queue's write lock,
    after a length header announcing 1 MiB that never comes. Sets ``flag[0]`` (if given) once
    the lock is held."""
    import struct
    import sys

    frame = sys._getframe(1)
    while frame is not None and "result_queue" not in frame.f_locals:
        frame = frame.f_back
    results = frame.f_locals["result_queue"]  # the standard library's worker loop
    results._wlock.acquire()
    os.write(results._writer.fileno(), struct.pack("!i", 1 << 20))
    if flag is not None:
        flag[0] = 1
    os.kill(os.getpid(), signal.SIGKILL)


_calls_here = 0


def call_number(_payload=None) -> int:
    """How many calls of this function this worker ran before this one (its execution order)."""
    global _calls_here
    _calls_here += 1
    return _calls_here - 1

