"""Type stubs of ``_core`` (the runtime module is ``_core.py``; mypy.stubtest checks each against the
other in tests/test_typing.py, and tests/test_stubs.py that they name the same things).

The constructors' overloads are numpy's own (``numpy/_core/multiarray.pyi`` and ``numeric.pyi``,
numpy 2.4), in numpy's order:

- the shape: an int (or anything with ``__index__``) gives a 1-d array, a tuple of ints an array of
  that many dimensions, any other shape (a list, a tuple holding numpy integers) any shape;
- the dtype: none gives ``float64``, one that names a single scalar type (``np.int32``,
  ``np.dtype(np.int32)``, an array) an array of that type, any other (``"f4"``, ``float``, a
  structured spec) ``NDArray[Any]``;
- ``full`` without a dtype has a numpy scalar fill value's type; the ``*_like`` functions,
  ``asarray`` and ``copy`` keep an array argument's scalar type.

The short names are ``_typing``'s, renamed so that each overload fits a line or two.
"""

from typing import Any, Optional, overload
from typing import SupportsIndex as _Int

import numpy as np
from numpy.typing import NDArray

from ._native import CollectReport as CollectReport
from ._native import Handle, NativePool
from ._native import PoolStats as PoolStats
from ._pools import configure as configure
from ._typing import Array, Array1D
from ._typing import DTypeSpec as _DTypeSpec
from ._typing import LikeArg as _Like
from ._typing import OrderCF as _CF
from ._typing import OrderKACF as _KACF
from ._typing import ScalarArrayLike as _AL
from ._typing import ScalarDTypeLike as _DT
from ._typing import ScalarT as _T
from ._typing import ShapeLike as _Shape
from ._typing import ShapeT as _ShapeT

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

_OptShape = Optional[_Shape]

def default_pool() -> Pool:
    """The default pool (created on first use)."""

def order_of(a: Any, order: Optional[str]) -> str:
    """The C/F order numpy's ``order=`` (C, F, A, K) asks for, given a prototype."""

