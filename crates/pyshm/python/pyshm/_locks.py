"""``pyshm.Lock`` and ``pyshm.Event``: a lock and an event for processes, in the pool.

Invariants:

1. The state of a lock or event is a pooled array of four ``uint64`` (a robust mutex and a
   flag, see ``src/locks.rs``), refcounted like any pooled array: it is freed when no process
   holds an object that uses it (and, for a named one, once the name is gone too).
2. An object pickles as its state array, so it travels by handle wherever pooled arrays do
   (multiprocessing, pyshm's executor, ``map`` and ``aio``, loky, ``with pyshm.handles():``)
   and refers to the same lock there. Where arrays would travel as data (a plain
   ``pickle.dumps``), unpickling refuses with ``TypeError`` instead of making a private copy.
3. Named ones live in the named-array pool under a name that no array name can take (a NUL
   byte, then the kind), so any program of the same user finds them by name, and
   ``pyshm.list()`` does not show them.
4. A lock is held by a process, not a thread (like ``multiprocessing.Lock``): any thread of
   the holder may release it, and a holder that dies frees it for the next ``acquire``, which
   says so (``owner_died``).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _core, _named
from ._native import (
    event_clear,
    event_is_set,
    event_set,
    event_wait,
    lock_acquire,
    lock_holder,
    lock_release,
)

__all__ = ["Event", "Lock"]

#: What separates the names of locks and events from array names (invariant 3).
HIDDEN = "\x00"


def _state(kind: str, name: Optional[str]) -> np.ndarray:
    if name is None:
        return _core.zeros(4, np.uint64)
    if not isinstance(name, str) or not name:
        raise TypeError(f"a {kind} name is a non-empty str, not {name!r}")
    full = f"{HIDDEN}{kind}:{name}"
    pool = _named.named_pool()
    try:
        return pool.lookup(full)
    except FileNotFoundError:
        pass
    state = pool.empty((4,), np.uint64, "C", True)
    try:
        pool.publish(full, state)
    except FileExistsError:  # another process created it first: use theirs
        return pool.lookup(full)
    return state


def _rebuild(cls: "type[Any]", state: Any, name: Optional[str]) -> Any:
    if not (isinstance(state, np.ndarray) and _core.is_shared(state)):
        raise TypeError(
            f"a pyshm.{cls.__name__} arrived without its shared state (pickled by a pickler that "
            "copies arrays, such as a plain pickle.dumps); send it through multiprocessing, "
            "pyshm's executor, or inside `with pyshm.handles():`"
        )
    obj = object.__new__(cls)
    obj._state, obj._name = state, name
    return obj


class _InPool:
    """What locks and events share: a state array in the pool (invariant 1), an optional name
    (invariant 3), and pickling as the state (invariant 2)."""

    _KIND = ""

    def __init__(self, name: Optional[str] = None) -> None:
        self._state = _state(self._KIND, name)
        self._name = name

    @property
    def name(self) -> Optional[str]:
        """The name, or ``None``."""
        return self._name

    @classmethod
    def unlink(cls, name: str) -> None:
        """Delete the name ``name`` (``FileNotFoundError`` if there is none); objects that use
        it keep working, and the state is freed with the last of them."""
        _named.named_pool().unpublish(f"{HIDDEN}{cls._KIND}:{name}")

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self._state, self._name))


class Lock(_InPool):
    """A lock that every process of the pool can use, and that survives its holder's death.

    Parameters
    ----------
    name : str, optional
        Without a name, a new lock: share it by passing it to other processes (as an
        argument, through a queue, inherited by fork). With a name, the lock of that name,
        created if it does not exist yet: any program of the same user finds it by name. It
        lives until :meth:`unlink` (and the last object using it is gone).

    Notes
    -----
    Like ``threading.Lock``: ``acquire(blocking=True, timeout=-1)``, ``release()``,
    ``locked()``, and ``with lock:``. Waits release the GIL and can be interrupted (Ctrl-C).
    The lock is held by a process, not a thread. If the holder dies while holding it, the next
    ``acquire`` takes it over and sets :attr:`owner_died`: the state the lock protects may be
    half-updated, so check the flag and repair it before going on.

    Examples
    --------
    >>> import pyshm
    >>> lock = pyshm.Lock()
    >>> with lock:
    ...     lock.locked()
    True
    >>> lock.acquire(timeout=0.1), lock.owner_died
    (True, False)
    >>> lock.release()
    """

    #: Whether the last ``acquire`` of this object took the lock over from a process that died
    #: holding it.
    owner_died: bool = False

    _KIND = "lock"

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(name)
        self.owner_died = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock; ``True`` when taken, ``False`` when ``timeout`` seconds passed first
        (``-1``: wait as long as a live process holds it) or, with ``blocking=False``, when
        it is held."""
        if not blocking and timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        if timeout < 0 and timeout != -1:
            raise ValueError("timeout value must be a non-negative number")
        got = lock_acquire(self._state, blocking, None if timeout == -1 else float(timeout))
        if got:
            self.owner_died = got == 2
        return bool(got)

    def release(self) -> None:
        """Release the lock (``RuntimeError`` if this process does not hold it)."""
        lock_release(self._state)

    def locked(self) -> bool:
        """Whether some process holds the lock."""
        return lock_holder(self._state) is not None

    @property
    def holder(self) -> Optional[int]:
        """The pid of the process holding the lock, or ``None``."""
        return lock_holder(self._state)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        what = "unlocked" if self.holder is None else f"locked by pid {self.holder}"
        name = "" if self._name is None else f" name={self._name!r}"
        return f"<pyshm.Lock{name} {what}>"


class Event(_InPool):
    """A flag that every process of the pool can set, clear and wait for
    (``threading.Event`` across processes).

    Parameters
    ----------
    name : str, optional
        As for :class:`Lock`: without one a new event, with one the event of that name.

    Examples
    --------
    >>> import pyshm
    >>> done = pyshm.Event()
    >>> done.is_set(), done.wait(timeout=0.01)
    (False, False)
    >>> done.set()
    >>> done.wait()
    True
    """

    _KIND = "event"

    def set(self) -> None:
        """Set the flag and wake every process waiting for it."""
        event_set(self._state)

    def clear(self) -> None:
        """Clear the flag."""
        event_clear(self._state)

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return event_is_set(self._state)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until the flag is set, at most ``timeout`` seconds (``None``: forever); the
        flag when the wait ends."""
        return event_wait(self._state, None if timeout is None else float(timeout))

    def __repr__(self) -> str:
        name = "" if self._name is None else f" name={self._name!r}"
        return f"<pyshm.Event{name} {'set' if self.is_set() else 'clear'}>"
