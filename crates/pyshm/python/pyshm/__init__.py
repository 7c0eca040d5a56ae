"""pyshm: numpy arrays in a shared-memory pool, sent between processes as small handles.

Replace ``numpy.empty`` with ``pyshm.empty`` (and ``zeros``, ``ones``, ``full``, the ``*_like``
functions, ``asarray``, ``copy``): the array's data then lives in a pool that every process of
the program maps once. When multiprocessing or ``concurrent.futures`` sends such an array (or
any view of it) to another process, it sends a handle of about a hundred bytes; the receiver's
array is the same memory, writable. Memory is freed when no process holds the array, and what
a dead process held is reclaimed.

Front-ends on the same pool:

- ``pyshm.ProcessPoolExecutor``: a drop-in for ``concurrent.futures.ProcessPoolExecutor`` whose
  arguments and results travel through the pool, and whose workers allocate results there.
- ``pyshm.map`` and ``pyshm.alloc``: a parallel map whose kernels write into shared arrays
  (pasha's model), over serial, thread or persistent process contexts.
- ``pyshm.aio``: ``await aio.run(fn, ...)`` and ``async for ... in aio.map(fn, array)``.
- ``pyshm.allocator()``: numpy's own allocations taken from the pool (NEP 49).
- ``pyshm.by_handle(a)``: ``a`` sent as a handle by any pickler (Dask, Ray, joblib); and
  ``pyshm.joblib`` (a joblib backend), ``pyshm.ray`` (a ``ray.remote`` that does it for you)
  and ``pyshm.dask`` (``install(client)``), imported on first use.

Importing pyshm patches nothing: it registers a reducer for ``numpy.ndarray`` with
multiprocessing's pickler, which changes nothing for arrays outside a pool.

``from pyshm import *`` leaves out ``list`` and ``map``, which would shadow the builtins; use
them as ``pyshm.list`` and ``pyshm.map``.
"""

from typing import TYPE_CHECKING, Any

from ._native import (
    InvalidHandleError,
    NameTableFullError,
    PoolCorruptError,
    PoolFullError,
    PoolMemoryError,
    PoolNotFoundError,
    PoolOSError,
    PoolPermissionError,
    StaleHandleError,
    TokenTableFullError,
)
from ._native import __version__ as __version__  # the pyshm crate's version: one source
from ._core import (
    CollectReport,
    Pool,
    PoolStats,
    asarray,
    collect,
    configure,
    copy,
    default_pool,
    empty,
    empty_like,
    full,
    full_like,
    is_shared,
    ones,
    ones_like,
    stats,
    trim,
    zeros,
    zeros_like,
)
from ._handles import Handle, attach, handle
from ._by_handle import ByHandle, by_handle
from ._allocator import allocator, install_allocator, uninstall_allocator
from ._executor import ProcessPoolExecutor
from ._map import (
    Functor,
    MapContext,
    NdarrayFunctor,
    ProcessContext,
    SequenceFunctor,
    SerialContext,
    ThreadContext,
    alloc,
    get_default_context,
    set_default_context,
)
from ._map import map as map  # noqa: A004 (`x as x`: exported to type checkers, left out of __all__)
from ._locks import Event, Lock
from ._named import NamedArray, create, delete, list_names

list = list_names  # noqa: A001 (SharedArray's name; assigned, so type checkers see it exported)
del list_names
from ._pickle import handles, register_loky
from ._transfer import PayloadError, register_array_wrapper, unregister_array_wrapper

# Exceptions pickle by module and name: a worker's error reaches its caller as `pyshm.X`, a
# name that stays valid wherever the class is defined (the native ones say so themselves).
PayloadError.__module__ = "pyshm"


if TYPE_CHECKING:  # what `__getattr__` gives, for type checkers
    from . import aio as aio


def __getattr__(name: str) -> Any:
    # `pyshm.aio` is imported on first use: it brings asyncio, which workers seldom need; the
    # engine modules import their engine, which pyshm does not depend on.
    if name in ("aio", "dask", "joblib", "ray"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'pyshm' has no attribute {name!r}")

__all__ = [
    "aio",
    "alloc",
    "allocator",
    "asarray",
    "attach",
    "by_handle",
    "ByHandle",
    "collect",
    "CollectReport",
    "configure",
    "copy",
    "create",
    "default_pool",
    "delete",
    "empty",
    "empty_like",
    "Event",
    "full",
    "full_like",
    "Functor",
    "get_default_context",
    "Handle",
    "handle",
    "handles",
    "install_allocator",
    "InvalidHandleError",
    "is_shared",
    "Lock",
    "MapContext",
    "NamedArray",
    "NameTableFullError",
    "NdarrayFunctor",
    "ones",
    "ones_like",
    "Pool",
    "PayloadError",
    "PoolCorruptError",
    "PoolFullError",
    "PoolMemoryError",
    "PoolNotFoundError",
    "PoolOSError",
    "PoolPermissionError",
    "PoolStats",
    "ProcessContext",
    "ProcessPoolExecutor",
    "register_array_wrapper",
    "register_loky",
    "SequenceFunctor",
    "SerialContext",
    "set_default_context",
    "StaleHandleError",
    "stats",
    "ThreadContext",
    "trim",
    "TokenTableFullError",
    "uninstall_allocator",
    "unregister_array_wrapper",
    "zeros",
    "zeros_like",
]
