"""pyshm's front-ends against the standard library and the other shared-memory tools (issue 6).

    python benchmarks/frontends.py                      (or: cargo xtask bench)
    python benchmarks/frontends.py --quick              few repeats, fewer W3 arrays: a smoke run
    python benchmarks/frontends.py --only W1,W3 --tools pyshm,stdlib --json out.json

Every tool runs with 2 workers. The tools ("-" in a table: the tool has no way to do it):

- ``numpy``: the same work in one process, nothing shared: the floor to compare against.
- ``stdlib``: ``concurrent.futures.ProcessPoolExecutor``; arrays travel pickled.
- ``shared_memory``: ``multiprocessing.shared_memory`` by hand with the stdlib executor: a
  SharedMemory block plus an ``np.ndarray`` over its buffer, the block's name sent to the task.
  The parent starts the resource tracker before the executor forks, so every process shares
  one tracker (otherwise each worker starts its own, which unlinks blocks at worker exit).
- ``pyshm``: ``pyshm.ProcessPoolExecutor``, ``pyshm.map`` with a ``pyshm.ProcessContext``, and
  pooled arrays sent as handles through the stdlib executor (the core, without the front-ends).
- ``npshmex``: its ``ProcessPoolExecutor``, which copies array arguments and results through
  SharedArray segments (and replaces ``concurrent.futures`` futures process-wide on import).
- ``SharedArray``: by hand like ``shared_memory``, with ``SharedArray.create/attach/delete``.
- ``joblib``: ``Parallel(n_jobs=2)`` (loky), kept open across calls; shared arrays are
  ``np.memmap`` files in /dev/shm, as joblib's documentation does it.
- ``pasha``: ``pasha.ProcessContext(num_workers=2)``: ``alloc`` (anonymous shared mmap) and
  ``map``, which forks a new pool on every call.

Workloads:

- W1: ``ex.submit(add_one, x).result()``, ``x = np.ones(int(2e7))`` (160 MB). The result is
  freed after the clock stops (and x changes, see point 3 below). Two rows per shared tool: x
  a plain array (copied into shared memory on every call) and x already shared (made once,
  outside the timing).
- W2: 100 tasks each write ``x[i] = i`` into a shared (100, 200, 500) float64 array (80 MB)
  made once; the clock covers submitting the 100 tasks and waiting for all. Tools that cannot
  share a writable array (stdlib, npshmex) return the slice and the parent assigns it.
- W3: create and free a shared array, 10,000 times, for 1 KiB and 1 MiB, left empty and filled
  (every byte written); one at a time, so at most one lives. Reported per array.
- W4: 16 tasks each return ``np.full(4_000_000, i)`` (int64, 32 MB); the parent sums each
  result (``r.sum()``) as it arrives and drops it, and adds the 16 scalars, all inside the
  clock.
- W5: 10,000 tasks, task ``i`` returns the sum of row ``i % 1000`` of a shared 1000x1000
  float64 array: as 10,000 ``submit`` calls, as ``map`` with ``chunksize = 10000 // (4 * 2)
  = 1250`` (joblib: ``batch_size``), and as a kernel map (``pyshm.map``/``pasha``: the kernel
  writes ``out[i] = x[i % 1000].sum()`` into a shared output). Reported in tasks/s. The by-hand
  tools attach the block once per worker process and keep it (a cache in the worker).

How it measures:

1. Each (workload, tool) runs in a fresh process of its own (this script with ``--child``),
   under a timeout, in a session of its own so that a hang is killed whole.
2. Executors and contexts are made, and their workers started, before the data exists and
   outside the clock; warm-up iterations run before the timed ones. A table gives the median.
3. Every result is checked after the clock stops (W1: ``x + 1`` everywhere; W2: ``x[i] == i``;
   W3: a sample array; W4: the total and each task's sum, so results swapped between tasks
   show; W5: every sum). Between W1's calls x changes in place (all 1, then all 2, ...), so a
   tool that served a stale copy of its input shows too. Outputs written in place (W2, and the
   kernel maps of W5) are reset between calls. A wrong result is reported and kept out of the
   ratios.
4. Peak memory is ``ru_maxrss`` from ``resource.getrusage``: of the measuring process (one per
   workload and tool, all its variants), and of its largest reaped child process (executor
   workers). Shared pages count in every process that touched them, so these do not add up.
5. For pyshm's rows, the pool's array count is read before and after each row (after a garbage
   collection): a row that ends holding more arrays than it started with is flagged.
   ``/dev/shm`` is listed before and after each run; entries that the run left and that are
   its own (its name prefix, its pyshm pool, ``npshmex_*``, its joblib folder and semaphores)
   are reported and removed. New entries that are not attributable (another program on the
   machine) are reported and left alone. Processes left in the run's session are reported and
   killed.
6. Ratios are speed-ups measured in this same run: ``time of the other row / time of this
   row``, so above 1 means this row is faster. Each case gives them against the stdlib and
   against pyshm, then as a full matrix.

The exit status is 0 unless the harness itself fails or the stdlib or pyshm rows crash, hang
or give wrong results; peers that are missing or broken are reported, never fatal. Figures
worth keeping go to docs/performance.md with the machine and the date; ``benchmarks/plot.py``
draws the JSON as an SVG.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import itertools
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

WORKERS = 2
SHM = "/dev/shm"

W1_LEN = int(2e7)
W2_SHAPE = (100, 200, 500)
W3_SIZES = (("1 KiB", 1024), ("1 MiB", 1 << 20))
W3_COUNT = 10_000
W4_TASKS, W4_LEN = 16, 4_000_000
W5_ROWS, W5_TASKS = 1000, 10_000
W5_CHUNK = W5_TASKS // (4 * WORKERS)

TOOLS = ("numpy", "stdlib", "shared_memory", "pyshm", "npshmex", "SharedArray", "joblib", "pasha")
# The modules a tool needs beyond numpy and the stdlib (probed once, in a child process:
# importing npshmex patches concurrent.futures).
TOOL_MODULES = {
    "pyshm": "pyshm", "npshmex": "npshmex", "SharedArray": "SharedArray", "joblib": "joblib", "pasha": "pasha",
}
# Tools whose crash, hang or wrong result makes the exit status non-zero: the subject and the
# baseline. Peers only report.
OWN_TOOLS = ("pyshm", "stdlib")


# ---------------------------------------------------------------------------------------------
# Task functions. They run in worker processes, so they live at module level.


def add_one(x):
    return x + 1


def _worker_pid(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


_COUNTER = itertools.count()
_ATTACHED: dict[str, Any] = {}  # the by-hand tools' per-worker cache of attached blocks (W5)


def _own_name(prefix: str) -> str:
    return f"{prefix}{os.getpid()}_{next(_COUNTER)}"


def _shm_view(shm, shape, dtype) -> np.ndarray:
    return np.ndarray(shape, dtype=dtype, buffer=shm.buf)


def add_one_shm(name_in: str, shape, dtype, prefix: str) -> str:
    """W1 by hand: attach x's block, make a block for the result, compute into it."""
    from multiprocessing.shared_memory import SharedMemory

    shm_in = SharedMemory(name=name_in)
    x = _shm_view(shm_in, shape, dtype)
    shm_out = SharedMemory(name=_own_name(prefix), create=True, size=x.nbytes)
    np.add(x, 1, out=_shm_view(shm_out, shape, dtype))
    del x  # a view that is still alive makes close() fail
    shm_in.close()
    shm_out.close()
    return shm_out.name


