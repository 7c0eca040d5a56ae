"""Pools, the default pool, numpy-style constructors, handles and process exit.

Invariants (docs/architecture.md, "The Python layer"):

1. A pooled array is a plain ``numpy.ndarray`` whose ``base`` is a ``_native.Block``; numpy
   collapses the base of every view to it, so the block (this process's reference to the
   array) lives exactly as long as some array or view over its data.
2. Every pool this process uses is in ``_natives`` (by name) until the process exits or the
   pool is closed. At exit each is left once: this process's references are released, its
   slot is given up, and the last process out of a non-persistent pool unlinks it. The leave
   runs as a ``multiprocessing.util.Finalize`` with a low priority, so in the main process it
   runs after multiprocessing has terminated and joined its children, and in a multiprocessing
   child it runs when the child's ``run()`` returns.
3. The default pool is named by ``PYSHM_POOL`` in the environment: a process that creates it
   sets the variable, so processes it starts (fork, spawn, forkserver, or any program it runs)
   find the same pool; a process that receives a handle from a sender's default pool and has
   none yet adopts that pool as its default.
"""

from __future__ import annotations

import math
import multiprocessing.util
import os
import threading
from typing import Any, NamedTuple, Optional, Sequence, Union

import numpy as np

from . import _native
from ._native import NativePool, PoolNotFoundError

__all__ = [
    "Pool",
    "PoolStats",
    "CollectReport",
    "Handle",
    "configure",
    "default_pool",
    "empty",
    "zeros",
    "ones",
    "full",
    "empty_like",
    "zeros_like",
    "ones_like",
    "full_like",
    "asarray",
    "copy",
    "is_shared",
    "handle",
    "attach",
    "stats",
    "collect",
]

ShapeLike = Union[int, Sequence[int]]

_lock = threading.RLock()
_natives: dict[str, NativePool] = {}
_default: Optional[NativePool] = None
_config: dict[str, Any] = {"size": None, "max_size": None, "wait": None}


class PoolStats(NamedTuple):
    """A pool's usage, in bytes unless said otherwise."""

    capacity: int
    """Bytes of data segments reserved in /dev/shm (metadata segments not included)."""
    used: int
    """Bytes of blocks holding array data (small arrays, 4 KiB or less with their header, live
    in a metadata segment and count here too)."""
    free: int
    """Bytes free in the data segments."""
    largest_free: int
    """The largest block an array could get without the pool growing."""
    arrays: int
    """Arrays alive in the pool (held by some process, a name or a handle in flight)."""
    segments: int
    """Segments (files in /dev/shm), metadata included."""
    processes: int
    """Processes registered in the pool."""
    reserved: int
    """Bytes of freed small arrays' blocks that processes keep for their next small arrays
    (not in ``used``): given back when a process leaves the pool, when memory runs short, or by
    :func:`collect` when it dies."""


class CollectReport(NamedTuple):
    """What :func:`collect` reclaimed."""

    dead_processes: int
    arrays_freed: int
    blocks_recovered: int


# --------------------------------------------------------------------------------------------
# Sizes from the environment


