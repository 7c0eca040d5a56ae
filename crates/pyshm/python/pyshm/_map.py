"""``pyshm.map`` and ``pyshm.alloc``: a parallel map whose kernels write into shared arrays.

The model is pasha's: ``map(kernel, functor)`` calls ``kernel(worker_id, index, value)`` for
every element the functor yields (``kernel(worker_id, *entry)`` for a functor whose entries are
not pairs), spread over the workers of a context, and kernels write their results into arrays
made with :func:`alloc`, which every worker sees. Where pasha and pyshm could differ, pyshm does
what pasha does (tests/test_pasha_compat.py is pasha's suite, ported).

Invariants:

1. A functor's ``split(n)`` gives at most ``n`` shares; share ``i`` runs on one worker with
   ``worker_id == i``, so two shares that run at once never share a ``worker_id`` and
   ``alloc(per_worker=True)`` gives each one a row of its own.
2. :class:`ProcessContext` starts its worker processes once, at its first ``map``, and keeps them
   until :meth:`ProcessContext.close` (or exit). Each ``map`` sends the kernel by value (its
   code, closure and the globals it names, arrays by handle; cloudpickle does it, see
   ``_transfer.PoolPickler``), so a kernel
   defined or changed after the workers started, a lambda, or a closure over pooled arrays runs
   the same under fork, spawn and forkserver, and sees the caller's arrays, not stale copies.
   This holds for what the kernel names itself (globals, closure cells, defaults). State it
   reaches through a module (``cfg.out``) or through a function it calls that can be imported
   is the worker's own: a snapshot from when the worker started (fork), or a fresh import
   (spawn, forkserver). Pass such arrays to the kernel through names it uses directly.
3. ``map`` returns only when every share has finished. If a kernel raises, the first exception
   is raised after the other shares finish; if a worker dies, ``BrokenProcessPool`` is raised
   at once and the context starts new workers at its next ``map``.
"""

from __future__ import annotations

import abc
import collections.abc
import concurrent.futures
import copy
import multiprocessing
import os
import pickle
import threading
import types
import weakref
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import cloudpickle
import numpy as np

from . import _core, _executor
from ._transfer import Payload

__all__ = [
    "Functor",
    "MapContext",
    "NdarrayFunctor",
    "ProcessContext",
    "SequenceFunctor",
    "SerialContext",
    "ThreadContext",
    "alloc",
    "get_default_context",
    "map",
    "set_default_context",
]

Kernel = Callable[..., Any]  # kernel(worker_id, *entry); entries are (index, value) unless a functor says otherwise

# --------------------------------------------------------------------------------------------
# Functors


class _ArgumentError(TypeError, ValueError):
    """What ``map`` cannot map over, or ``alloc`` arguments that give no shape: a ``TypeError``
    (pyshm's word for it) and a ``ValueError`` (pasha's), so code written for either catches it."""


