"""Type stubs of ``_named`` (the runtime module is ``_named.py``; mypy.stubtest checks each against
the other in tests/test_typing.py). ``create`` types as :func:`pyshm.zeros` does (see
``_core.pyi``)."""

from typing import Any, List, overload
from typing import SupportsIndex as _Int

import numpy as np
from numpy.typing import NDArray

from ._typing import Array, Array1D
from ._typing import DTypeSpec as _DTypeSpec
from ._typing import ScalarDTypeLike as _DT
from ._typing import ScalarT as _T
from ._typing import ShapeLike as _Shape
from ._typing import ShapeT as _ShapeT

__all__ = ["create", "attach", "delete", "list_names"]

def pool_name() -> str:
    """The name of this user's named-array pool: ``PYSHM_NAMED_POOL``, else ``named_<euid>``."""

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

def list_names() -> List[str]:
    """Every array name, sorted."""