class _Constructors:
    """The numpy-style constructors, over ``self._native`` (a ``NativePool``)."""

    _native: NativePool

    @overload
    def empty(
        self, shape: _Int, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
    ) -> Array1D[np.float64]:
        """A new pooled array with unspecified contents, like ``numpy.empty``."""
    @overload
    def empty(
        self, shape: _Int, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
    ) -> Array1D[_T]: ...
    @overload
    def empty(
        self, shape: _Int, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...
    ) -> Array1D[Any]: ...
    @overload
    def empty(
        self, shape: _ShapeT, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
    ) -> Array[_ShapeT, np.float64]: ...
    @overload
    def empty(
        self, shape: _ShapeT, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
    ) -> Array[_ShapeT, _T]: ...
    @overload
    def empty(
        self, shape: _ShapeT, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...
    ) -> Array[_ShapeT, Any]: ...
    @overload
    def empty(
        self, shape: _Shape, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
    ) -> NDArray[np.float64]: ...
    @overload
    def empty(
        self, shape: _Shape, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
    ) -> NDArray[_T]: ...
    @overload
    def empty(
        self, shape: _Shape, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...
    ) -> NDArray[Any]: ...

    @overload
    def zeros(
        self, shape: _Int, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
    ) -> Array1D[np.float64]:
        """A new pooled array of zeros, like ``numpy.zeros``."""
    @overload
    def zeros(
        self, shape: _Int, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
    ) -> Array1D[_T]: ...
    @overload
    def zeros(
        self, shape: _Int, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...
    ) -> Array1D[Any]: ...
    @overload
    def zeros(
        self, shape: _ShapeT, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
    ) -> Array[_ShapeT, np.float64]: ...
    @overload
    def zeros(
        self, shape: _ShapeT, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
    ) -> Array[_ShapeT, _T]: ...
    @overload
    def zeros(
        self, shape: _ShapeT, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...
    ) -> Array[_ShapeT, Any]: ...
    @overload
    def zeros(
        self, shape: _Shape, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
    ) -> NDArray[np.float64]: ...
    @overload
    def zeros(
        self, shape: _Shape, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
    ) -> NDArray[_T]: ...
    @overload
    def zeros(
        self, shape: _Shape, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...
    ) -> NDArray[Any]: ...

    @overload
    def ones(
        self, shape: _Int, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
    ) -> Array1D[np.float64]:
        """A new pooled array of ones, like ``numpy.ones``."""
    @overload
    def ones(
        self, shape: _Int, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
    ) -> Array1D[_T]: ...
    @overload
    def ones(
        self, shape: _Int, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...
    ) -> Array1D[Any]: ...
    @overload
    def ones(
        self, shape: _ShapeT, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
    ) -> Array[_ShapeT, np.float64]: ...
    @overload
    def ones(
        self, shape: _ShapeT, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
    ) -> Array[_ShapeT, _T]: ...
    @overload
    def ones(
        self, shape: _ShapeT, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...
    ) -> Array[_ShapeT, Any]: ...
    @overload
    def ones(
        self, shape: _Shape, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
    ) -> NDArray[np.float64]: ...
    @overload
    def ones(
        self, shape: _Shape, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
    ) -> NDArray[_T]: ...
    @overload
    def ones(
        self, shape: _Shape, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...
    ) -> NDArray[Any]: ...

    @overload
    def full(
        self, shape: _Int, fill_value: _T, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
    ) -> Array1D[_T]:
        """A new pooled array filled with ``fill_value``, like ``numpy.full`` (the dtype is
        ``fill_value``'s when not given)."""
    @overload
    def full(
        self, shape: _Int, fill_value: Any, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
    ) -> Array1D[_T]: ...
    @overload
    def full(
        self, shape: _Int, fill_value: Any, dtype: _DTypeSpec = ..., order: _CF = ..., *, like: _Like = ...
    ) -> Array1D[Any]: ...
    @overload
    def full(
        self, shape: _ShapeT, fill_value: _T, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
    ) -> Array[_ShapeT, _T]: ...
    @overload
    def full(
        self, shape: _ShapeT, fill_value: Any, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
    ) -> Array[_ShapeT, _T]: ...
    @overload
    def full(
        self, shape: _ShapeT, fill_value: Any, dtype: _DTypeSpec = ..., order: _CF = ..., *, like: _Like = ...
    ) -> Array[_ShapeT, Any]: ...
    @overload
    def full(
        self, shape: _Shape, fill_value: _T, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
    ) -> NDArray[_T]: ...
    @overload
    def full(
        self, shape: _Shape, fill_value: Any, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
    ) -> NDArray[_T]: ...
    @overload
    def full(
        self, shape: _Shape, fill_value: Any, dtype: _DTypeSpec = ..., order: _CF = ..., *, like: _Like = ...
    ) -> NDArray[Any]: ...

    @overload
    def empty_like(
        self, prototype: _AL[_T], dtype: None = ..., order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
    ) -> NDArray[_T]:
        """A new pooled array shaped like ``prototype``, like ``numpy.empty_like`` (always a
        plain ``numpy.ndarray``: ``subok`` is accepted and ignored)."""
    @overload
    def empty_like(
        self, prototype: object, dtype: None = ..., order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
    ) -> NDArray[Any]: ...
    @overload
    def empty_like(
        self, prototype: Any, dtype: _DT[_T], order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
    ) -> NDArray[_T]: ...
    @overload
    def empty_like(
        self, prototype: Any, dtype: _DTypeSpec, order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
    ) -> NDArray[Any]: ...

    @overload
    def zeros_like(
        self, prototype: _AL[_T], dtype: None = ..., order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
    ) -> NDArray[_T]:
        """A new pooled array of zeros shaped like ``prototype``, like ``numpy.zeros_like``."""
    @overload
    def zeros_like(
        self, prototype: object, dtype: None = ..., order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
    ) -> NDArray[Any]: ...
    @overload
    def zeros_like(
        self, prototype: Any, dtype: _DT[_T], order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
    ) -> NDArray[_T]: ...
    @overload
    def zeros_like(
        self, prototype: Any, dtype: _DTypeSpec, order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
    ) -> NDArray[Any]: ...

    @overload
    def ones_like(
        self, prototype: _AL[_T], dtype: None = ..., order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
    ) -> NDArray[_T]:
        """A new pooled array of ones shaped like ``prototype``, like ``numpy.ones_like``."""
    @overload
    def ones_like(
        self, prototype: object, dtype: None = ..., order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
    ) -> NDArray[Any]: ...
    @overload
    def ones_like(
        self, prototype: Any, dtype: _DT[_T], order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
    ) -> NDArray[_T]: ...
    @overload
    def ones_like(
        self, prototype: Any, dtype: _DTypeSpec, order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
    ) -> NDArray[Any]: ...

    @overload
    def full_like(
        self,
        prototype: _AL[_T],
        fill_value: Any,
        dtype: None = ...,
        order: _KACF = ...,
        subok: bool = ...,
        shape: _OptShape = ...,
    ) -> NDArray[_T]:
        """A new pooled array filled with ``fill_value``, like ``numpy.full_like``."""
    @overload
    def full_like(
        self,
        prototype: object,
        fill_value: Any,
        dtype: None = ...,
        order: _KACF = ...,
        subok: bool = ...,
        shape: _OptShape = ...,
    ) -> NDArray[Any]: ...
    @overload
    def full_like(
        self,
        prototype: Any,
        fill_value: Any,
        dtype: _DT[_T],
        order: _KACF = ...,
        subok: bool = ...,
        shape: _OptShape = ...,
    ) -> NDArray[_T]: ...
    @overload
    def full_like(
        self,
        prototype: Any,
        fill_value: Any,
        dtype: _DTypeSpec,
        order: _KACF = ...,
        subok: bool = ...,
        shape: _OptShape = ...,
    ) -> NDArray[Any]: ...

    @overload
    def asarray(self, a: _AL[_T], dtype: None = ..., order: _KACF = ..., *, like: _Like = ...) -> NDArray[_T]:
        """``a`` as a pooled array: ``a`` itself if it already lives in a pool with this dtype
        and order, otherwise a pooled copy (like ``numpy.asarray``)."""
    @overload
    def asarray(self, a: object, dtype: None = ..., order: _KACF = ..., *, like: _Like = ...) -> NDArray[Any]: ...
    @overload
    def asarray(self, a: Any, dtype: _DT[_T], order: _KACF = ..., *, like: _Like = ...) -> NDArray[_T]: ...
    @overload
    def asarray(self, a: Any, dtype: _DTypeSpec, order: _KACF = ..., *, like: _Like = ...) -> NDArray[Any]: ...

    @overload
    def copy(self, a: _AL[_T], order: _KACF = ...) -> NDArray[_T]:
        """A new pooled copy of ``a``, always (like ``numpy.copy``)."""
    @overload
    def copy(self, a: object, order: _KACF = ...) -> NDArray[Any]: ...

