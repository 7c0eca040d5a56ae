"""W3: create and free a shared array, one at a time, in one process.

For 1 KiB and 1 MiB arrays, left empty and filled (every byte written): the clock covers
creating and freeing ``--w3-count`` arrays (10,000 by default, 1,000 with ``--quick``), each freed
before the next one exists, so at most one lives; the time is reported per array. After the
clock a sample array is checked for its size and contents. No executor takes part: this is the
cost of the allocator and of the system calls behind it (``numpy`` is private memory, the
floor). Tools that have no shared-array constructor have no row.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from frontends.harness import WORKERS, Config, Variant, expect
from frontends.tools import shm_view

TITLE = "create and free shared arrays"
SIZES = (("1 KiB", 1024), ("1 MiB", 1 << 20))
COUNT = 10_000  # arrays per timed repeat, unless --w3-count or --quick says otherwise
CASES = [f"create + free one {label} shared array, {fill}" for label, _ in SIZES for fill in ("empty", "filled")]
NOT_APPLICABLE = {
    "stdlib": "no executor in W3; the stdlib's shared arrays are the shared_memory row",
    "npshmex": "no array constructor; it copies arrays into SharedArray segments (see SharedArray)",
    "joblib": "no shared-array constructor; its memmaps are files written by joblib.dump",
}


# ---------------------------------------------------------------------------------------------
# The rows, one function per tool.


def _cases(cfg: Config, tool: str, key: str, variant: str, make_empty, make_full, note="") -> Iterator:
    """One row per size and fill. `make_*(nbytes, i)` create an array and return
    (array, free); the loop frees each array before the next one exists."""
    n = cfg.w3_count
    for label, nbytes in SIZES:
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
                expect(ok, "sample array has the wrong size or contents")

            yield Variant(f"create + free one {label} shared array, {fill}", tool, variant, key, step, check,
                          per=n, unit="array", note=note)


def _nothing() -> None:
    pass


def w3_numpy(cfg: Config) -> Iterator:
    yield from _cases(cfg, "numpy", "numpy", "np.empty / np.full (private memory)",
                      lambda nb, i: (np.empty(nb // 8), _nothing),
                      lambda nb, i: (np.full(nb // 8, 1.0), _nothing))


def w3_shared_memory(cfg: Config) -> Iterator:
    from multiprocessing.shared_memory import SharedMemory

    def make(nbytes, i, fill):
        shm = SharedMemory(name=f"{cfg.prefix}{i}", create=True, size=nbytes)
        a = shm_view(shm, (nbytes // 8,), np.float64)
        if fill:
            a.fill(1.0)

        def free():
            shm.close()
            shm.unlink()

        return a, free

    yield from _cases(cfg, "shared_memory", "shm", "SharedMemory + ndarray, close + unlink",
                      lambda nb, i: make(nb, i, False), lambda nb, i: make(nb, i, True))


def w3_pyshm(cfg: Config) -> Iterator:
    import pyshm

    yield from _cases(cfg, "pyshm", "pyshm", "pyshm.empty / pyshm.full",
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

    yield from _cases(cfg, "SharedArray", "SA", "SharedArray.create, delete",
                      lambda nb, i: make(nb, i, False), lambda nb, i: make(nb, i, True))


def w3_pasha(cfg: Config) -> Iterator:
    import pasha

    ctx = pasha.ProcessContext(num_workers=WORKERS)
    yield from _cases(cfg, "pasha", "pasha", "ProcessContext.alloc (anonymous shared mmap)",
                      lambda nb, i: (ctx.alloc(shape=nb // 8), _nothing),
                      lambda nb, i: (ctx.alloc(shape=nb // 8, fill=1.0), _nothing),
                      note="shared only with processes forked later; no name, not attachable")
