"""pyshm's Python benchmarks: pyshm against numpy and the standard library, in one run.

    python benchmarks/run.py            (or: cargo xtask bench)

Reports medians of several repeats after a warm-up, and ratios measured in this same run. The
figures worth keeping go to docs/performance.md with the machine and the date.

Core (issue 5):
- ``empty`` of 1 KiB then drop, against ``numpy.empty`` and ``multiprocessing.shared_memory``
  (create + close + unlink, what a by-hand user pays per array).
- ``full`` of 1 MiB then drop, against ``numpy.full`` and a SharedMemory-backed array.
- A pickled handle: its size, dumps + loads in another process, and the syscalls that loads
  makes there (counted with strace when it is installed).
"""

from __future__ import annotations

import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from multiprocessing import shared_memory
from multiprocessing.reduction import ForkingPickler

import numpy as np

import pyshm
from common import fmt, machine_line


def per_call(fn, number: int, repeat: int = 7) -> float:
    """Median seconds per call over `repeat` runs of `number` calls, after a warm-up."""
    fn()
    timer = timeit.Timer(fn)
    timer.timeit(number // 10 or 1)
    return statistics.median(t / number for t in timer.repeat(repeat, number))


def stdlib_empty(nbytes: int):
    def run():
        shm = shared_memory.SharedMemory(create=True, size=nbytes)
        a = np.ndarray((nbytes // 8,), dtype=np.float64, buffer=shm.buf)
        del a
        shm.close()
        shm.unlink()

    return run


def stdlib_full(nbytes: int):
    def run():
        shm = shared_memory.SharedMemory(create=True, size=nbytes)
        a = np.ndarray((nbytes // 8,), dtype=np.float64, buffer=shm.buf)
        a.fill(1.0)
        del a
        shm.close()
        shm.unlink()

    return run


CHILD = r"""
import os, pickle, sys, time
import pyshm
messages = pickle.load(sys.stdin.buffer)
warm = pickle.loads(messages[0])          # opens the pool: syscalls expected here
del warm
os.write(2, b"<<START>>")
t = time.perf_counter()
arrays = [pickle.loads(m) for m in messages[1:]]
elapsed = time.perf_counter() - t
os.write(2, b"<<END>>")
assert all(a.shape == (128,) for a in arrays)
print(elapsed / (len(messages) - 1))
"""


def handle_in_another_process(n: int = 2000) -> tuple[int, float, float, int | None]:
    """(pickled size, dumps seconds/op, loads seconds/op in a child, syscalls of those loads)."""
    arrays = [pyshm.empty(128) for _ in range(n + 1)]
    t = time.perf_counter()
    messages = [ForkingPickler.dumps(a) for a in arrays]
    dumps = (time.perf_counter() - t) / len(arrays)
    size = len(messages[0])
    payload = pickle.dumps([bytes(m) for m in messages])
    cmd = [sys.executable, "-c", CHILD]
    syscalls = None
    if shutil.which("strace"):
        with tempfile.TemporaryDirectory() as tmp:
            trace = os.path.join(tmp, "trace")
            out = subprocess.run(["strace", "-f", "-o", trace] + cmd, input=payload, capture_output=True, check=True)
            lines = open(trace).read().splitlines()
            start = next(i for i, l in enumerate(lines) if "<<START>>" in l)
            end = next(i for i, l in enumerate(lines) if "<<END>>" in l)
            syscalls = sum(1 for l in lines[start + 1 : end] if "resumed>" not in l)
        # strace slows the child: time it again without.
    out = subprocess.run(cmd, input=payload, capture_output=True, check=True)
    loads = float(out.stdout.decode().split()[-1])
    return size, dumps, loads, syscalls


def main() -> int:
    print(f"# pyshm core benchmarks, {time.strftime('%Y-%m-%d')}")
    print(machine_line() + "\n")
    rows = []
    kib = 1024
    t_py = per_call(lambda: pyshm.empty(kib // 8), 200_000)
    t_np = per_call(lambda: np.empty(kib // 8), 200_000)
    t_std = per_call(stdlib_empty(kib), 5_000)
    rows.append(("empty 1 KiB + drop", t_py, t_np, t_std))
    mib = 1 << 20
    f_py = per_call(lambda: pyshm.full(mib // 8, 1.0), 2_000)
    f_np = per_call(lambda: np.full(mib // 8, 1.0), 2_000)
    f_std = per_call(stdlib_full(mib), 500)
    rows.append(("full 1 MiB + drop", f_py, f_np, f_std))
    print("| operation | pyshm | numpy (private memory) | stdlib SharedMemory | pyshm / numpy | stdlib / pyshm |")
    print("|---|---|---|---|---|---|")
    for name, p, n, s in rows:
        print(f"| {name} | {fmt(p)} | {fmt(n)} | {fmt(s)} | {p / n:.2f}x | {s / p:.0f}x |")
    size, dumps, loads, syscalls = handle_in_another_process()
    print()
    print(f"pickled handle of a 1-D array (ForkingPickler): {size} bytes")
    print(f"dumps: {fmt(dumps)} per array; loads in another process: {fmt(loads)} per array")
    if syscalls is None:
        print("syscalls during 2000 loads: not counted (strace not installed)")
    else:
        print(f"syscalls during 2000 loads in the other process (strace): {syscalls}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
