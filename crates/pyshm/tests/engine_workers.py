"""Functions that run in joblib, Ray and Dask workers (importable by name in each)."""

from __future__ import annotations

import numpy as np


def joblib_flags(x: np.ndarray) -> tuple:
    return (bool(x.flags.writeable), type(x).__name__)


def joblib_write_first(x: np.ndarray) -> None:
    x[0] = 42.0


def joblib_add_one(x: np.ndarray) -> np.ndarray:
    return x + 1


def ray_add_one_in_place(x: np.ndarray) -> np.ndarray:
    x += 1
    return x * 2


def ray_describe(x: np.ndarray) -> tuple:
    import pyshm

    return (bool(x.flags.writeable), bool(pyshm.is_shared(x)), type(x).__name__)


def dask_write_and_make(x: np.ndarray) -> np.ndarray:
    import pyshm

    x[0] = 9.0
    return pyshm.by_handle(pyshm.full(x.size, 2.0))


def dask_describe(x: np.ndarray) -> tuple:
    import pyshm

    return (bool(x.flags.writeable), bool(pyshm.is_shared(x)), type(x).__name__)


def pool_of(a: np.ndarray) -> str:
    """The name of the pool ``a`` lives in, without making a transfer token (which would stay
    pending and show in later tests' ``reclaim_handles`` counts)."""
    from pyshm import _native

    return _native.pooled_handle(a, False).pool


def dask_write_first(x: np.ndarray) -> tuple:
    """Writes into ``x`` and says how it arrived: (shared, type name, dask's sizeof of it)."""
    import dask.sizeof

    import pyshm

    x[0] = 5.0
    return (bool(pyshm.is_shared(x)), type(x).__name__, int(dask.sizeof.sizeof(x)))


def dask_full(n: int, value: float) -> np.ndarray:
    return np.full(n, value)  # born in the pool by pyshm.dask's allocator on this host


def dask_shared_sum(x: np.ndarray) -> tuple:
    import pyshm

    return (bool(pyshm.is_shared(x)), float(x.sum()))


def dask_pid() -> int:
    import os

    return os.getpid()


def dask_pool_arrays() -> int:
    """Arrays live in this worker's default pool (its own, on another host)."""
    import pyshm

    return pyshm.stats().arrays


def joblib_fail_on_zero(i: int) -> int:
    if i == 0:
        raise ValueError("task 0 fails")
    return i


def dask_default_pool_name() -> str:
    import pyshm

    return pyshm.default_pool().name


def joblib_wait_for(marker: str, deadline: float) -> str:
    """Waits up to ``deadline`` seconds for the file ``marker``: "seen", or "timed out" (then
    also creates ``marker + ".timed-out"``, so the caller can tell afterwards)."""
    import os
    import time

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if os.path.exists(marker):
            return "seen"
        time.sleep(0.01)
    open(marker + ".timed-out", "w").close()
    return "timed out"


class Box:
    """A user object holding an array (Dask pickles it whole, not as a collection)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


def dask_full_in(kind: str, n: int, value: float) -> object:
    """``np.full(n, value)`` (born in the pool on this host) inside a list, a dict or a Box."""
    a = np.full(n, value)
    return {"list": lambda: [a, "tag"], "dict": lambda: {"a": a}, "box": lambda: Box(a)}[kind]()
