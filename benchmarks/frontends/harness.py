"""The harness: times the rows of one (workload, tool) in a process of its own, and watches it.

Two halves, one per process:

- The measuring process (``child_main``: ``python benchmarks/frontends --child W TOOL ...``)
  runs one tool's function for one workload, which yields ``Variant`` rows (or ``Unavailable``
  ones), times each with ``measure`` and writes every row to a JSON file as soon as it is done,
  so that a crash or a hang keeps the rows before it.
- The driver (``run_child``) starts that process, kills it at its timeout, and afterwards
  reports and cleans what it left: processes in its session, entries in /dev/shm.

How it measures:

1. Each (workload, tool) runs in a fresh process of its own, under a timeout, in a session of
   its own so that a hang is killed whole. Tools must not meet in one process: importing
   npshmex replaces ``concurrent.futures``' Future class process-wide, pyshm installs its pool,
   and each tool's peak memory is read per process (point 4). So the driver imports neither
   pyshm nor any peer (``tools.probe_tools`` probes them in throwaway processes).
2. Executors and contexts are made, and their workers started, before the data exists and
   outside the clock; warm-up iterations run before the timed ones. A table gives the median.
3. Every result is checked after the clock stops (W1: ``x + 1`` everywhere; W2: ``x[i] == i``;
   W3: a sample array; W4: the total and each task's sum, so results swapped between tasks
   show; W5: every sum). Between W1's calls x changes in place (all 1, then all 2, ...), so a
   tool that served a stale copy of its input shows too. Outputs written in place (W2, and the
   kernel maps of W5) are reset between calls. A wrong result is reported and kept out of the
   ratios.
4. Peak memory is ``ru_maxrss`` from ``resource.getrusage``: of the measuring process (one per
   workload and tool, all its variants), and of its largest reaped child process (executor
   workers). Shared pages count in every process that touched them, so these do not add up.
5. For pyshm's rows, the pool's array count is read before and after each row (after a garbage
   collection): a row that ends holding more arrays than it started with is flagged.
   ``/dev/shm`` is listed before and after each run; entries that the run left and that are
   its own (its name prefix, its pyshm pool, ``npshmex_*``, its joblib folder and semaphores)
   are reported and removed. New entries that are not attributable (another program on the
   machine) are reported and left alone. Processes left in the run's session are reported and
   killed.

This module imports only the standard library (pyshm only inside ``_pool_snapshot``
and ``child_main``, which run in pyshm's measuring process).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator

WORKERS = 2
SHM = "/dev/shm"
# `python PACKAGE_DIR --child ...` runs one measuring process (see __main__.py).
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------------
# What a tool yields for each row of a workload.


class WrongResult(Exception):
    """A checked result was not what the workload computes."""


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise WrongResult(what)


@dataclass
class Variant:
    """One timed row. `step` is what the clock covers; `check` runs after the clock stops
    (verify, then free what the step returned). `per` divides a step's time into units."""

    case: str
    tool: str
    variant: str
    key: str
    step: Callable[[], Any]
    check: Callable[[Any], None]
    per: int = 1
    unit: str = "call"
    ref: bool = False  # the row that "vs pyshm" compares against, when it is pyshm's
    note: str = ""


@dataclass
class Unavailable:
    """Rows a tool has no way to produce in this installation (e.g. a front-end not written)."""

    case: str
    tool: str
    variants: list[tuple[str, str]]  # (variant, key)
    why: str


@dataclass
class Config:
    repeats: int
    warmup: int
    w3_count: int
    prefix: str  # every /dev/shm name this run makes by hand starts with it


@dataclass
class Owned:
    """A result array and how to release what backs it (close + unlink for by-hand blocks)."""

    array: Any
    release: Callable[[], None] = lambda: None

    def free(self) -> None:
        self.array = None
        self.release()


# ---------------------------------------------------------------------------------------------
# The child: one (workload, tool), every variant, results written after each row.


def measure(v: Variant, cfg: Config) -> dict:
    row = {"case": v.case, "tool": v.tool, "variant": v.variant, "key": v.key, "ref": v.ref, "per": v.per,
           "unit": v.unit, "note": v.note, "times": [], "status": "ok", "detail": ""}
    try:
        for _ in range(cfg.warmup):
            v.check(v.step())
        for _ in range(cfg.repeats):
            start = time.perf_counter()
            out = v.step()
            row["times"].append((time.perf_counter() - start) / v.per)
            v.check(out)
            del out
    except WrongResult as e:
        row["status"], row["detail"] = "wrong", str(e)
    except Exception as e:  # noqa: BLE001 - a peer may fail in any way; report it
        row["status"], row["detail"] = "error", f"{type(e).__name__}: {e}"
        traceback.print_exc()
    if row["times"]:
        row["median"] = statistics.median(row["times"])
    return row


