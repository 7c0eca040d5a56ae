"""Type stubs of ``_named`` (the runtime module is ``_named.py``; mypy.stubtest checks each against
the other in tests/test_typing.py). ``create`` types as :func:`pyshm.zeros` does (see
``_core.pyi``)."""

from typing import Any, List, Tuple, overload
from typing import SupportsIndex as _Int

import numpy as np
from numpy.typing import NDArray

from ._native import NativePool
from ._typing import Array, Array1D
from ._typing import DTypeSpec as _DTypeSpec
from ._typing import ScalarDTypeLike as _DT
from ._typing import ScalarT as _T
from ._typing import ShapeLike as _Shape
from ._typing import ShapeT as _ShapeT

__all__ = ["NamedArray", "create", "attach", "delete", "list_names"]

def pool_name() -> str:
    """The name of this user's named-array pool: ``PYSHM_NAMED_POOL``, else ``named_<euid>``."""

def named_pool() -> NativePool:
    """This user's named-array pool, opened or created (also where named locks live)."""

@overload
def create(name: str, shape: _Int, dtype: None = ...) -> Array1D[np.float64]:
    """Create a zero-filled array named ``name`` (``FileExistsError`` if the name is taken).

    ``shape`` and ``dtype`` are as :func:`pyshm.zeros` takes them, and so is the array's type:
    ``create("x", 3, np.int32)`` is an int32 array."""
@overload
def create(name: str, shape: _Int, dtype: _DT[_T]) -> Array1D[_T]: ...
@overload
def create(name: str, shape: _Int, dtype: _DTypeSpec) -> Array1D[Any]: ...
@overload
def create(name: str, shape: _ShapeT, dtype: None = ...) -> Array[_ShapeT, np.float64]: ...
@overload
def create(name: str, shape: _ShapeT, dtype: _DT[_T]) -> Array[_ShapeT, _T]: ...
@overload
def create(name: str, shape: _ShapeT, dtype: _DTypeSpec) -> Array[_ShapeT, Any]: ...
@overload
def create(name: str, shape: _Shape, dtype: None = ...) -> NDArray[np.float64]: ...
@overload
def create(name: str, shape: _Shape, dtype: _DT[_T]) -> NDArray[_T]: ...
@overload
def create(name: str, shape: _Shape, dtype: _DTypeSpec) -> NDArray[Any]: ...

def attach(name: str) -> NDArray[Any]:
    """The array named ``name`` (``FileNotFoundError`` if there is none)."""

def delete(name: str) -> None:
    """Delete the name; the array is freed once no process holds it."""

class NamedArray(str):
    """An entry of :func:`pyshm.list`: the array's name (a ``str``, usable wherever a name is),
    with its ``dtype`` and ``shape`` as they were when the list was made."""

    dtype: np.dtype[Any]
    shape: Tuple[int, ...]
    def __new__(cls, name: str, dtype: Any, shape: Tuple[int, ...]) -> NamedArray: ...
    def __reduce__(self) -> Any: ...

def list_names() -> List[NamedArray]:
    """Every array name, sorted, each a :class:`NamedArray` (a ``str``) carrying the array's
    dtype and shape. Names of locks and events (which start with a NUL byte) are not array
    names; a name deleted while the list is made is left out."""
