"""Helpers shared by the benchmark scripts: number formatting, the stdlib baseline row, the machine.

Used by ``run.py`` (which imports pyshm), ``plot.py`` (which imports no third-party module) and
the ``frontends`` package (whose driver process must import neither pyshm nor any peer, see
``frontends/harness.py``). So this module imports nothing beyond the standard library at import
time; ``machine_line`` imports numpy only when called.
"""

from __future__ import annotations

import os
import platform


def fmt(seconds: float) -> str:
    """A duration with a unit that keeps three or four significant digits."""
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(r: float | None) -> str:
    """A speed-up such as ``12.3x``; ``-`` when there is none."""
    if r is None:
        return "-"
    if r >= 100:
        return f"{r:.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def stdlib_row(rows: list[dict]) -> dict | None:
    """A case's stdlib row in the front-end figures: the executor, else ``shared_memory`` by hand.
    The tables (``frontends/report.py``) and the chart (``plot.py``) both compare against it."""
    ok = [r for r in rows if r.get("status") == "ok" and "median" in r]
    return next((r for tool in ("stdlib", "shared_memory") for r in ok if r["tool"] == tool), None)


def machine_line() -> str:
    """``machine: x86_64, 2 CPUs, Linux ..., Python ..., numpy ...``."""
    import numpy as np

    return (f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}, numpy {np.__version__}")
