"""W5: 10,000 small tasks on one shared array; reported in tasks/s.

Task ``i`` returns the sum of row ``i % 1000`` of a shared 1000x1000 float64 array, made once
outside the clock. Three ways to run the 10,000 tasks: 10,000 ``submit`` calls; ``map`` with
``chunksize = 10000 // (4 * 2) = 1250`` (joblib: ``batch_size``); and a kernel map
(``pyshm.map``/``pasha``: the kernel writes ``out[i] = x[i % 1000].sum()`` into a shared output,
reset between calls). The by-hand tools attach the block once per worker process and keep it
(``_ATTACHED``, a cache in the worker). Every sum is checked after the clock. What it shows:
the per-task cost of each tool's machinery, once the data no longer travels.
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
    close, ignore_kernel, joblib_sends_tasks_by_value, pyshm_frontend, shm_block, shm_view, start_workers,
    worker_pid,
)

TITLE = "10,000 small tasks on a shared array"
ROWS, TASKS = 1000, 10_000
CHUNK = TASKS // (4 * WORKERS)
CASE = "10,000 tasks, each the sum of one row of a shared 1000x1000 float64 array"
CASES = [CASE]
NOT_APPLICABLE: dict[str, str] = {}
INDEX = [i % ROWS for i in range(TASKS)]

_ATTACHED: dict[str, Any] = {}  # the by-hand tools' per-worker cache of attached blocks


# ---------------------------------------------------------------------------------------------
# Task functions. They run in worker processes, so they live at module level.


def row_sum(row) -> float:
    return float(row.sum())


def row_sum_at(x, i: int) -> float:
    return float(x[i].sum())


def row_sum_shm(name: str, shape, i: int) -> float:
    if name not in _ATTACHED:
        from multiprocessing.shared_memory import SharedMemory

        shm = SharedMemory(name=name)
        _ATTACHED[name] = (shm, shm_view(shm, shape, np.float64))
    return float(_ATTACHED[name][1][i].sum())


def row_sum_sa(name: str, i: int) -> float:
    if name not in _ATTACHED:
        import SharedArray

        _ATTACHED[name] = SharedArray.attach("shm://" + name)
    return float(_ATTACHED[name][i].sum())


def row_kernel(x, out, worker_id: int, index: int, value) -> None:
    out[index] = x[index % ROWS].sum()


# ---------------------------------------------------------------------------------------------
# The rows, one function per tool.


def _data() -> np.ndarray:
    return np.arange(ROWS * ROWS, dtype=np.float64).reshape(ROWS, ROWS)


_EXPECTED = _data().sum(axis=1)[INDEX]  # integers below 2**53: every order is exact


def _check(out) -> None:
    got = np.asarray(out, dtype=np.float64)
    expect(got.shape == _EXPECTED.shape and bool((got == _EXPECTED).all()), "wrong row sums")


def _variant(tool, variant, key, step, ref=False, note="", check=_check) -> Variant:
    return Variant(CASE, tool, variant, key, step, check, per=TASKS, unit="task", ref=ref, note=note)


def _out_check(out) -> Callable[[Any], None]:
    def check(_):
        _check(out)
        out[...] = np.nan  # the next repeat must write everything again

    return check


def _executor_rows(tool, key, ex, fn, args_of, note="", ref=False, label="") -> Iterator[Variant]:
    """The submit and the chunked-map rows of an executor; `args_of(i)` gives task i's args."""
    def submit():
        futures = [ex.submit(fn, *args_of(i)) for i in INDEX]
        return [f.result() for f in futures]

    def chunked():
        return list(ex.map(fn, *zip(*(args_of(i) for i in INDEX)), chunksize=CHUNK))

    yield _variant(tool, f"{label}10,000 submit calls", f"{key}/submit", submit, ref=ref, note=note)
    yield _variant(tool, f"{label}map, chunksize={CHUNK}", f"{key}/map", chunked, note=note)


def w5_numpy(cfg: Config) -> Iterator:
    x = _data()
    yield _variant("numpy", "row sums in this process", "numpy", lambda: [row_sum(x[i]) for i in INDEX])


def w5_stdlib(cfg: Config) -> Iterator:
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = _data()
        yield from _executor_rows("stdlib", "stdlib", ex, row_sum, lambda i: (x[i],), note="each row pickled")