def _parse_size(text: str, what: str) -> int:
    """``"512M"``, ``"2G"``, ``"1048576"`` -> bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = 1
    for suffix, s in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(suffix):
            t, scale = t[:-1], s
            break
    try:
        value = float(t) * scale
    except ValueError:
        raise ValueError(f"{what}={text!r}: expected a size such as 512M or 2G") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what}={text!r}: expected a positive size")
    return int(value)


def _env_config() -> dict[str, Any]:
    cfg = dict(_config)
    if cfg["size"] is None and os.environ.get("PYSHM_SIZE"):
        cfg["size"] = _parse_size(os.environ["PYSHM_SIZE"], "PYSHM_SIZE")
    if cfg["max_size"] is None and os.environ.get("PYSHM_MAX_SIZE"):
        cfg["max_size"] = _parse_size(os.environ["PYSHM_MAX_SIZE"], "PYSHM_MAX_SIZE")
    if cfg["wait"] is None and os.environ.get("PYSHM_WAIT"):
        try:
            cfg["wait"] = float(os.environ["PYSHM_WAIT"])
        except ValueError:
            raise ValueError(f"PYSHM_WAIT={os.environ['PYSHM_WAIT']!r}: expected seconds") from None
    return cfg


def configure(size: Optional[int] = None, max_size: Optional[int] = None, wait: Optional[float] = None) -> None:
    """Set up the default pool before its first use.

    ``size`` is the capacity of each data segment (a larger array gets a segment of its own),
    ``max_size`` the most bytes the pool may reserve in /dev/shm in all (default: half of
    /dev/shm), and ``wait`` how many seconds an allocation may wait for other processes to free
    memory before it raises ``MemoryError`` (default: do not wait). The environment variables
    ``PYSHM_SIZE``, ``PYSHM_MAX_SIZE`` (``512M``, ``2G``, ...) and ``PYSHM_WAIT`` do the same.

    Once the default pool exists only ``wait`` can change; changing ``size`` or ``max_size``
    then raises ``RuntimeError``.
    """
    for what, v in (("size", size), ("max_size", max_size)):
        if v is not None and (not isinstance(v, (int, np.integer)) or v <= 0):
            raise ValueError(f"{what} must be a positive number of bytes, not {v!r}")
    if wait is not None and not (isinstance(wait, (int, float)) and wait >= 0):
        raise ValueError(f"wait must be a non-negative number of seconds, not {wait!r}")
    with _lock:
        if _default is not None and (size is not None or max_size is not None):
            raise RuntimeError(
                "the default pool exists already; call pyshm.configure() before the first array, "
                "or set PYSHM_SIZE / PYSHM_MAX_SIZE in the environment"
            )
        if size is not None:
            _config["size"] = int(size)
        if max_size is not None:
            _config["max_size"] = int(max_size)
        if wait is not None:
            _config["wait"] = float(wait)
            if _default is not None:
                _default.wait = float(wait)


# --------------------------------------------------------------------------------------------
# Pools of this process (invariant 2)


def _leave_all() -> None:
    """Leave every pool this process uses (at exit)."""
    global _default
    with _lock:
        natives = list(_natives.values())
        _natives.clear()
        _default = None
    for n in natives:
        n.leave()


class _ExitHook:
    """Registers ``_leave_all`` with multiprocessing's exit machinery, again in each child."""

    def __init__(self) -> None:
        self.registered = False

    def ensure(self) -> None:
        if not self.registered:
            self.registered = True
            multiprocessing.util.Finalize(None, _leave_all, exitpriority=-100)
            multiprocessing.util.register_after_fork(self, _ExitHook._after_fork)

    def _after_fork(self) -> None:
        # In a new multiprocessing child (fork or forkserver), before its target runs.
        # multiprocessing cleared its finalizers: register ours again.
        multiprocessing.util.Finalize(None, _leave_all, exitpriority=-100)
        # Register at once in every inherited pool: this re-acquires the inherited arrays
        # before the parent can free them, instead of at the child's first use. Only in
        # multiprocessing children: a plain `os.fork` child may `exec` another program, which
        # would then count as a member holding every array for as long as it runs.
        for n in list(_natives.values()):
            try:
                n.join()
            except Exception:  # a full process table: the first real use reports it
                pass


_exit_hook = _ExitHook()


def _track(native: NativePool) -> NativePool:
    with _lock:
        existing = _natives.get(native.name)
        if existing is not None:
            return existing
        _natives[native.name] = native
        _exit_hook.ensure()
    from . import _pickle

    _pickle.register_loky_if_loaded()
    return native


def _pool_named(name: str) -> NativePool:
    """The pool of that name, opened if this process has not yet."""
    n = _natives.get(name)
    if n is not None:
        return n
    return _track(NativePool.open(name))


