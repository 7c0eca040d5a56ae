"""What a type checker infers for pyshm's constructors: numpy's own types. Never run; mypy --strict
checks it (tests/test_typing.py), and each ``assert_type`` is an error there if the inferred type
differs. Lines marked ``# type: ignore[...]`` must be errors (``--warn-unused-ignores``)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import numpy.typing as npt

import pyshm

if sys.version_info >= (3, 11):
    from typing import assert_type
else:
    from typing_extensions import assert_type

i32: npt.NDArray[np.int32] = np.zeros(3, np.int32)
shape: list[int] = [2, 3]

# pyshm's constructors type as numpy's own with the installed numpy: each result is assignable to
# what mypy inferred for numpy's, and the other way round.
z = np.zeros(3, dtype=np.int32)
z = pyshm.zeros(3, dtype=np.int32)
z = np.zeros(3, dtype=np.int32)
e = np.empty((2, 3))
e = pyshm.empty((2, 3))
e = np.empty((2, 3))
o = np.ones(shape, np.float32)
o = pyshm.ones(shape, np.float32)
o = np.ones(shape, np.float32)
f = np.full(4, np.int16(7))
f = pyshm.full(4, np.int16(7))
f = np.full(4, np.int16(7))

# An int shape gives a 1-d array, a tuple of ints an array of as many dimensions, anything else
# (a list, numpy integers) any shape: numpy 2.4's typing.
assert_type(pyshm.zeros(3, dtype=np.int32), np.ndarray[tuple[int], np.dtype[np.int32]])
assert_type(pyshm.zeros((2, 3), np.int32), np.ndarray[tuple[int, int], np.dtype[np.int32]])
assert_type(pyshm.zeros((), np.int32), np.ndarray[tuple[()], np.dtype[np.int32]])
assert_type(pyshm.zeros(shape, np.int32), npt.NDArray[np.int32])
assert_type(pyshm.zeros(np.int64(3), np.int8), np.ndarray[tuple[int], np.dtype[np.int8]])
assert_type(pyshm.zeros((np.int64(2), 3), np.int8), npt.NDArray[np.int8])
pyshm.zeros(3.0)  # type: ignore[call-overload]
pyshm.zeros("3")  # type: ignore[arg-type]

# No dtype: float64, as numpy.
assert_type(pyshm.empty(shape), npt.NDArray[np.float64])
assert_type(pyshm.ones(shape, order="F"), npt.NDArray[np.float64])

# A dtype that names one scalar type: a scalar type, a dtype object, anything with a .dtype.
assert_type(pyshm.empty(shape, np.dtype(np.uint8)), npt.NDArray[np.uint8])
assert_type(pyshm.ones(shape, i32), npt.NDArray[np.int32])
assert_type(pyshm.full(shape, 7, np.int16), npt.NDArray[np.int16])
assert_type(pyshm.full(shape, np.float32(1.5)), npt.NDArray[np.float32])

# Any other dtype (a string, a Python type, a structured spec, None): any scalar type, as numpy.
assert_type(pyshm.zeros(shape, "f4"), npt.NDArray[Any])
assert_type(pyshm.zeros(shape, [("x", "<i4"), ("y", "<f8")]), npt.NDArray[Any])
assert_type(pyshm.zeros(shape, float), npt.NDArray[Any])
assert_type(pyshm.full(shape, 1.5), npt.NDArray[Any])
maybe: str | None = None
assert_type(pyshm.empty(shape, maybe), npt.NDArray[Any])

# The *_like functions, asarray and copy keep an array argument's scalar type.
assert_type(pyshm.empty_like(i32), npt.NDArray[np.int32])
assert_type(pyshm.zeros_like(i32, np.float32), npt.NDArray[np.float32])
assert_type(pyshm.ones_like(i32, shape=(2, 2)), npt.NDArray[np.int32])
assert_type(pyshm.full_like(i32, 7), npt.NDArray[np.int32])
assert_type(pyshm.zeros_like([1, 2]), npt.NDArray[Any])
assert_type(pyshm.asarray(i32), npt.NDArray[np.int32])
assert_type(pyshm.asarray([1, 2], np.int64), npt.NDArray[np.int64])
assert_type(pyshm.asarray([1, 2]), npt.NDArray[Any])
assert_type(pyshm.copy(i32), npt.NDArray[np.int32])
assert_type(pyshm.copy([1.0]), npt.NDArray[Any])

# A Pool's methods are the same.
with pyshm.Pool() as pool:
    assert_type(pool.zeros(3, np.int32), np.ndarray[tuple[int], np.dtype[np.int32]])
    assert_type(pool.empty(shape), npt.NDArray[np.float64])
    assert_type(pool.full((2, 2), np.int8(1)), np.ndarray[tuple[int, int], np.dtype[np.int8]])
    assert_type(pool.full_like(i32, 1, dtype=np.complex128), npt.NDArray[np.complex128])
    assert_type(pool.asarray(i32), npt.NDArray[np.int32])
    assert_type(pool.attach(pool.handle(i32)), npt.NDArray[Any])

# Named arrays: create as zeros; attach cannot know the dtype.
assert_type(pyshm.create("typed", (2, 3), np.uint16), np.ndarray[tuple[int, int], np.dtype[np.uint16]])
assert_type(pyshm.create("typed", shape), npt.NDArray[np.float64])
assert_type(pyshm.attach("typed"), npt.NDArray[Any])
assert_type(pyshm.handle(i32), pyshm.Handle)
assert_type(pyshm.list(), list[pyshm.NamedArray])
first: str = pyshm.list()[0]  # each entry is a str too
pyshm.map(lambda worker, index, item: None, [1, 2])
