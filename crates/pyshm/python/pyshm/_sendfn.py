"""Python functions sent by value: code, closure, defaults, and the globals the code names.

``pyshm.map`` sends its kernel this way, so that a kernel works in every start method and with
a worker pool that outlives the kernel's definition: a lambda, a nested function closing over
pooled arrays, or a function of ``__main__`` defined after the workers started.

Invariants:

1. The code object travels marshalled: workers run the same interpreter (multiprocessing starts
   them from ``sys.executable``), so the bytecode is valid there.
2. Of the function's globals, only the names its code (and the code nested in it) uses are sent,
   pickled by the same pickler as everything else in the payload (arrays by handle, modules by
   name). Functions among them go by value too when they cannot be imported by name in the
   worker; otherwise by reference.
3. A function is created first and filled afterwards (pickle's ``state_setter``), so pickle's
   memo handles recursion: a function that names itself, or two that name each other, arrive
   as one object each.
4. The receiver's function gets a fresh globals dict holding those names, so an assignment to
   a global inside the kernel stays in that dict: it is not seen by the caller, as with any
   worker process.
"""

from __future__ import annotations

import builtins
import importlib
import marshal
import sys
import types
from typing import Any, Optional

__all__ = ["ByValue", "importable", "reduce_function"]

_MAIN = ("__main__", "__mp_main__")


class _EmptyCell:
    """Marks a closure cell that has no value yet (pickled by reference)."""


def importable(fn: types.FunctionType, main_by_value: bool) -> bool:
    """Whether pickle can send ``fn`` by reference: the worker finds the very same function by
    its module and qualified name. With ``main_by_value``, functions of the main script count as
    not importable (a persistent worker's ``__main__`` is a snapshot, or a re-import)."""
    module = fn.__module__
    if module is None or (main_by_value and module in _MAIN) or "<locals>" in fn.__qualname__:
        return False
    try:
        obj: Any = sys.modules[module] if module in sys.modules else importlib.import_module(module)
        for part in fn.__qualname__.split("."):
            obj = getattr(obj, part)
    except Exception:  # any failure to find it means "not by reference"
        return False
    return obj is fn


def _names_used(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


def used_globals(fn: types.FunctionType) -> dict[str, Any]:
    """The globals of ``fn`` that its code names (builtins excluded unless shadowed)."""
    g = fn.__globals__
    return {name: g[name] for name in _names_used(fn.__code__) if name in g}


def closure_values(fn: types.FunctionType) -> tuple:
    values = []
    for cell in fn.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            values.append(_EmptyCell)
    return tuple(values)


def reduce_function(fn: types.FunctionType, replace: Optional[dict] = None) -> tuple:
    """A pickle reduction that rebuilds ``fn`` by value (see the module doc). ``replace`` maps
    ``id(value)`` of globals and closure values to what to send instead (pooled copies)."""
    named = used_globals(fn)
    closure = closure_values(fn)
    if replace:
        named = {k: replace.get(id(v), v) for k, v in named.items()}
        closure = tuple(replace.get(id(v), v) for v in closure)
    state = (
        named,
        closure,
        fn.__defaults__,
        fn.__kwdefaults__,
        dict(fn.__dict__) or None,
        fn.__qualname__,
        fn.__module__,
    )
    args = (marshal.dumps(fn.__code__), fn.__name__, fn.__globals__.get("__name__"), len(fn.__closure__ or ()))
    return (_skeleton, args, state, None, None, _fill)


class ByValue:
    """Pickles as the function it wraps, sent by value even if it could be imported (so the
    receiver runs the sender's current code with the sender's current globals); unpickles as
    that function."""

    __slots__ = ("fn", "replace")

    def __init__(self, fn: types.FunctionType, replace: Optional[dict] = None) -> None:
        self.fn = fn
        self.replace = replace

    def __reduce__(self) -> tuple:
        return reduce_function(self.fn, self.replace)


def _skeleton(code: bytes, name: str, module_name: Any, ncells: int) -> types.FunctionType:
    g = {"__builtins__": builtins, "__name__": module_name}
    cells = tuple(types.CellType() for _ in range(ncells)) if ncells else None
    return types.FunctionType(marshal.loads(code), g, name, None, cells)


def _fill(fn: types.FunctionType, state: tuple) -> types.FunctionType:
    names, closure, defaults, kwdefaults, attributes, qualname, module = state
    fn.__globals__.update(names)
    for cell, value in zip(fn.__closure__ or (), closure):
        if value is not _EmptyCell:
            cell.cell_contents = value
    fn.__defaults__ = defaults
    fn.__kwdefaults__ = kwdefaults
    if attributes:
        fn.__dict__.update(attributes)
    fn.__qualname__ = qualname
    fn.__module__ = module
    return fn
