"""numpy's own allocations taken from a pool, so that the arrays numpy makes are shared arrays.

Inside ``with pyshm.allocator():`` every array numpy allocates with at least ``min_bytes`` bytes
of data (``numpy.ones``, ``x + 1``, ``numpy.concatenate``, a ``copy()``, ...) has its data in the
pool, exactly as if it had been made by ``pyshm.empty``: ``pyshm.is_shared`` says so, and
multiprocessing and ``concurrent.futures`` send it, or any view of it, as a handle. It is done
with numpy's data-memory handler (NEP 49, numpy >= 1.22); the native side is ``src/allocator.rs``.

Invariants:

1. A handler is a ``mem_handler`` capsule made by ``_native.make_allocator``. numpy keeps it alive
   from every array it allocated and frees that array's memory through it, so such arrays stay
   valid after the handler is uninstalled. After the pool is closed they stay valid too, but,
   like every array of a closed pool, no longer keep their memory for themselves.
2. Installing is per context: numpy keeps the handler in a context variable, so ``with
   allocator()`` and ``install_allocator`` affect the current thread or asyncio task only, and
   ``with`` restores on exit the handler that was in effect on entry. New threads start with
   numpy's default handler.
3. The handler never waits for memory. An allocation below ``min_bytes``, one the pool cannot
   serve at once (full, closed, or configured with ``wait``), and an array of Python objects,
   get numpy's ordinary private memory (the handler that was in effect before, normally numpy's
   default), and are then simply not shared.
"""

from __future__ import annotations

import contextlib
import contextvars
import numbers
from typing import Any, Iterator, Optional

from . import _core, _native

__all__ = ["allocator", "install_allocator", "uninstall_allocator", "DEFAULT_MIN_BYTES"]

DEFAULT_MIN_BYTES = 1 << 16
"""64 KiB: below this, sending an array by value costs about as much as sending a handle (a
copy of 64 KiB takes a few microseconds), and small temporaries, which are most of numpy's
allocations, would take pool blocks rounded up to a power of two for nothing."""

# (handler in effect before the first install_allocator, the handler installed last), in this
# context.
_installed: contextvars.ContextVar[Optional[tuple[Any, Any]]] = contextvars.ContextVar(
    "pyshm_installed_allocator", default=None
)


def _make(min_bytes: int, pool: Optional["_core.Pool"]) -> Any:
    """A new handler capsule over ``pool`` (the default pool when None)."""
    if isinstance(min_bytes, bool) or not isinstance(min_bytes, numbers.Integral):
        raise TypeError(f"min_bytes must be an int, not {type(min_bytes).__name__}")
    if min_bytes < 0:
        raise ValueError(f"min_bytes must be >= 0, not {min_bytes}")
    if pool is None:
        pool = _core.default_pool()
    elif not isinstance(pool, _core.Pool):
        raise TypeError(f"pool must be a pyshm.Pool or None, not {type(pool).__name__}")
    return _native.make_allocator(_core.native_of(pool), int(min_bytes))


@contextlib.contextmanager
def allocator(min_bytes: int = DEFAULT_MIN_BYTES, pool: Optional["_core.Pool"] = None) -> Iterator["_core.Pool"]:
    """Within this block, numpy takes the data of its arrays from a pool.

    Every array numpy allocates in this thread or task with at least ``min_bytes`` bytes of
    data lives in ``pool``, as if made by :func:`pyshm.empty`: multiprocessing and
    ``concurrent.futures`` send it, and any view of it, as a handle, and the receiver writes
    into the same memory. The arrays stay valid after the block: only new allocations are
    affected by it.

    Parameters
    ----------
    min_bytes : int, optional
        Smallest allocation taken from the pool, in bytes (default 64 KiB). Smaller ones get
        numpy's ordinary memory.
    pool : pyshm.Pool, optional
        The pool to allocate in (default: the default pool).

    Yields
    ------
    pyshm.Pool
        The pool allocations are taken from.

    Raises
    ------
    TypeError, ValueError
        For a bad ``min_bytes`` or ``pool``, or a closed pool.
    RuntimeError
        When numpy is older than 1.22 (it has no data-memory handlers).

    Notes
    -----
    The allocator never waits for memory: an allocation the pool cannot serve at once (full, or
    configured with ``wait``), and an array of Python objects, get numpy's ordinary memory and
    are not shared. Blocks nest; each restores on exit the allocator in effect on entry. It
    affects the current thread (or asyncio task) only: new threads start with numpy's default.
    Arrays it made live as long as numpy keeps them, also after the pool is closed, but then
    no longer keep their memory from other processes of the pool (as ``Pool.close`` says).

    Examples
    --------
    >>> import numpy as np, pyshm
    >>> x = np.arange(100_000.0)
    >>> with pyshm.allocator():
    ...     y = x * 2
    >>> pyshm.is_shared(y), pyshm.is_shared(x)
    (True, False)
    """
    handler = _make(min_bytes, pool)
    previous = _native.set_handler(handler)
    try:
        yield pool if pool is not None else _core.default_pool()
    finally:
        _native.set_handler(previous)


def install_allocator(min_bytes: int = DEFAULT_MIN_BYTES, pool: Optional["_core.Pool"] = None) -> None:
    """Make numpy take the data of its arrays from a pool from now on, in this thread or task.

    The same as entering :func:`allocator` and never leaving it, until
    :func:`uninstall_allocator`. Installing again replaces the allocator (``uninstall_allocator``
    then restores the one in effect before the first install).

    Parameters
    ----------
    min_bytes : int, optional
        Smallest allocation taken from the pool, in bytes (default 64 KiB).
    pool : pyshm.Pool, optional
        The pool to allocate in (default: the default pool).

    Raises
    ------
    TypeError, ValueError
        For a bad ``min_bytes`` or ``pool``, or a closed pool.
    RuntimeError
        When numpy is older than 1.22.

    Notes
    -----
    numpy keeps its allocator per context: other threads, including threads started later
    (they start with numpy's default), are not affected; a ``with allocator()`` block entered
    earlier puts its own allocator back when it ends.
    """
    handler = _make(min_bytes, pool)
    previous = _native.set_handler(handler)
    installed = _installed.get()
    _installed.set((previous if installed is None else installed[0], handler))


def uninstall_allocator() -> bool:
    """Undo :func:`install_allocator` in this thread or task.

    numpy's allocator becomes the one in effect before the first ``install_allocator``. Arrays
    already allocated keep their memory until numpy frees them.

    Returns
    -------
    bool
        Whether an allocator installed by :func:`install_allocator` was in effect and is now
        removed (False if there was none, or if a ``with allocator()`` block replaced it since).
    """
    installed = _installed.get()
    if installed is None:
        return False
    previous, handler = installed
    if _native.get_handler() is not handler:
        return False  # a `with allocator()` block is in effect: the install stays recorded
    _installed.set(None)
    _native.set_handler(previous)
    return True