class Pool(_Constructors):
    """A pool of shared memory that numpy arrays live in.

    ``Pool()`` creates a private pool with a random name; ``Pool("name")`` creates the pool of
    that name or opens it if it exists, so unrelated programs can share it. ``size`` is the
    capacity of each data segment, ``max_size`` the most bytes the pool may take in /dev/shm,
    ``wait`` how long an allocation may wait for other processes to free memory. A named pool
    is persistent (it outlives its processes until unlinked) unless ``persistent=False``.
    ``keep`` bounds the warm reserve: bytes of freed arrays kept for reuse (default 512 MiB,
    at most an eighth of /dev/shm); freed memory beyond it is given back to the system at once.

    Used as a context manager, the pool is closed on exit (see :meth:`close`). It has the
    module's constructors as methods: ``pool.empty(...)``, ``pool.zeros(...)``, and so on.
    """

    _closed: bool

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
    ) -> None: ...
    @classmethod
    def open(cls, name: str) -> Pool:
        """Open an existing pool by name (``PoolNotFoundError`` if there is none)."""
    @property
    def name(self) -> str:
        """The pool's name: its files in /dev/shm are ``pyshm-<name>`` and ``pyshm-<name>-<random suffix>``."""
    @property
    def backend(self) -> str:
        """Where the pool's segments after the first live: ``"shm"`` or ``"memfd"``."""
    @property
    def wait(self) -> Optional[float]:
        """Seconds an allocation may wait for memory (``None``: it fails at once)."""
    @wait.setter
    def wait(self, seconds: Optional[float]) -> None: ...
    def stats(self) -> PoolStats:
        """Capacity, use, held and live bytes, the warm reserve, arrays, segments and processes."""
    def collect(self) -> CollectReport:
        """Reclaim what dead processes held (this also runs by itself when memory runs out)."""
    def trim(self) -> int:
        """Give the pool's free memory back to the system: the pages of every free block of a
        page or more in its data segments; returns the bytes given back."""
    def reclaim_handles(self, older_than: float) -> int:
        """Cancel handles sent more than ``older_than`` seconds ago and never attached (a
        handle keeps its array alive until attached, even after its sender died, because it may
        still be in a queue); returns how many."""
    def check(self) -> None:
        """Check the allocator's invariants in every segment (``RuntimeError`` if broken)."""
    def handle(self, a: NDArray[Any]) -> Handle:
        """A handle to ``a`` (see :func:`pyshm.handle`)."""
    def attach(self, h: Handle) -> NDArray[Any]:
        """The array a handle names (see :func:`pyshm.attach`)."""
    def unlink(self) -> None:
        """Remove the pool's files from /dev/shm now; processes that use it keep working."""
    def close(self) -> None:
        """Leave the pool: this process's arrays from it no longer keep their memory (they stay
        mapped, so touching them cannot crash, but their memory may be reused), and the last
        process to leave a non-persistent pool removes it from /dev/shm."""
    def __enter__(self) -> Pool: ...
    def __exit__(self, *exc: object) -> None: ...