def _create_default() -> NativePool:
    global _default
    with _lock:
        if _default is not None:
            return _default
        cfg = _env_config()
        name = os.environ.get("PYSHM_POOL") or None
        native = None
        if name is not None:
            native = _natives.get(name)
            if native is None:
                try:
                    native = NativePool.open(name)
                except PoolNotFoundError:
                    native = None
        if native is None:
            native = NativePool.create(name, cfg["size"], cfg["max_size"], cfg["wait"], persistent=False)
            os.environ["PYSHM_POOL"] = native.name
        elif cfg["wait"] is not None:
            native.wait = cfg["wait"]
        native = _track(native)
        _default = native
        return native


def _adopt_default(native: NativePool) -> None:
    global _default
    with _lock:
        if _default is None:
            _default = native
            wait = _env_config()["wait"]
            if wait is not None:
                native.wait = wait


def default_pool() -> "Pool":
    """The default pool (created on first use)."""
    return Pool._wrap(_default or _create_default())


# --------------------------------------------------------------------------------------------
# Constructors


def _check_like(like: Any) -> None:
    if like is not None and not isinstance(like, np.ndarray):
        raise TypeError(f"pyshm creates numpy arrays; like= must be None or a numpy array, not {type(like).__name__}")


def _order_of(a: Any, order: Optional[str]) -> str:
    """The C/F order numpy's ``order=`` (C, F, A, K) asks for, given a prototype."""
    if order is None or order in ("K", "k", "A", "a"):
        flags = getattr(a, "flags", None)
        if flags is not None and flags.f_contiguous and not flags.c_contiguous:
            return "F"
        return "C"
    if order in ("C", "c", "F", "f"):
        return order.upper()
    raise ValueError(f"order must be one of 'C', 'F', 'A' or 'K', not {order!r}")


class _Constructors:
    """The numpy-style constructors, over ``self._native`` (a ``NativePool``)."""

    _native: NativePool

    def empty(self, shape: ShapeLike, dtype: Any = float, order: str = "C", *, like: Any = None) -> np.ndarray:
        """A new pooled array with unspecified contents, like ``numpy.empty``."""
        if like is not None:
            _check_like(like)
        return self._native.empty(shape, dtype, order)

    def zeros(self, shape: ShapeLike, dtype: Any = float, order: str = "C", *, like: Any = None) -> np.ndarray:
        """A new pooled array of zeros, like ``numpy.zeros``."""
        if like is not None:
            _check_like(like)
        return self._native.empty(shape, dtype, order, True)

    def ones(self, shape: ShapeLike, dtype: Any = float, order: str = "C", *, like: Any = None) -> np.ndarray:
        """A new pooled array of ones, like ``numpy.ones``."""
        a = self.empty(shape, dtype, order, like=like)
        np.copyto(a, 1, casting="unsafe")
        return a

    def full(
        self, shape: ShapeLike, fill_value: Any, dtype: Any = None, order: str = "C", *, like: Any = None
    ) -> np.ndarray:
        """A new pooled array filled with ``fill_value``, like ``numpy.full``."""
        if dtype is None:
            dtype = np.array(fill_value).dtype
        a = self.empty(shape, dtype, order, like=like)
        np.copyto(a, fill_value, casting="unsafe")
        return a

    def _like(self, prototype: Any, dtype: Any, order: str, shape: Optional[ShapeLike], zero: bool) -> np.ndarray:
        proto = prototype if isinstance(prototype, np.ndarray) else np.asarray(prototype)
        return self._native.empty(
            proto.shape if shape is None else shape,
            proto.dtype if dtype is None else dtype,
            _order_of(proto, order),
            zero,
        )

    def empty_like(
        self, prototype: Any, dtype: Any = None, order: str = "K", subok: bool = True, shape: Optional[ShapeLike] = None
    ) -> np.ndarray:
        """A new pooled array shaped like ``prototype``, like ``numpy.empty_like``."""
        return self._like(prototype, dtype, order, shape, False)

    def zeros_like(
        self, prototype: Any, dtype: Any = None, order: str = "K", subok: bool = True, shape: Optional[ShapeLike] = None
    ) -> np.ndarray:
        """A new pooled array of zeros shaped like ``prototype``, like ``numpy.zeros_like``."""
        return self._like(prototype, dtype, order, shape, True)

    def ones_like(
        self, prototype: Any, dtype: Any = None, order: str = "K", subok: bool = True, shape: Optional[ShapeLike] = None
    ) -> np.ndarray:
        """A new pooled array of ones shaped like ``prototype``, like ``numpy.ones_like``."""
        a = self.empty_like(prototype, dtype, order, subok, shape)
        np.copyto(a, 1, casting="unsafe")
        return a

    def full_like(
        self,
        prototype: Any,
        fill_value: Any,
        dtype: Any = None,
        order: str = "K",
        subok: bool = True,
        shape: Optional[ShapeLike] = None,
    ) -> np.ndarray:
        """A new pooled array filled with ``fill_value``, like ``numpy.full_like``."""
        a = self.empty_like(prototype, dtype, order, subok, shape)
        np.copyto(a, fill_value, casting="unsafe")
        return a

    def asarray(self, a: Any, dtype: Any = None, order: Optional[str] = None, *, like: Any = None) -> np.ndarray:
        """``a`` as a pooled array: ``a`` itself if it already lives in a pool with this dtype
        and order, otherwise a pooled copy (like ``numpy.asarray``)."""
        if like is not None:
            _check_like(like)
        if isinstance(a, np.ndarray) and _native.is_pooled(a):
            if (dtype is None or np.dtype(dtype) == a.dtype) and (
                order in (None, "A", "a", "K", "k")
                or (order in ("C", "c") and a.flags.c_contiguous)
                or (order in ("F", "f") and a.flags.f_contiguous)
            ):
                return a
        src = np.asarray(a, dtype=dtype)
        out = self._native.empty(src.shape, src.dtype, _order_of(src, order))
        np.copyto(out, src, casting="no")
        return out

    def copy(self, a: Any, order: str = "K") -> np.ndarray:
        """A new pooled copy of ``a``, always (like ``numpy.copy``)."""
        src = np.asarray(a)
        out = self._native.empty(src.shape, src.dtype, _order_of(src, order))
        np.copyto(out, src, casting="no")
        return out


