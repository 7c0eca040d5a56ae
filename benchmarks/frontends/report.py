"""The report: the run's header, the tables (Markdown) and the JSON file of every figure.

Every case of a workload gets a table with one line per row (variant) of every tool: its median
per unit (per call, per array, per task, and tasks/s for the latter), the spread of the repeats
and its speed-ups. Ratios are speed-ups measured in this same run: ``time of the other row /
time of this row``, so above 1 means this row is faster. Each case gives them against the stdlib
(``common.stdlib_row``: the executor, else ``shared_memory`` by hand) and against pyshm (its
reference row, else its first), then as a full matrix when more than two rows ran. A second
table per workload gives each tool's measuring process: status, peak RSS, wall time, what it
left in /dev/shm and its warnings. ``benchmarks/plot.py`` draws the JSON as an SVG.

A row of the stdlib or of pyshm (``tools.OWN_TOOLS``) that crashed, hung or gave a wrong result
makes the exit status non-zero; peers only report.
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any

from common import fmt, fmt_ratio, machine_line, stdlib_row
from frontends.harness import WORKERS
from frontends.tools import OWN_TOOLS


def header_lines(args, peers: dict[str, dict], load_start: tuple[float, float, float]) -> list[str]:
    """What the run prints before it starts: date, machine, settings, tools and their versions."""
    return [
        f"# pyshm front-ends against the stdlib and peers, {time.strftime('%Y-%m-%d %H:%M')}",
        f"{machine_line()}; {WORKERS} workers everywhere",
        f"repeats: {args.repeats} after {args.warmup} warm-up; W3: {args.w3_count:,} arrays per repeat"
        f"{' (--quick)' if args.quick else ''}; load average at start: {load_start[0]:.2f}",
        "tools: numpy, stdlib, shared_memory: built in; " + "; ".join(
            f"{t}: {p['version']}" + (f" ({p['detail']})" if p.get("detail") else "") if p["ok"]
            else f"{t}: MISSING ({p['detail']})" for t, p in peers.items()),
    ]


def new_result(args, peers: dict[str, dict]) -> dict[str, Any]:
    """The JSON document of a run, before its workloads run."""
    import numpy as np

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick, "repeats": args.repeats,
        "warmup": args.warmup, "w3_count": args.w3_count, "workers": WORKERS,
        "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "peers": peers, "workloads": {},
    }


def write_json(result: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def fmt_mb(kib: int | None) -> str:
    if kib is None:
        return "-"
    return "none" if kib == 0 else f"{kib / 1024:.0f} MB"


def baselines(rows: list[dict]) -> tuple[dict | None, dict | None]:
    """The case's stdlib row (the executor, else shared_memory by hand) and its pyshm row."""
    ok = [r for r in rows if r["status"] == "ok" and "median" in r]
    pys = next((r for r in ok if r["tool"] == "pyshm" and r.get("ref")), None) or next(
        (r for r in ok if r["tool"] == "pyshm"), None)
    return stdlib_row(rows), pys


def speedup(row: dict, other: dict | None) -> float | None:
    if other is None or row.get("status") != "ok" or "median" not in row:
        return None
    return other["median"] / row["median"]


def tables(result: dict) -> tuple[list[str], bool]:
    """The tables, and whether an own tool (stdlib, pyshm) failed."""
    lines: list[str] = []
    own_failed = False
    status_text = {"unavailable": "not available", "wrong": "WRONG RESULT", "error": "ERROR",
                   "hung": "HUNG", "crashed": "CRASHED"}
    for w, wl in result["workloads"].items():
        lines.append(f"\n## {w}: {wl['title']}\n")
        for case in wl["cases"]:
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