def wrap_native(native: NativePool) -> Pool:
    """A :class:`Pool` over an open native pool (no new pool is created)."""

def native_of(pool: Pool) -> NativePool:
    """The native pool behind ``pool`` (``ValueError`` if it was closed)."""

# Module-level constructors on the default pool: the methods' overloads without ``self``.

@overload
def empty(shape: _Int, dtype: None = ..., order: _CF = ..., *, like: _Like = ...) -> Array1D[np.float64]:
    """A new array in the default pool with unspecified contents, like ``numpy.empty``.

    ``shape`` is an int or a sequence of ints (anything with ``__index__``, such as
    ``numpy.int64``); ``dtype`` anything ``numpy.dtype`` takes; ``order`` ``"C"`` or ``"F"``.
    ``like`` is accepted for numpy's signature and must be ``None`` or a numpy array."""
@overload
def empty(shape: _Int, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...) -> Array1D[_T]: ...
@overload
def empty(shape: _Int, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...) -> Array1D[Any]: ...
@overload
def empty(shape: _ShapeT, dtype: None = ..., order: _CF = ..., *, like: _Like = ...) -> Array[_ShapeT, np.float64]: ...
@overload
def empty(shape: _ShapeT, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...) -> Array[_ShapeT, _T]: ...
@overload
def empty(shape: _ShapeT, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...) -> Array[_ShapeT, Any]: ...
@overload
def empty(shape: _Shape, dtype: None = ..., order: _CF = ..., *, like: _Like = ...) -> NDArray[np.float64]: ...
@overload
def empty(shape: _Shape, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...) -> NDArray[_T]: ...
@overload
def empty(shape: _Shape, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...) -> NDArray[Any]: ...

