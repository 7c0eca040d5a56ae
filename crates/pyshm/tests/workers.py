"""Functions that run in worker processes (importable under spawn and forkserver)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

import pyshm


def write_index(a: np.ndarray, i: int) -> None:
    a[i] = i


def fill(a: np.ndarray, value: float) -> np.ndarray:
    a[...] = value
    return a


def describe(a: np.ndarray) -> tuple:
    return (a.shape, a.strides, a.dtype.str, bool(pyshm.is_shared(a)), float(np.asarray(a, dtype=float).sum()))


def total(a: np.ndarray) -> float:
    return float(a.sum())


def echo(a):
    return a


def new_array(n: int, value: float) -> np.ndarray:
    a = pyshm.empty(n)
    a[:] = value
    return a


def forward(a: np.ndarray, method: str) -> np.ndarray:
    """Receives an array, sends it on to a grandchild worker, which writes into it and
    returns it; returns what came back."""
    import concurrent.futures
    import multiprocessing as mp

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as ex:
        back = ex.submit(fill, a, 42.0).result()
    return back


def hold_and_die(n_arrays: int, conn) -> None:
    arrays = [pyshm.full(1000, i, dtype=np.float64) for i in range(n_arrays)]
    handles = [pyshm.handle(pyshm.zeros(10)) for _ in range(2)]  # tokens in flight
    conn.send(len(arrays) + len(handles))
    time.sleep(60)


def send_handle_then_drop(conn) -> None:
    a = pyshm.full((4, 5), 3.0)
    conn.send(a)  # a handle, with its token
    del a
    conn.send("dropped")
    conn.recv()


def kill_me() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def allocate(n: int) -> int:
    a = pyshm.empty(n, dtype=np.uint8)
    a[:] = 1
    return int(a.sum())


def check_numbered_arrays(q, n: int) -> None:
    """Exits 0 when the queue's next message is ``n`` arrays whose first elements count 0..n-1."""
    arrays = q.get(timeout=60)
    ok = len(arrays) == n and all(a[0] == i for i, a in enumerate(arrays))
    if not ok:
        raise SystemExit(1)