class Pool(_Constructors):
    """A pool of shared memory that numpy arrays live in.

    ``Pool()`` creates a private pool with a random name; ``Pool("name")`` creates the pool of
    that name or opens it if it exists, so unrelated programs can share it. ``size`` is the
    capacity of each data segment, ``max_size`` the most bytes the pool may take in /dev/shm,
    ``wait`` how long an allocation may wait for other processes to free memory. A named pool
    is persistent (it outlives its processes until unlinked) unless ``persistent=False``.

    Used as a context manager, the pool is closed on exit (see :meth:`close`). It has the
    module's constructors as methods: ``pool.empty(...)``, ``pool.zeros(...)``, and so on.
    """

    def __init__(
        self,
        name: Optional[str] = None,
        size: Optional[int] = None,
        max_size: Optional[int] = None,
        wait: Optional[float] = None,
        *,
        persistent: Optional[bool] = None,
    ) -> None:
        self._native = _track(NativePool.create(name, size, max_size, wait, persistent))
        if wait is not None:
            self._native.wait = float(wait)
        self._closed = False

    @classmethod
    def _wrap(cls, native: NativePool) -> "Pool":
        p = cls.__new__(cls)
        p._native = native
        p._closed = False
        return p

    @classmethod
    def open(cls, name: str) -> "Pool":
        """Open an existing pool by name (``PoolNotFoundError`` if there is none)."""
        return cls._wrap(_pool_named(name))

    @property
    def name(self) -> str:
        """The pool's name: its files in /dev/shm are ``pyshm-<name>`` and ``pyshm-<name>-<n>``."""
        return self._native.name

    @property
    def wait(self) -> Optional[float]:
        """Seconds an allocation may wait for memory (``None``: it fails at once)."""
        return self._native.wait

    @wait.setter
    def wait(self, seconds: Optional[float]) -> None:
        self._native.wait = seconds

    def stats(self) -> PoolStats:
        """Capacity, use, free space, largest free block, arrays, segments and processes."""
        return PoolStats(**self._native.stats())

    def collect(self) -> CollectReport:
        """Reclaim what dead processes held (this also runs by itself when memory runs out)."""
        return CollectReport(**self._native.collect())

    def reclaim_handles(self, older_than: float) -> int:
        """Cancel handles sent more than ``older_than`` seconds ago and never attached (a
        handle keeps its array alive until attached, even after its sender died, because it may
        still be in a queue); returns how many."""
        return self._native.reclaim_tokens(older_than)

    def check(self) -> None:
        """Check the allocator's invariants in every segment (``RuntimeError`` if broken)."""
        self._native.check()

    def handle(self, a: np.ndarray) -> "Handle":
        """A handle to ``a`` (see :func:`pyshm.handle`)."""
        return handle(a)

    def attach(self, h: "Handle") -> np.ndarray:
        """The array a handle names (see :func:`pyshm.attach`)."""
        return _attach_handle(h)

    def unlink(self) -> None:
        """Remove the pool's files from /dev/shm now; processes that use it keep working."""
        self._native.unlink()

    def close(self) -> None:
        """Leave the pool: this process's arrays from it no longer keep their memory (they stay
        mapped, so touching them cannot crash, but their memory may be reused), and the last
        process to leave a non-persistent pool removes it from /dev/shm."""
        global _default
        if self._closed:
            return
        self._closed = True
        with _lock:
            if _natives.get(self.name) is self._native:
                del _natives[self.name]
            if _default is self._native:
                _default = None
        self._native.leave()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"pyshm.Pool({self.name!r})"


