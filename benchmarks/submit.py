"""Single submits (issue 16, item 10): ``pyshm.ProcessPoolExecutor`` against the standard
library's executor, in one run.

    python benchmarks/submit.py [--rounds 7] [--methods fork,spawn,forkserver] [--tasks 2000]

1. Tiny tasks: ``ex.submit(add_one, i).result()`` one at a time, ``add_one`` a top-level
   function of this script (the common case: by reference, see pyshm._mainref) and a lambda
   (by value). Each round starts a stdlib executor and a pyshm one (2 workers each, warmed up)
   and times ``--tasks`` calls on each, the two alternating; the report gives the median rate
   over the rounds and the median of the per-round ratios, and the median CPU time per call
   (the caller's threads plus the workers' main threads, from ``/proc/<pid>/schedstat``),
   which a loaded machine disturbs much less than the rate.
2. ``submit(add_one, x).result()`` with a plain 160 MB ``x`` against bare ``add_one(x)`` and
   against ``pyshm.copy(x)`` (the copy into the pool that a plain input costs), alternating, with
   medians over the rounds.

Results are checked; nothing is left in /dev/shm by a normal run.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import statistics
import time

import numpy as np

import pyshm
from common import fmt, machine_line


def add_one(x):
    return x + 1


def oncpu(pids) -> float:
    """Seconds the main threads of ``pids`` have run (``/proc/<pid>/schedstat``, ns)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def rate(ex, fn, n: int) -> tuple[float, float]:
    """Calls per second, and CPU seconds per call (this process's threads plus the workers)."""
    for i in range(20):
        assert ex.submit(fn, i).result() == i + 1
    pids = list(ex._processes)
    c, w = time.process_time(), oncpu(pids)
    t = time.perf_counter()
    for i in range(n):
        ex.submit(fn, i).result()
    elapsed = time.perf_counter() - t
    cpu = time.process_time() - c + oncpu(pids) - w
    return n / elapsed, cpu / n


def tiny(method: str, rounds: int, n: int) -> None:
    ctx = mp.get_context(method)
    by_value = lambda x: x + 1  # noqa: E731 - a lambda on purpose: it travels by value
    for label, fn in (("add_one (top level)", add_one), ("a lambda", by_value)):
        std, shm, ratios, std_cpu, shm_cpu = [], [], [], [], []
        for _ in range(rounds):
            with cf.ProcessPoolExecutor(2, mp_context=ctx) as a, pyshm.ProcessPoolExecutor(2, mp_context=ctx) as b:
                # The stdlib cannot pickle a lambda: its row times add_one.
                s, sc = rate(a, add_one, n)
                p, pc = rate(b, fn, n)
            std.append(s)
            shm.append(p)
            ratios.append(p / s)
            std_cpu.append(sc)
            shm_cpu.append(pc)
        med = statistics.median
        print(
            f"| {method} | {label} | {med(std) / 1e3:.2f}k/s | {med(shm) / 1e3:.2f}k/s "
            f"| {med(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}) "
            f"| {fmt(med(std_cpu))} | {fmt(med(shm_cpu))} | {med(std_cpu) / med(shm_cpu):.2f}x |"
        )


def big(rounds: int) -> None:
    x = np.ones(int(2e7))
    with pyshm.ProcessPoolExecutor(2) as ex:
        ex.submit(add_one, x).result()
        bare, sub, copy, ratios = [], [], [], []
        for _ in range(rounds):
            t = time.perf_counter()
            r = add_one(x)
            bare.append(time.perf_counter() - t)
            del r
            t = time.perf_counter()
            r = ex.submit(add_one, x).result()
            sub.append(time.perf_counter() - t)
            assert r[0] == 2.0 and r[-1] == 2.0
            del r
            t = time.perf_counter()
            c = pyshm.copy(x)
            copy.append(time.perf_counter() - t)
            del c
            ratios.append(sub[-1] / bare[-1])
    print(
        f"| 160 MB plain x | bare {fmt(statistics.median(bare))} | submit {fmt(statistics.median(sub))} "
        f"| {statistics.median(ratios):.2f}x bare (rounds {min(ratios):.2f}-{max(ratios):.2f}) "
        f"| copy into the pool {fmt(statistics.median(copy))} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--methods", default="fork,spawn,forkserver")
    parser.add_argument("--skip-big", action="store_true")
    args = parser.parse_args()
    print(machine_line())
    print("| start method | function | stdlib | pyshm | pyshm / stdlib rate, median | CPU per call, stdlib "
          "| pyshm | stdlib / pyshm CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        tiny(method, args.rounds, args.tasks)
    if not args.skip_big:
        big(args.rounds * 3)


if __name__ == "__main__":
    main()