@overload
def zeros(shape: _Int, dtype: None = ..., order: _CF = ..., *, like: _Like = ...) -> Array1D[np.float64]:
    """A new array of zeros in the default pool, like ``numpy.zeros``."""
@overload
def zeros(shape: _Int, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...) -> Array1D[_T]: ...
@overload
def zeros(shape: _Int, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...) -> Array1D[Any]: ...
@overload
def zeros(shape: _ShapeT, dtype: None = ..., order: _CF = ..., *, like: _Like = ...) -> Array[_ShapeT, np.float64]: ...
@overload
def zeros(shape: _ShapeT, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...) -> Array[_ShapeT, _T]: ...
@overload
def zeros(shape: _ShapeT, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...) -> Array[_ShapeT, Any]: ...
@overload
def zeros(shape: _Shape, dtype: None = ..., order: _CF = ..., *, like: _Like = ...) -> NDArray[np.float64]: ...
@overload
def zeros(shape: _Shape, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...) -> NDArray[_T]: ...
@overload
def zeros(shape: _Shape, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...) -> NDArray[Any]: ...

@overload
def ones(shape: _Int, dtype: None = ..., order: _CF = ..., *, like: _Like = ...) -> Array1D[np.float64]:
    """A new array of ones in the default pool, like ``numpy.ones``."""
@overload
def ones(shape: _Int, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...) -> Array1D[_T]: ...
@overload
def ones(shape: _Int, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...) -> Array1D[Any]: ...
@overload
def ones(shape: _ShapeT, dtype: None = ..., order: _CF = ..., *, like: _Like = ...) -> Array[_ShapeT, np.float64]: ...
@overload
def ones(shape: _ShapeT, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...) -> Array[_ShapeT, _T]: ...
@overload
def ones(shape: _ShapeT, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...) -> Array[_ShapeT, Any]: ...
@overload
def ones(shape: _Shape, dtype: None = ..., order: _CF = ..., *, like: _Like = ...) -> NDArray[np.float64]: ...
@overload
def ones(shape: _Shape, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...) -> NDArray[_T]: ...
@overload
def ones(shape: _Shape, dtype: _DTypeSpec, order: _CF = ..., *, like: _Like = ...) -> NDArray[Any]: ...

@overload
def full(
    shape: _Int, fill_value: _T, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
) -> Array1D[_T]:
    """A new array filled with ``fill_value`` in the default pool, like ``numpy.full`` (the
    dtype is ``fill_value``'s when not given)."""
@overload
def full(
    shape: _Int, fill_value: Any, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
) -> Array1D[_T]: ...
@overload
def full(
    shape: _Int, fill_value: Any, dtype: _DTypeSpec = ..., order: _CF = ..., *, like: _Like = ...
) -> Array1D[Any]: ...
@overload
def full(
    shape: _ShapeT, fill_value: _T, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
) -> Array[_ShapeT, _T]: ...
@overload
def full(
    shape: _ShapeT, fill_value: Any, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
) -> Array[_ShapeT, _T]: ...
@overload
def full(
    shape: _ShapeT, fill_value: Any, dtype: _DTypeSpec = ..., order: _CF = ..., *, like: _Like = ...
) -> Array[_ShapeT, Any]: ...
@overload
def full(
    shape: _Shape, fill_value: _T, dtype: None = ..., order: _CF = ..., *, like: _Like = ...
) -> NDArray[_T]: ...
@overload
def full(
    shape: _Shape, fill_value: Any, dtype: _DT[_T], order: _CF = ..., *, like: _Like = ...
) -> NDArray[_T]: ...
@overload
def full(
    shape: _Shape, fill_value: Any, dtype: _DTypeSpec = ..., order: _CF = ..., *, like: _Like = ...
) -> NDArray[Any]: ...

