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

Each pyshm figure is measured with both segment backends: ``shm`` (files in /dev/shm, pages
reserved with ``fallocate`` as blocks are handed out) and ``memfd`` (segment 0 a file, the rest
memfds, nothing reserved ahead).

Held bytes are the allocated blocks (``st_blocks``) of the files in /dev/shm, plus, for the
memfd backend, of the memfds this process holds (``/proc/self/fd``, one count per inode); the
same for the stdlib. pyshm's own ``stats().held`` is shown beside them.
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


def memfds_held() -> int:
    """Bytes allocated to the pyshm memfds this process holds (each inode once)."""
    seen, total = set(), 0
    for fd in os.listdir("/proc/self/fd"):
        path = os.path.join("/proc/self/fd", fd)
        try:
            if not os.readlink(path).startswith("/memfd:pyshm"):
                continue
            st = os.stat(path)
        except OSError:
            continue
        if st.st_ino not in seen:
            seen.add(st.st_ino)
            total += st.st_blocks * 512
    return total


def pool_held(pool: pyshm.Pool) -> int:
    held = files_held("pyshm-" + pool.name)
    return held + memfds_held() if pool.backend == "memfd" else held


def mix_pyshm(backend: str) -> dict:
    with pyshm.Pool(backend=backend) as pool:
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


def big_pyshm(backend: str, repeat: int) -> dict:
    cold, warm, filled, ratio = [], [], [], 0.0
    for _ in range(repeat):
        with pyshm.Pool(backend=backend) as pool:
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
        "mix": {"shm": mix_pyshm("shm"), "memfd": mix_pyshm("memfd"), "stdlib": mix_stdlib()},
        "big": {
            "shm": big_pyshm("shm", args.repeat),
            "memfd": big_pyshm("memfd", args.repeat),
            "stdlib": big_stdlib(args.repeat),
        },
    }
    m, b = figures["mix"], figures["big"]
    s, bs = m["stdlib"], b["stdlib"]
    pools = ("shm", "memfd")
    print("\n| | pyshm, /dev/shm backend | pyshm, memfd backend | stdlib SharedMemory | target |")
    print("|---|---|---|---|---|")

    def row(what: str, cells: list[str], stdlib: str, target: str) -> None:
        print(f"| {what} | {' | '.join(cells)} | {stdlib} | {target} |")

    row(f"the mix: held / live ({mb(s['live'])} live)",
        [f"{m[k]['held'] / m[k]['live']:.3f}x ({mb(m[k]['held'])}; stats().held {mb(m[k]['stats_held'])})"
         for k in pools], f"{s['held'] / s['live']:.3f}x", "<= 1.05x")
    row("one 600 MB array: held / live", [f"{b[k]['held_ratio']:.4f}x" for k in pools],
        f"{bs['held_ratio']:.4f}x", "<= 1.01x")
    row("one 600 MB array: creation (fresh pool)",
        [f"{b[k]['create_cold'] * 1e3:.2f} ms ({b[k]['create_cold'] / bs['create']:.2f}x the stdlib)" for k in pools],
        f"{bs['create'] * 1e3:.2f} ms", "within 2x of the stdlib")
    row("one 600 MB array: creation and writing every page",
        [f"{b[k]['create_fill'] * 1e3:.1f} ms" for k in pools], f"{bs['create_fill'] * 1e3:.1f} ms", "")
    row("one 600 MB array: creation (warm: after one was freed)",
        [f"{b[k]['create_warm'] * 1e3:.2f} ms" for k in pools], f"{bs['create'] * 1e3:.2f} ms (always fresh)", "")
    row("the mix deleted, 1 s later, no call",
        [f"{mb(m[k]['after_1s'])} (warm {mb(m[k]['warm_after_1s'])}, keep {mb(m[k]['keep'])})" for k in pools],
        "0 (unlinked)", "the warm reserve")
    row("the mix deleted, after trim()", [mb(m[k]["after_trim"]) for k in pools], "0", "<= 4 MiB")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
