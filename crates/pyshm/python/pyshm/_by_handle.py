"""``pyshm.by_handle``: a pooled array that any pickler sends as a handle.

Invariants:

1. ``by_handle(a)`` is a view of ``a`` (same memory, same flags) whose class, :class:`ByHandle`,
   differs from ``numpy.ndarray`` only in how it pickles and in what ufuncs return (plain
   arrays). In the process that made it, it is used as the array itself.
2. Every pickle of it, by any pickler at any protocol (plain ``pickle``, cloudpickle, Ray, Dask,
   loky), is a handle with a transfer token plus the sender's host identity; it never carries
   the data. Picklers that dispatch on the exact type (``copyreg``, ``reducer_override`` tables
   keyed by ``numpy.ndarray``) do not see it as an ndarray, so nothing registered for plain
   arrays is changed or consulted.
3. Unpickling gives the pooled array itself (the same memory, writable unless the sender's view
   was read-only), still marked :class:`ByHandle`, so a relay that unpickles and pickles again
   (Dask's scheduler, a task passing its argument on) sends it as a handle too; or it raises :class:`PoolNotFoundError`
   naming the pool and both hosts when the pool cannot be reached here. The host identity is the
   kernel's boot id (two containers of one machine share it) plus the hostname for the message;
   reachability of the pool's name in this process's /dev/shm decides the rest.
4. A pickle that is never unpickled keeps its array alive until the pool ends or
   ``Pool.reclaim_handles`` gives its token back (as for every handle sent with a token). So
   hashing a by-handle array must not pickle it: Dask's ``tokenize`` uses
   ``__dask_tokenize__`` (joblib's hasher and newer Dask hash the data of any ndarray
   themselves).
"""

from __future__ import annotations

import pickle
import socket
from typing import Any, Optional

import numpy as np

from . import _handles, _native, _pickle
from ._native import Handle, PoolNotFoundError

__all__ = ["ByHandle", "by_handle", "host_identity"]


_host_identity: Optional[tuple[str, str]] = None


def host_identity() -> tuple[str, str]:
    """``(hostname, boot_id)`` of this machine (read once). The boot id is the kernel's random
    id of this boot (``/proc/sys/kernel/random/boot_id``): containers on one machine share it,
    other machines do not; an empty string where it cannot be read."""
    global _host_identity
    if _host_identity is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = f.read().strip()
        except OSError:
            boot = ""
        _host_identity = (socket.gethostname(), boot)
    return _host_identity


class ByHandle(np.ndarray):
    """A pooled array (a view of it) that pickles as a handle wherever it is pickled.

    Made by :func:`by_handle`; see there. Unpickles to the same class, over the same memory.
    """

    def __reduce_ex__(self, protocol: Any) -> Any:
        return reduction(self, protocol)[1]

    def __reduce__(self) -> Any:
        return self.__reduce_ex__(pickle.DEFAULT_PROTOCOL)

    def __dask_tokenize__(self) -> Any:
        # Dask names data by a hash of it (`tokenize`: `client.submit` of a pure function,
        # `scatter`, `delayed`), and dask before 2024.12 hashes an array by pickling it: a
        # pickle never loaded, whose token would keep the array alive (invariant 4). The plain
        # view pickles as data, so the name is the one dask gives the same plain array.
        from dask.base import normalize_token

        return ("pyshm.ByHandle", normalize_token(self.view(np.ndarray)))

    def __array_wrap__(self, arr: Any, context: Any = None, return_scalar: bool = False) -> Any:
        # What a ufunc computes from a by-handle array is a new, plain array (invariant 1).
        if return_scalar and isinstance(arr, np.ndarray) and arr.ndim == 0:
            return arr[()]
        return arr.view(np.ndarray) if isinstance(arr, np.ndarray) else arr


