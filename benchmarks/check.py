"""A smoke check of the benchmark scripts that runs no benchmark: ``python benchmarks/check.py``.

1. Every ``.py`` file under benchmarks/ compiles (``py_compile``, into a temporary directory).
2. Every module imports, each in a fresh interpreter, without side effects: it prints nothing,
   starts no thread and no process, and, except ``run`` (the core benchmarks, which measure
   pyshm itself), imports neither pyshm nor a peer (npshmex, SharedArray, joblib, pasha). The
   front-end driver must not: see ``frontends/harness.py``, point 1. ``run`` is skipped when
   pyshm is not installed.
3. The command lines parse (``--help`` of ``frontends`` and ``plot.py``), and the report and the
   chart render a made-up result, so a broken table or chart shows without a run.

Exit status 0 when every check passes. Needs numpy (the front-end modules import it); pytest is
not needed. Takes a few seconds.
"""

from __future__ import annotations

import json
import os
import py_compile
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
FORBIDDEN = ("pyshm", "npshmex", "SharedArray", "joblib", "pasha")
# Modules that import pyshm by design.
MAY_IMPORT_PYSHM = ("run",)

PROBE = r"""
import importlib, json, os, sys, threading
sys.path.insert(0, {bench!r})
importlib.import_module({name!r})
try:
    with open(f"/proc/self/task/{{threading.get_native_id()}}/children") as f:
        children = f.read().split()
except OSError:
    children = []
print("<<PROBE>>" + json.dumps({{
    "threads": threading.active_count(),
    "children": children,
    "imported": sorted(m for m in {forbidden!r} if m in sys.modules),
}}))
"""


def modules() -> list[str]:
    names = []
    for entry in sorted(os.listdir(BENCH)):
        if entry.endswith(".py") and entry != "check.py":
            names.append(entry[:-3])
    package = os.path.join(BENCH, "frontends")
    names.append("frontends")
    names += [f"frontends.{e[:-3]}" for e in sorted(os.listdir(package)) if e.endswith(".py") and e != "__init__.py"]
    return names


def compile_all(failures: list[str]) -> int:
    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        for root, dirs, files in os.walk(BENCH):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(root, f)
                    try:
                        py_compile.compile(path, cfile=os.path.join(tmp, f"{count}.pyc"), doraise=True)
                    except py_compile.PyCompileError as e:
                        failures.append(f"compile {os.path.relpath(path, BENCH)}: {e.msg}")
                    count += 1
    return count


def import_clean(name: str, failures: list[str]) -> str:
    code = PROBE.format(bench=BENCH, name=name, forbidden=FORBIDDEN)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        if name in MAY_IMPORT_PYSHM and "No module named 'pyshm'" in last:
            return "skipped (pyshm not installed)"
        failures.append(f"import {name}: {last}")
        return "FAILED"
    printed, _, probe = out.stdout.rpartition("<<PROBE>>")
    found = json.loads(probe)
    problems = []
    if printed:
        problems.append(f"printed {printed[:80]!r}")
    if found["threads"] != 1:
        problems.append(f"{found['threads'] - 1} threads running")
    if found["children"]:
        problems.append(f"started processes {found['children']}")
    imported = [m for m in found["imported"] if not (m == "pyshm" and name in MAY_IMPORT_PYSHM)]
    if imported:
        problems.append(f"imported {', '.join(imported)}")
    for p in problems:
        failures.append(f"import {name}: {p}")
    return "FAILED" if problems else "ok"


def made_up_result() -> dict:
    """A result with an ok stdlib row, two pyshm rows, a wrong peer row and a missing peer."""
    def row(tool, key, median, status="ok", ref=False):
        r = {"case": "c1", "tool": tool, "variant": f"{tool} variant", "key": key, "ref": ref, "per": 1,
             "unit": "call", "note": "", "times": [median, median * 1.1] if median else [], "status": status,
             "detail": "" if status == "ok" else "x[i] != i somewhere"}
        if median:
            r["median"] = median
        return r

    runs = {
        "stdlib": {"status": "ok", "rows": [row("stdlib", "stdlib", 1.0)], "wall_s": 2.0, "leaked": [],
                   "rss_self_kib": 2048, "rss_children_kib": 4096},
        "pyshm": {"status": "ok", "rows": [row("pyshm", "pyshm/core", 0.1), row("pyshm", "pyshm", 0.05, ref=True)],
                  "wall_s": 1.0, "leaked": [], "rss_self_kib": 2048, "rss_children_kib": 0},
        "pasha": {"status": "ok", "rows": [row("pasha", "pasha", 0.2, status="wrong")], "wall_s": 1.0, "leaked": []},
        "npshmex": {"status": "missing", "detail": "ModuleNotFoundError", "rows": []},
    }
    return {"date": "2000-01-01 00:00:00", "quick": True, "repeats": 2, "warmup": 1, "w3_count": 1000,
            "workers": 2, "machine": {}, "peers": {}, "workloads": {"W9": {"title": "made up", "cases": ["c1"],
                                                                          "runs": runs}}}


def render(failures: list[str]) -> None:
    sys.path.insert(0, BENCH)
    import plot
    from frontends import report

    lines, own_failed = report.tables(made_up_result())
    text = "\n".join(lines)
    for want in ("### c1", "| pyshm | pyshm | pyshm variant | 50.00 ms |", "WRONG RESULT", "speed-up matrix"):
        if want not in text:
            failures.append(f"report: no {want!r} in the tables")
    if own_failed:
        failures.append("report: a peer's wrong result was counted as an own tool's failure")
    svg = plot.render(made_up_result())
    if "20.0x" not in svg or "WRONG RESULT" not in svg:
        failures.append("plot: the chart lacks the pyshm bar (20.0x) or the wrong row's status")


def main() -> int:
    failures: list[str] = []
    print(f"compiled {compile_all(failures)} files")
    for name in modules():
        print(f"import {name}: {import_clean(name, failures)}")
    for cmd in ([os.path.join(BENCH, "frontends"), "--help"], [os.path.join(BENCH, "plot.py"), "--help"]):
        out = subprocess.run([sys.executable] + cmd, capture_output=True, text=True, timeout=120)
        if out.returncode != 0 or "usage:" not in out.stdout:
            failures.append(f"{' '.join(os.path.relpath(c, BENCH) for c in cmd)}: exit {out.returncode}")
    render(failures)
    for f in failures:
        print(f"FAILED: {f}")
    print("benchmarks smoke check: " + ("ok" if not failures else f"{len(failures)} failures"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