class Functor:
    """What ``map`` maps over: subclasses say how to split the work into shares
    (:meth:`split`) and how to iterate over one share (:meth:`iterate`). A share must be
    picklable (it is sent to a worker process).

    A subclass that defines the classmethod :meth:`wrap` takes part in automatic wrapping: ``map``
    offers it every value that is not a functor and uses what it returns (``None``: not mine).
    A value with a ``_pasha_functor_()`` method is wrapped by calling it, before anything else.
    """

    _functor_types: "weakref.WeakSet[type[Functor]]" = weakref.WeakSet()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Functor._functor_types.add(cls)

    def split(self, num_workers: int) -> Sequence[Any]:
        """At most ``num_workers`` shares that together cover every element once."""
        raise NotImplementedError(f"{type(self).__name__}.split")

    def iterate(self, share: Any) -> Iterable[tuple[Any, ...]]:
        """The entries of ``share``, each a tuple: ``map`` calls ``kernel(worker_id, *entry)``,
        so ``(index, value)`` gives pyshm's (and pasha's) usual ``kernel(worker_id, index,
        value)``; a functor may give more (or fewer) items per entry."""
        raise NotImplementedError(f"{type(self).__name__}.iterate")

    def __len__(self) -> int:
        """The number of elements (for progress bars); subclasses that know it say so."""
        raise TypeError(f"{type(self).__name__} does not know its length")

    @classmethod
    def wrap(cls, value: Any) -> Optional["Functor"]:
        """On :class:`Functor` itself: ``value`` as a functor (see :meth:`try_wrap`). On a
        subclass: ``value`` as that subclass if it can wrap it, else ``None``; subclasses that
        want automatic wrapping override it."""
        if cls is Functor:
            return cls.try_wrap(value)
        return None

    @classmethod
    def try_wrap(cls, value: Any) -> "Functor":
        """``value`` as a functor: a functor as is; ``value._pasha_functor_()`` if it has that
        method; otherwise what the one subclass whose :meth:`wrap` accepts it returns: a numpy
        array as :class:`NdarrayFunctor`, any other sequence (list, tuple, range, ...) as
        :class:`SequenceFunctor`, an int ``n`` as ``range(n)``, or a type of your own.

        Raises
        ------
        TypeError
            No subclass wraps ``value``, or more than one does (also a ``ValueError``, as in
            pasha)."""
        if isinstance(value, Functor):
            return value
        if hasattr(value, "_pasha_functor_"):
            return value._pasha_functor_()
        found = []
        for ftype in list(Functor._functor_types):
            if "wrap" in ftype.__dict__:  # its own wrap, not one inherited (pasha's ambiguity)
                f = ftype.wrap(value)
                if f is not None:
                    found.append(f)
        if len(found) == 1:
            return found[0]
        if found:
            names = sorted(type(f).__name__ for f in found)
            raise _ArgumentError(f"more than one functor wraps a {type(value).__name__}: {names}")
        raise _ArgumentError(
            f"pyshm.map cannot map over a {type(value).__name__}: pass a numpy array, a sequence "
            "(list, tuple, range), an int, a pyshm.Functor, or a value a Functor subclass wraps"
        )


def _indices(share: Any, n: int) -> Iterable[int]:
    """The positions a sequence share covers: a slice of ``range(n)`` (pasha's shares) or any
    iterable of ints (a ``range``, say)."""
    return range(*share.indices(n)) if isinstance(share, slice) else share


def _slices(n: int, parts: int) -> list[slice]:
    """``range(n)`` cut into at most ``parts`` contiguous, nearly equal, non-empty slices."""
    parts = max(1, min(parts, n))
    step, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + step + (1 if i < extra else 0)
        if stop > start:
            out.append(slice(start, stop))
        start = stop
    return out


class SequenceFunctor(Functor):
    """Maps over a sequence: ``index`` is the position, ``value`` the element. Shares are
    slices of the positions (``split(2)`` of four elements is ``[slice(0, 2), slice(2, 4)]``);
    :meth:`iterate` also takes a ``range`` or any iterable of positions."""

    def __init__(self, sequence: Sequence[Any]) -> None:
        self.sequence = sequence

    @classmethod
    def wrap(cls, value: Any) -> Optional["SequenceFunctor"]:
        """Any ``collections.abc.Sequence`` (list, tuple, range, str, ...), and an int ``n`` as
        ``range(n)``."""
        if isinstance(value, collections.abc.Sequence):
            return cls(value)
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return cls(range(value))
        return None

    def split(self, num_workers: int) -> list[slice]:
        return _slices(len(self.sequence), num_workers)

    def iterate(self, share: Any) -> Iterator[tuple[int, Any]]:
        seq = self.sequence
        for i in _indices(share, len(seq)):
            yield i, seq[i]

    def __len__(self) -> int:
        return len(self.sequence)


class NdarrayFunctor(SequenceFunctor):
    """Maps over a numpy array (or an array-like, through ``np.asarray``) along ``axis`` (the
    first axis when ``None``): ``index`` is the position along it, ``value`` the sub-array
    there (a view, or a scalar for 1-D). As in
    pasha, the sub-array is that of ``np.swapaxes(array, 0, axis)``: for ``axis=2`` of a
    ``(A, B, C)`` array, values have shape ``(B, A)``.

    Under :class:`ProcessContext` the array reaches the workers by handle; an array that is not
    pooled is copied into the pool once per ``map``, so kernels that write into ``value`` write
    into that copy: write results into arrays from :func:`alloc` instead."""

    def __init__(self, array: Any, axis: Optional[int] = None) -> None:
        array = np.asarray(array)  # an array-like (a nested list, say) as numpy sees it, as pasha
        if array.ndim == 0:
            raise ValueError("NdarrayFunctor needs an array with at least one dimension")
        self.array = array
        axis = 0 if axis is None else int(axis)
        if not -array.ndim <= axis < array.ndim:
            raise getattr(np, "exceptions", np).AxisError(axis, array.ndim)
        self.axis = axis % array.ndim

    @classmethod
    def wrap(cls, value: Any) -> Optional["NdarrayFunctor"]:
        """A numpy array with at least one dimension."""
        return cls(value) if isinstance(value, np.ndarray) and value.ndim > 0 else None

    @property
    def sequence(self) -> np.ndarray:  # type: ignore[override]
        """The array with the mapped axis first (``np.swapaxes(array, 0, axis)``, a view)."""
        return self.array if self.axis == 0 else np.swapaxes(self.array, 0, self.axis)


