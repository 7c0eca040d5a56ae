"""``python -m pyshm demo``: the main job on the default pool, and what it did.

Workers of a standard ``concurrent.futures.ProcessPoolExecutor`` (under fork and under spawn)
receive a 160 MB array, write their share of rows into it in place, and return views; the
parent sees every write. The demo prints what travelled, what it cost next to plain pickling,
and the pool before and after.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing as mp
import pickle
import time
from multiprocessing.reduction import ForkingPickler

import numpy as np

import pyshm

ROWS, COLS = 20, 1_000_000


def fill_rows(a: np.ndarray, rows: range) -> np.ndarray:
    """Runs in a worker: writes into the parent's array, returns a view of what it wrote."""
    for r in rows:
        a[r] = np.arange(COLS) * (r + 1)
    return a[rows.start : rows.stop, :10]


def main() -> int:
    a = pyshm.zeros((ROWS, COLS))
    print(f"pyshm demo: a {a.shape} float64 array ({a.nbytes / 1e6:.0f} MB) in pool {pyshm.default_pool().name!r}")
    message = ForkingPickler.dumps(a)
    sent = len(message)
    received = ForkingPickler.loads(message)  # attach it: a handle keeps its array until then
    assert np.shares_memory(received, a)
    del received
    t = time.perf_counter()
    copied = len(pickle.dumps(a, protocol=5))
    t_pickle = time.perf_counter() - t
    print(f"  sent to a worker as {sent} bytes (plain pickle: {copied / 1e6:.0f} MB, {t_pickle * 1e3:.0f} ms to make)")
    for method in ("fork", "spawn"):
        a[:] = 0
        t = time.perf_counter()
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as ex:
            halves = [range(0, ROWS // 2), range(ROWS // 2, ROWS)]
            views = list(ex.map(fill_rows, [a, a], halves))
        elapsed = time.perf_counter() - t
        expected = np.arange(COLS) * (np.arange(ROWS)[:, None] + 1)
        ok = np.array_equal(a, expected)
        shared = all(np.shares_memory(v, a) for v in views)
        print(
            f"  {method:>5}: 2 workers wrote {ROWS} rows in place in {elapsed * 1e3:.0f} ms "
            f"(incl. starting them); parent sees every write: {ok}; "
            f"returned views share the parent's memory: {shared}"
        )
        if not (ok and shared):
            return 1
        del views
    s = pyshm.stats()
    print(
        f"  pool: {s.segments} segments, {s.capacity / 1e6:.0f} MB data capacity, {s.used / 1e6:.0f} MB used, "
        f"{s.arrays} arrays, {s.processes} processes (workers have left)"
    )
    del a
    print(f"  after `del a`: {pyshm.stats().used} bytes used; the pool leaves /dev/shm when this process exits")
    return 0
