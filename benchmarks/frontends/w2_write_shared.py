"""W2: 100 tasks write into one shared array: task ``i`` does ``x[i] = i``.

x is a shared (100, 200, 500) float64 array (80 MB) made once, outside the clock; the clock
covers submitting the 100 tasks and waiting for all of them. Tools that cannot share a writable
array (stdlib, npshmex) return the slice and the parent assigns it. After each call x is checked
(``x[i] == i`` everywhere) and reset to -1, so the next call must write everything again. The
``numpy`` row is the same loop in one process. pyshm has three rows: the stdlib executor with a
pooled x (the core alone), ``pyshm.ProcessPoolExecutor``, and the kernel map ``pyshm.map``.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator

import numpy as np

from frontends.harness import SHM, WORKERS, Config, Unavailable, Variant, expect
from frontends.tools import (
    close, ignore_kernel, joblib_sends_tasks_by_value, pyshm_frontend, shm_view, start_workers, worker_pid,
)

TITLE = "100 tasks write into one shared array"
SHAPE = (100, 200, 500)
CASE = "100 tasks write x[i] = i, x (100, 200, 500) float64, 80 MB"
CASES = [CASE]
NOT_APPLICABLE: dict[str, str] = {}
_INDEX = np.arange(SHAPE[0], dtype=np.float64)[:, None, None]


# ---------------------------------------------------------------------------------------------
# Task functions. They run in worker processes, so they live at module level.


def make_slice(i: int, shape) -> np.ndarray:
    return np.full(shape, i, dtype=np.float64)


def write_index(x, i: int) -> None:
    x[i] = i


def write_index_shm(name: str, shape, i: int) -> None:
    from multiprocessing.shared_memory import SharedMemory

    shm = SharedMemory(name=name)
    shm_view(shm, shape, np.float64)[i] = i
    shm.close()


def write_index_sa(name: str, i: int) -> None:
    import SharedArray

    SharedArray.attach("shm://" + name)[i] = i


def write_kernel(x, worker_id: int, index: int, value) -> None:
    x[index] = index


# ---------------------------------------------------------------------------------------------
# The rows, one function per tool.


def _check(x) -> Callable[[Any], None]:
    def check(_):
        expect(bool((x == _INDEX).all()), "x[i] != i somewhere")
        x[...] = -1  # the next repeat must write everything again

    return check


def _variant(tool, variant, key, step, x, ref=False, note="") -> Variant:
    return Variant(CASE, tool, variant, key, step, _check(x), ref=ref, note=note)


def _wait_all(futures) -> None:
    for f in futures:
        f.result()


def _assign_slices(ex, x) -> None:
    futures = [ex.submit(make_slice, i, SHAPE[1:]) for i in range(SHAPE[0])]
    for i, f in enumerate(futures):
        x[i] = f.result()


def w2_numpy(cfg: Config) -> Iterator:
    x = np.full(SHAPE, -1.0)

    def step():
        for i in range(SHAPE[0]):
            write_index(x, i)

    yield _variant("numpy", "x[i] = i in this process", "numpy", step, x)


def w2_stdlib(cfg: Config) -> Iterator:
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = np.full(SHAPE, -1.0)
        yield _variant("stdlib", "tasks return the slice pickled, the parent assigns it", "stdlib",
                       lambda: _assign_slices(ex, x), x)


def w2_shared_memory(cfg: Config) -> Iterator:
    from multiprocessing import resource_tracker
    from multiprocessing.shared_memory import SharedMemory

    resource_tracker.ensure_running()
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        shm = SharedMemory(name=cfg.prefix + "x", create=True, size=int(np.prod(SHAPE)) * 8)
        x = shm_view(shm, SHAPE, np.float64)
        x[...] = -1
        try:
            yield _variant(
                "shared_memory", "each task attaches the block by name", "shm",
                lambda: _wait_all([ex.submit(write_index_shm, shm.name, SHAPE, i) for i in range(SHAPE[0])]), x)
        finally:
            del x
            shm.close()
            shm.unlink()


def w2_pyshm(cfg: Config) -> Iterator:
    import pyshm

    def tasks(ex, x):
        return lambda: _wait_all([ex.submit(write_index, x, i) for i in range(SHAPE[0])])

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = pyshm.full(SHAPE, -1.0)
        yield _variant("pyshm", "stdlib executor, pooled x", "pyshm/core", tasks(ex, x), x,
                       note="the core without the front-ends")
        del x
    why = pyshm_frontend("ProcessPoolExecutor")
    if why:
        yield Unavailable(CASE, "pyshm", [("pyshm.ProcessPoolExecutor", "pyshm")], why)
    else:
        with pyshm.ProcessPoolExecutor(max_workers=WORKERS) as ex:
            start_workers(ex)
            x = pyshm.full(SHAPE, -1.0)
            yield _variant("pyshm", "pyshm.ProcessPoolExecutor", "pyshm", tasks(ex, x), x, ref=True)
            del x
    why = pyshm_frontend("map", "ProcessContext")
    if why:
        yield Unavailable(CASE, "pyshm", [("pyshm.map, ProcessContext", "pyshm.map")], why)
        return
    ctx = pyshm.ProcessContext(num_workers=WORKERS)
    try:
        pyshm.map(ignore_kernel, range(WORKERS), context=ctx)  # start its workers
        x = pyshm.full(SHAPE, -1.0)
        kernel = functools.partial(write_kernel, x)
        yield _variant("pyshm", "pyshm.map, ProcessContext", "pyshm.map",
                       lambda: pyshm.map(kernel, range(SHAPE[0]), context=ctx), x)
    finally:
        close(ctx)


def w2_npshmex(cfg: Config) -> Iterator:
    import npshmex

    with npshmex.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = np.full(SHAPE, -1.0)
        yield _variant("npshmex", "tasks return the slice through a segment, the parent assigns it", "npshmex",
                       lambda: _assign_slices(ex, x), x,
                       note="npshmex copies array arguments, so tasks cannot write into a shared array")


def w2_SharedArray(cfg: Config) -> Iterator:
    import SharedArray

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        name = cfg.prefix + "x"
        x = SharedArray.create("shm://" + name, SHAPE, np.float64)
        x[...] = -1
        try:
            yield _variant(
                "SharedArray", "each task attaches the segment by name", "SA",
                lambda: _wait_all([ex.submit(write_index_sa, name, i) for i in range(SHAPE[0])]), x)
        finally:
            SharedArray.delete(name)


def w2_joblib(cfg: Config) -> Iterator:
    from joblib import Parallel, delayed

    joblib_sends_tasks_by_value()
    with Parallel(n_jobs=WORKERS) as par:
        par(delayed(worker_pid)(0.1) for _ in range(WORKERS))
        folder = tempfile.mkdtemp(prefix=cfg.prefix, dir=SHM if os.path.isdir(SHM) else None)
        x = np.memmap(os.path.join(folder, "x.mmap"), dtype=np.float64, mode="w+", shape=SHAPE)
        x[...] = -1
        try:
            yield _variant("joblib", "np.memmap in /dev/shm passed to the tasks", "joblib",
                           lambda: par(delayed(write_index)(x, i) for i in range(SHAPE[0])), x)
        finally:
            del x
            shutil.rmtree(folder, ignore_errors=True)


def w2_pasha(cfg: Config) -> Iterator:
    import pasha

    ctx = pasha.ProcessContext(num_workers=WORKERS)
    x = ctx.alloc(shape=SHAPE, fill=-1.0)
    kernel = functools.partial(write_kernel, x)
    yield _variant("pasha", "pasha.map over range(100), alloc'd x", "pasha",
                   lambda: ctx.map(kernel, range(SHAPE[0])), x,
                   note="pasha forks a new pool on every map call; that is inside the clock")
