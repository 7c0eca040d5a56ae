"""Draws the figures of benchmarks/frontends as an SVG bar chart, with no third-party module.

    python benchmarks/frontends --json frontends.json
    python benchmarks/plot.py frontends.json                 (writes docs/img/frontends.svg)
    python benchmarks/plot.py frontends.json -o out.svg

One bar per row of every workload's cases: its speed-up against the stdlib row of the same case
(the executor, else ``multiprocessing.shared_memory`` by hand), on a log scale around 1x. Bars to
the right are faster than the stdlib, bars to the left slower. Rows that did not run (a missing
peer, a front-end not written yet) or failed (wrong result, crash, hang) are listed with their
status and no bar. The stdlib row is ``common.stdlib_row``, as in the tables, so the chart and the
tables agree.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from html import escape
from pathlib import Path

from common import fmt_ratio, stdlib_row

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "img" / "frontends.svg"

COLORS = {
    "numpy": "#9e9e9e",
    "stdlib": "#4e79a7",
    "shared_memory": "#76b7b2",
    "pyshm": "#e15759",
    "npshmex": "#f28e2b",
    "SharedArray": "#edc948",
    "joblib": "#59a14f",
    "pasha": "#b07aa1",
}
STATUS = {"unavailable": "not available", "wrong": "WRONG RESULT", "error": "error", "hung": "hung",
          "crashed": "crashed"}

WIDTH = 1060
LABEL_X = 16  # left edge of the row labels
VALUE_X = 560  # right edge of the value column
PLOT_X0, PLOT_X1 = 580, WIDTH - 24  # the bars' axis
ROW_H = 18
BAR_H = 12


def collect(data: dict) -> list[tuple[str, list[dict]]]:
    """[(heading, [{label, tool, speedup | None, status}])] in the order of the tables."""
    groups = []
    for w, wl in data["workloads"].items():
        for case in wl.get("cases", []):
            rows = [r for run in wl["runs"].values() for r in run.get("rows", []) if r.get("case") == case]
            if not rows:
                continue
            base = stdlib_row(rows)
            items = []
            for r in rows:
                ok = r.get("status") == "ok" and "median" in r and base is not None
                items.append({
                    "label": f"{r['tool']}: {r['variant']}",
                    "tool": r["tool"],
                    "speedup": base["median"] / r["median"] if ok else None,
                    "status": "ok" if ok else ("no stdlib row" if base is None and r.get("status") == "ok"
                                               else STATUS.get(r.get("status"), r.get("status", "?"))),
                })
            groups.append((f"{w}: {case}", items))
    return groups


def clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def render(data: dict) -> str:
    groups = collect(data)
    values = [i["speedup"] for _, items in groups for i in items if i["speedup"]]
    lo = math.floor(math.log10(min(values + [1.0])))
    hi = math.ceil(math.log10(max(values + [1.0])))
    if lo == hi:
        hi += 1

    def x_of(v: float) -> float:
        return PLOT_X0 + (math.log10(v) - lo) / (hi - lo) * (PLOT_X1 - PLOT_X0)

    machine = data.get("machine", {})
    subtitle = (f"{data.get('date', '?')}; {machine.get('cpus', '?')} CPUs {machine.get('arch', '')}, "
                f"Linux {machine.get('kernel', '?')}, Python {machine.get('python', '?')}, "
                f"numpy {machine.get('numpy', '?')}; {data.get('workers', 2)} workers; median of "
                f"{data.get('repeats', '?')} repeats{' (--quick)' if data.get('quick') else ''}")
    out: list[str] = []
    y = 78
    body: list[str] = []
    for heading, items in groups:
        y += 10
        body.append(f'<text x="{LABEL_X}" y="{y + 12}" class="head">{escape(clip(heading, 150))}</text>')
        y += ROW_H + 2
        top = y
        for item in items:
            color = COLORS.get(item["tool"], "#555")
            body.append(f'<text x="{LABEL_X + 10}" y="{y + 13}" class="label">{escape(clip(item["label"], 84))}</text>')
            if item["speedup"] is None:
                body.append(f'<text x="{VALUE_X}" y="{y + 13}" class="status">{escape(item["status"])}</text>')
            else:
                v = item["speedup"]
                x1, xv = x_of(1.0), x_of(v)
                left, width = min(x1, xv), max(abs(xv - x1), 1.0)
                body.append(f'<rect x="{left:.1f}" y="{y + (ROW_H - BAR_H) / 2 + 1:.1f}" width="{width:.1f}" '
                            f'height="{BAR_H}" fill="{color}">'
                            f'<title>{escape(item["label"])}: {fmt_ratio(v)}</title></rect>')
                body.append(f'<text x="{VALUE_X}" y="{y + 13}" class="value">{fmt_ratio(v)}</text>')
            y += ROW_H
        # the 1x line over the group's rows
        body.append(f'<line x1="{x_of(1.0):.1f}" y1="{top - 2}" x2="{x_of(1.0):.1f}" y2="{y + 2}" class="one"/>')
    height = y + 56

    out.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
               f'viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">')
    out.append("<style>"
               ".title{font-size:17px;font-weight:bold}.sub{font-size:11px;fill:#555}"
               ".head{font-size:12px;font-weight:bold}.label{font-size:11px}"
               ".value{font-size:11px;text-anchor:end}.status{font-size:11px;text-anchor:end;fill:#b00}"
               ".tick{font-size:10px;fill:#555;text-anchor:middle}.grid{stroke:#ddd;stroke-width:1}"
               ".one{stroke:#222;stroke-width:1.2}.legend{font-size:11px}"
               "</style>")
    out.append(f'<rect width="{WIDTH}" height="{height}" fill="white"/>')
    out.append(f'<text x="{LABEL_X}" y="24" class="title">pyshm front-ends and peers: speed-up against the '
               f'stdlib (log scale, right is faster)</text>')
    out.append(f'<text x="{LABEL_X}" y="42" class="sub">{escape(subtitle)}</text>')
    lx = LABEL_X
    for tool, color in COLORS.items():
        out.append(f'<rect x="{lx}" y="54" width="11" height="11" fill="{color}"/>')
        out.append(f'<text x="{lx + 15}" y="64" class="legend">{escape(tool)}</text>')
        lx += 24 + 7 * len(tool)
    # grid lines and ticks at powers of ten, at the top and the bottom
    for e in range(lo, hi + 1):
        x = x_of(10.0**e)
        out.append(f'<line x1="{x:.1f}" y1="80" x2="{x:.1f}" y2="{y + 4}" class="grid"/>')
        label = f"{10**e}x" if e >= 0 else f"{10.0**e:g}x"
        out.append(f'<text x="{x:.1f}" y="{y + 18}" class="tick">{label}</text>')
        out.append(f'<text x="{x:.1f}" y="76" class="tick">{label}</text>')
    out += body
    out.append(f'<text x="{LABEL_X}" y="{y + 40}" class="sub">Speed-up = time of the stdlib row of the case / '
               f'time of the row, measured in one run. Generated by benchmarks/plot.py from '
               f'benchmarks/frontends --json.</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="the file written by benchmarks/frontends --json")
    parser.add_argument("-o", "--out", default=str(DEFAULT_OUT), help=f"the SVG to write (default {DEFAULT_OUT})")
    args = parser.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    svg = render(data)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(svg)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