def reduction(a: ByHandle, protocol: Any) -> tuple[Optional[Handle], Any]:
    """``(handle, reduction)`` of a by-handle array: the :class:`Handle` made (``None`` for an
    array not pooled any more, a copy made by numpy, which is reduced as numpy reduces it) and
    what ``__reduce_ex__`` returns. For picklers that record the handles they send (payloads)."""
    r = _pickle.pooled_reduction(a)
    if r is None:
        return None, a.view(np.ndarray).__reduce_ex__(protocol)
    hostname, boot = host_identity()
    return r[0], (_rebuild, (hostname, boot, *r[1][1]))


def by_handle(a: np.ndarray) -> np.ndarray:
    """``a``, marked to travel as a handle through any pickle-based framework.

    Dask, Ray, joblib, cloudpickle and plain ``pickle`` send what this returns as a handle of
    about a hundred bytes; on another process of this machine it unpickles to the pooled array
    itself: the same memory, writable, still marked (so a relay sends it on as a handle too). A
    task can return ``by_handle(result)`` the same way.

    Parameters
    ----------
    a : numpy.ndarray
        An array or view that lives in a pyshm pool (``pyshm.empty``, ``pyshm.asarray``, ...).

    Returns
    -------
    numpy.ndarray
        A view of ``a`` of the subclass :class:`ByHandle`, used as ``a`` itself in this
        process. Ufuncs on it return plain arrays.

    Raises
    ------
    ValueError
        ``a`` does not live in a pool (use ``pyshm.asarray(a)`` first).

    Notes
    -----
    Unpickling on another machine, or in a process that cannot see the pool (another container's
    /dev/shm, or the pool is gone), raises :class:`PoolNotFoundError` naming the pool and both
    hosts: send arrays by value across hosts. Each pickle carries a transfer token that keeps the
    array alive until the pickle is loaded, even if the sender drops ``a`` first; a pickle that is
    never loaded holds the array until ``Pool.reclaim_handles`` or the end of the pool.

    Examples
    --------
    >>> import pickle, pyshm
    >>> a = pyshm.zeros(4)
    >>> b = pickle.loads(pickle.dumps(pyshm.by_handle(a)))
    >>> b[0] = 7.0
    >>> float(a[0]), type(b).__name__
    (7.0, 'ByHandle')
    """
    if not isinstance(a, np.ndarray) or _native.pooled_handle(a, False) is None:
        raise ValueError(
            "pyshm.by_handle() takes an array that lives in a pyshm pool; use pyshm.asarray(a) to move it there"
        )
    return a.view(ByHandle)


def _rebuild(hostname: str, boot: str, pool: str, data: bytes, *rest: Any) -> np.ndarray:
    """Unpickles a :class:`ByHandle` (invariant 3): the sender's host, then
    ``_handles.rebuild``'s arguments."""
    here, here_boot = host_identity()
    if boot and here_boot and boot != here_boot:
        raise PoolNotFoundError(
            f"array sent by handle from pool {pool!r} on host {hostname!r} cannot be attached on "
            f"host {here!r}: a handle only works between processes of one machine; send the array "
            f"by value (without pyshm.by_handle) to other hosts"
        )
    try:
        return _handles.rebuild(pool, data, *rest).view(ByHandle)
    except PoolNotFoundError as e:
        raise PoolNotFoundError(
            f"array sent by handle from pool {pool!r} on host {hostname!r} cannot be attached on "
            f"host {here!r}: the pool is not reachable here (another container's /dev/shm, or the "
            f"pool ended); send the array by value (without pyshm.by_handle) to such processes"
        ) from e


def wrap_pooled(obj: Any) -> Any:
    """``obj`` with each pooled array in it (itself, or an item of a list, tuple or dict, one
    level deep) marked :func:`by_handle`; everything else, and plain arrays, unchanged."""
    if isinstance(obj, np.ndarray):
        if type(obj) is ByHandle or _native.pooled_handle(obj, False) is None:
            return obj
        return obj.view(ByHandle)
    if type(obj) in (list, tuple):
        return type(obj)(wrap_pooled(x) if isinstance(x, np.ndarray) else x for x in obj)
    if type(obj) is dict:
        return {k: wrap_pooled(v) if isinstance(v, np.ndarray) else v for k, v in obj.items()}
    return obj

