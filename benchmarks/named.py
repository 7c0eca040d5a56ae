"""Named arrays (issue 16, item 5): create, list, attach and delete at N names.

    PYSHM_NAMED_POOL=<a fresh name> python benchmarks/named.py 255 65536

For each N: creates N one-element ``uint8`` named arrays (``pyshm.create``), lists them
(``pyshm.list()``), attaches each by name and deletes them all; per-call times are the best of 3
rounds. Prints what a fresh named pool holds, what it holds with N names, and after.
Runs against any build (a build without ``PoolStats.name_table`` prints ``None`` for it).
Deletes every name it made.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import pyshm
from pyshm import _named


def run(pool, n: int, rounds: int = 3) -> None:
    best: dict = {}
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(n):
            pyshm.create(f"b{i}", 1, np.uint8)
        create = (time.perf_counter() - t) / n
        t = time.perf_counter()
        listed = pyshm.list()
        list_s = time.perf_counter() - t
        assert len(listed) == n
        t = time.perf_counter()
        for i in range(n):
            pyshm.attach(f"b{i}")
        attach = (time.perf_counter() - t) / n
        held = pool.stats().held
        t = time.perf_counter()
        for i in range(n):
            pyshm.delete(f"b{i}")
        delete = (time.perf_counter() - t) / n
        for k, v in dict(create=create, list=list_s, attach=attach, delete=delete, held=held).items():
            best[k] = min(best.get(k, float("inf")), v)
    print(
        f"N={n}: create {best['create'] * 1e6:.1f} us, attach {best['attach'] * 1e6:.1f} us, "
        f"delete {best['delete'] * 1e6:.1f} us, list {best['list'] * 1e3:.1f} ms, "
        f"held with N names {best['held']}"
    )


def main() -> None:
    pool = _named.named_pool()
    fresh = pool.stats()
    print("fresh named pool: held", fresh.held, "name_table", getattr(fresh, "name_table", None))
    for n in map(int, sys.argv[1:] or ["255"]):
        run(pool, n)
    print("after: held", pool.stats().held)


if __name__ == "__main__":
    main()
