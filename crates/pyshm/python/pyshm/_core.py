"""Pools and the numpy-style constructors, on an explicit pool or the default one.

Invariants (docs/architecture.md, "The Python layer"):

1. A pooled array is a plain ``numpy.ndarray`` whose ``base`` is a ``_native.Block``; numpy
   collapses the base of every view to it, so the block (this process's reference to the
   array) lives exactly as long as some array or view over its data.
2. A :class:`Pool` is a view of one native pool, which ``_pools`` registers, leaves at exit and
   joins after a fork; closing a pool leaves it at once.

The default pool, configuration, exit and fork live in ``_pools``; handles in ``_handles``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from . import _handles, _native, _pools
from ._handles import Handle
from ._native import CollectReport, NativePool, PoolStats

__all__ = [
    "Pool",
    "PoolStats",
    "CollectReport",
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
    "stats",
    "collect",
    "trim",
]

configure = _pools.configure

if TYPE_CHECKING:  # the precise overloads are in _core.pyi, which type checkers read instead
    from numpy.typing import NDArray

    from ._typing import DTypeSpec, OrderCF, OrderKACF, ShapeLike


def default_pool() -> "Pool":
    """The default pool (created on first use)."""
    return wrap_native(_pools.default_native())


# --------------------------------------------------------------------------------------------
# Constructors


def _check_like(like: Any) -> None:
    if like is not None and not isinstance(like, np.ndarray):
        raise TypeError(f"pyshm creates numpy arrays; like= must be None or a numpy array, not {type(like).__name__}")


def order_of(a: Any, order: Optional[str]) -> str:
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
    """The numpy-style constructors, over ``self._native`` (a ``NativePool``).

    Their types, numpy's own (``zeros(3, np.int32)`` is an int32 array), are in ``_core.pyi``.
    """

    _native: NativePool

    def empty(
        self, shape: ShapeLike, dtype: DTypeSpec = float, order: OrderCF = "C", *, like: Optional[NDArray[Any]] = None
    ) -> NDArray[Any]:
        """A new pooled array with unspecified contents, like ``numpy.empty``."""
        if like is not None:
            _check_like(like)
        return self._native.empty(shape, dtype, order)

    def zeros(
        self, shape: ShapeLike, dtype: DTypeSpec = float, order: OrderCF = "C", *, like: Optional[NDArray[Any]] = None
    ) -> NDArray[Any]:
        """A new pooled array of zeros, like ``numpy.zeros``."""
        if like is not None:
            _check_like(like)
        return self._native.empty(shape, dtype, order, True)

    def ones(
        self, shape: ShapeLike, dtype: DTypeSpec = float, order: OrderCF = "C", *, like: Optional[NDArray[Any]] = None
    ) -> NDArray[Any]:
        """A new pooled array of ones, like ``numpy.ones``."""
        a = self.empty(shape, dtype, order, like=like)
        np.copyto(a, 1, casting="unsafe")
        return a

    def full(
        self,
        shape: ShapeLike,
        fill_value: Any,
        dtype: DTypeSpec = None,
        order: OrderCF = "C",
        *,
        like: Optional[NDArray[Any]] = None,
    ) -> NDArray[Any]:
        """A new pooled array filled with ``fill_value``, like ``numpy.full`` (the dtype is
        ``fill_value``'s when not given)."""
        if dtype is None:
            dtype = np.array(fill_value).dtype
        a = self.empty(shape, dtype, order, like=like)
        np.copyto(a, fill_value, casting="unsafe")
        return a

    def _like(
        self, prototype: Any, dtype: DTypeSpec, order: OrderKACF, shape: Optional[ShapeLike], zero: bool
    ) -> NDArray[Any]:
        proto = prototype if isinstance(prototype, np.ndarray) else np.asarray(prototype)
        return self._native.empty(
            proto.shape if shape is None else shape,
            proto.dtype if dtype is None else dtype,
            order_of(proto, order),
            zero,
        )

    def empty_like(
        self,
        prototype: Any,
        dtype: DTypeSpec = None,
        order: OrderKACF = "K",
        subok: bool = True,
        shape: Optional[ShapeLike] = None,
    ) -> NDArray[Any]:
        """A new pooled array shaped like ``prototype``, like ``numpy.empty_like`` (always a
        plain ``numpy.ndarray``: ``subok`` is accepted and ignored)."""
        return self._like(prototype, dtype, order, shape, False)

    def zeros_like(
        self,
        prototype: Any,
        dtype: DTypeSpec = None,
        order: OrderKACF = "K",
        subok: bool = True,
        shape: Optional[ShapeLike] = None,
    ) -> NDArray[Any]:
        """A new pooled array of zeros shaped like ``prototype``, like ``numpy.zeros_like``."""
        return self._like(prototype, dtype, order, shape, True)

    def ones_like(
        self,
        prototype: Any,
        dtype: DTypeSpec = None,
        order: OrderKACF = "K",
        subok: bool = True,
        shape: Optional[ShapeLike] = None,
    ) -> NDArray[Any]:
        """A new pooled array of ones shaped like ``prototype``, like ``numpy.ones_like``."""
        a = self.empty_like(prototype, dtype, order, subok, shape)
        np.copyto(a, 1, casting="unsafe")
        return a

    def full_like(
        self,
        prototype: Any,
        fill_value: Any,
        dtype: DTypeSpec = None,
        order: OrderKACF = "K",
        subok: bool = True,
        shape: Optional[ShapeLike] = None,
    ) -> NDArray[Any]:
        """A new pooled array filled with ``fill_value``, like ``numpy.full_like``."""
        a = self.empty_like(prototype, dtype, order, subok, shape)
        np.copyto(a, fill_value, casting="unsafe")
        return a

    def asarray(
        self, a: Any, dtype: DTypeSpec = None, order: OrderKACF = None, *, like: Optional[NDArray[Any]] = None
    ) -> NDArray[Any]:
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
        out = self._native.empty(src.shape, src.dtype, order_of(src, order))
        np.copyto(out, src, casting="no")
        return out

    def copy(self, a: Any, order: OrderKACF = "K") -> NDArray[Any]:
        """A new pooled copy of ``a``, always (like ``numpy.copy``)."""
        src = np.asarray(a)
        out = self._native.empty(src.shape, src.dtype, order_of(src, order))
        np.copyto(out, src, casting="no")
        return out


class Pool(_Constructors):
    """A pool of shared memory that numpy arrays live in.

    ``Pool()`` creates a private pool with a random name; ``Pool("name")`` creates the pool of
    that name or opens it if it exists, so unrelated programs can share it. ``size`` is the
    capacity of each data segment, ``max_size`` the most bytes the pool may take in /dev/shm,
    ``wait`` how long an allocation may wait for other processes to free memory. A named pool
    is persistent (it outlives its processes until unlinked) unless ``persistent=False``.
    ``keep`` bounds the warm reserve: bytes of freed arrays kept for reuse (default 512 MiB,
    at most an eighth of /dev/shm); freed memory beyond it is given back to the system at once.
    ``backend="memfd"`` keeps the pool's segments out of /dev/shm (see :func:`configure`).
    ``process_slots`` is how many processes may use the pool at once (default 255, at most
    4,096; about 1,000 can map one pool at once for now, see the guide); one more raises
    :class:`PoolFullError`.

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
        keep: Optional[int] = None,
        backend: Optional[str] = None,
        process_slots: Optional[int] = None,
    ) -> None:
        if keep is not None and (not isinstance(keep, (int, np.integer)) or keep < 0):
            raise ValueError(f"keep must be a non-negative number of bytes, not {keep!r}")
        if backend is not None and backend not in _pools.BACKENDS:
            raise ValueError(f"backend must be 'shm' or 'memfd', not {backend!r}")
        keep = None if keep is None else int(keep)
        slots = _pools.check_process_slots(process_slots)
        self._native = _pools.track(
            NativePool.create(name, size, max_size, wait, persistent, keep=keep, backend=backend, process_slots=slots)
        )
        if wait is not None:
            self._native.wait = float(wait)
        self._closed = False

    @classmethod
    def open(cls, name: str) -> "Pool":
        """Open an existing pool by name (``PoolNotFoundError`` if there is none)."""
        return wrap_native(_pools.pool_named(name))

    @property
    def name(self) -> str:
        """The pool's name: its files in /dev/shm are ``pyshm-<name>`` and ``pyshm-<name>-<random suffix>``."""
        return self._native.name

    @property
    def backend(self) -> str:
        """Where the pool's segments after the first live: ``"shm"`` (files in /dev/shm) or
        ``"memfd"`` (anonymous memory shared by descriptor), as its creator chose."""
        return self._native.backend

    @property
    def wait(self) -> Optional[float]:
        """Seconds an allocation may wait for memory (``None``: it fails at once)."""
        return self._native.wait

    @wait.setter
    def wait(self, seconds: Optional[float]) -> None:
        self._native.wait = seconds

    def stats(self) -> PoolStats:
        """Capacity, use, held and live bytes, the warm reserve, arrays, segments and processes."""
        return self._native.stats()

    def collect(self) -> CollectReport:
        """Reclaim what dead processes held (this also runs by itself when memory runs out)."""
        return self._native.collect()

    def trim(self) -> int:
        """Give the pool's free memory back to the system.

        Freed arrays' memory stays with the pool for fast reuse; this returns every free page
        to the system: freed arrays' pages, the blocks this process keeps for its next small
        arrays, and the free pages of the pool's metadata (other processes are asked to hand
        back the blocks they keep at their next operation). An allocation in another process
        meanwhile waits for the trim rather than failing.

        Returns
        -------
        int
            Bytes given back.

        Examples
        --------
        >>> import pyshm
        >>> with pyshm.Pool() as pool:
        ...     a = pool.zeros(1 << 20, dtype="u1")
        ...     del a
        ...     pool.trim() >= 1 << 20
        True
        """
        return self._native.trim()

    def reclaim_handles(self, older_than: float) -> int:
        """Cancel handles sent more than ``older_than`` seconds ago and never attached (a
        handle keeps its array alive until attached, even after its sender died, because it may
        still be in a queue); returns how many."""
        return self._native.reclaim_tokens(older_than)

    def check(self) -> None:
        """Check the allocator's invariants in every segment (``RuntimeError`` if broken)."""
        self._native.check()

    def handle(self, a: NDArray[Any]) -> Handle:
        """A handle to ``a`` (see :func:`pyshm.handle`)."""
        return _handles.handle(a)

    def attach(self, h: Handle) -> NDArray[Any]:
        """The array a handle names (see :func:`pyshm.attach`)."""
        return _handles.attach_handle(h)

    def unlink(self) -> None:
        """Remove the pool's files from /dev/shm now; processes that use it keep working."""
        self._native.unlink()

    def close(self) -> None:
        """Leave the pool: this process's arrays from it no longer keep their memory (they stay
        mapped, so touching them cannot crash, but their memory may be reused), and the last
        process to leave a non-persistent pool removes it from /dev/shm."""
        if self._closed:
            return
        self._closed = True
        _pools.forget(self._native)
        self._native.leave()  # also takes it out of the native registry

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"pyshm.Pool({self.name!r})"


def wrap_native(native: NativePool) -> Pool:
    """A :class:`Pool` over an open native pool (no new pool is created)."""
    p = Pool.__new__(Pool)
    p._native = native
    p._closed = False
    return p


def native_of(pool: Pool) -> NativePool:
    """The native pool behind ``pool`` (``ValueError`` if it was closed)."""
    if pool._closed:
        raise ValueError(f"the pool {pool.name!r} is closed")
    return pool._native


# Module-level constructors on the default pool. Written out (not generated) so that each is a
# single Python call in front of the native one: `empty` is on the hot path. Their overloads are
# the methods' (in _core.pyi).


def empty(
    shape: ShapeLike, dtype: DTypeSpec = float, order: OrderCF = "C", *, like: Optional[NDArray[Any]] = None
) -> NDArray[Any]:
    """A new array in the default pool with unspecified contents, like ``numpy.empty``.

    ``shape`` is an int or a sequence of ints (anything with ``__index__``, such as
    ``numpy.int64``); ``dtype`` anything ``numpy.dtype`` takes; ``order`` ``"C"`` or ``"F"``.
    ``like`` is accepted for numpy's signature and must be ``None`` or a numpy array."""
    if like is not None:
        _check_like(like)
    return (_pools.default or _pools.create_default()).empty(shape, dtype, order)


def zeros(
    shape: ShapeLike, dtype: DTypeSpec = float, order: OrderCF = "C", *, like: Optional[NDArray[Any]] = None
) -> NDArray[Any]:
    """A new array of zeros in the default pool, like ``numpy.zeros``."""
    if like is not None:
        _check_like(like)
    return (_pools.default or _pools.create_default()).empty(shape, dtype, order, True)


def _on_default() -> Pool:
    return wrap_native(_pools.default or _pools.create_default())


def ones(
    shape: ShapeLike, dtype: DTypeSpec = float, order: OrderCF = "C", *, like: Optional[NDArray[Any]] = None
) -> NDArray[Any]:
    """A new array of ones in the default pool, like ``numpy.ones``."""
    return _on_default().ones(shape, dtype, order, like=like)


def full(
    shape: ShapeLike,
    fill_value: Any,
    dtype: DTypeSpec = None,
    order: OrderCF = "C",
    *,
    like: Optional[NDArray[Any]] = None,
) -> NDArray[Any]:
    """A new array filled with ``fill_value`` in the default pool, like ``numpy.full`` (the
    dtype is ``fill_value``'s when not given)."""
    return _on_default().full(shape, fill_value, dtype, order, like=like)


def empty_like(
    prototype: Any,
    dtype: DTypeSpec = None,
    order: OrderKACF = "K",
    subok: bool = True,
    shape: Optional[ShapeLike] = None,
) -> NDArray[Any]:
    """A new array in the default pool shaped like ``prototype``, like ``numpy.empty_like``
    (always a plain ``numpy.ndarray``: ``subok`` is accepted and ignored)."""
    return _on_default().empty_like(prototype, dtype, order, subok, shape)


def zeros_like(
    prototype: Any,
    dtype: DTypeSpec = None,
    order: OrderKACF = "K",
    subok: bool = True,
    shape: Optional[ShapeLike] = None,
) -> NDArray[Any]:
    """Like ``numpy.zeros_like``, in the default pool."""
    return _on_default().zeros_like(prototype, dtype, order, subok, shape)


def ones_like(
    prototype: Any,
    dtype: DTypeSpec = None,
    order: OrderKACF = "K",
    subok: bool = True,
    shape: Optional[ShapeLike] = None,
) -> NDArray[Any]:
    """Like ``numpy.ones_like``, in the default pool."""
    return _on_default().ones_like(prototype, dtype, order, subok, shape)


def full_like(
    prototype: Any,
    fill_value: Any,
    dtype: DTypeSpec = None,
    order: OrderKACF = "K",
    subok: bool = True,
    shape: Optional[ShapeLike] = None,
) -> NDArray[Any]:
    """Like ``numpy.full_like``, in the default pool."""
    return _on_default().full_like(prototype, fill_value, dtype, order, subok, shape)


def asarray(
    a: Any, dtype: DTypeSpec = None, order: OrderKACF = None, *, like: Optional[NDArray[Any]] = None
) -> NDArray[Any]:
    """``a`` itself if it already lives in a pool (with this dtype and order), otherwise a copy
    of it in the default pool, like ``numpy.asarray``."""
    if isinstance(a, np.ndarray) and dtype is None and order is None and like is None and _native.is_pooled(a):
        return a
    return _on_default().asarray(a, dtype, order, like=like)


def copy(a: Any, order: OrderKACF = "K") -> NDArray[Any]:
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


def trim() -> int:
    """Give the default pool's free memory back to the system; returns the bytes.

    See :meth:`Pool.trim`.
    """
    return _on_default().trim()
