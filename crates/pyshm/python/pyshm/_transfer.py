"""Payloads for pyshm's workers: every numpy array inside travels through the pool.

The executor, ``pyshm.map`` and ``pyshm.aio`` wrap what they send (a task, a result) in a
:class:`Payload`. Multiprocessing pickles the payload as usual; the payload pickles its content
with :class:`PoolPickler`, which finds arrays wherever pickling reaches them: at any depth of
tuples, lists and dicts, and inside any object that pickles its arrays as arrays.

Invariants:

1. In a payload, a pooled array travels as a handle, and an array outside the pool is copied
   into the default pool once and travels as a handle to the copy. An array that cannot live in
   a pool (object dtypes, ``ndarray`` subclasses) or does not fit (a full pool) is pickled as
   numpy pickles it, so a payload never fails because of where an array lives.
2. The sender's objects are never modified: copies are new arrays, and an object registered
   with :func:`register_array_wrapper` is rebuilt on the other side from its attributes.
3. Every handle a payload makes is recorded in ``Payload.handles``, also those of arrays marked
   :func:`pyshm.by_handle` (which stay marked). If the receiver dies before
   it attaches them, :meth:`Payload.release` claims and drops them; otherwise their transfer
   tokens would keep the arrays alive (see docs/architecture.md, "The Python layer").
4. Importing this module changes nothing global: :class:`PoolPickler` is used only by
   payloads, and only ``register_array_wrapper`` adds to its table.
"""

from __future__ import annotations

import functools
import io
import pickle
import threading
import types
from multiprocessing.reduction import ForkingPickler
from typing import Any, Mapping, Optional

import cloudpickle
import numpy as np

from . import _by_handle, _core, _handles, _mainref, _pickle
from ._native import Handle, PoolFullError

__all__ = ["Packed", "Payload", "PayloadError", "PoolPickler", "register_array_wrapper", "unregister_array_wrapper"]

_wrappers: dict[type, str] = {}
_wrappers_lock = threading.Lock()