def w5_shared_memory(cfg: Config) -> Iterator:
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        shm, view = shm_block(cfg.prefix + "x", _data())
        del view
        shape = (ROWS, ROWS)
        try:
            yield from _executor_rows("shared_memory", "shm", ex, row_sum_shm, lambda i: (shm.name, shape, i))
        finally:
            shm.close()
            shm.unlink()


def w5_pyshm(cfg: Config) -> Iterator:
    import pyshm

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        xp = pyshm.asarray(_data())
        yield from _executor_rows("pyshm", "pyshm/core", ex, row_sum_at, lambda i: (xp, i),
                                  label="stdlib executor, pooled x: ",
                                  note="the core without the front-ends: x sent as a handle per task")
        del xp
    why = pyshm_frontend("ProcessPoolExecutor")
    if why:
        yield Unavailable(CASE, "pyshm", [("pyshm.ProcessPoolExecutor: 10,000 submit calls", "pyshm/submit"),
                                          (f"pyshm.ProcessPoolExecutor: map, chunksize={CHUNK}", "pyshm/map")],
                          why)
    else:
        with pyshm.ProcessPoolExecutor(max_workers=WORKERS) as ex:
            start_workers(ex)
            xp = pyshm.asarray(_data())
            yield from _executor_rows("pyshm", "pyshm", ex, row_sum_at, lambda i: (xp, i), ref=True,
                                      label="pyshm.ProcessPoolExecutor: ")
            del xp
    why = pyshm_frontend("map", "ProcessContext")
    if why:
        yield Unavailable(CASE, "pyshm", [("pyshm.map, ProcessContext", "pyshm.map")], why)
        return
    ctx = pyshm.ProcessContext(num_workers=WORKERS)
    try:
        pyshm.map(ignore_kernel, range(WORKERS), context=ctx)  # start its workers
        xp = pyshm.asarray(_data())
        out = pyshm.full(TASKS, np.nan)
        kernel = functools.partial(row_kernel, xp, out)
        yield _variant("pyshm", "pyshm.map, ProcessContext", "pyshm.map",
                       lambda: pyshm.map(kernel, range(TASKS), context=ctx), check=_out_check(out))
    finally:
        close(ctx)


def w5_npshmex(cfg: Config) -> Iterator:
    import npshmex

    with npshmex.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = _data()
        yield from _executor_rows(
            "npshmex", "npshmex", ex, row_sum, lambda i: (x[i],),
            note="submit copies each row into a new segment; map's chunks are tuples, so they are pickled")


def w5_SharedArray(cfg: Config) -> Iterator:
    import SharedArray

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        name = cfg.prefix + "x"
        SharedArray.create("shm://" + name, (ROWS, ROWS), np.float64)[...] = _data()
        try:
            yield from _executor_rows("SharedArray", "SA", ex, row_sum_sa, lambda i: (name, i))
        finally:
            SharedArray.delete(name)


def w5_joblib(cfg: Config) -> Iterator:
    import joblib
    from joblib import Parallel, delayed

    joblib_sends_tasks_by_value()
    folder = tempfile.mkdtemp(prefix=cfg.prefix, dir=SHM if os.path.isdir(SHM) else None)
    try:
        for batch, variant, key in ((1, "batch_size=1 (one task per message)", "joblib/submit"),
                                    (CHUNK, f"batch_size={CHUNK}", "joblib/map")):
            # A file per row: a worker may still map the previous one.
            with Parallel(n_jobs=WORKERS, batch_size=batch) as par:
                par(delayed(worker_pid)(0.1) for _ in range(WORKERS))
                path = joblib.dump(_data(), os.path.join(folder, f"x{batch}.pkl"))[0]
                x = joblib.load(path, mmap_mode="r")
                yield _variant("joblib", variant, key,
                               lambda: par(delayed(row_sum_at)(x, i) for i in INDEX),
                               note="x is a joblib memmap, reopened by the worker for each task")
                del x
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def w5_pasha(cfg: Config) -> Iterator:
    import pasha

    ctx = pasha.ProcessContext(num_workers=WORKERS)
    x = ctx.alloc(like=_data())
    x[...] = _data()
    out = ctx.alloc(shape=TASKS, fill=np.nan)
    kernel = functools.partial(row_kernel, x, out)
    yield _variant("pasha", "pasha.map over range(10000)", "pasha",
                   lambda: ctx.map(kernel, range(TASKS)), check=_out_check(out),
                   note="pasha forks a new pool on every map call; that is inside the clock")
