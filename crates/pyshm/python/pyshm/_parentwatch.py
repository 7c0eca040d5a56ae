"""Workers that notice the death of the process that started them.

pyshm's executor (and so ``ProcessContext`` and ``aio``) starts every worker with the identity
of the process that created the executor, its *owner*: ``(pid, start time)``. The worker's first
act is :func:`watch`, a daemon thread that waits for the owner to die and then calls the
worker's ``on_death`` (which exits the process; see ``_executor``).

Invariants:

1. The watch targets the owner named explicitly, never ``os.getppid()``: under forkserver a
   worker's parent is the fork server, which outlives the owner.
2. The watch cannot be fooled by pid reuse. With a pidfd (Linux 5.3+, Python 3.9+) the worker
   opens the owner's pidfd first and checks the start time second: if the start time matches,
   the pidfd was opened on the owner (a reused pid has a later start time), and the pidfd stays
   bound to that process whatever happens to the number. Without a pidfd the thread polls the
   pid and its start time every ``POLL_SECONDS``.
3. It is not ``PR_SET_PDEATHSIG``: that signal fires when the *thread* that forked the worker
   exits (CPython may start workers from its executor's manager thread), and it names the
   parent, the fork server under forkserver.
4. Importing this module changes nothing: only a worker's initializer calls :func:`watch`.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import Callable, Optional

__all__ = ["Owner", "owner", "watch"]

#: How often the fallback (no pidfd) checks that the owner lives.
POLL_SECONDS = 0.2

Owner = tuple[int, Optional[int]]
"""``(pid, start time in clock ticks since boot)``; the start time is ``None`` without /proc."""


def start_time(pid: int) -> Optional[int]:
    """The start time of ``pid`` (``/proc/<pid>/stat`` field 22), ``None`` if there is no such
    process or no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    fields = stat.rpartition(b")")[2].split()
    try:
        return int(fields[19])  # field 22; fields[0] is field 3
    except (IndexError, ValueError):
        return None


def owner() -> Owner:
    """This process's identity, for the workers it starts to watch."""
    pid = os.getpid()
    return (pid, start_time(pid))


def _is(who: Owner) -> bool:
    """Whether the process ``who`` names is alive (or a zombie not yet reaped: dead for us)."""
    pid, started = who
    if started is not None:
        if start_time(pid) != started:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            return False
        return state not in (b"Z", b"X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _pidfd(who: Owner) -> Optional[int]:
    """A pidfd of ``who``, ``-1`` if ``who`` is dead already, ``None`` without pidfd support."""
    pid, started = who
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return -1
    except OSError:  # ENOSYS (kernel < 5.3), or a seccomp filter that refuses it
        return None
    # Opened first, checked second (invariant 2).
    if started is not None and start_time(pid) != started:
        os.close(fd)
        return -1
    return fd


def _wait_for_death(who: Owner) -> None:
    fd = _pidfd(who)
    if fd == -1:
        return
    if fd is not None:
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)  # readable once the process has exited
            while not poller.poll():
                pass
        finally:
            os.close(fd)
        return
    while _is(who):
        time.sleep(POLL_SECONDS)


def watch(who: Owner, on_death: Callable[[], None]) -> threading.Thread:
    """Start a daemon thread that calls ``on_death()`` once ``who`` has died (at once if it is
    dead already). ``on_death`` is expected not to return (it exits the process)."""

    def run() -> None:
        _wait_for_death(who)
        on_death()

    t = threading.Thread(target=run, name="pyshm-parent-watch", daemon=True)
    t.start()
    return t