def register_array_wrapper(cls: type, attribute: str) -> None:
    """Send objects of ``cls`` through pyshm's executor, ``map`` and ``aio`` with their array
    attribute ``attribute`` in the pool.

    Such an object travels as its attributes: ``attribute`` by handle (copied into the pool
    once if it is not there), the others pickled. The receiver's object is made with
    ``cls.__new__`` and gets the attributes back without ``__init__``, ``__setstate__`` or
    ``__setattr__`` running, so this suits classes that keep the array in an instance attribute
    (in ``__dict__`` or ``__slots__``), notably those whose own pickling turns the array into
    bytes. Objects that pickle their arrays as arrays need no registration.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_array_wrapper() takes a class, not {type(cls).__name__}")
    if not isinstance(attribute, str) or not attribute.isidentifier():
        raise ValueError(f"attribute must be an attribute name, not {attribute!r}")
    with _wrappers_lock:
        _wrappers[cls] = attribute


def unregister_array_wrapper(cls: type) -> None:
    """Undo :func:`register_array_wrapper` for ``cls`` (``KeyError`` if it was not registered)."""
    with _wrappers_lock:
        del _wrappers[cls]


def _slot_names(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        names.extend(s for s in slots if s not in ("__dict__", "__weakref__"))
    return names


def _wrapper_state(obj: Any, attribute: str) -> tuple[Any, dict, dict]:
    """``(array attribute, __dict__ entries, slot values)`` of a registered object."""
    d = dict(getattr(obj, "__dict__", {}))
    slots = {}
    for name in _slot_names(type(obj)):
        try:
            slots[name] = object.__getattribute__(obj, name)
        except AttributeError:  # an unset slot stays unset
            pass
    if attribute in d:
        return d.pop(attribute), d, slots
    if attribute in slots:
        return slots.pop(attribute), d, slots
    raise TypeError(
        f"pyshm.register_array_wrapper: {type(obj).__qualname__} object has no instance attribute "
        f"{attribute!r} (it must live in the instance's __dict__ or __slots__, not in a property)"
    )


def _rebuild_wrapper(cls: type, attribute: str, array: Any, d: dict, slots: dict) -> Any:
    obj = cls.__new__(cls)
    for name, value in slots.items():
        object.__setattr__(obj, name, value)
    if hasattr(obj, "__dict__"):
        obj.__dict__.update(d)
    elif d:
        raise TypeError(f"{cls.__qualname__} objects have no __dict__ here; cannot restore {sorted(d)}")
    if attribute in slots or not hasattr(obj, "__dict__"):
        object.__setattr__(obj, attribute, array)
    else:
        obj.__dict__[attribute] = array
    return obj


def _handle(a: np.ndarray, handles: list[Handle]) -> Optional[Any]:
    try:
        r = _pickle.pooled_reduction(a)
    except (ValueError, OSError, PoolFullError):  # pool closed or gone here, or no free slot:
        return None  # send the data instead
    if r is None:
        return None
    handles.append(r[0])
    return r[1]


#: A result that is a view of a numpy allocation at least this much larger is copied instead of
#: sent as a view: otherwise ``np.sort(x)[-5:]`` would pin all of ``x``'s block in the caller.
_COMPACT_SLACK = 1 << 20


def _pins_much_more(a: np.ndarray) -> bool:
    """Whether ``a`` is a small view of a much larger array that numpy allocated (the
    allocator's blocks: the owner at the end of the base chain owns its data)."""
    owner = a
    for _ in range(8):
        base = owner.base
        if not isinstance(base, np.ndarray):
            break
        owner = base
    if owner is a or not owner.flags.owndata:
        return False
    return owner.nbytes > 4 * a.nbytes and owner.nbytes - a.nbytes > _COMPACT_SLACK


def _reduce_array(handles: list, compact: bool, replace: dict, a: np.ndarray) -> Any:
    a = replace.get(id(a), a)
    r = None if compact and _pins_much_more(a) else _handle(a, handles)
    if r is not None:
        return r
    if not a.dtype.hasobject:
        try:
            copy = _core.copy(a)
        except (TypeError, MemoryError, RuntimeError):
            copy = None  # not a dtype the pool takes, or the pool is full: pickle it
        if copy is not None:
            r = _handle(copy, handles)
            if r is not None:
                return r
    return a.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


def _reduce_by_handle(handles: list, a: _by_handle.ByHandle) -> Any:
    # A by-handle array stays one (a handle, rebuilt marked), and its handle is the payload's
    # (invariant 3: given back when the payload fails or its receiver dies).
    h, r = _by_handle.reduction(a, pickle.HIGHEST_PROTOCOL)
    if h is not None:
        handles.append(h)
    return r


def _reduce_wrapper(obj: Any) -> Any:
    attribute = _wrappers[type(obj)]
    array, d, slots = _wrapper_state(obj, attribute)
    return (_rebuild_wrapper, (type(obj), attribute, array, d, slots))


def _base_dispatch_table() -> dict:
    """cloudpickle's reducers (which include ``copyreg``'s) then multiprocessing's, as a new
    dict read from the live tables (a reducer registered at any time counts). cloudpickle's
    table is a ChainMap: its maps are merged as plain dicts, last map first, which takes a
    fraction of a microsecond where copying the ChainMap itself takes several."""
    table: dict = {}
    base = cloudpickle.Pickler.dispatch_table
    for m in reversed(getattr(base, "maps", [base])):
        table.update(m)
    table.update(getattr(ForkingPickler, "_extra_reducers"))  # noqa: B009
    return table


class PoolPickler(cloudpickle.Pickler):
    """cloudpickle's pickler with multiprocessing's reducers (connections, sockets), plus:
    every ``numpy.ndarray`` (exactly that type) goes through the pool (invariant 1) and
    registered wrappers travel as attributes.

    Functions and classes that cannot be imported by name in the receiver (those of
    ``__main__``, a notebook cell, ``python -c``, lambdas, nested functions) travel by value,
    as cloudpickle sends them: code, closure and the globals the code names, pickled by this
    same pickler, so arrays among them go by handle too. ``by_value`` is one more function to
    send by value even if it can be imported (``pyshm.map``'s kernel: the worker runs the
    caller's current code and sees the caller's current globals). ``by_reference`` is the rule
    (from :mod:`pyshm._mainref`) under which a function or class of ``__main__`` that the
    receiver finds by name goes by name instead, as the standard library sends it.

    ``handles`` collects every :class:`Handle` made (invariant 3). With ``compact`` (results),
    a small view of a much larger numpy allocation is copied (see ``_pins_much_more``) rather
    than sent as a view of the whole block. ``replace`` maps ``id(array)`` to the array to send
    in its place (a pooled copy made once for many payloads). The reducers are not bound to the
    pickler: a pickler in a reference cycle would keep its memo, and so every array it pickled,
    alive until the garbage collector runs."""

    def __init__(
        self,
        file: Any,
        handles: list,
        compact: bool = False,
        replace: Optional[dict] = None,
        by_value: Any = None,
        by_reference: Optional[_mainref.Rule] = None,
    ) -> None:
        # Before the base's __init__: the C pickler reads `dispatch_table` there, once (an
        # instance attribute, since cloudpickle's class attribute hides the C member). A plain
        # dict: the C pickler looks every object's type up in it, and a dict is a C lookup where
        # a ChainMap would be a Python call raising KeyError at each miss.
        # `_extra_reducers` is what multiprocessing's `ForkingPickler.register` fills (typeshed
        # leaves the private attribute out).
        table = _base_dispatch_table()
        table[np.ndarray] = functools.partial(_reduce_array, handles, compact, replace or {})
        table[_by_handle.ByHandle] = functools.partial(_reduce_by_handle, handles)
        for cls in _wrappers:
            table[cls] = _reduce_wrapper
        self.dispatch_table: Mapping[Any, Any] = table  # the class's own (cloudpickle's) is a ChainMap
        self.by_value = by_value
        self.by_reference = by_reference
        super().__init__(file, pickle.HIGHEST_PROTOCOL)

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is types.FunctionType:
            if obj is self.by_value:
                return self._dynamic_function_reduce(obj)
            if self.by_reference is not None and obj.__module__ == "__main__" and self.by_reference(obj):
                return NotImplemented  # pickle's own by-name reference (save_global)
        elif t is type and self.by_reference is not None and obj.__module__ == "__main__" and self.by_reference(obj):
            return NotImplemented
        return super().reducer_override(obj)


def dumps(
    obj: Any,
    handles: list,
    compact: bool = False,
    replace: Optional[dict] = None,
    by_value: Any = None,
    by_reference: Optional[_mainref.Rule] = None,
) -> bytes:
    if by_value is None and _plain(obj, by_reference, 2):
        try:
            return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        except Exception:  # not found by name after all: the full pickler decides (and says why)
            pass
    buf = io.BytesIO()
    PoolPickler(buf, handles, compact, replace, by_value, by_reference).dump(obj)
    return buf.getvalue()


#: Types that every pickler writes the same way, with no reducer of pyshm's or cloudpickle's.
ATOMIC = frozenset({int, float, complex, bool, str, bytes, type(None)})


def _plain(obj: Any, by_reference: Optional[_mainref.Rule], depth: int) -> bool:
    """Whether ``obj`` pickles the same with the plain C pickler as with :class:`PoolPickler`,
    found cheaply: atomic values, functions that go by name (see ``_by_name``), and up to
    ``depth`` levels of small tuples, lists and str-keyed dicts of them (a call
    ``(fn, args, kwargs)`` of scalars). Anything else (arrays, instances, classes) takes the
    full pickler. Plain pickling is a few microseconds faster per payload."""
    t = type(obj)
    if t in ATOMIC:
        return True
    if t is types.FunctionType or t is types.BuiltinFunctionType:
        return _by_name(obj, by_reference)
    if depth == 0:
        return False
    if t is tuple or t is list:
        return len(obj) <= 8 and all(_plain(v, by_reference, depth - 1) for v in obj)
    if t is dict:
        return len(obj) <= 8 and all(type(k) is str and _plain(v, by_reference, depth - 1) for k, v in obj.items())
    return False


def _by_name(fn: Any, by_reference: Optional[_mainref.Rule]) -> bool:
    """Whether cloudpickle (with ``by_reference``, as :class:`PoolPickler` runs it) would send
    ``fn`` by name: a function of ``__main__`` that the rule lets go by reference, or one of an
    imported module found at its qualified name (plain pickle checks the latter itself and
    raises otherwise), while no module is registered with cloudpickle to go by value."""
    module = getattr(fn, "__module__", None)
    if module == "__main__":
        return by_reference is not None and type(fn) is types.FunctionType and by_reference(fn)
    if module is None or "<" in fn.__qualname__ or _by_value_modules():
        return False
    return True


def _by_value_modules() -> bool:
    """Whether some module is registered with ``cloudpickle.register_pickle_by_value``."""
    return bool(getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", True))


class PayloadError(RuntimeError):
    """A worker could not unpickle the task it was sent (for example a class of the main
    script that the worker's ``__main__`` does not have). The worker survives; the handles the
    task carried are released by the sender."""


class Payload:
    """Something to send to another process with its arrays in the pool (see the module doc).

    Pickling a payload pickles its content with :class:`PoolPickler`, once: :meth:`freeze`
    does it at once (so errors surface in the caller), otherwise the first pickling does it
    (in multiprocessing's feeder thread). If that fails, the handles made so far are released
    before the error propagates. Unpickling gives the content, or with ``lazy`` a
    :class:`Packed` whose :meth:`Packed.load` gives it (so the receiver can turn a failure into
    an error of the task instead of dying in multiprocessing's queue)."""

    __slots__ = ("obj", "data", "handles", "compact", "lazy", "replace", "by_value", "by_reference")

    def __init__(
        self,
        obj: Any,
        compact: bool = False,
        lazy: bool = False,
        replace: Optional[dict] = None,
        by_value: Any = None,
        by_reference: Optional[_mainref.Rule] = None,
    ) -> None:
        self.obj = obj
        self.data: Optional[bytes] = None
        self.handles: list[Handle] = []
        self.compact = compact
        self.lazy = lazy
        self.replace = replace
        self.by_value = by_value
        self.by_reference = by_reference

    def freeze(self) -> "Payload":
        if self.data is None:
            try:
                self.data = dumps(self.obj, self.handles, self.compact, self.replace, self.by_value, self.by_reference)
            except BaseException:
                self.release()  # the handles made before the failure would never be claimed
                raise
            # What was sent is in `data`; the sender may free its copies.
            self.obj = self.replace = self.by_value = None
        return self

    def __reduce__(self) -> Any:
        data = self.freeze().data
        return (Packed, (data,)) if self.lazy else (_unpack, (data,))

    def release(self) -> None:
        """Give back the transfer token of every handle this payload sent, without mapping the
        arrays: for when the receiver is dead or could not unpickle them, so the handles will
        never be attached (invariant 3). Harmless for handles attached already: their tokens
        were claimed, so cancelling them fails (stale) and changes nothing."""
        handles, self.handles = self.handles, []
        for h in handles:
            try:
                _handles.cancel(h)
            except (ValueError, OSError):  # claimed or cancelled already, or the pool is gone
                pass


class Packed:
    """A payload as the receiver gets it with ``lazy``: its bytes, unpickled by :meth:`load`."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def load(self) -> Any:
        try:
            return pickle.loads(self.data)
        except Exception as e:
            raise PayloadError(f"the worker could not unpickle its task: {type(e).__name__}: {e}") from e


def _unpack(data: bytes) -> Any:
    return pickle.loads(data)

