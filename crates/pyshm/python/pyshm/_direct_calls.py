"""Calls written to the executor's call pipe by the submitting thread itself.

The standard library's ``submit`` hands a call to the executor's manager thread (a wake-up
pipe), which puts it in the call queue, whose feeder thread pickles it and writes it to the pipe
the workers read: two thread hand-offs in the caller's process before a worker sees the call.
When the call queue has room and nothing is waiting before the call, pyshm's ``submit`` does
both steps itself: it marks the future running (as the manager does when it moves a call into
the queue), pickles the call item and writes it to the pipe, in the caller's thread: a tiny
task's round trip is then about 1.5x faster (docs/performance.md).

Invariants:

1. The workers cannot tell the difference: a direct call is the bytes the feeder would have
   written (``ForkingPickler`` of the ``_CallItem``, framed as ``Connection.send_bytes`` frames
   it), written with one ``write`` under the queue's write lock (the feeder writes under it
   too), and it takes one of the call queue's ``maxsize`` places (its semaphore), which the
   worker's ``get`` gives back.
2. A direct write never blocks the caller: it goes through a descriptor of its own for the
   pipe's write end, opened ``O_NONBLOCK`` (``/proc/self/fd``), so that the feeder's blocking
   writes are unchanged, and it writes only messages of at most ``PIPE_BUF`` bytes, which the
   kernel writes whole or not at all. A message the pipe cannot take now is handed to the
   queue's feeder (``Queue.put``), as the manager would have done: the future is running, the
   call is in the call queue, only the write is late.
3. Calls leave in order. A direct write happens only while no call waits for the manager
   (``work_ids`` empty) and every call handed to the queue's feeder thread has been written
   (``unwritten`` is 0), under the executor's dispatch lock, which the manager's
   ``add_call_item_to_queue`` holds too. ``unwritten`` counts the queue's ``put`` calls up and
   the feeder's writes down: the feeder takes the queue's write lock around each write, and
   the lock it was given releases through :class:`_CountedWriteLock`; a call the feeder fails
   to pickle counts down in its error hook. (A write that fails after taking the lock counts
   down twice, and the count stops at 0: the pipe has no reader then, and nothing is sent.)
   The stdlib keeps one worker's calls in submission order, so ``max_workers=1`` runs them in
   order with pyshm too.
4. The descriptor is closed once, under the dispatch lock: at ``shutdown``, when the pool
   breaks, or when the manager thread ends (also when the executor is garbage); after that
   every call goes the standard way.
5. A write that fails for any other reason than a full pipe means nobody reads the pipe any
   more (the pool broke or shut down meanwhile): the future fails with ``BrokenProcessPool``.
"""

from __future__ import annotations

import os
import select
import struct
import threading
import weakref
from multiprocessing.reduction import ForkingPickler
from typing import Any, Optional

__all__ = ["DirectCalls"]

#: Writes of at most this many bytes to a pipe are atomic (invariant 2).
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)


class DirectCalls:
    """The caller-side writer of an executor's call queue (see the module doc). Made before
    the queue's first ``put``: it installs the accounting of invariant 3 on that queue (its
    ``put``, its feeder's error hook and the write lock the feeder is given; instance
    attributes of this one queue, which its pickling for spawned workers leaves out)."""

    def __init__(self, call_queue: Any) -> None:
        self.lock = threading.Lock()  # the dispatch lock (invariant 3)
        self.unwritten = 0  # calls handed to the feeder and not written yet (invariant 3)
        self._count_lock = threading.Lock()
        self.fd: Optional[int] = None
        try:
            writer = call_queue._writer.fileno()
            self.fd = os.open(f"/proc/self/fd/{writer}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError, ValueError):  # no /proc: every call goes the standard way
            self.fd = None
        self._finalizer = weakref.finalize(self, _close_fd, self.fd) if self.fd is not None else None
        self.write_lock = call_queue._wlock  # the real one: direct writes do not count down
        put = call_queue.put
        on_error = call_queue._on_queue_feeder_error

        def counted_put(obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
            self._count(+1)
            try:
                put(obj, block, timeout)
            except BaseException:
                self._count(-1)
                raise

        def counted_on_error(e: BaseException, obj: Any) -> None:
            self._count(-1)
            on_error(e, obj)

        call_queue.put = counted_put
        call_queue._on_queue_feeder_error = counted_on_error
        call_queue._wlock = _CountedWriteLock(self.write_lock, self)

    def _count(self, change: int) -> None:
        with self._count_lock:
            self.unwritten = max(0, self.unwritten + change)

    def close(self) -> None:
        """No more direct writes (invariant 4)."""
        with self.lock:
            if self._finalizer is not None:
                self._finalizer()
            self.fd = None

    def may_send(self, call_queue: Any, work_ids: Any) -> bool:
        """Whether a direct write would be tried now (unlocked, a hint: ``send`` decides)."""
        return self.fd is not None and not self.unwritten and work_ids.empty() and not call_queue.full()

    def send(self, call_queue: Any, work_ids: Any, call_item: Any, future: Any) -> Optional[bool]:
        """Try to put ``call_item`` in the call queue from this thread. ``True``: it is there
        (written, or handed to the feeder) and ``future`` is running; ``False``: nothing was
        done, the caller queues it for the manager; ``None``: ``future`` is running but nobody
        reads the pipe any more, the caller fails it (invariant 5)."""
        with self.lock:
            fd = self.fd
            if fd is None or self.unwritten or not work_ids.empty():
                return False
            try:
                data = ForkingPickler.dumps(call_item)
            except Exception:  # the feeder pickles it again and fails the future the standard way
                return False
            if len(data) + 4 > PIPE_BUF:
                return False
            if not call_queue._sem.acquire(False):
                return False
            if not future.set_running_or_notify_cancel():  # a new future: nobody could cancel it
                call_queue._sem.release()
                return False
            try:
                with self.write_lock:
                    os.write(fd, struct.pack("!i", len(data)) + data)
            except BlockingIOError:  # the pipe is full: the feeder writes it when there is room
                call_queue._sem.release()
                try:
                    call_queue.put(call_item)
                except (ValueError, AssertionError):  # closed meanwhile (3.9 asserts)
                    return None
            except (OSError, ValueError):
                call_queue._sem.release()
                return None
            return True


class _CountedWriteLock:
    """The call queue's write lock as its feeder thread gets it: each release ends one write of
    a call handed to the feeder (invariant 3). Pickled (for spawned workers, who never write)
    as the lock it wraps."""

    def __init__(self, inner: Any, calls: DirectCalls) -> None:
        self.inner = inner
        self.calls = calls

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        return self.inner.acquire(*args, **kwargs)

    def release(self) -> None:
        self.inner.release()
        self.calls._count(-1)

    def __reduce__(self) -> Any:
        return (_same, (self.inner,))


def _same(obj: Any) -> Any:
    return obj


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