def _split(functor: Functor, num_workers: int) -> Sequence[Any]:
    shares = list(functor.split(num_workers))
    if len(shares) > num_workers:
        raise ValueError(
            f"{type(functor).__name__}.split({num_workers}) gave {len(shares)} shares; at most "
            f"{num_workers} (one per worker, whose worker_id is its position)"
        )
    return shares


def _length(functor: Functor) -> Optional[int]:
    try:
        return len(functor)
    except TypeError:
        return None


# --------------------------------------------------------------------------------------------
# Running shares (invariant 1)


def _run_share(kernel: Kernel, functor: Functor, share: Any, worker_id: int, done: Optional[np.ndarray]) -> None:
    if done is None:
        for entry in functor.iterate(share):
            kernel(worker_id, *entry)
        return
    n = 0
    for entry in functor.iterate(share):
        kernel(worker_id, *entry)
        n += 1
        done[worker_id] = n


class _SequenceSlice(Functor):
    """The part of a :class:`SequenceFunctor` one share covers, so that a worker is sent its
    own elements only; indices stay those of the whole sequence."""

    def __init__(self, items: Sequence[Any], start: int) -> None:
        self.items = items
        self.start = start

    def split(self, num_workers: int) -> list[None]:
        return [None]  # already one share

    def iterate(self, share: Any) -> Iterator[tuple[int, Any]]:
        start = self.start
        for k, value in enumerate(self.items):
            yield start + k, value


def _share_of(functor: Functor, share: Any) -> tuple:
    """``(functor, share)`` as sent to a worker: a sequence's share carries only its slice."""
    if type(functor) is SequenceFunctor and isinstance(share, (slice, range)):
        positions = _indices(share, len(functor.sequence))
        if isinstance(positions, range) and positions.step == 1:
            start, stop = positions.start, positions.stop
            return (_SequenceSlice(functor.sequence[start:stop], start), None)
    return (functor, share)


def _run_share_task(task: tuple) -> None:
    """Runs in a worker process: the share's task, unpickled from its payload."""
    _run_share(*task)


