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

Importing pyshm patches nothing: it registers a reducer for ``numpy.ndarray`` with
multiprocessing's pickler, which changes nothing for arrays outside a pool.

``from pyshm import *`` leaves out ``list`` and ``map``, which would shadow the builtins; use
them as ``pyshm.list`` and ``pyshm.map``.
"""

from ._native import (
    InvalidHandleError,
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
    zeros,
    zeros_like,
)
from ._handles import Handle, attach, handle
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
    map,
    set_default_context,
)
from ._named import create, delete
from ._named import list_names as list  # noqa: A001 (SharedArray's name)
from ._pickle import handles, register_loky
from ._transfer import PayloadError, register_array_wrapper, unregister_array_wrapper

# Exceptions pickle by module and name: a worker's error reaches its caller as `pyshm.X`, a
# name that stays valid wherever the class is defined (the native ones say so themselves).
PayloadError.__module__ = "pyshm"


def __getattr__(name: str):
    # `pyshm.aio` is imported on first use: it brings asyncio, which workers seldom need.
    if name == "aio":
        import importlib

        return importlib.import_module(".aio", __name__)
    raise AttributeError(f"module 'pyshm' has no attribute {name!r}")

__all__ = [
    "aio",
    "alloc",
    "allocator",
    "asarray",
    "attach",
    "collect",
    "CollectReport",
    "configure",
    "copy",
    "create",
    "default_pool",
    "delete",
    "empty",
    "empty_like",
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
    "MapContext",
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
    "TokenTableFullError",
    "uninstall_allocator",
    "unregister_array_wrapper",
    "zeros",
    "zeros_like",
]