def add_one_sa(name_in: str, prefix: str) -> str:
    import SharedArray

    x = SharedArray.attach("shm://" + name_in)
    name = _own_name(prefix)
    np.add(x, 1, out=SharedArray.create("shm://" + name, x.shape, x.dtype))
    return name


def make_slice(i: int, shape) -> np.ndarray:
    return np.full(shape, i, dtype=np.float64)


def write_index(x, i: int) -> None:
    x[i] = i


def write_index_shm(name: str, shape, i: int) -> None:
    from multiprocessing.shared_memory import SharedMemory

    shm = SharedMemory(name=name)
    _shm_view(shm, shape, np.float64)[i] = i
    shm.close()


def write_index_sa(name: str, i: int) -> None:
    import SharedArray

    SharedArray.attach("shm://" + name)[i] = i


def write_kernel(x, worker_id: int, index: int, value) -> None:
    x[index] = index


def make_full(i: int) -> np.ndarray:
    return np.full(W4_LEN, i)


def make_full_pooled(i: int):
    import pyshm

    return pyshm.full(W4_LEN, i)


def make_full_shm(i: int, prefix: str) -> str:
    from multiprocessing.shared_memory import SharedMemory

    shm = SharedMemory(name=_own_name(prefix), create=True, size=W4_LEN * 8)
    _shm_view(shm, (W4_LEN,), np.int64).fill(i)
    shm.close()
    return shm.name


def make_full_sa(i: int, prefix: str) -> str:
    import SharedArray

    name = _own_name(prefix)
    SharedArray.create("shm://" + name, (W4_LEN,), np.int64).fill(i)
    return name


def row_sum(row) -> float:
    return float(row.sum())


def row_sum_at(x, i: int) -> float:
    return float(x[i].sum())


def row_sum_shm(name: str, shape, i: int) -> float:
    if name not in _ATTACHED:
        from multiprocessing.shared_memory import SharedMemory

        shm = SharedMemory(name=name)
        _ATTACHED[name] = (shm, _shm_view(shm, shape, np.float64))
    return float(_ATTACHED[name][1][i].sum())


def row_sum_sa(name: str, i: int) -> float:
    if name not in _ATTACHED:
        import SharedArray

        _ATTACHED[name] = SharedArray.attach("shm://" + name)
    return float(_ATTACHED[name][i].sum())


def row_kernel(x, out, worker_id: int, index: int, value) -> None:
    out[index] = x[index % W5_ROWS].sum()


# ---------------------------------------------------------------------------------------------
# What a tool yields for each row of a workload.


class WrongResult(Exception):
    """A checked result was not what the workload computes."""


@dataclass
class Variant:
    """One timed row. `step` is what the clock covers; `check` runs after the clock stops
    (verify, then free what the step returned). `per` divides a step's time into units."""

    case: str
    tool: str
    variant: str
    key: str
    step: Callable[[], Any]
    check: Callable[[Any], None]
    per: int = 1
    unit: str = "call"
    ref: bool = False  # the row that "vs pyshm" compares against, when it is pyshm's
    note: str = ""


@dataclass
class Unavailable:
    """Rows a tool has no way to produce in this installation (e.g. a front-end not written)."""

    case: str
    tool: str
    variants: list[tuple[str, str]]  # (variant, key)
    why: str


@dataclass
class Config:
    repeats: int
    warmup: int
    w3_count: int
    prefix: str  # every /dev/shm name this run makes by hand starts with it


@dataclass
class Owned:
    """A result array and how to release what backs it (close + unlink for by-hand blocks)."""

    array: Any
    release: Callable[[], None] = lambda: None

    def free(self) -> None:
        self.array = None
        self.release()


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise WrongResult(what)


def start_workers(ex) -> None:
    """Makes sure both workers exist (and have imported what they need) before the data does."""
    pids = set(ex.map(_worker_pid, [0.1] * WORKERS))
    _expect(len(pids) == WORKERS, f"expected {WORKERS} worker processes, saw {len(pids)}")


def _close(obj) -> None:
    for name in ("shutdown", "close"):
        method = getattr(obj, name, None)
        if callable(method):
            method()
            return


def _pyshm_frontend(*names: str) -> str | None:
    """Why the pyshm front-end named by `names` cannot be used here, or None."""
    import pyshm

    missing = [n for n in names if not hasattr(pyshm, n)]
    return f"pyshm {pyshm.__version__} has no {', '.join(missing)} yet" if missing else None


# ---------------------------------------------------------------------------------------------
# W1: submit(add_one, x).result()

W1_CASE = "submit(add_one, x).result(), x = np.ones(2e7), 160 MB"


def _w1_check(x) -> Callable[[Owned], None]:
    """Checks that the result is x + 1, then changes x in place for the next call (1 <-> 2).
    `x` is the array the tool reads: the plain one, or the shared copy made once."""
    x[...] = 1.0

    def check(res: Owned) -> None:
        want = float(x[0]) + 1
        a = res.array
        ok = a.shape == (W1_LEN,) and bool((a == want).all())
        stale = not ok and a.shape == (W1_LEN,) and bool((a == 5 - want).all())
        del a
        res.free()
        _expect(ok, f"result is not x + 1 = {want:g} everywhere" + (" (a stale x: x + 1 of the previous call)"
                                                                 if stale else ""))
        x[...] = 3 - float(x[0])

    return check


def _w1_variant(tool, variant, key, step, x, ref=False, note="") -> Variant:
    return Variant(W1_CASE, tool, variant, key, step, _w1_check(x), ref=ref, note=note)


def w1_numpy(cfg: Config) -> Iterator:
    x = np.ones(W1_LEN)
    yield _w1_variant("numpy", "add_one(x) in this process", "numpy", lambda: Owned(add_one(x)), x)


def w1_stdlib(cfg: Config) -> Iterator:
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = np.ones(W1_LEN)
        yield _w1_variant("stdlib", "x pickled both ways", "stdlib", lambda: Owned(ex.submit(add_one, x).result()), x)


def _shm_block(name: str, like: np.ndarray):
    """A by-hand SharedMemory block holding a copy of `like`: (block, view)."""
    from multiprocessing.shared_memory import SharedMemory

    shm = SharedMemory(name=name, create=True, size=like.nbytes)
    view = _shm_view(shm, like.shape, like.dtype)
    view[...] = like
    return shm, view


def _shm_result(name: str, shape, dtype) -> Owned:
    from multiprocessing.shared_memory import SharedMemory

    shm = SharedMemory(name=name)
    res = Owned(_shm_view(shm, shape, dtype))

    def release():
        shm.close()
        shm.unlink()

    res.release = release
    return res


