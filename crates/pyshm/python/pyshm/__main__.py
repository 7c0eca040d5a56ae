"""``python -m pyshm ls | clean | demo``: list pools, remove dead ones, show what pyshm does."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import _native


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def cmd_ls() -> int:
    pools = _native.list_pools()
    if not pools:
        print("no pyshm pools in /dev/shm")
        return 0
    print(f"{'NAME':<40} {'SIZE':>10} {'USED':>10} {'LIVE':>5}  PERSISTENT")
    for p in sorted(pools, key=lambda p: p.name):
        print(
            f"{p.name:<40} {_size(p.bytes):>10} {_size(p.used):>10} {p.live_processes:>5}  "
            f"{'yes' if p.persistent else 'no'}"
        )
    return 0


def cmd_clean(include_persistent: bool) -> int:
    removed = _native.clean_dead_pools(include_persistent)
    for name in removed:
        print(f"removed {name}")
    if not removed:
        print("nothing to clean: every pool has a live process" + ("" if include_persistent else " or is persistent"))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyshm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ls", help="list pools: name, size, bytes used, live processes")
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
