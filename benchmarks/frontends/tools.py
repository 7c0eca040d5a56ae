"""The tools the workloads compare, and the adapters the workloads share to drive them.

The tools, each with 2 workers (``harness.WORKERS``):

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

How the adapters keep the processes apart: this module imports only numpy and the standard
library. pyshm and every peer are imported inside the functions that use them, so they are
imported only in the measuring process of their own tool (``harness.child_main``), never in the
driver; ``probe_tools`` finds out which peers import, and their versions, in throwaway processes
(importing npshmex patches ``concurrent.futures`` for the whole process).

The functions here that run in worker processes (``worker_pid``, ``ignore_kernel``) live at
module level so that they pickle by reference; so do each workload's task functions.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time

import numpy as np

from frontends.harness import WORKERS, Owned, expect

TOOLS = ("numpy", "stdlib", "shared_memory", "pyshm", "npshmex", "SharedArray", "joblib", "pasha")
# The modules a tool needs beyond numpy and the stdlib (probed once, in a child process:
# importing npshmex patches concurrent.futures).
TOOL_MODULES = {
    "pyshm": "pyshm", "npshmex": "npshmex", "SharedArray": "SharedArray", "joblib": "joblib", "pasha": "pasha",
}
# Tools whose crash, hang or wrong result makes the exit status non-zero: the subject and the
# baseline. Peers only report.
OWN_TOOLS = ("pyshm", "stdlib")


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


# ---------------------------------------------------------------------------------------------
# Executors and contexts (stdlib, pyshm, npshmex, joblib, pasha).


def worker_pid(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


def start_workers(ex) -> None:
    """Makes sure both workers exist (and have imported what they need) before the data does."""
    pids = set(ex.map(worker_pid, [0.1] * WORKERS))
    expect(len(pids) == WORKERS, f"expected {WORKERS} worker processes, saw {len(pids)}")


def close(obj) -> None:
    for name in ("shutdown", "close"):
        method = getattr(obj, name, None)
        if callable(method):
            method()
            return


# ---------------------------------------------------------------------------------------------
# pyshm


def pyshm_frontend(*names: str) -> str | None:
    """Why the pyshm front-end named by `names` cannot be used here, or None."""
    import pyshm

    missing = [n for n in names if not hasattr(pyshm, n)]
    return f"pyshm {pyshm.__version__} has no {', '.join(missing)} yet" if missing else None


def ignore_kernel(worker_id, index, value) -> None:
    """A ``pyshm.map`` kernel that does nothing: mapping it starts a context's workers."""


# ---------------------------------------------------------------------------------------------
# shared_memory and SharedArray by hand: blocks named with the run's prefix.

_COUNTER = itertools.count()


def own_name(prefix: str) -> str:
    """A name for a block made in this process (a worker's results), unique within the run."""
    return f"{prefix}{os.getpid()}_{next(_COUNTER)}"


def shm_view(shm, shape, dtype) -> np.ndarray:
    return np.ndarray(shape, dtype=dtype, buffer=shm.buf)


def shm_block(name: str, like: np.ndarray):
    """A by-hand SharedMemory block holding a copy of `like`: (block, view)."""
    from multiprocessing.shared_memory import SharedMemory

    shm = SharedMemory(name=name, create=True, size=like.nbytes)
    view = shm_view(shm, like.shape, like.dtype)
    view[...] = like
    return shm, view


def shm_result(name: str, shape, dtype) -> Owned:
    """A block a worker made, attached in the parent; freeing it closes and unlinks it."""
    from multiprocessing.shared_memory import SharedMemory

    shm = SharedMemory(name=name)
    res = Owned(shm_view(shm, shape, dtype))

    def release():
        shm.close()
        shm.unlink()

    res.release = release
    return res


def sa_result(name: str) -> Owned:
    """A SharedArray segment a worker made, attached in the parent and deleted at once."""
    import SharedArray

    a = SharedArray.attach("shm://" + name)
    SharedArray.delete(name)  # the mapping stays until the array goes
    return Owned(a)


# ---------------------------------------------------------------------------------------------
# joblib


def joblib_sends_tasks_by_value() -> None:
    """Makes joblib's pickler (cloudpickle, through loky) send this package's task functions by
    value, code and all, with every batch. That is what it does with functions defined in a
    script's ``__main__``, where these functions lived before the benchmark became a package, so
    joblib's rows keep measuring the same thing (a function sent by reference costs less).
    Called at the start of each joblib row function, in joblib's measuring process only."""
    try:
        import cloudpickle
    except ImportError:  # loky then uses the standard pickler, which sends functions by name
        return
    import frontends

    cloudpickle.register_pickle_by_value(frontends)