def w1_shared_memory(cfg: Config) -> Iterator:
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    names = (f"{cfg.prefix}p{n}" for n in itertools.count())
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = np.ones(W1_LEN)

        def per_call():
            shm, view = _shm_block(next(names), x)
            del view
            out = ex.submit(add_one_shm, shm.name, x.shape, x.dtype, cfg.prefix).result()
            shm.close()
            shm.unlink()
            return _shm_result(out, x.shape, x.dtype)

        yield _w1_variant("shared_memory", "x copied into a new block per call", "shm", per_call, x)
        shm, view = _shm_block(next(names), x)

        def shared():
            out = ex.submit(add_one_shm, shm.name, x.shape, x.dtype, cfg.prefix).result()
            return _shm_result(out, x.shape, x.dtype)

        try:
            yield _w1_variant("shared_memory", "x in a block made once", "shm/pre", shared, view)
        finally:
            del view
            shm.close()
            shm.unlink()


def w1_pyshm(cfg: Config) -> Iterator:
    import pyshm

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = np.ones(W1_LEN)
        xp = pyshm.asarray(x)
        yield _w1_variant(
            "pyshm", "stdlib executor, x pooled (result pickled)", "pyshm/core",
            lambda: Owned(ex.submit(add_one, xp).result()), xp,
            note="the core without the front-end: the input goes as a handle, the result is a private array",
        )
        del x, xp
    why = _pyshm_frontend("ProcessPoolExecutor")
    if why:
        yield Unavailable(W1_CASE, "pyshm", [("pyshm.ProcessPoolExecutor, x plain (copied into the pool per call)",
                                              "pyshm"),
                                             ("pyshm.ProcessPoolExecutor, x pooled once", "pyshm/pooled")], why)
        return
    with pyshm.ProcessPoolExecutor(max_workers=WORKERS) as ex:
        start_workers(ex)
        x = np.ones(W1_LEN)
        yield _w1_variant("pyshm", "pyshm.ProcessPoolExecutor, x plain (copied into the pool per call)", "pyshm",
                          lambda: Owned(ex.submit(add_one, x).result()), x, ref=True)
        xp = pyshm.asarray(x)
        yield _w1_variant("pyshm", "pyshm.ProcessPoolExecutor, x pooled once", "pyshm/pooled",
                          lambda: Owned(ex.submit(add_one, xp).result()), xp)


def w1_npshmex(cfg: Config) -> Iterator:
    import npshmex

    with npshmex.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = np.ones(W1_LEN)
        yield _w1_variant("npshmex", "x copied into a segment per call, result likewise", "npshmex",
                          lambda: Owned(ex.submit(add_one, x).result()), x)


def _sa_result(name: str) -> Owned:
    import SharedArray

    a = SharedArray.attach("shm://" + name)
    SharedArray.delete(name)  # the mapping stays until the array goes
    return Owned(a)


def w1_SharedArray(cfg: Config) -> Iterator:
    import SharedArray

    names = (f"{cfg.prefix}p{n}" for n in itertools.count())
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = np.ones(W1_LEN)

        def per_call():
            name = next(names)
            SharedArray.create("shm://" + name, x.shape, x.dtype)[...] = x
            out = ex.submit(add_one_sa, name, cfg.prefix).result()
            SharedArray.delete(name)
            return _sa_result(out)

        yield _w1_variant("SharedArray", "x copied into a new segment per call", "SA", per_call, x)
        name = next(names)
        shared = SharedArray.create("shm://" + name, x.shape, x.dtype)
        shared[...] = x
        try:
            yield _w1_variant("SharedArray", "x in a segment made once", "SA/pre",
                              lambda: _sa_result(ex.submit(add_one_sa, name, cfg.prefix).result()), shared)
        finally:
            SharedArray.delete(name)


def w1_joblib(cfg: Config) -> Iterator:
    from joblib import Parallel, delayed

    with Parallel(n_jobs=WORKERS) as par:
        par(delayed(_worker_pid)(0.1) for _ in range(WORKERS))
        x = np.ones(W1_LEN)
        # loky's workers outlive a Parallel object, so a new one per call starts no process.
        yield _w1_variant("joblib", "a new Parallel per call: x dumped to a memmap, result pickled", "joblib",
                          lambda: Owned(Parallel(n_jobs=WORKERS)([delayed(add_one)(x)])[0]), x)
        yield _w1_variant("joblib", "one Parallel kept open: x memmapped once, result pickled", "joblib/kept",
                          lambda: Owned(par([delayed(add_one)(x)])[0]), x,
                          note="inside one Parallel block joblib finds x's memmap by the array's identity, "
                               "so an in-place change of x between calls is not seen")


# ---------------------------------------------------------------------------------------------
# W2: 100 tasks write x[i] = i into a shared (100, 200, 500) array

W2_CASE = "100 tasks write x[i] = i, x (100, 200, 500) float64, 80 MB"
_W2_INDEX = np.arange(W2_SHAPE[0], dtype=np.float64)[:, None, None]


def _w2_check(x) -> Callable[[Any], None]:
    def check(_):
        _expect(bool((x == _W2_INDEX).all()), "x[i] != i somewhere")
        x[...] = -1  # the next repeat must write everything again

    return check


def _w2_variant(tool, variant, key, step, x, ref=False, note="") -> Variant:
    return Variant(W2_CASE, tool, variant, key, step, _w2_check(x), ref=ref, note=note)


def _wait_all(futures) -> None:
    for f in futures:
        f.result()


def _assign_slices(ex, x) -> None:
    futures = [ex.submit(make_slice, i, W2_SHAPE[1:]) for i in range(W2_SHAPE[0])]
    for i, f in enumerate(futures):
        x[i] = f.result()


def w2_numpy(cfg: Config) -> Iterator:
    x = np.full(W2_SHAPE, -1.0)

    def step():
        for i in range(W2_SHAPE[0]):
            write_index(x, i)

    yield _w2_variant("numpy", "x[i] = i in this process", "numpy", step, x)


def w2_stdlib(cfg: Config) -> Iterator:
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = np.full(W2_SHAPE, -1.0)
        yield _w2_variant("stdlib", "tasks return the slice pickled, the parent assigns it", "stdlib",
                          lambda: _assign_slices(ex, x), x)


def w2_shared_memory(cfg: Config) -> Iterator:
    from multiprocessing import resource_tracker
    from multiprocessing.shared_memory import SharedMemory

    resource_tracker.ensure_running()
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        shm = SharedMemory(name=cfg.prefix + "x", create=True, size=int(np.prod(W2_SHAPE)) * 8)
        x = _shm_view(shm, W2_SHAPE, np.float64)
        x[...] = -1
        try:
            yield _w2_variant(
                "shared_memory", "each task attaches the block by name", "shm",
                lambda: _wait_all([ex.submit(write_index_shm, shm.name, W2_SHAPE, i) for i in range(W2_SHAPE[0])]), x)
        finally:
            del x
            shm.close()
            shm.unlink()