class MapContext(abc.ABC):
    """Where ``map`` runs its kernels. Every context allocates in the default pool, so arrays
    from :meth:`alloc` can be shared with any process, whichever context made them."""

    num_workers: int = 1

    def __init__(self, num_workers: int = 1) -> None:
        """A context of your own (a subclass that implements :meth:`map`) says how many workers
        it has here, as in pasha: ``alloc(per_worker=True)`` gives one row per worker."""
        self.num_workers = num_workers

    @staticmethod
    def run_worker(kernel: Kernel, functor: Functor, share: Any, worker_id: int) -> None:
        """One worker's loop: ``kernel(worker_id, *entry)`` for every entry of
        ``functor.iterate(share)``. For contexts of your own, as pasha's ``run_worker``."""
        _run_share(kernel, functor, share, worker_id, None)

    def alloc(
        self,
        shape: Any = None,
        dtype: Any = None,
        *,
        order: Optional[str] = None,
        fill: Any = None,
        like: Optional[np.ndarray] = None,
        per_worker: bool = False,
    ) -> np.ndarray:
        """A pooled array for kernels to write into.

        ``shape`` and ``dtype`` default to those of ``like`` (float64 without it), ``order`` to
        ``like``'s layout (C without it). ``fill`` is a scalar or array-like copied into the
        array (uninitialised without it). ``per_worker=True`` adds an axis of length
        :attr:`num_workers`, one entry per ``worker_id``, for reductions: the first axis for C
        order, the last for Fortran order (as pasha), so that each worker's part is contiguous
        (``a[worker_id]`` or ``a[..., worker_id]``); any order given or taken from ``like``
        counts, and the explicit one wins.

        Raises
        ------
        TypeError
            Neither ``shape`` nor ``like`` is given (also a ``ValueError``, as in pasha)."""
        if like is not None:
            like = np.asarray(like)
            if shape is None:
                shape = like.shape
            if dtype is None:
                dtype = like.dtype
        if shape is None:
            raise _ArgumentError("alloc() needs a shape, or like= an array")
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        order = _core.order_of(like, order) if like is not None else (order or "C").upper()
        if order not in ("C", "F"):
            raise ValueError(f"order must be 'C', 'F', 'A', 'K' or None, not {order!r}")
        if per_worker:
            shape = (self.num_workers,) + shape if order == "C" else shape + (self.num_workers,)
        out = _core.empty(shape, float if dtype is None else dtype, order)
        if fill is not None:
            np.copyto(out, fill, casting="unsafe")
        return out

    @abc.abstractmethod
    def map(self, kernel: Kernel, functor: Any, *, progress: bool = False) -> None:
        """Call ``kernel(worker_id, *entry)`` for every entry of ``functor``, usually
        ``kernel(worker_id, index, value)`` (see :func:`pyshm.map`)."""

    def close(self) -> None:
        """Release the context's workers (a no-op for contexts without any)."""

    def __enter__(self) -> "MapContext":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SerialContext(MapContext):
    """Runs every kernel call in this thread, one after the other (``worker_id`` 0).
    ``num_workers`` is accepted for pasha's ``set_default_context('serial', n)`` and ignored:
    there is always one worker."""

    def __init__(self, num_workers: Optional[int] = None) -> None:
        del num_workers  # always one
        super().__init__(1)

    def map(self, kernel: Kernel, functor: Any, *, progress: bool = False) -> None:
        functor = Functor.wrap(functor)
        bar = _bar(progress, functor)
        try:
            for share in _split(functor, 1):
                for entry in functor.iterate(share):
                    kernel(0, *entry)
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    def __repr__(self) -> str:
        return "SerialContext()"


def _bar(progress: bool, functor: Functor) -> Any:
    if not progress:
        return None
    from . import _progress

    return _progress.bar(_length(functor), "pyshm.map")


def _workers(num_workers: Optional[int]) -> int:
    if num_workers is None:
        return _executor.usable_cpus()
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
        raise ValueError(f"num_workers must be a positive int or None, not {num_workers!r}")
    return num_workers


def _wait_shares(futures: list, done: Optional[np.ndarray], bar: Any) -> None:
    """Wait for every share (invariant 3), advancing ``bar`` from the ``done`` counters."""
    pending = set(futures)
    shown = 0
    try:
        while pending:
            finished, pending = concurrent.futures.wait(
                pending, timeout=None if bar is None else 0.1, return_when=concurrent.futures.FIRST_EXCEPTION
            )
            if bar is not None:
                now = int(done.sum())
                bar.update(now - shown)
                shown = now
            for f in finished:
                e = f.exception()
                if isinstance(e, _executor.BrokenProcessPool):
                    raise e
            if any(f.exception() is not None for f in finished):
                concurrent.futures.wait(pending)  # the other shares finish first (invariant 3)
                pending = set()
    finally:
        if bar is not None:
            bar.close()
    for f in futures:
        if f.exception() is not None:
            raise f.exception()


class ThreadContext(MapContext):
    """Runs kernels on ``num_workers`` threads of this process (default: the usable CPUs).
    Kernels that release the GIL (most numpy work on large arrays) run in parallel."""

    def __init__(self, num_workers: Optional[int] = None) -> None:
        self.num_workers = _workers(num_workers)
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._lock = threading.Lock()

    def map(self, kernel: Kernel, functor: Any, *, progress: bool = False) -> None:
        functor = Functor.wrap(functor)
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(self.num_workers, "pyshm-map")
            ex = self._executor
        shares = _split(functor, self.num_workers)
        bar = _bar(progress, functor)
        done = np.zeros(self.num_workers, np.int64) if bar is not None else None
        futures = [ex.submit(_run_share, kernel, functor, s, i, done) for i, s in enumerate(shares)]
        _wait_shares(futures, done, bar)

    def close(self) -> None:
        with self._lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown()

    def __repr__(self) -> str:
        return f"ThreadContext(num_workers={self.num_workers})"


