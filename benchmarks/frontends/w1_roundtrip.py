"""W1: one task on a 160 MB array, there and back: ``ex.submit(add_one, x).result()``.

``x = np.ones(int(2e7))`` (160 MB float64); the clock covers one call, from submit to result.
The result is freed after the clock stops, and x changes in place between calls (all 1, then
all 2, ...), so a tool that served a stale copy of its input shows (``harness``, point 3). Two
rows per shared tool: x a plain array (copied into shared memory on every call) and x already
shared (made once, outside the timing). The ``numpy`` row is the bare ``x + 1`` in one process:
what moving a big argument and a big result costs is the difference.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
from typing import Callable, Iterator

import numpy as np

from frontends.harness import WORKERS, Config, Owned, Unavailable, Variant, expect
from frontends.tools import (
    joblib_sends_tasks_by_value, own_name, pyshm_frontend, sa_result, shm_block, shm_result, shm_view,
    start_workers, worker_pid,
)

TITLE = "one task on a 160 MB array"
LEN = int(2e7)
CASE = "submit(add_one, x).result(), x = np.ones(2e7), 160 MB"
CASES = [CASE]
# Why a tool has no row here.
NOT_APPLICABLE = {
    "pasha": "pasha's kernels return nothing; results go into arrays allocated before the map",
}


# ---------------------------------------------------------------------------------------------
# Task functions. They run in worker processes, so they live at module level.


def add_one(x):
    return x + 1


def add_one_shm(name_in: str, shape, dtype, prefix: str) -> str:
    """W1 by hand: attach x's block, make a block for the result, compute into it."""
    from multiprocessing.shared_memory import SharedMemory

    shm_in = SharedMemory(name=name_in)
    x = shm_view(shm_in, shape, dtype)
    shm_out = SharedMemory(name=own_name(prefix), create=True, size=x.nbytes)
    np.add(x, 1, out=shm_view(shm_out, shape, dtype))
    del x  # a view that is still alive makes close() fail
    shm_in.close()
    shm_out.close()
    return shm_out.name


def add_one_sa(name_in: str, prefix: str) -> str:
    import SharedArray

    x = SharedArray.attach("shm://" + name_in)
    name = own_name(prefix)
    np.add(x, 1, out=SharedArray.create("shm://" + name, x.shape, x.dtype))
    return name


# ---------------------------------------------------------------------------------------------
# The rows, one function per tool.


def _check(x) -> Callable[[Owned], None]:
    """Checks that the result is x + 1, then changes x in place for the next call (1 <-> 2).
    `x` is the array the tool reads: the plain one, or the shared copy made once."""
    x[...] = 1.0

    def check(res: Owned) -> None:
        want = float(x[0]) + 1
        a = res.array
        ok = a.shape == (LEN,) and bool((a == want).all())
        stale = not ok and a.shape == (LEN,) and bool((a == 5 - want).all())
        del a
        res.free()
        expect(ok, f"result is not x + 1 = {want:g} everywhere" + (" (a stale x: x + 1 of the previous call)"
                                                                if stale else ""))
        x[...] = 3 - float(x[0])

    return check


def _variant(tool, variant, key, step, x, ref=False, note="") -> Variant:
    return Variant(CASE, tool, variant, key, step, _check(x), ref=ref, note=note)


def w1_numpy(cfg: Config) -> Iterator:
    x = np.ones(LEN)
    yield _variant("numpy", "add_one(x) in this process", "numpy", lambda: Owned(add_one(x)), x)


def w1_stdlib(cfg: Config) -> Iterator:
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = np.ones(LEN)
        yield _variant("stdlib", "x pickled both ways", "stdlib", lambda: Owned(ex.submit(add_one, x).result()), x)


