"""pyshm: numpy arrays in a shared-memory pool, sent between processes as small handles.

Replace ``numpy.empty`` with ``pyshm.empty`` (and ``zeros``, ``ones``, ``full``, the ``*_like``
functions, ``asarray``, ``copy``): the array's data then lives in a pool that every process of
the program maps once. When multiprocessing or ``concurrent.futures`` sends such an array (or
any view of it) to another process, it sends a handle of about a hundred bytes; the receiver's
array is the same memory, writable. Memory is freed when no process holds the array, and what
a dead process held is reclaimed.

Importing pyshm patches nothing: it registers a reducer for ``numpy.ndarray`` with
multiprocessing's pickler, which changes nothing for arrays outside a pool.
"""

from ._native import PoolNotFoundError, StaleHandleError
from ._core import (
    CollectReport,
    Handle,
    Pool,
    PoolStats,
    asarray,
    attach,
    collect,
    configure,
    copy,
    default_pool,
    empty,
    empty_like,
    full,
    full_like,
    handle,
    is_shared,
    ones,
    ones_like,
    stats,
    zeros,
    zeros_like,
)
from ._named import create, delete
from ._named import list_names as list  # noqa: A001 (SharedArray's name)
from ._pickle import handles, register_loky

__version__ = "0.1.0"

__all__ = [
    "CollectReport",
    "Handle",
    "Pool",
    "PoolNotFoundError",
    "PoolStats",
    "StaleHandleError",
    "asarray",
    "attach",
    "collect",
    "configure",
    "copy",
    "create",
    "default_pool",
    "delete",
    "empty",
    "empty_like",
    "full",
    "full_like",
    "handle",
    "handles",
    "is_shared",
    "list",
    "ones",
    "ones_like",
    "register_loky",
    "stats",
    "zeros",
    "zeros_like",
]