# Module-level constructors on the default pool. Written out (not generated) so that each is a
# single Python call in front of the native one: `empty` is on the hot path.


def empty(shape: ShapeLike, dtype: Any = float, order: str = "C", *, like: Any = None) -> np.ndarray:
    """A new array in the default pool with unspecified contents, like ``numpy.empty``."""
    if like is not None:
        _check_like(like)
    return (_default or _create_default()).empty(shape, dtype, order)


def zeros(shape: ShapeLike, dtype: Any = float, order: str = "C", *, like: Any = None) -> np.ndarray:
    """A new array of zeros in the default pool, like ``numpy.zeros``."""
    if like is not None:
        _check_like(like)
    return (_default or _create_default()).empty(shape, dtype, order, True)


def _on_default() -> Pool:
    return Pool._wrap(_default or _create_default())


def ones(shape: ShapeLike, dtype: Any = float, order: str = "C", *, like: Any = None) -> np.ndarray:
    """A new array of ones in the default pool, like ``numpy.ones``."""
    return _on_default().ones(shape, dtype, order, like=like)


def full(shape: ShapeLike, fill_value: Any, dtype: Any = None, order: str = "C", *, like: Any = None) -> np.ndarray:
    """A new array filled with ``fill_value`` in the default pool, like ``numpy.full``."""
    return _on_default().full(shape, fill_value, dtype, order, like=like)


def empty_like(
    prototype: Any, dtype: Any = None, order: str = "K", subok: bool = True, shape: Optional[ShapeLike] = None
) -> np.ndarray:
    """A new array in the default pool shaped like ``prototype``, like ``numpy.empty_like``."""
    return _on_default().empty_like(prototype, dtype, order, subok, shape)


def zeros_like(
    prototype: Any, dtype: Any = None, order: str = "K", subok: bool = True, shape: Optional[ShapeLike] = None
) -> np.ndarray:
    """Like ``numpy.zeros_like``, in the default pool."""
    return _on_default().zeros_like(prototype, dtype, order, subok, shape)


def ones_like(
    prototype: Any, dtype: Any = None, order: str = "K", subok: bool = True, shape: Optional[ShapeLike] = None
) -> np.ndarray:
    """Like ``numpy.ones_like``, in the default pool."""
    return _on_default().ones_like(prototype, dtype, order, subok, shape)


