"""The command line: ``python benchmarks/frontends [options]`` runs the workloads and prints the report.

The driver parses the options, probes which peers import (``tools.probe_tools``), runs every
(workload, tool) in a measuring process of its own (``harness.run_child``, which starts this
same file with ``--child``) and prints the tables (``report``). It imports neither pyshm nor any
peer: see ``harness``, point 1. ``WORKLOADS`` below is the one list of the workloads; a tool's
rows for workload W are the function ``w<N>_<tool>`` of W's module, if there is one.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Run as `python benchmarks/frontends`: the interpreter put this directory first on sys.path.
    # Put benchmarks/ there instead, so that this package is `frontends` (its modules import each
    # other by that name, and task functions pickle by it) and `common` is found.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402 - after the path fix above
import tempfile  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Callable, Iterator  # noqa: E402

import frontends  # noqa: E402
from frontends import (  # noqa: E402
    harness, report, tools, w1_roundtrip, w2_write_shared, w3_create_free, w4_return_arrays, w5_row_sums,
)

WORKLOADS: dict[str, ModuleType] = {
    "W1": w1_roundtrip, "W2": w2_write_shared, "W3": w3_create_free, "W4": w4_return_arrays, "W5": w5_row_sums,
}


def tool_function(workload: str, tool: str) -> Callable[[harness.Config], Iterator] | None:
    return getattr(WORKLOADS[workload], f"{workload.lower()}_{tool}", None)


def main() -> int:
    parser = argparse.ArgumentParser(description=frontends.__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 repeats, 1,000 arrays in W3: a smoke run")
    parser.add_argument("--only", help="workloads to run, e.g. W1,W3")
    parser.add_argument("--tools", help="tools to run, e.g. pyshm,stdlib (default: all)")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--repeats", type=int, help="timed repeats (default 5, quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up iterations (default 1)")
    parser.add_argument("--w3-count", type=int, help="arrays per W3 repeat (default 10,000, quick 1,000)")
    parser.add_argument("--timeout", type=float, help="seconds per workload and tool (default 900, quick 300)")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "TOOL"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.w3_count is None:
        args.w3_count = 1_000 if args.quick else w3_create_free.COUNT
    if args.timeout is None:
        args.timeout = 300.0 if args.quick else 900.0
    if args.child:
        return harness.child_main(args, tool_function(*args.child))

    workloads = [w.strip().upper() for w in args.only.split(",")] if args.only else list(WORKLOADS)
    selected = [t.strip() for t in args.tools.split(",")] if args.tools else list(tools.TOOLS)
    for w in workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w}; the workloads are {', '.join(WORKLOADS)}")
    for t in selected:
        if t not in tools.TOOLS:
            parser.error(f"unknown tool {t}; the tools are {', '.join(tools.TOOLS)}")

    load_start = os.getloadavg()
    peers = tools.probe_tools(sys.executable)
    print("\n".join(report.header_lines(args, peers, load_start)))
    sys.stdout.flush()

    result = report.new_result(args, peers)
    with tempfile.TemporaryDirectory(prefix="pyshm-frontends-") as tmpdir:
        for w in workloads:
            module = WORKLOADS[w]
            runs: dict[str, dict] = {}
            result["workloads"][w] = {"title": module.TITLE, "cases": module.CASES, "runs": runs}
            for tool in selected:
                if tool in module.NOT_APPLICABLE or tool_function(w, tool) is None:
                    runs[tool] = {"status": "n/a", "detail": module.NOT_APPLICABLE.get(tool, "no such row"),
                                  "rows": []}
                    continue
                if tool in tools.TOOL_MODULES and not peers[tool]["ok"]:
                    runs[tool] = {"status": "missing", "detail": peers[tool]["detail"], "rows": []}
                    continue
                print(f"==> {w} {tool}", file=sys.stderr, flush=True)
                run = runs[tool] = harness.run_child(w, tool, args, tmpdir)
                print(f"    {run['status']} in {run['wall_s']:.1f} s"
                      + (f": {run['detail']}" if run.get("detail") else "")
                      + (f"; left in /dev/shm: {len(run['leaked'])}" if run.get("leaked") else ""),
                      file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    result["load_average"] = {"start": load_start, "end": load_end}

    lines, own_failed = report.tables(result)
    print("\n".join(lines))
    print(f"\nload average at the end: {load_end[0]:.2f} (at the start: {load_start[0]:.2f})")
    if args.json:
        report.write_json(result, args.json)
        print(f"figures written to {args.json}")
    if own_failed:
        print("\nFAILED: a stdlib or pyshm row crashed, hung or gave a wrong result (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