class ProcessContext(MapContext):
    """Runs kernels in ``num_workers`` worker processes (default: the usable CPUs), started at
    the first ``map`` with ``start_method`` (multiprocessing's default when ``None``) and kept
    until :meth:`close` (invariant 2). Kernels are sent by value; everything they name must be
    picklable, and pooled arrays among it go by handle."""

    def __init__(self, num_workers: Optional[int] = None, start_method: Optional[str] = None) -> None:
        self.num_workers = _workers(num_workers)
        self.start_method = start_method
        self._mp_context = multiprocessing.get_context(start_method)
        self._executor: Optional[_executor.ProcessPoolExecutor] = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _pool(self) -> _executor.ProcessPoolExecutor:
        with self._lock:
            if self._executor is not None and self._pid != os.getpid():
                # Inherited through a fork: its manager thread and workers are the parent's,
                # so nothing here would ever run it. Start our own (the parent's stays theirs).
                self._executor = None
            if self._executor is None:
                self._pid = os.getpid()
                # Kernels return nothing, so their temporaries stay in private memory.
                self._executor = _executor.ProcessPoolExecutor(
                    self.num_workers, self._mp_context, allocator_min_bytes=None
                )
            return self._executor

    def map(self, kernel: Kernel, functor: Any, *, progress: bool = False) -> None:
        functor = Functor.wrap(functor)
        if not callable(kernel):
            raise TypeError(f"the kernel must be callable, not {type(kernel).__name__}")
        if isinstance(functor, NdarrayFunctor) and not _core.is_shared(functor.array):
            # Into the pool once for every share, not once per share (the caller's functor and
            # array are left as they are).
            functor = copy.copy(functor)  # a subclass stays itself
            functor.array = _core.asarray(functor.array)
        shares = _split(functor, self.num_workers)
        bar = _bar(progress, functor)
        done = self.alloc(self.num_workers, np.int64, fill=0) if bar is not None else None
        copies: dict = {}  # arrays the kernel names, copied into the pool once for all shares
        if isinstance(kernel, types.FunctionType):
            named = list(_used_globals(kernel).values()) + list(_closure_values(kernel))
            for v in named:
                if type(v) is np.ndarray and not v.dtype.hasobject and not _core.is_shared(v):
                    copies[id(v)] = _core.asarray(v)
        payloads: list[Payload] = []
        try:
            for i, s in enumerate(shares):
                task = (kernel,) + _share_of(functor, s) + (i, done)
                payload = Payload(task, replace=copies, by_value=kernel)
                payloads.append(_freeze_share(payload, kernel, functor))
            ex = self._pool()
            try:
                futures = [ex.submit(_run_share_task, p) for p in payloads]
            except _executor.BrokenProcessPool:  # broken by an earlier map: start afresh
                self._discard(ex)
                ex = self._pool()
                futures = [ex.submit(_run_share_task, p) for p in payloads]
            try:
                _wait_shares(futures, done, bar)
            except _executor.BrokenProcessPool:
                self._discard(ex)
                raise
        except BaseException:
            # Handles of shares that no worker attached (a dead worker, a share that could not
            # be sent or unpickled) would keep their arrays alive: claim and drop them.
            for p in payloads:
                p.release()
            raise

    def _discard(self, ex: _executor.ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is ex:
                self._executor = None
        ex.shutdown(wait=False)

    def close(self) -> None:
        """Stop the worker processes (the next ``map`` starts new ones)."""
        with self._lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown()

    def __repr__(self) -> str:
        return f"ProcessContext(num_workers={self.num_workers}, start_method={self.start_method!r})"


def _names_used(code: types.CodeType) -> set:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


def _used_globals(fn: types.FunctionType) -> dict:
    """The globals of ``fn`` that its code (or code nested in it) names: what cloudpickle sends
    with it, and so the arrays ``map`` copies into the pool once for all shares."""
    g = fn.__globals__
    return {name: g[name] for name in _names_used(fn.__code__) if name in g}


def _closure_values(fn: types.FunctionType) -> list:
    values = []
    for cell in fn.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell (keeps the order of co_freevars)
            values.append(None)
    return values


def _freeze_share(payload: Payload, kernel: Kernel, functor: Functor) -> Payload:
    """Pickle the share's payload now, so that a kernel or functor that cannot be sent fails
    here, in the caller, with a message that names the culprit."""
    try:
        return payload.freeze()
    except Exception as e:
        payload.release()
        try:
            cloudpickle.dumps(type(functor))
        except Exception:
            raise TypeError(
                f"pyshm.map cannot send the functor to worker processes: its class "
                f"{type(functor).__qualname__!r} cannot be pickled ({e}); "
                "use ThreadContext or SerialContext"
            ) from e
        raise TypeError(_why_unpicklable(kernel, e)) from e


def _why_unpicklable(kernel: Kernel, error: Exception) -> str:
    name = getattr(kernel, "__qualname__", type(kernel).__name__)
    msg = f"pyshm.map cannot send the kernel {name!r} to worker processes ({type(error).__name__}: {error})"
    culprit = None
    if isinstance(kernel, types.FunctionType):
        named = dict(_used_globals(kernel))
        if kernel.__closure__:
            named.update(zip(kernel.__code__.co_freevars, _closure_values(kernel)))
        for var, value in named.items():
            if isinstance(value, (np.ndarray, types.FunctionType, types.ModuleType)):
                continue  # arrays and modules always travel; functions fail on their own names
            try:
                pickle.dumps(value)
            except Exception:
                culprit = f"it uses {var!r}, a {type(value).__qualname__}, which cannot be pickled"
                break
    why = culprit or "something it uses cannot be pickled"
    return (
        f"{msg}: {why}. Under ProcessContext the kernel travels by value with its closure and the "
        "globals it names (arrays by handle), so these must be picklable; use ThreadContext or "
        "SerialContext for kernels that need unpicklable objects."
    )


# --------------------------------------------------------------------------------------------
# The default context and the module-level functions

_default_context: Optional[MapContext] = None
_default_lock = threading.Lock()

_NAMED = {"serial": SerialContext, "threads": ThreadContext, "processes": ProcessContext}


def get_default_context() -> MapContext:
    """The context ``map`` and ``alloc`` use when none is given: a :class:`ProcessContext`
    with one worker per usable CPU unless :func:`set_default_context` chose another."""
    global _default_context
    with _default_lock:
        if _default_context is None:
            _default_context = ProcessContext()
        return _default_context


def set_default_context(context: Union[MapContext, str], *args: Any, **kwargs: Any) -> MapContext:
    """Make ``context`` the default: a context object, or ``"serial"``, ``"threads"`` or
    ``"processes"`` with the arguments of that context's class
    (``set_default_context("threads", 2)`` as in pasha). Returns it."""
    global _default_context
    if isinstance(context, str):
        try:
            cls = _NAMED[context]
        except KeyError:
            raise ValueError(f"unknown context {context!r}: use 'serial', 'threads' or 'processes'") from None
        context = cls(*args, **kwargs)
    elif args or kwargs:
        raise TypeError("arguments go with a context name, not a context object")
    if not isinstance(context, MapContext):
        raise TypeError(f"set_default_context() takes a MapContext or a name, not {type(context).__name__}")
    with _default_lock:
        _default_context = context
    return context


def alloc(
    shape: Any = None,
    dtype: Any = None,
    *,
    order: Optional[str] = None,
    fill: Any = None,
    like: Optional[np.ndarray] = None,
    per_worker: bool = False,
) -> np.ndarray:
    """A pooled array for kernels to write into, from the default context (see
    :meth:`MapContext.alloc`)."""
    return get_default_context().alloc(shape, dtype, order=order, fill=fill, like=like, per_worker=per_worker)


def map(  # noqa: A001 (pasha's name)
    kernel: Kernel, functor: Any, *, context: Optional[MapContext] = None, progress: bool = False
) -> None:
    """Call ``kernel(worker_id, index, value)`` for every element of ``functor``, in parallel.

    ``functor`` is a numpy array (its first axis), a sequence (list, tuple, range, ...), an int
    ``n``, a :class:`Functor`, or a value a functor wraps (:meth:`Functor.try_wrap`). A functor
    whose entries have other than two items gets ``kernel(worker_id, *entry)``. ``context``
    defaults to :func:`get_default_context`. Kernels return nothing: they write their results
    into arrays made with :func:`alloc` (or any pooled array).
    ``progress=True`` shows a tqdm bar (``pip install pyshm[progress]``).

    Raises the first exception a kernel raised (after every share finished), or
    ``concurrent.futures.process.BrokenProcessPool`` if a worker process died;
    ``TypeError`` (also a ``ValueError``) if ``functor`` cannot be wrapped."""
    (context or get_default_context()).map(kernel, functor, progress=progress)