def w2_pyshm(cfg: Config) -> Iterator:
    import pyshm

    def tasks(ex, x):
        return lambda: _wait_all([ex.submit(write_index, x, i) for i in range(W2_SHAPE[0])])

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = pyshm.full(W2_SHAPE, -1.0)
        yield _w2_variant("pyshm", "stdlib executor, pooled x", "pyshm/core", tasks(ex, x), x,
                          note="the core without the front-ends")
        del x
    why = _pyshm_frontend("ProcessPoolExecutor")
    if why:
        yield Unavailable(W2_CASE, "pyshm", [("pyshm.ProcessPoolExecutor", "pyshm")], why)
    else:
        with pyshm.ProcessPoolExecutor(max_workers=WORKERS) as ex:
            start_workers(ex)
            x = pyshm.full(W2_SHAPE, -1.0)
            yield _w2_variant("pyshm", "pyshm.ProcessPoolExecutor", "pyshm", tasks(ex, x), x, ref=True)
            del x
    why = _pyshm_frontend("map", "ProcessContext")
    if why:
        yield Unavailable(W2_CASE, "pyshm", [("pyshm.map, ProcessContext", "pyshm.map")], why)
        return
    ctx = pyshm.ProcessContext(num_workers=WORKERS)
    try:
        pyshm.map(_ignore_kernel, range(WORKERS), context=ctx)  # start its workers
        x = pyshm.full(W2_SHAPE, -1.0)
        kernel = functools.partial(write_kernel, x)
        yield _w2_variant("pyshm", "pyshm.map, ProcessContext", "pyshm.map",
                          lambda: pyshm.map(kernel, range(W2_SHAPE[0]), context=ctx), x)
    finally:
        _close(ctx)


def _ignore_kernel(worker_id, index, value) -> None:
    pass


def w2_npshmex(cfg: Config) -> Iterator:
    import npshmex

    with npshmex.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = np.full(W2_SHAPE, -1.0)
        yield _w2_variant("npshmex", "tasks return the slice through a segment, the parent assigns it", "npshmex",
                          lambda: _assign_slices(ex, x), x,
                          note="npshmex copies array arguments, so tasks cannot write into a shared array")


def w2_SharedArray(cfg: Config) -> Iterator:
    import SharedArray

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        name = cfg.prefix + "x"
        x = SharedArray.create("shm://" + name, W2_SHAPE, np.float64)
        x[...] = -1
        try:
            yield _w2_variant(
                "SharedArray", "each task attaches the segment by name", "SA",
                lambda: _wait_all([ex.submit(write_index_sa, name, i) for i in range(W2_SHAPE[0])]), x)
        finally:
            SharedArray.delete(name)


def w2_joblib(cfg: Config) -> Iterator:
    from joblib import Parallel, delayed

    with Parallel(n_jobs=WORKERS) as par:
        par(delayed(_worker_pid)(0.1) for _ in range(WORKERS))
        folder = tempfile.mkdtemp(prefix=cfg.prefix, dir=SHM if os.path.isdir(SHM) else None)
        x = np.memmap(os.path.join(folder, "x.mmap"), dtype=np.float64, mode="w+", shape=W2_SHAPE)
        x[...] = -1
        try:
            yield _w2_variant("joblib", "np.memmap in /dev/shm passed to the tasks", "joblib",
                              lambda: par(delayed(write_index)(x, i) for i in range(W2_SHAPE[0])), x)
        finally:
            del x
            shutil.rmtree(folder, ignore_errors=True)


def w2_pasha(cfg: Config) -> Iterator:
    import pasha

    ctx = pasha.ProcessContext(num_workers=WORKERS)
    x = ctx.alloc(shape=W2_SHAPE, fill=-1.0)
    kernel = functools.partial(write_kernel, x)
    yield _w2_variant("pasha", "pasha.map over range(100), alloc'd x", "pasha",
                      lambda: ctx.map(kernel, range(W2_SHAPE[0])), x,
                      note="pasha forks a new pool on every map call; that is inside the clock")


# ---------------------------------------------------------------------------------------------
# W3: create and free shared arrays

def _w3_cases(cfg: Config, tool: str, key: str, variant: str, make_empty, make_full, note="") -> Iterator:
    """One row per size and fill. `make_*(nbytes, i)` create an array and return
    (array, free); the loop frees each array before the next one exists."""
    n = cfg.w3_count
    for label, nbytes in W3_SIZES:
        for fill, make in (("empty", make_empty), ("filled", make_full)):
            def step(make=make, nbytes=nbytes):
                for i in range(n):
                    a, free = make(nbytes, i)
                    del a
                    free()

            def check(_, make=make, nbytes=nbytes, fill=fill):
                a, free = make(nbytes, n)
                ok = a.nbytes == nbytes and (fill == "empty" or bool((a == 1).all()))
                del a
                free()
                _expect(ok, "sample array has the wrong size or contents")

            yield Variant(f"create + free one {label} shared array, {fill}", tool, variant, key, step, check,
                          per=n, unit="array", note=note)


def _nothing() -> None:
    pass


