"""W4: 16 tasks each return a 32 MB array; the parent sums them.

Task ``i`` returns ``np.full(4_000_000, i)`` (int64, 32 MB). Inside the clock the parent sums
each result (``r.sum()``) as it arrives, drops it, and adds the 16 scalars. After the clock the
total is checked, and so is each task's sum in task order, so results swapped between tasks
show. The ``numpy`` row makes and sums the 16 arrays in one process. What it shows: what
bringing big results back costs, and whether a tool frees them as fast as they arrive.
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import Iterator

import numpy as np

from frontends.harness import WORKERS, Config, Unavailable, Variant, expect
from frontends.tools import (
    joblib_sends_tasks_by_value, own_name, pyshm_frontend, sa_result, shm_result, shm_view, start_workers,
    worker_pid,
)

TITLE = "16 tasks return 32 MB each"
TASKS, LEN = 16, 4_000_000
CASE = "16 tasks return np.full(4_000_000, i), 32 MB each; the parent sums them"
CASES = [CASE]
NOT_APPLICABLE = {
    "pasha": "pasha's kernels return nothing; results go into arrays allocated before the map",
}
SUMS = [LEN * i for i in range(TASKS)]


# ---------------------------------------------------------------------------------------------
# Task functions. They run in worker processes, so they live at module level.


def make_full(i: int) -> np.ndarray:
    return np.full(LEN, i)


def make_full_pooled(i: int):
    import pyshm

    return pyshm.full(LEN, i)


def make_full_shm(i: int, prefix: str) -> str:
    from multiprocessing.shared_memory import SharedMemory

    shm = SharedMemory(name=own_name(prefix), create=True, size=LEN * 8)
    shm_view(shm, (LEN,), np.int64).fill(i)
    shm.close()
    return shm.name


def make_full_sa(i: int, prefix: str) -> str:
    import SharedArray

    name = own_name(prefix)
    SharedArray.create("shm://" + name, (LEN,), np.int64).fill(i)
    return name


# ---------------------------------------------------------------------------------------------
# The rows, one function per tool.


def _check(sums: list[int]) -> None:
    """The step returns each task's sum, in task order (their total is what the parent wants):
    a permutation would keep the total and still be wrong."""
    expect(sum(sums) == sum(SUMS), f"total {sum(sums)}, expected {sum(SUMS)}")
    expect(sums == SUMS, "the total is right, but results came back for the wrong tasks")


def _variant(tool, variant, key, step, ref=False, note="") -> Variant:
    return Variant(CASE, tool, variant, key, step, _check, ref=ref, note=note)


def _sum_results(futures: list) -> list[int]:
    """Sums each result as it comes and drops it (with its future) at once, inside the clock."""
    sums = []
    for i, f in enumerate(futures):
        futures[i] = None
        sums.append(int(f.result().sum()))
        del f
    return sums


def w4_numpy(cfg: Config) -> Iterator:
    yield _variant("numpy", "np.full then sum, in this process", "numpy",
                   lambda: [int(make_full(i).sum()) for i in range(TASKS)])


def w4_stdlib(cfg: Config) -> Iterator:
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        yield _variant("stdlib", "results pickled", "stdlib",
                       lambda: _sum_results([ex.submit(make_full, i) for i in range(TASKS)]))


def w4_shared_memory(cfg: Config) -> Iterator:
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()

    def step():
        futures = [ex.submit(make_full_shm, i, cfg.prefix) for i in range(TASKS)]
        sums = []
        for f in futures:
            res = shm_result(f.result(), (LEN,), np.int64)
            sums.append(int(res.array.sum()))
            res.free()
        return sums

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        yield _variant("shared_memory", "tasks create a block, the parent attaches, sums, unlinks", "shm", step)


def w4_pyshm(cfg: Config) -> Iterator:
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        yield _variant("pyshm", "tasks call pyshm.full, stdlib executor", "pyshm/core",
                       lambda: _sum_results([ex.submit(make_full_pooled, i) for i in range(TASKS)]),
                       note="the core without the front-end: the task allocates in the pool itself")
    why = pyshm_frontend("ProcessPoolExecutor")
    if why:
        yield Unavailable(CASE, "pyshm", [("pyshm.ProcessPoolExecutor (np.full is pooled)", "pyshm")], why)
        return
    import pyshm

    with pyshm.ProcessPoolExecutor(max_workers=WORKERS) as ex:
        start_workers(ex)
        yield _variant("pyshm", "pyshm.ProcessPoolExecutor (np.full is pooled)", "pyshm",
                       lambda: _sum_results([ex.submit(make_full, i) for i in range(TASKS)]), ref=True)


def w4_npshmex(cfg: Config) -> Iterator:
    import npshmex

    with npshmex.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        yield _variant("npshmex", "results copied through segments", "npshmex",
                       lambda: _sum_results([ex.submit(make_full, i) for i in range(TASKS)]))


def w4_SharedArray(cfg: Config) -> Iterator:
    def step():
        futures = [ex.submit(make_full_sa, i, cfg.prefix) for i in range(TASKS)]
        sums = []
        for f in futures:
            res = sa_result(f.result())
            sums.append(int(res.array.sum()))
            res.free()
        return sums

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        yield _variant("SharedArray", "tasks create a segment, the parent attaches, deletes, sums", "SA", step)


def w4_joblib(cfg: Config) -> Iterator:
    from joblib import Parallel, delayed

    joblib_sends_tasks_by_value()
    def step():
        return [int(r.sum()) for r in par(delayed(make_full)(i) for i in range(TASKS))]

    with Parallel(n_jobs=WORKERS, return_as="generator") as par:
        list(par(delayed(worker_pid)(0.1) for _ in range(WORKERS)))
        yield _variant("joblib", "results pickled, consumed as a generator", "joblib", step)