def _stop_loky() -> None:
    """Joins joblib's reusable loky workers, which outlive `Parallel`, so that they are reaped
    (and counted in RUSAGE_CHILDREN) before the measuring process exits."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True)


def _pool_snapshot(tool: str) -> tuple[int, int] | None:
    """(arrays, bytes used) in pyshm's pool, once garbage is collected: a pyshm row that ends
    with more than it started with has kept results alive (a leak within the program)."""
    if tool != "pyshm":
        return None
    import gc

    import pyshm

    gc.collect()
    time.sleep(0.2)  # a worker may still be dropping its hold on the last result
    stats = pyshm.stats()
    return stats.arrays, stats.used


def child_main(args, tool_function: Callable[[Config], Iterator] | None) -> int:
    """Runs `tool_function` (the rows of ``args.child``: workload, tool) and writes the rows to
    ``args.out``."""
    cfg = Config(args.repeats, args.warmup, args.w3_count, args.prefix)
    state: dict[str, Any] = {"workload": args.child[0], "tool": args.child[1], "pid": os.getpid(),
                             "status": "running", "detail": "", "rows": [], "pyshm_pool": None}

    def save():
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, args.out)

    save()
    gen = None
    try:
        if state["tool"] == "pyshm":
            import pyshm

            state["pyshm_pool"] = pyshm.default_pool().name
            save()
        gen = tool_function(cfg)
        for item in gen:
            if isinstance(item, Unavailable):
                for variant, key in item.variants:
                    state["rows"].append({"case": item.case, "tool": item.tool, "variant": variant, "key": key,
                                          "status": "unavailable", "detail": item.why, "times": []})
            else:
                print(f"    {item.key}: {item.case[:50]}", file=sys.stderr, flush=True)
                before = _pool_snapshot(state["tool"])
                row = measure(item, cfg)
                after = _pool_snapshot(state["tool"])
                if before and after and after[0] > before[0]:
                    row["pool_growth"] = (f"the pool holds {after[0] - before[0]} more arrays "
                                          f"({(after[1] - before[1]) / 2**20:.0f} MiB) after the row than before it")
                state["rows"].append(row)
            save()
        state["status"] = "ok"
    except ImportError as e:  # before any row: the tool is missing; after some: it broke
        state["status"] = "error" if state["rows"] else "missing"
        state["detail"] = f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001
        state["status"], state["detail"] = "error", f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        if gen is not None:
            gen.close()  # leaves the executors' `with` blocks: workers are joined and reaped
        if state["tool"] == "joblib":
            _stop_loky()
    state["rss_self_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state["rss_children_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    save()
    return 0


# ---------------------------------------------------------------------------------------------
# The driver: runs the children, watches /dev/shm and leftover processes.


def list_shm() -> set[str]:
    try:
        return set(os.listdir(SHM))
    except FileNotFoundError:
        return set()


def own_entries(new: set[str], tool: str, prefix: str, child_pid: int, pool: str | None) -> set[str]:
    """The new /dev/shm entries that this run of `tool` made (see the module doc, point 5)."""
    patterns = [re.escape(prefix)]
    if pool:
        patterns.append(re.escape(f"pyshm-{pool}"))
    if tool == "npshmex":
        patterns.append("npshmex_")
    if tool == "joblib":
        patterns += [f"joblib_memmapping_folder_{child_pid}_", f"sem\\.loky-{child_pid}-"]
    rx = re.compile("|".join(f"(?:{p})" for p in patterns))
    return {e for e in new if rx.match(e)}


def remove_entry(name: str) -> None:
    path = os.path.join(SHM, name)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def session_processes(sid: int) -> list[str]:
    """`pid name` of the processes still in session `sid` (the child's own session)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid:  # fields[3] is the session id (field 6 of stat)
            found.append(f"{pid} {name}")
    return found


def run_child(workload: str, tool: str, args, tmpdir: str) -> dict:
    prefix = f"frontends-{os.getpid()}-{workload}-{tool}-"
    out = os.path.join(tmpdir, f"{workload}-{tool}.json")
    err = os.path.join(tmpdir, f"{workload}-{tool}.stderr")
    cmd = [sys.executable, PACKAGE_DIR, "--child", workload, tool, "--out", out, "--prefix", prefix,
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--w3-count", str(args.w3_count)]
    before = list_shm()
    start = time.perf_counter()
    with open(err, "w") as errf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
            hung = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: only what it started
            rc = proc.wait()
            hung = True
    wall = time.perf_counter() - start
    try:
        with open(out) as f:
            run = json.load(f)
    except (OSError, ValueError):
        run = {"status": "crashed", "detail": "no result file", "rows": []}
    with open(err, errors="replace") as f:
        stderr = f.read()
    if hung:
        run["status"], run["detail"] = "hung", f"killed after {args.timeout:.0f} s (timeout)"
    elif rc != 0:
        run["status"] = "crashed"
        run["detail"] = f"exit status {rc}" + (f" ({signal.Signals(-rc).name})" if rc < 0 else "")
    run["wall_s"] = wall

    # Leftover processes in the child's session (orphaned workers), then /dev/shm. Give exiting
    # helpers (resource trackers, loky) a moment first.
    time.sleep(0.3)
    left = session_processes(proc.pid)
    if left:
        deadline = time.monotonic() + 3
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = session_processes(proc.pid)
    run["leftover_processes"] = left
    if left:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.3)
    new = list_shm() - before
    own = own_entries(new, tool, prefix, run.get("pid", proc.pid), run.get("pyshm_pool"))
    for name in own:
        remove_entry(name)
    run["leaked"] = sorted(own)
    run["unattributed"] = sorted(new - own)
    run["warnings"] = [l.strip() for l in stderr.splitlines()
                       if re.search(r"warn|leak|Traceback|Error", l, re.IGNORECASE)][:8]
    run["stderr_tail"] = stderr[-2000:] if run["status"] != "ok" else ""
    return run
