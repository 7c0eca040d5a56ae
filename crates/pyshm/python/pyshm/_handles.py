"""Handles: a small picklable reference to a pooled array or view, and attaching one.

A handle is ``pyshm.Handle`` (the native class): the pool's name, the handle's bytes as
``shm-ndarray`` encodes them, and for a view with another dtype than its array's, that view
(its ``retype``). It is the one form a handle takes everywhere: :func:`handle` makes it,
:func:`attach` and the pickles of ``_pickle`` take it, ``_transfer`` records and cancels it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Union

from . import _named, _native, _pools
from ._native import Handle, NativePool

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["Handle", "handle", "attach"]


def handle(a: NDArray[Any]) -> Handle:
    """A :class:`Handle` to the pooled array or view ``a`` (``ValueError`` if ``a`` is not in a
    pool: use ``pyshm.asarray(a)`` first)."""
    h = _native.pooled_handle(a)
    if h is None:
        raise ValueError("the array does not live in a pyshm pool; use pyshm.asarray(a) to move it there")
    return h


def attach_handle(h: Handle) -> NDArray[Any]:
    """The array ``h`` names, in its pool (opened if this process has not yet)."""
    return _pools.pool_named(h.pool).attach(h)


def attach(h: Union[Handle, str]) -> NDArray[Any]:
    """The array a :class:`Handle` names, or the named array ``h`` (see :func:`pyshm.create`).

    Raises :class:`StaleHandleError` (a ``ValueError``) for a handle whose array was freed,
    ``ValueError`` for a malformed handle, :class:`PoolNotFoundError` when the pool is gone, and
    ``FileNotFoundError`` for an unknown name."""
    if isinstance(h, Handle):
        return _pools.pool_named(h.pool).attach(h)
    if isinstance(h, str):
        return _named.attach(h)
    raise TypeError(f"attach() takes a pyshm.Handle or an array name, not {type(h).__name__}")


def rebuild(
    pool: str,
    data: bytes,
    retype: Optional[tuple[Any, int, tuple[int, ...], tuple[int, ...]]] = None,
    default: bool = False,
    readonly: bool = False,
) -> NDArray[Any]:
    """Unpickles an array sent as a handle (see ``_pickle``): the handle's parts as
    :class:`Handle` takes them, then whether the sender's default pool sent it (this process
    then adopts that pool as its default if it has none) and whether the array is read-only."""
    h = Handle(pool, data, retype)
    native = NativePool.find(pool) or _pools.pool_named(pool)  # the first: no call in between
    if default and _pools.default is None:
        _pools.adopt_default(native)
    a = native.attach(h)
    if readonly:
        a.flags.writeable = False
    return a


def cancel(h: Handle) -> None:
    """Give back the transfer token of a handle that will never be attached, without mapping
    its array. Raises ``StaleHandleError`` if it was attached or cancelled already, and
    ``OSError``/``ValueError`` when its pool is gone or closed here."""
    _pools.pool_named(h.pool).cancel(h)
