"""The types of pyshm's numpy-style signatures, for type checkers only: the stubs beside the
modules (``_core.pyi``, ``_named.pyi``) import them, and the modules under ``if TYPE_CHECKING:``
(this module runs only when stubtest imports it to compare).

They are numpy's own (``numpy/_core/multiarray.pyi``, ``numeric.pyi``), written with numpy's
public names only: ``numpy._typing``, where numpy keeps them, is private and moved between the
numpy versions pyshm supports.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Protocol, Sequence, SupportsIndex, TypeVar, Union

import numpy as np
from numpy.typing import DTypeLike, NDArray

__all__ = [
    "Array",
    "Array1D",
    "DTypeSpec",
    "LikeArg",
    "OrderCF",
    "OrderKACF",
    "ScalarArrayLike",
    "ScalarDTypeLike",
    "ScalarT",
    "ShapeLike",
    "ShapeT",
    "SupportsArray",
    "SupportsDType",
]

#: A numpy scalar type (``np.float64``, ``np.int32``, ...).
ScalarT = TypeVar("ScalarT", bound=np.generic)
DTypeT_co = TypeVar("DTypeT_co", bound="np.dtype[Any]", covariant=True)

#: A shape, as numpy takes it: an int (or anything with ``__index__``, such as ``numpy.int64``) or
#: a sequence of them.
ShapeLike = Union[SupportsIndex, Sequence[SupportsIndex]]

#: A shape as a tuple of ints, whose length the result's type keeps. Shapes are typed as numpy 2.4
#: types them: an int shape gives a 1-d array, a tuple of ints an array of that many dimensions,
#: anything else (a list, numpy integers) any shape. (numpy constrains its shape TypeVar to 0-8
#: dimensions; a bound one infers the same tuples, and mypy accepts the overloads with it, which
#: it reports as overlapping under the constrained one.)
ShapeT = TypeVar("ShapeT", bound=tuple[int, ...])


class SupportsDType(Protocol[DTypeT_co]):
    """Anything with a ``dtype`` (an array): numpy takes it as that dtype."""

    @property
    def dtype(self) -> DTypeT_co: ...


class SupportsArray(Protocol[DTypeT_co]):
    """Anything numpy turns into an array of this dtype (an array, a numpy scalar)."""

    def __array__(self) -> np.ndarray[Any, DTypeT_co]: ...


#: A dtype argument that names one scalar type: ``np.int32``, ``np.dtype(np.int32)``, an array.
ScalarDTypeLike = Union[type[ScalarT], np.dtype[ScalarT], SupportsDType[np.dtype[ScalarT]]]
#: Any dtype argument, None (the default) included: numpy 2.4's ``DTypeLike`` leaves None out.
DTypeSpec = Optional[DTypeLike]
#: An array (or numpy scalar) of the scalar type ``ScalarT``.
ScalarArrayLike = SupportsArray[np.dtype[ScalarT]]
#: ``order=`` of the constructors that take a shape.
OrderCF = Optional[Literal["C", "F", "c", "f"]]
#: ``order=`` of the ``*_like`` functions, ``asarray`` and ``copy``.
OrderKACF = Optional[Literal["K", "A", "C", "F", "k", "a", "c", "f"]]
#: ``like=``: numpy's array-function protocol argument; pyshm makes numpy arrays only.
LikeArg = Optional[NDArray[Any]]
#: An array of this shape type and scalar type.
Array = np.ndarray[ShapeT, np.dtype[ScalarT]]
#: A 1-d array of this scalar type.
Array1D = np.ndarray[tuple[int], np.dtype[ScalarT]]
