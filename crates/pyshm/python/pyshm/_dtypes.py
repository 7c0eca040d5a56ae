"""numpy dtypes as the pool describes them (the rare, slow conversions; the native module caches
their results).

A dtype is kept in an array's header as numpy's own description: ``dtype.str`` for simple types
(``<f8``, ``|b1``, ``<M8[ns]``, ``<U10``) and ``repr(dtype.descr)`` for structured ones, plus the
item size, so every process rebuilds exactly the same ``numpy.dtype``. Anything holding Python
objects (object dtypes, structured dtypes with object fields, numpy 2's ``StringDType``) is
refused with a ``TypeError`` naming the dtype: a pointer means nothing in another process.
"""

from __future__ import annotations

import ast
from typing import Any

import numpy as np

__all__ = ["describe", "from_description", "check_shareable"]


def check_shareable(dt: np.dtype) -> None:
    """Raise ``TypeError`` if ``dt`` cannot live in shared memory."""
    if dt.hasobject or dt.kind == "O":
        raise TypeError(
            f"dtype {dt!r} holds Python objects, which cannot live in shared memory; "
            "use a numeric, string (S/U) or structured dtype"
        )
    if dt.kind not in "biufcmMSUV":
        raise TypeError(f"dtype {dt!r} (kind {dt.kind!r}) cannot be shared by its bytes")


def describe(spec: Any) -> tuple[np.dtype, str, int, tuple[int, ...]]:
    """``(base dtype, description, item size, subarray shape)`` of a dtype spec."""
    dt = np.dtype(spec)
    if dt.itemsize == 0 and dt.kind in "SU":
        dt = np.dtype(f"{dt.byteorder if dt.kind == 'U' else '|'}{dt.kind}1")  # as numpy does
    subshape: tuple[int, ...] = ()
    if dt.subdtype is not None:
        dt, subshape = dt.subdtype
    check_shareable(dt)
    if dt.names is not None:
        text = repr(dt.descr)
        if np.dtype(dt.descr) != dt:  # padding or alignment the list form would lose
            text = repr(_layout(dt))
    else:
        text = dt.str
    return dt, text, dt.itemsize, tuple(int(n) for n in subshape)


def _layout(dt: np.dtype) -> Any:
    """A literal that ``numpy.dtype`` turns back into exactly ``dt``."""
    if dt.names is None:
        if dt.subdtype is not None:
            base, shape = dt.subdtype
            return (_layout(base), tuple(int(n) for n in shape))
        return dt.str
    fields = [dt.fields[n] for n in dt.names]
    spec = {
        "names": list(dt.names),
        "formats": [_layout(f[0]) for f in fields],
        "offsets": [int(f[1]) for f in fields],
        "itemsize": int(dt.itemsize),
    }
    if dt.isalignedstruct:
        spec["aligned"] = True
    if any(len(f) > 2 for f in fields):
        spec["titles"] = [f[2] if len(f) > 2 else None for f in fields]
    return spec


def from_description(text: str, itemsize: int) -> np.dtype:
    """The dtype a description names; ``ValueError`` if it is not one numpy writes."""
    try:
        if text.startswith(("[", "{")):
            dt = np.dtype(ast.literal_eval(text))
        else:
            dt = np.dtype(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise ValueError(f"invalid handle: unreadable dtype description {text!r}: {e}") from None
    if dt.itemsize != itemsize:
        raise ValueError(f"invalid handle: dtype {text!r} has item size {dt.itemsize}, not {itemsize}")
    check_shareable(dt)
    return dt
