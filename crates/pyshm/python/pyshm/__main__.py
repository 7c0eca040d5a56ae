"""``python -m pyshm ls | clean | demo`` (or the ``pyshm`` console script): list pools, remove
dead ones, show what pyshm does; ``--version`` prints the package's version."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from . import _native

DESCRIPTION = "pyshm's pools in /dev/shm: list them, remove those of dead programs, or see a demo."


def version() -> str:
    """The installed distribution's version, or the package's own ``__version__`` when there is
    no metadata (a source tree on ``sys.path``)."""
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("pyshm")
    except PackageNotFoundError:
        pass
    from . import __version__

    return __version__


def program_name(argv0: str) -> str:
    """What the usage line calls the program: ``python -m pyshm`` when run as a module, else
    the name it was started by (the ``pyshm`` console script, or wherever it was installed)."""
    name = os.path.basename(argv0)
    return "python -m pyshm" if name in ("__main__.py", "") else name


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def cmd_ls() -> int:
    pools = _native.list_pools()
    unreadable = _native.list_unreadable_pools()
    if not pools and not unreadable:
        print("no pyshm pools in /dev/shm")
        return 0
    if pools:
        _print_pools(pools)
    if unreadable:
        # Pools of ours this pyshm cannot read (another version, being created, corrupt): not
        # in the table, but there, and `clean` says what it would do with them.
        if pools:
            print()
        print("not readable by this pyshm:")
        for s in unreadable:
            print(f"  {s.file}: {s.reason}")
    return 0


def _print_pools(pools: list) -> None:
    # HELD is what the pool costs /dev/shm; SIZE (its files' length) is sparse address space. A
    # memfd pool's growth segments live in the memory of its processes, are not files, and vanish
    # with the last process that holds them: HELD, USED and SIZE count /dev/shm only.
    print(
        f"{'NAME':<34} {'HELD':>10} {'USED':>10} {'WARM':>10} {'KEEP':>10} {'HELD/USED':>9} {'SIZE':>10} "
        f"{'PROCS':>5}  PERSISTENT  BACKEND"
    )
    for p in sorted(pools, key=lambda p: p.name):
        ratio = f"{p.held / p.used:.2f}" if p.used else "-"
        backend = f"memfd (+{p.memfd_segments} segments)" if p.backend == "memfd" else "shm"
        print(
            f"{p.name:<34} {_size(p.held):>10} {_size(p.used):>10} {_size(p.warm):>10} {_size(p.keep):>10} "
            f"{ratio:>9} {_size(p.bytes):>10} {p.live_processes:>5}  {'yes' if p.persistent else 'no':<10}  {backend}"
        )


def cmd_clean(include_persistent: bool) -> int:
    removed, skipped = _native.clean_pools(include_persistent)
    for name in removed:
        print(f"removed {name}")
    for s in skipped:
        if s.kind == "live":
            continue  # a live pool: never cleaned, as expected
        if s.kind == "persistent":
            print(f"left {s.file}: persistent, its processes are all dead (clean it with --persistent)")
            continue
        if s.kind == "other_version":
            print(f"left {s.file}: {s.reason} (clean it with --persistent; its arrays are lost)")
            continue
        whose = f" (owned by uid {s.owner_uid}: ask its owner or root)" if s.owner_uid is not None else ""
        print(f"left {s.file}: {s.reason}{whose}")
    if not removed and all(s.kind == "live" for s in skipped):
        print("nothing to clean: every pool has a live process" + ("" if include_persistent else " or is persistent"))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=program_name(sys.argv[0]), description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ls", help="list pools: name, bytes held, used and kept warm, live processes")
    clean = sub.add_parser("clean", help="remove pools whose processes are all dead (never a live one)")
    clean.add_argument("--persistent", action="store_true", help="also remove dead persistent (named) pools")
    sub.add_parser("demo", help="send arrays to worker processes and show what it costs")
    args = parser.parse_args(argv)
    if args.command == "ls":
        return cmd_ls()
    if args.command == "clean":
        return cmd_clean(args.persistent)
    from . import _demo

    return _demo.main()


if __name__ == "__main__":
    sys.exit(main())