def full_like(
    prototype: Any,
    fill_value: Any,
    dtype: Any = None,
    order: str = "K",
    subok: bool = True,
    shape: Optional[ShapeLike] = None,
) -> np.ndarray:
    """Like ``numpy.full_like``, in the default pool."""
    return _on_default().full_like(prototype, fill_value, dtype, order, subok, shape)


def asarray(a: Any, dtype: Any = None, order: Optional[str] = None, *, like: Any = None) -> np.ndarray:
    """``a`` itself if it already lives in a pool (with this dtype and order), otherwise a copy
    of it in the default pool, like ``numpy.asarray``."""
    if isinstance(a, np.ndarray) and dtype is None and order is None and like is None and _native.is_pooled(a):
        return a
    return _on_default().asarray(a, dtype, order, like=like)


def copy(a: Any, order: str = "K") -> np.ndarray:
    """A new copy of ``a`` in the default pool, always (like ``numpy.copy``)."""
    return _on_default().copy(a, order)


def is_shared(a: Any) -> bool:
    """Whether ``a`` is a numpy array (or view) whose data lives in a pyshm pool."""
    return _native.is_pooled(a)


def stats() -> PoolStats:
    """The default pool's :class:`PoolStats`."""
    return _on_default().stats()


def collect() -> CollectReport:
    """Reclaim what dead processes held in the default pool."""
    return _on_default().collect()


# --------------------------------------------------------------------------------------------
# Handles


class Handle:
    """A small picklable reference to a pooled array or view, for :func:`attach` in any
    process of the pool. It keeps the array alive until it is first attached, even if every
    process lets go of the array before; after that it attaches while some process holds the
    array, and raises :class:`StaleHandleError` once the array is freed."""

    __slots__ = ("pool", "data", "retype")

    def __init__(self, pool: str, data: bytes, retype: Optional[tuple] = None) -> None:
        self.pool = pool
        self.data = data
        self.retype = retype

    def __reduce__(self) -> tuple:
        return (Handle, (self.pool, self.data, self.retype))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Handle) and (self.pool, self.data, self.retype) == (
            other.pool,
            other.data,
            other.retype,
        )

    def __hash__(self) -> int:
        return hash((self.pool, self.data))

    def __repr__(self) -> str:
        return f"<pyshm.Handle pool={self.pool!r} {len(self.data)} bytes>"


def handle(a: np.ndarray) -> Handle:
    """A :class:`Handle` to the pooled array or view ``a`` (``ValueError`` if ``a`` is not in a
    pool: use ``pyshm.asarray(a)`` first)."""
    r = _native.pooled_handle(a)
    if r is None:
        raise ValueError("the array does not live in a pyshm pool; use pyshm.asarray(a) to move it there")
    return Handle(*r)


def _attach_handle(h: Handle) -> np.ndarray:
    if not isinstance(h.pool, str) or not isinstance(h.data, bytes):
        raise ValueError("invalid handle")
    return _pool_named(h.pool).attach(h.data, h.retype)


def attach(h: Union[Handle, str]) -> np.ndarray:
    """The array a :class:`Handle` names, or the named array ``h`` (see :func:`pyshm.create`).

    Raises :class:`StaleHandleError` (a ``ValueError``) for a handle whose array was freed,
    ``ValueError`` for a malformed handle, :class:`PoolNotFoundError` when the pool is gone, and
    ``FileNotFoundError`` for an unknown name."""
    if isinstance(h, Handle):
        return _attach_handle(h)
    if isinstance(h, str):
        from . import _named

        return _named.attach(h)
    raise TypeError(f"attach() takes a pyshm.Handle or an array name, not {type(h).__name__}")


def _rebuild(
    pool: str, data: bytes, retype: Optional[tuple] = None, default: bool = False, readonly: bool = False
) -> np.ndarray:
    """Unpickles an array sent as a handle (see ``_pickle``)."""
    native = _pool_named(pool)
    if default and _default is None:
        _adopt_default(native)
    a = native.attach(data, retype)
    if readonly:
        a.flags.writeable = False
    return a


def _is_default(name: str) -> bool:
    return _default is not None and _default.name == name
