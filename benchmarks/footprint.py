"""What pyshm costs /dev/shm, beside the standard library's ``SharedMemory`` (issue 12's Targets).

    .venv/bin/python benchmarks/footprint.py [--json target/bench/footprint.json]

Run by ``cargo xtask bench``. Every figure is measured in this run, pyshm and the stdlib one
after the other (never both holding memory at once):

- the mix: 1,000 x 1 KiB, 50 x 1 MiB, 33 MB, 160 MB and 600 MB arrays, every page written; the
  bytes held in /dev/shm over the bytes of the arrays (held / live);
- one 600 MB array: held / live, and the time to create it (``pyshm.empty`` in a fresh pool,
  then again once its memory is warm) against ``SharedMemory(create=True)`` plus ``np.ndarray``;
- after deleting every array of the mix: what the pool holds after 1 s with no call (the warm
  reserve, ``keep``), and after ``trim()``.

Held bytes are the allocated blocks of the files in /dev/shm (``st_blocks``), for both; pyshm's
own ``stats().held`` is shown beside them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from multiprocessing import shared_memory

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_line  # noqa: E402

import pyshm  # noqa: E402

MIX = [(1024, 1000), (1 << 20, 50), (33_000_000, 1), (160_000_000, 1), (600_000_000, 1)]
BIG = 600_000_000
MIB = 1 << 20


def files_held(prefix: str) -> int:
    """Bytes allocated to the /dev/shm files whose names start with ``prefix``."""
    total = 0
    for name in os.listdir("/dev/shm"):
        if name.startswith(prefix):
            try:
                total += os.stat(os.path.join("/dev/shm", name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def pool_held(pool: pyshm.Pool) -> int:
    return files_held("pyshm-" + pool.name)


def mix_pyshm() -> dict:
    with pyshm.Pool() as pool:
        arrays = []
        for size, count in MIX:
            for _ in range(count):
                a = pool.empty(size, dtype=np.uint8)
                a.fill(1)
                arrays.append(a)
        live = sum(a.nbytes for a in arrays)
        held, stats_held = pool_held(pool), pool.stats().held
        del arrays, a
        gc.collect()
        time.sleep(1.0)
        after_1s = pool_held(pool)
        warm = pool.stats().warm
        pool.trim()
        after_trim = pool_held(pool)
        return {
            "live": live,
            "held": held,
            "stats_held": stats_held,
            "after_1s": after_1s,
            "warm_after_1s": warm,
            "after_trim": after_trim,
            "keep": pool.stats().keep,
        }


def mix_stdlib() -> dict:
    blocks = []
    for size, count in MIX:
        for _ in range(count):
            shm = shared_memory.SharedMemory(create=True, size=size)
            a = np.ndarray((size,), np.uint8, buffer=shm.buf)
            a.fill(1)
            blocks.append((shm, a))
    live = sum(a.nbytes for _, a in blocks)
    held = sum(os.stat("/dev/shm/" + shm.name).st_blocks * 512 for shm, _ in blocks)
    for shm, a in blocks:
        del a
        shm.close()
        shm.unlink()
    return {"live": live, "held": held, "after_1s": 0, "after_trim": 0}


def big_pyshm(repeat: int) -> dict:
    cold, warm, filled, ratio = [], [], [], 0.0
    for _ in range(repeat):
        with pyshm.Pool() as pool:
            t = time.perf_counter()
            a = pool.empty(BIG, dtype=np.uint8)
            cold.append(time.perf_counter() - t)
            a.fill(1)
            filled.append(time.perf_counter() - t)
            ratio = pool_held(pool) / a.nbytes
            del a
            t = time.perf_counter()
            a = pool.empty(BIG, dtype=np.uint8)
            warm.append(time.perf_counter() - t)
            del a
    return {
        "held_ratio": ratio,
        "create_cold": statistics.median(cold),
        "create_warm": statistics.median(warm),
        "create_fill": statistics.median(filled),
    }


def big_stdlib(repeat: int) -> dict:
    times, filled, ratio = [], [], 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        shm = shared_memory.SharedMemory(create=True, size=BIG)
        a = np.ndarray((BIG,), np.uint8, buffer=shm.buf)
        times.append(time.perf_counter() - t)
        a.fill(1)
        filled.append(time.perf_counter() - t)
        ratio = os.stat("/dev/shm/" + shm.name).st_blocks * 512 / BIG
        del a
        shm.close()
        shm.unlink()
    return {"held_ratio": ratio, "create": statistics.median(times), "create_fill": statistics.median(filled)}


def mb(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the 600 MB creation (median)")
    args = ap.parse_args()
    print(machine_line())
    figures = {
        "mix": {"pyshm": mix_pyshm(), "stdlib": mix_stdlib()},
        "big": {"pyshm": big_pyshm(args.repeat), "stdlib": big_stdlib(args.repeat)},
    }
    m, b = figures["mix"], figures["big"]
    p, s = m["pyshm"], m["stdlib"]
    print("\n| | pyshm | stdlib SharedMemory | target |")
    print("|---|---|---|---|")
    print(f"| the mix: held / live ({mb(p['live'])} live) | {p['held'] / p['live']:.3f}x "
          f"({mb(p['held'])}; stats().held {mb(p['stats_held'])}) | {s['held'] / s['live']:.3f}x | <= 1.05x |")
    print(f"| one 600 MB array: held / live | {b['pyshm']['held_ratio']:.4f}x | {b['stdlib']['held_ratio']:.4f}x "
          "| <= 1.01x |")
    print(f"| one 600 MB array: creation (fresh pool) | {b['pyshm']['create_cold'] * 1e3:.1f} ms "
          f"| {b['stdlib']['create'] * 1e3:.1f} ms | within 2x of the stdlib |")
    print(f"| one 600 MB array: creation and writing every page | {b['pyshm']['create_fill'] * 1e3:.1f} ms "
          f"| {b['stdlib']['create_fill'] * 1e3:.1f} ms | |")
    print(f"| one 600 MB array: creation (warm: after one was freed) | {b['pyshm']['create_warm'] * 1e3:.2f} ms "
          f"| {b['stdlib']['create'] * 1e3:.1f} ms (always fresh) | |")
    print(f"| the mix deleted, 1 s later, no call | {mb(p['after_1s'])} (warm {mb(p['warm_after_1s'])}, "
          f"keep {mb(p['keep'])}) | 0 (unlinked) | the warm reserve |")
    print(f"| the mix deleted, after trim() | {mb(p['after_trim'])} | 0 | <= 4 MiB |")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