def w3_numpy(cfg: Config) -> Iterator:
    yield from _w3_cases(cfg, "numpy", "numpy", "np.empty / np.full (private memory)",
                         lambda nb, i: (np.empty(nb // 8), _nothing),
                         lambda nb, i: (np.full(nb // 8, 1.0), _nothing))


def w3_shared_memory(cfg: Config) -> Iterator:
    from multiprocessing.shared_memory import SharedMemory

    def make(nbytes, i, fill):
        shm = SharedMemory(name=f"{cfg.prefix}{i}", create=True, size=nbytes)
        a = _shm_view(shm, (nbytes // 8,), np.float64)
        if fill:
            a.fill(1.0)

        def free():
            shm.close()
            shm.unlink()

        return a, free

    yield from _w3_cases(cfg, "shared_memory", "shm", "SharedMemory + ndarray, close + unlink",
                         lambda nb, i: make(nb, i, False), lambda nb, i: make(nb, i, True))


def w3_pyshm(cfg: Config) -> Iterator:
    import pyshm

    yield from _w3_cases(cfg, "pyshm", "pyshm", "pyshm.empty / pyshm.full",
                         lambda nb, i: (pyshm.empty(nb // 8), _nothing),
                         lambda nb, i: (pyshm.full(nb // 8, 1.0), _nothing))


def w3_SharedArray(cfg: Config) -> Iterator:
    import SharedArray

    def make(nbytes, i, fill):
        name = f"{cfg.prefix}{i}"
        a = SharedArray.create("shm://" + name, nbytes // 8, np.float64)
        if fill:
            a.fill(1.0)
        return a, lambda: SharedArray.delete(name)

    yield from _w3_cases(cfg, "SharedArray", "SA", "SharedArray.create, delete",
                         lambda nb, i: make(nb, i, False), lambda nb, i: make(nb, i, True))


def w3_pasha(cfg: Config) -> Iterator:
    import pasha

    ctx = pasha.ProcessContext(num_workers=WORKERS)
    yield from _w3_cases(cfg, "pasha", "pasha", "ProcessContext.alloc (anonymous shared mmap)",
                         lambda nb, i: (ctx.alloc(shape=nb // 8), _nothing),
                         lambda nb, i: (ctx.alloc(shape=nb // 8, fill=1.0), _nothing),
                         note="shared only with processes forked later; no name, not attachable")


# ---------------------------------------------------------------------------------------------
# W4: 16 tasks return np.full(4_000_000, i); the parent sums

W4_CASE = "16 tasks return np.full(4_000_000, i), 32 MB each; the parent sums them"
W4_SUMS = [W4_LEN * i for i in range(W4_TASKS)]


def _w4_check(sums: list[int]) -> None:
    """The step returns each task's sum, in task order (their total is what the parent wants):
    a permutation would keep the total and still be wrong."""
    _expect(sum(sums) == sum(W4_SUMS), f"total {sum(sums)}, expected {sum(W4_SUMS)}")
    _expect(sums == W4_SUMS, "the total is right, but results came back for the wrong tasks")


def _w4_variant(tool, variant, key, step, ref=False, note="") -> Variant:
    return Variant(W4_CASE, tool, variant, key, step, _w4_check, ref=ref, note=note)


def _sum_results(futures: list) -> list[int]:
    """Sums each result as it comes and drops it (with its future) at once, inside the clock."""
    sums = []
    for i, f in enumerate(futures):
        futures[i] = None
        sums.append(int(f.result().sum()))
        del f
    return sums


def w4_numpy(cfg: Config) -> Iterator:
    yield _w4_variant("numpy", "np.full then sum, in this process", "numpy",
                      lambda: [int(make_full(i).sum()) for i in range(W4_TASKS)])


def w4_stdlib(cfg: Config) -> Iterator:
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        yield _w4_variant("stdlib", "results pickled", "stdlib",
                          lambda: _sum_results([ex.submit(make_full, i) for i in range(W4_TASKS)]))


def w4_shared_memory(cfg: Config) -> Iterator:
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()

    def step():
        futures = [ex.submit(make_full_shm, i, cfg.prefix) for i in range(W4_TASKS)]
        sums = []
        for f in futures:
            res = _shm_result(f.result(), (W4_LEN,), np.int64)
            sums.append(int(res.array.sum()))
            res.free()
        return sums

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        yield _w4_variant("shared_memory", "tasks create a block, the parent attaches, sums, unlinks", "shm", step)


def w4_pyshm(cfg: Config) -> Iterator:
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        yield _w4_variant("pyshm", "tasks call pyshm.full, stdlib executor", "pyshm/core",
                          lambda: _sum_results([ex.submit(make_full_pooled, i) for i in range(W4_TASKS)]),
                          note="the core without the front-end: the task allocates in the pool itself")
    why = _pyshm_frontend("ProcessPoolExecutor")
    if why:
        yield Unavailable(W4_CASE, "pyshm", [("pyshm.ProcessPoolExecutor (np.full is pooled)", "pyshm")], why)
        return
    import pyshm

    with pyshm.ProcessPoolExecutor(max_workers=WORKERS) as ex:
        start_workers(ex)
        yield _w4_variant("pyshm", "pyshm.ProcessPoolExecutor (np.full is pooled)", "pyshm",
                          lambda: _sum_results([ex.submit(make_full, i) for i in range(W4_TASKS)]), ref=True)


def w4_npshmex(cfg: Config) -> Iterator:
    import npshmex

    with npshmex.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        yield _w4_variant("npshmex", "results copied through segments", "npshmex",
                          lambda: _sum_results([ex.submit(make_full, i) for i in range(W4_TASKS)]))


def w4_SharedArray(cfg: Config) -> Iterator:
    def step():
        futures = [ex.submit(make_full_sa, i, cfg.prefix) for i in range(W4_TASKS)]
        sums = []
        for f in futures:
            res = _sa_result(f.result())
            sums.append(int(res.array.sum()))
            res.free()
        return sums

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        yield _w4_variant("SharedArray", "tasks create a segment, the parent attaches, deletes, sums", "SA", step)


def w4_joblib(cfg: Config) -> Iterator:
    from joblib import Parallel, delayed

    def step():
        return [int(r.sum()) for r in par(delayed(make_full)(i) for i in range(W4_TASKS))]

    with Parallel(n_jobs=WORKERS, return_as="generator") as par:
        list(par(delayed(_worker_pid)(0.1) for _ in range(WORKERS)))
        yield _w4_variant("joblib", "results pickled, consumed as a generator", "joblib", step)


# ---------------------------------------------------------------------------------------------
# W5: 10,000 row sums of a shared 1000x1000 array

W5_CASE = "10,000 tasks, each the sum of one row of a shared 1000x1000 float64 array"
W5_INDEX = [i % W5_ROWS for i in range(W5_TASKS)]


def _w5_data() -> np.ndarray:
    return np.arange(W5_ROWS * W5_ROWS, dtype=np.float64).reshape(W5_ROWS, W5_ROWS)


_W5_EXPECTED = _w5_data().sum(axis=1)[W5_INDEX]  # integers below 2**53: every order is exact


def _w5_check(out) -> None:
    got = np.asarray(out, dtype=np.float64)
    _expect(got.shape == _W5_EXPECTED.shape and bool((got == _W5_EXPECTED).all()), "wrong row sums")


def _w5_variant(tool, variant, key, step, ref=False, note="", check=_w5_check) -> Variant:
    return Variant(W5_CASE, tool, variant, key, step, check, per=W5_TASKS, unit="task", ref=ref, note=note)


def _w5_out_check(out) -> Callable[[Any], None]:
    def check(_):
        _w5_check(out)
        out[...] = np.nan  # the next repeat must write everything again

    return check


def _w5_executor_rows(tool, key, ex, fn, args_of, note="", ref=False, label="") -> Iterator[Variant]:
    """The submit and the chunked-map rows of an executor; `args_of(i)` gives task i's args."""
    def submit():
        futures = [ex.submit(fn, *args_of(i)) for i in W5_INDEX]
        return [f.result() for f in futures]

    def chunked():
        return list(ex.map(fn, *zip(*(args_of(i) for i in W5_INDEX)), chunksize=W5_CHUNK))

    yield _w5_variant(tool, f"{label}10,000 submit calls", f"{key}/submit", submit, ref=ref, note=note)
    yield _w5_variant(tool, f"{label}map, chunksize={W5_CHUNK}", f"{key}/map", chunked, note=note)


def w5_numpy(cfg: Config) -> Iterator:
    x = _w5_data()
    yield _w5_variant("numpy", "row sums in this process", "numpy", lambda: [row_sum(x[i]) for i in W5_INDEX])


def w5_stdlib(cfg: Config) -> Iterator:
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = _w5_data()
        yield from _w5_executor_rows("stdlib", "stdlib", ex, row_sum, lambda i: (x[i],), note="each row pickled")


def w5_shared_memory(cfg: Config) -> Iterator:
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        shm, view = _shm_block(cfg.prefix + "x", _w5_data())
        del view
        shape = (W5_ROWS, W5_ROWS)
        try:
            yield from _w5_executor_rows("shared_memory", "shm", ex, row_sum_shm, lambda i: (shm.name, shape, i))
        finally:
            shm.close()
            shm.unlink()


def w5_pyshm(cfg: Config) -> Iterator:
    import pyshm

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        xp = pyshm.asarray(_w5_data())
        yield from _w5_executor_rows("pyshm", "pyshm/core", ex, row_sum_at, lambda i: (xp, i),
                                     label="stdlib executor, pooled x: ",
                                     note="the core without the front-ends: x sent as a handle per task")
        del xp
    why = _pyshm_frontend("ProcessPoolExecutor")
    if why:
        yield Unavailable(W5_CASE, "pyshm", [("pyshm.ProcessPoolExecutor: 10,000 submit calls", "pyshm/submit"),
                                             (f"pyshm.ProcessPoolExecutor: map, chunksize={W5_CHUNK}", "pyshm/map")],
                          why)
    else:
        with pyshm.ProcessPoolExecutor(max_workers=WORKERS) as ex:
            start_workers(ex)
            xp = pyshm.asarray(_w5_data())
            yield from _w5_executor_rows("pyshm", "pyshm", ex, row_sum_at, lambda i: (xp, i), ref=True,
                                         label="pyshm.ProcessPoolExecutor: ")
            del xp
    why = _pyshm_frontend("map", "ProcessContext")
    if why:
        yield Unavailable(W5_CASE, "pyshm", [("pyshm.map, ProcessContext", "pyshm.map")], why)
        return
    ctx = pyshm.ProcessContext(num_workers=WORKERS)
    try:
        pyshm.map(_ignore_kernel, range(WORKERS), context=ctx)  # start its workers
        xp = pyshm.asarray(_w5_data())
        out = pyshm.full(W5_TASKS, np.nan)
        kernel = functools.partial(row_kernel, xp, out)
        yield _w5_variant("pyshm", "pyshm.map, ProcessContext", "pyshm.map",
                          lambda: pyshm.map(kernel, range(W5_TASKS), context=ctx), check=_w5_out_check(out))
    finally:
        _close(ctx)


def w5_npshmex(cfg: Config) -> Iterator:
    import npshmex

    with npshmex.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        x = _w5_data()
        yield from _w5_executor_rows(
            "npshmex", "npshmex", ex, row_sum, lambda i: (x[i],),
            note="submit copies each row into a new segment; map's chunks are tuples, so they are pickled")


def w5_SharedArray(cfg: Config) -> Iterator:
    import SharedArray

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        start_workers(ex)
        name = cfg.prefix + "x"
        SharedArray.create("shm://" + name, (W5_ROWS, W5_ROWS), np.float64)[...] = _w5_data()
        try:
            yield from _w5_executor_rows("SharedArray", "SA", ex, row_sum_sa, lambda i: (name, i))
        finally:
            SharedArray.delete(name)


def w5_joblib(cfg: Config) -> Iterator:
    import joblib
    from joblib import Parallel, delayed

    folder = tempfile.mkdtemp(prefix=cfg.prefix, dir=SHM if os.path.isdir(SHM) else None)
    try:
        for batch, variant, key in ((1, "batch_size=1 (one task per message)", "joblib/submit"),
                                    (W5_CHUNK, f"batch_size={W5_CHUNK}", "joblib/map")):
            # A file per row: a worker may still map the previous one.
            with Parallel(n_jobs=WORKERS, batch_size=batch) as par:
                par(delayed(_worker_pid)(0.1) for _ in range(WORKERS))
                path = joblib.dump(_w5_data(), os.path.join(folder, f"x{batch}.pkl"))[0]
                x = joblib.load(path, mmap_mode="r")
                yield _w5_variant("joblib", variant, key,
                                  lambda: par(delayed(row_sum_at)(x, i) for i in W5_INDEX),
                                  note="x is a joblib memmap, reopened by the worker for each task")
                del x
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def w5_pasha(cfg: Config) -> Iterator:
    import pasha

    ctx = pasha.ProcessContext(num_workers=WORKERS)
    x = ctx.alloc(like=_w5_data())
    x[...] = _w5_data()
    out = ctx.alloc(shape=W5_TASKS, fill=np.nan)
    kernel = functools.partial(row_kernel, x, out)
    yield _w5_variant("pasha", "pasha.map over range(10000)", "pasha",
                      lambda: ctx.map(kernel, range(W5_TASKS)), check=_w5_out_check(out),
                      note="pasha forks a new pool on every map call; that is inside the clock")


# ---------------------------------------------------------------------------------------------
# The workloads, and why a tool has no row in one.

WORKLOADS: dict[str, dict[str, Any]] = {
    "W1": {"title": "one task on a 160 MB array", "cases": [W1_CASE]},
    "W2": {"title": "100 tasks write into one shared array", "cases": [W2_CASE]},
    "W3": {"title": "create and free shared arrays",
           "cases": [f"create + free one {label} shared array, {fill}" for label, _ in W3_SIZES
                     for fill in ("empty", "filled")]},
    "W4": {"title": "16 tasks return 32 MB each", "cases": [W4_CASE]},
    "W5": {"title": "10,000 small tasks on a shared array", "cases": [W5_CASE]},
}
NOT_APPLICABLE = {
    ("W1", "pasha"): "pasha's kernels return nothing; results go into arrays allocated before the map",
    ("W3", "stdlib"): "no executor in W3; the stdlib's shared arrays are the shared_memory row",
    ("W3", "npshmex"): "no array constructor; it copies arrays into SharedArray segments (see SharedArray)",
    ("W3", "joblib"): "no shared-array constructor; its memmaps are files written by joblib.dump",
    ("W4", "pasha"): "pasha's kernels return nothing; results go into arrays allocated before the map",
}


def tool_function(workload: str, tool: str) -> Callable[[Config], Iterator] | None:
    return globals().get(f"{workload.lower()}_{tool}")


# ---------------------------------------------------------------------------------------------
# The child: one (workload, tool), every variant, results written after each row.


def measure(v: Variant, cfg: Config) -> dict:
    row = {"case": v.case, "tool": v.tool, "variant": v.variant, "key": v.key, "ref": v.ref, "per": v.per,
           "unit": v.unit, "note": v.note, "times": [], "status": "ok", "detail": ""}
    try:
        for _ in range(cfg.warmup):
            v.check(v.step())
        for _ in range(cfg.repeats):
            start = time.perf_counter()
            out = v.step()
            row["times"].append((time.perf_counter() - start) / v.per)
            v.check(out)
            del out
    except WrongResult as e:
        row["status"], row["detail"] = "wrong", str(e)
    except Exception as e:  # noqa: BLE001 - a peer may fail in any way; report it
        row["status"], row["detail"] = "error", f"{type(e).__name__}: {e}"
        traceback.print_exc()
    if row["times"]:
        row["median"] = statistics.median(row["times"])
    return row


def _stop_loky() -> None:
    """Joins joblib's reusable loky workers, which outlive `Parallel`, so that they are reaped
    (and counted in RUSAGE_CHILDREN) before the measuring process exits."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True)


def _pool_snapshot(tool: str) -> tuple[int, int] | None:
    """(arrays, bytes used) in pyshm's pool, once garbage is collected: a pyshm row that ends
    with more than it started with has kept results alive (a leak within the program)."""
    if tool != "pyshm":
        return None
    import gc

    import pyshm

    gc.collect()
    time.sleep(0.2)  # a worker may still be dropping its hold on the last result
    stats = pyshm.stats()
    return stats.arrays, stats.used


def child_main(args) -> int:
    cfg = Config(args.repeats, args.warmup, args.w3_count, args.prefix)
    state: dict[str, Any] = {"workload": args.child[0], "tool": args.child[1], "pid": os.getpid(),
                             "status": "running", "detail": "", "rows": [], "pyshm_pool": None}

    def save():
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, args.out)

    save()
    gen = None
    try:
        if state["tool"] == "pyshm":
            import pyshm

            state["pyshm_pool"] = pyshm.default_pool().name
            save()
        gen = tool_function(*args.child)(cfg)
        for item in gen:
            if isinstance(item, Unavailable):
                for variant, key in item.variants:
                    state["rows"].append({"case": item.case, "tool": item.tool, "variant": variant, "key": key,
                                          "status": "unavailable", "detail": item.why, "times": []})
            else:
                print(f"    {item.key}: {item.case[:50]}", file=sys.stderr, flush=True)
                before = _pool_snapshot(state["tool"])
                row = measure(item, cfg)
                after = _pool_snapshot(state["tool"])
                if before and after and after[0] > before[0]:
                    row["pool_growth"] = (f"the pool holds {after[0] - before[0]} more arrays "
                                          f"({(after[1] - before[1]) / 2**20:.0f} MiB) after the row than before it")
                state["rows"].append(row)
            save()
        state["status"] = "ok"
    except ImportError as e:  # before any row: the tool is missing; after some: it broke
        state["status"] = "error" if state["rows"] else "missing"
        state["detail"] = f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001
        state["status"], state["detail"] = "error", f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        if gen is not None:
            gen.close()  # leaves the executors' `with` blocks: workers are joined and reaped
        if state["tool"] == "joblib":
            _stop_loky()
    state["rss_self_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state["rss_children_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    save()
    return 0


# ---------------------------------------------------------------------------------------------
# The driver: runs the children, watches /dev/shm and leftover processes, prints the tables.


def probe_tools(python: str) -> dict[str, dict]:
    """Which optional tools import, with their version, each in a throwaway process."""
    found: dict[str, dict] = {}
    for tool, module in TOOL_MODULES.items():
        code = (f"import importlib.metadata as m, concurrent.futures._base as b\n"
                f"before = b.Future\n"
                f"import {module}\n"
                f"v = getattr({module}, '__version__', None)\n"
                f"if v is None:\n"
                f"    try: v = m.version({module!r})\n"
                f"    except Exception: v = '?'\n"
                f"print(v)\n"
                f"print(b.Future is not before)")
        try:
            out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            found[tool] = {"ok": False, "detail": "import hung (120 s)"}
            continue
        if out.returncode == 0:
            version, patched = out.stdout.split()[-2:]
            found[tool] = {"ok": True, "version": version}
            if patched == "True":
                found[tool]["detail"] = "importing it replaces concurrent.futures' Future class, process-wide"
        else:
            last = (out.stderr.strip().splitlines() or ["?"])[-1]
            found[tool] = {"ok": False, "detail": last}
    return found


def list_shm() -> set[str]:
    try:
        return set(os.listdir(SHM))
    except FileNotFoundError:
        return set()


def own_entries(new: set[str], tool: str, prefix: str, child_pid: int, pool: str | None) -> set[str]:
    """The new /dev/shm entries that this run of `tool` made (see the module doc, point 5)."""
    patterns = [re.escape(prefix)]
    if pool:
        patterns.append(re.escape(f"pyshm-{pool}"))
    if tool == "npshmex":
        patterns.append("npshmex_")
    if tool == "joblib":
        patterns += [f"joblib_memmapping_folder_{child_pid}_", f"sem\\.loky-{child_pid}-"]
    rx = re.compile("|".join(f"(?:{p})" for p in patterns))
    return {e for e in new if rx.match(e)}


def remove_entry(name: str) -> None:
    path = os.path.join(SHM, name)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def session_processes(sid: int) -> list[str]:
    """`pid name` of the processes still in session `sid` (the child's own session)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid:  # fields[3] is the session id (field 6 of stat)
            found.append(f"{pid} {name}")
    return found


def run_child(workload: str, tool: str, args, tmpdir: str) -> dict:
    prefix = f"frontends-{os.getpid()}-{workload}-{tool}-"
    out = os.path.join(tmpdir, f"{workload}-{tool}.json")
    err = os.path.join(tmpdir, f"{workload}-{tool}.stderr")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", workload, tool, "--out", out, "--prefix", prefix,
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--w3-count", str(args.w3_count)]
    before = list_shm()
    start = time.perf_counter()
    with open(err, "w") as errf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
            hung = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: only what it started
            rc = proc.wait()
            hung = True
    wall = time.perf_counter() - start
    try:
        with open(out) as f:
            run = json.load(f)
    except (OSError, ValueError):
        run = {"status": "crashed", "detail": "no result file", "rows": []}
    with open(err, errors="replace") as f:
        stderr = f.read()
    if hung:
        run["status"], run["detail"] = "hung", f"killed after {args.timeout:.0f} s (timeout)"
    elif rc != 0:
        run["status"] = "crashed"
        run["detail"] = f"exit status {rc}" + (f" ({signal.Signals(-rc).name})" if rc < 0 else "")
    run["wall_s"] = wall

    # Leftover processes in the child's session (orphaned workers), then /dev/shm. Give exiting
    # helpers (resource trackers, loky) a moment first.
    time.sleep(0.3)
    left = session_processes(proc.pid)
    if left:
        deadline = time.monotonic() + 3
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = session_processes(proc.pid)
    run["leftover_processes"] = left
    if left:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.3)
    new = list_shm() - before
    own = own_entries(new, tool, prefix, run.get("pid", proc.pid), run.get("pyshm_pool"))
    for name in own:
        remove_entry(name)
    run["leaked"] = sorted(own)
    run["unattributed"] = sorted(new - own)
    run["warnings"] = [l.strip() for l in stderr.splitlines()
                       if re.search(r"warn|leak|Traceback|Error", l, re.IGNORECASE)][:8]
    run["stderr_tail"] = stderr[-2000:] if run["status"] != "ok" else ""
    return run


def fmt(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    if r >= 100:
        return f"{r:.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def fmt_mb(kib: int | None) -> str:
    if kib is None:
        return "-"
    return "none" if kib == 0 else f"{kib / 1024:.0f} MB"


def baselines(rows: list[dict]) -> tuple[dict | None, dict | None]:
    """The case's stdlib row (the executor, else shared_memory by hand) and its pyshm row."""
    ok = [r for r in rows if r["status"] == "ok" and "median" in r]
    std = next((r for t in ("stdlib", "shared_memory") for r in ok if r["tool"] == t), None)
    pys = next((r for r in ok if r["tool"] == "pyshm" and r.get("ref")), None) or next(
        (r for r in ok if r["tool"] == "pyshm"), None)
    return std, pys


def speedup(row: dict, other: dict | None) -> float | None:
    if other is None or row.get("status") != "ok" or "median" not in row:
        return None
    return other["median"] / row["median"]


def report(result: dict) -> tuple[list[str], bool]:
    """The tables, and whether an own tool (stdlib, pyshm) failed."""
    lines: list[str] = []
    own_failed = False
    status_text = {"unavailable": "not available", "wrong": "WRONG RESULT", "error": "ERROR",
                   "hung": "HUNG", "crashed": "CRASHED"}
    for w, wl in result["workloads"].items():
        lines.append(f"\n## {w}: {wl['title']}\n")
        for case in WORKLOADS[w]["cases"]:
            rows = [r for run in wl["runs"].values() for r in run.get("rows", []) if r["case"] == case]
            if not rows:
                continue
            unit = rows[0].get("unit", "call")
            std, pys = baselines(rows)
            lines.append(f"### {case}\n")
            rate = unit == "task"
            head = "| row | tool | variant | median per " + unit + (" | tasks/s" if rate else "") + \
                   " | min-max | speed-up vs stdlib | vs pyshm | status |"
            lines.append(head)
            lines.append("|" + "---|" * (head.count("|") - 1))
            for r in rows:
                times = r.get("times") or []
                med = fmt(r["median"]) if "median" in r else "-"
                spread = f"{fmt(min(times))}-{fmt(max(times))}" if times else "-"
                status = "ok" if r["status"] == "ok" else f"{status_text.get(r['status'], r['status'])}: {r['detail']}"
                if r.get("pool_growth"):
                    status += f"; LEAK? {r['pool_growth']}"
                if r["status"] != "ok" and r["status"] != "unavailable" and r["tool"] in OWN_TOOLS:
                    own_failed = True
                cells = [r["key"], r["tool"], r["variant"], med]
                if rate:
                    cells.append(f"{1 / r['median']:,.0f}" if "median" in r else "-")
                cells += [spread, fmt_ratio(speedup(r, std)), fmt_ratio(speedup(r, pys)), status]
                lines.append("| " + " | ".join(cells) + " |")
            ok = [r for r in rows if r["status"] == "ok" and "median" in r]
            if len(ok) > 2:
                lines.append("\nspeed-up matrix (time of the column's row / time of the line's row; "
                             "above 1: the line's row is faster):\n")
                lines.append("| | " + " | ".join(r["key"] for r in ok) + " |")
                lines.append("|" + "---|" * (len(ok) + 1))
                for r in ok:
                    lines.append(f"| {r['key']} | " + " | ".join(
                        "1" if o is r else fmt_ratio(o["median"] / r["median"]) for o in ok) + " |")
            notes = [f"- {r['key']}: {r['note']}" for r in rows if r.get("note")]
            if notes:
                lines.append("")
                lines += notes
            lines.append("")
        lines.append(f"{w}, per tool (one process each; RSS counts shared pages in every process that touched them):\n")
        lines.append("| tool | status | peak RSS, measuring process | peak RSS, largest reaped child | wall | "
                     "/dev/shm left | notes |")
        lines.append("|---|---|---|---|---|---|---|")
        for tool, run in wl["runs"].items():
            status = run["status"] + (f": {run['detail']}" if run.get("detail") else "")
            if run["status"] in ("crashed", "hung", "error") and tool in OWN_TOOLS:
                own_failed = True
            leaked = ", ".join(run.get("leaked", [])[:4]) + (" ..." if len(run.get("leaked", [])) > 4 else "")
            leaked = f"{len(run.get('leaked', []))}: {leaked} (removed)" if run.get("leaked") else "none" \
                if "leaked" in run else "-"
            notes = []
            if run.get("leftover_processes"):
                notes.append(f"left processes running (killed): {', '.join(run['leftover_processes'][:4])}")
            if run.get("unattributed"):
                notes.append(f"{len(run['unattributed'])} new /dev/shm entries not its own (left alone)")
            if run.get("warnings"):
                notes.append("stderr: " + " / ".join(w_[:120] for w_ in run["warnings"][:2]))
            lines.append(f"| {tool} | {status} | {fmt_mb(run.get('rss_self_kib'))} | "
                         f"{fmt_mb(run.get('rss_children_kib'))} | "
                         f"{run['wall_s']:.1f} s | {leaked} | {'; '.join(notes)} |" if "wall_s" in run else
                         f"| {tool} | {status} | - | - | - | - | |")
    return lines, own_failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 repeats, 1,000 arrays in W3: a smoke run")
    parser.add_argument("--only", help="workloads to run, e.g. W1,W3")
    parser.add_argument("--tools", help="tools to run, e.g. pyshm,stdlib (default: all)")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--repeats", type=int, help="timed repeats (default 5, quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up iterations (default 1)")
    parser.add_argument("--w3-count", type=int, help="arrays per W3 repeat (default 10,000, quick 1,000)")
    parser.add_argument("--timeout", type=float, help="seconds per workload and tool (default 900, quick 300)")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "TOOL"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.w3_count is None:
        args.w3_count = 1_000 if args.quick else W3_COUNT
    if args.timeout is None:
        args.timeout = 300.0 if args.quick else 900.0
    if args.child:
        return child_main(args)

    workloads = [w.strip().upper() for w in args.only.split(",")] if args.only else list(WORKLOADS)
    tools = [t.strip() for t in args.tools.split(",")] if args.tools else list(TOOLS)
    for w in workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w}; the workloads are {', '.join(WORKLOADS)}")
    for t in tools:
        if t not in TOOLS:
            parser.error(f"unknown tool {t}; the tools are {', '.join(TOOLS)}")

    print(f"# pyshm front-ends against the stdlib and peers, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
          f"Python {platform.python_version()}, numpy {np.__version__}; {WORKERS} workers everywhere")
    load_start = os.getloadavg()
    print(f"repeats: {args.repeats} after {args.warmup} warm-up; W3: {args.w3_count:,} arrays per repeat"
          f"{' (--quick)' if args.quick else ''}; load average at start: {load_start[0]:.2f}")
    peers = probe_tools(sys.executable)
    print("tools: numpy, stdlib, shared_memory: built in; " + "; ".join(
        f"{t}: {p['version']}" + (f" ({p['detail']})" if p.get("detail") else "") if p["ok"]
        else f"{t}: MISSING ({p['detail']})" for t, p in peers.items()))
    sys.stdout.flush()

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick, "repeats": args.repeats,
        "warmup": args.warmup, "w3_count": args.w3_count, "workers": WORKERS,
        "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "peers": peers, "workloads": {},
    }
    with tempfile.TemporaryDirectory(prefix="pyshm-frontends-") as tmpdir:
        for w in workloads:
            runs: dict[str, dict] = {}
            result["workloads"][w] = {"title": WORKLOADS[w]["title"], "cases": WORKLOADS[w]["cases"], "runs": runs}
            for tool in tools:
                if (w, tool) in NOT_APPLICABLE or tool_function(w, tool) is None:
                    runs[tool] = {"status": "n/a", "detail": NOT_APPLICABLE.get((w, tool), "no such row"), "rows": []}
                    continue
                module = TOOL_MODULES.get(tool)
                if module and not peers[tool]["ok"]:
                    runs[tool] = {"status": "missing", "detail": peers[tool]["detail"], "rows": []}
                    continue
                print(f"==> {w} {tool}", file=sys.stderr, flush=True)
                run = runs[tool] = run_child(w, tool, args, tmpdir)
                print(f"    {run['status']} in {run['wall_s']:.1f} s"
                      + (f": {run['detail']}" if run.get("detail") else "")
                      + (f"; left in /dev/shm: {len(run['leaked'])}" if run.get("leaked") else ""),
                      file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    result["load_average"] = {"start": load_start, "end": load_end}

    lines, own_failed = report(result)
    print("\n".join(lines))
    print(f"\nload average at the end: {load_end[0]:.2f} (at the start: {load_start[0]:.2f})")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"figures written to {args.json}")
    if own_failed:
        print("\nFAILED: a stdlib or pyshm row crashed, hung or gave a wrong result (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