def w1_shared_memory(cfg: Config) -> Iterator:
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    names = (f"{cfg.prefix}p{n}" for n in itertools.count())
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = np.ones(LEN)

        def per_call():
            shm, view = shm_block(next(names), x)
            del view
            out = ex.submit(add_one_shm, shm.name, x.shape, x.dtype, cfg.prefix).result()
            shm.close()
            shm.unlink()
            return shm_result(out, x.shape, x.dtype)

        yield _variant("shared_memory", "x copied into a new block per call", "shm", per_call, x)
        shm, view = shm_block(next(names), x)

        def shared():
            out = ex.submit(add_one_shm, shm.name, x.shape, x.dtype, cfg.prefix).result()
            return shm_result(out, x.shape, x.dtype)

        try:
            yield _variant("shared_memory", "x in a block made once", "shm/pre", shared, view)
        finally:
            del view
            shm.close()
            shm.unlink()


def w1_pyshm(cfg: Config) -> Iterator:
    import pyshm

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = np.ones(LEN)
        xp = pyshm.asarray(x)
        yield _variant(
            "pyshm", "stdlib executor, x pooled (result pickled)", "pyshm/core",
            lambda: Owned(ex.submit(add_one, xp).result()), xp,
            note="the core without the front-end: the input goes as a handle, the result is a private array",
        )
        del x, xp
    why = pyshm_frontend("ProcessPoolExecutor")
    if why:
        yield Unavailable(CASE, "pyshm", [("pyshm.ProcessPoolExecutor, x plain (copied into the pool per call)",
                                           "pyshm"),
                                          ("pyshm.ProcessPoolExecutor, x pooled once", "pyshm/pooled")], why)
        return
    with pyshm.ProcessPoolExecutor(max_workers=WORKERS) as ex:
        start_workers(ex)
        x = np.ones(LEN)
        yield _variant("pyshm", "pyshm.ProcessPoolExecutor, x plain (copied into the pool per call)", "pyshm",
                       lambda: Owned(ex.submit(add_one, x).result()), x, ref=True)
        xp = pyshm.asarray(x)
        yield _variant("pyshm", "pyshm.ProcessPoolExecutor, x pooled once", "pyshm/pooled",
                       lambda: Owned(ex.submit(add_one, xp).result()), xp)


def w1_npshmex(cfg: Config) -> Iterator:
    import npshmex

    with npshmex.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = np.ones(LEN)
        yield _variant("npshmex", "x copied into a segment per call, result likewise", "npshmex",
                       lambda: Owned(ex.submit(add_one, x).result()), x)


def w1_SharedArray(cfg: Config) -> Iterator:
    import SharedArray

    names = (f"{cfg.prefix}p{n}" for n in itertools.count())
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = np.ones(LEN)

        def per_call():
            name = next(names)
            SharedArray.create("shm://" + name, x.shape, x.dtype)[...] = x
            out = ex.submit(add_one_sa, name, cfg.prefix).result()
            SharedArray.delete(name)
            return sa_result(out)

        yield _variant("SharedArray", "x copied into a new segment per call", "SA", per_call, x)
        name = next(names)
        shared = SharedArray.create("shm://" + name, x.shape, x.dtype)
        shared[...] = x
        try:
            yield _variant("SharedArray", "x in a segment made once", "SA/pre",
                           lambda: sa_result(ex.submit(add_one_sa, name, cfg.prefix).result()), shared)
        finally:
            SharedArray.delete(name)


def w1_joblib(cfg: Config) -> Iterator:
    from joblib import Parallel, delayed

    joblib_sends_tasks_by_value()
    with Parallel(n_jobs=WORKERS) as par:
        par(delayed(worker_pid)(0.1) for _ in range(WORKERS))
        x = np.ones(LEN)
        # loky's workers outlive a Parallel object, so a new one per call starts no process.
        yield _variant("joblib", "a new Parallel per call: x dumped to a memmap, result pickled", "joblib",
                       lambda: Owned(Parallel(n_jobs=WORKERS)([delayed(add_one)(x)])[0]), x)
        yield _variant("joblib", "one Parallel kept open: x memmapped once, result pickled", "joblib/kept",
                       lambda: Owned(par([delayed(add_one)(x)])[0]), x,
                       note="inside one Parallel block joblib finds x's memmap by the array's identity, "
                               "so an in-place change of x between calls is not seen")