@overload
def empty_like(
    prototype: _AL[_T], dtype: None = ..., order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[_T]:
    """A new array in the default pool shaped like ``prototype``, like ``numpy.empty_like``
    (always a plain ``numpy.ndarray``: ``subok`` is accepted and ignored)."""
@overload
def empty_like(
    prototype: object, dtype: None = ..., order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[Any]: ...
@overload
def empty_like(
    prototype: Any, dtype: _DT[_T], order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[_T]: ...
@overload
def empty_like(
    prototype: Any, dtype: _DTypeSpec, order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[Any]: ...

@overload
def zeros_like(
    prototype: _AL[_T], dtype: None = ..., order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[_T]:
    """Like ``numpy.zeros_like``, in the default pool."""
@overload
def zeros_like(
    prototype: object, dtype: None = ..., order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[Any]: ...
@overload
def zeros_like(
    prototype: Any, dtype: _DT[_T], order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[_T]: ...
@overload
def zeros_like(
    prototype: Any, dtype: _DTypeSpec, order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[Any]: ...

@overload
def ones_like(
    prototype: _AL[_T], dtype: None = ..., order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[_T]:
    """Like ``numpy.ones_like``, in the default pool."""
@overload
def ones_like(
    prototype: object, dtype: None = ..., order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[Any]: ...
@overload
def ones_like(
    prototype: Any, dtype: _DT[_T], order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[_T]: ...
@overload
def ones_like(
    prototype: Any, dtype: _DTypeSpec, order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[Any]: ...

@overload
def full_like(
    prototype: _AL[_T],
    fill_value: Any,
    dtype: None = ...,
    order: _KACF = ...,
    subok: bool = ...,
    shape: _OptShape = ...,
) -> NDArray[_T]:
    """Like ``numpy.full_like``, in the default pool."""
@overload
def full_like(
    prototype: object, fill_value: Any, dtype: None = ..., order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[Any]: ...
@overload
def full_like(
    prototype: Any, fill_value: Any, dtype: _DT[_T], order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[_T]: ...
@overload
def full_like(
    prototype: Any, fill_value: Any, dtype: _DTypeSpec, order: _KACF = ..., subok: bool = ..., shape: _OptShape = ...
) -> NDArray[Any]: ...

@overload
def asarray(a: _AL[_T], dtype: None = ..., order: _KACF = ..., *, like: _Like = ...) -> NDArray[_T]:
    """``a`` itself if it already lives in a pool (with this dtype and order), otherwise a copy
    of it in the default pool, like ``numpy.asarray``."""
@overload
def asarray(a: object, dtype: None = ..., order: _KACF = ..., *, like: _Like = ...) -> NDArray[Any]: ...
@overload
def asarray(a: Any, dtype: _DT[_T], order: _KACF = ..., *, like: _Like = ...) -> NDArray[_T]: ...
@overload
def asarray(a: Any, dtype: _DTypeSpec, order: _KACF = ..., *, like: _Like = ...) -> NDArray[Any]: ...

@overload
def copy(a: _AL[_T], order: _KACF = ...) -> NDArray[_T]:
    """A new copy of ``a`` in the default pool, always (like ``numpy.copy``)."""
@overload
def copy(a: object, order: _KACF = ...) -> NDArray[Any]: ...

def is_shared(a: object) -> bool:
    """Whether ``a`` is a numpy array (or view) whose data lives in a pyshm pool."""

def stats() -> PoolStats:
    """The default pool's :class:`PoolStats`."""

def collect() -> CollectReport:
    """Reclaim what dead processes held in the default pool."""

def trim() -> int:
    """Give the default pool's free memory back to the system; returns the bytes (see
    :meth:`Pool.trim`)."""
