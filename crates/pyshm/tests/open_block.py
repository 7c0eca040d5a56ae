"""Test helper: a ``pyshm.handles()`` block held open by another thread."""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, Optional

import pyshm


@contextlib.contextmanager
def block_open_in_another_thread(inside: Optional[Callable[[], None]] = None) -> Iterator[threading.Thread]:
    """While the ``with`` body runs, another thread is inside ``pyshm.handles()`` (having run
    ``inside()`` there first); on exit it leaves the block and ends (bounded waits)."""
    entered, leave = threading.Event(), threading.Event()

    def holder() -> None:
        with pyshm.handles():
            if inside is not None:
                inside()
            entered.set()
            leave.wait(60)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert entered.wait(60), "the other thread never entered its block"
        yield t
    finally:
        leave.set()
        t.join(60)
    assert not t.is_alive()
