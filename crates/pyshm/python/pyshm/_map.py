"""``pyshm.map`` and ``pyshm.alloc``: a parallel map whose kernels write into shared arrays.

The model is pasha's: ``map(kernel, functor)`` calls ``kernel(worker_id, index, value)`` for
every element the functor yields, spread over the workers of a context, and kernels write their
results into arrays made with :func:`alloc`, which every worker sees.

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
import concurrent.futures
import multiprocessing
import os
import pickle
import threading
import types
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

Kernel = Callable[[int, Any, Any], Any]

# --------------------------------------------------------------------------------------------
# Functors


class Functor(abc.ABC):
    """What ``map`` maps over: subclasses say how to split the work into shares and how to
    iterate over one share. A share must be picklable (it is sent to a worker process)."""

    @abc.abstractmethod
    def split(self, num_workers: int) -> Sequence[Any]:
        """At most ``num_workers`` shares that together cover every element once."""

    @abc.abstractmethod
    def iterate(self, share: Any) -> Iterable[tuple[Any, Any]]:
        """``(index, value)`` for every element of ``share``."""

    def __len__(self) -> int:
        """The number of elements (for progress bars); subclasses that know it say so."""
        raise TypeError(f"{type(self).__name__} does not know its length")

    @staticmethod
    def wrap(value: Any) -> "Functor":
        """``value`` as a functor: a functor as is, a numpy array as :class:`NdarrayFunctor`,
        a list, tuple or range as :class:`SequenceFunctor`, an int ``n`` as ``range(n)``."""
        if isinstance(value, Functor):
            return value
        if isinstance(value, np.ndarray):
            return NdarrayFunctor(value)
        if isinstance(value, (list, tuple, range)):
            return SequenceFunctor(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return SequenceFunctor(range(value))
        raise TypeError(
            f"pyshm.map cannot map over a {type(value).__name__}: pass a numpy array, a list, tuple "
            "or range, an int, or a pyshm.Functor"
        )


def _ranges(n: int, parts: int) -> list[range]:
    """``range(n)`` cut into at most ``parts`` contiguous, nearly equal, non-empty ranges."""
    parts = max(1, min(parts, n))
    step, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + step + (1 if i < extra else 0)
        if stop > start:
            out.append(range(start, stop))
        start = stop
    return out


class SequenceFunctor(Functor):
    """Maps over a sequence: ``index`` is the position, ``value`` the element."""

    def __init__(self, sequence: Sequence[Any]) -> None:
        self.sequence = sequence

    def split(self, num_workers: int) -> list[range]:
        return _ranges(len(self.sequence), num_workers)

    def iterate(self, share: range) -> Iterator[tuple[int, Any]]:
        seq = self.sequence
        for i in share:
            yield i, seq[i]

    def __len__(self) -> int:
        return len(self.sequence)


class NdarrayFunctor(Functor):
    """Maps over a numpy array along ``axis`` (the first axis when ``None``): ``index`` is
    the position along it, ``value`` the sub-array there (a view, or a scalar for 1-D).

    Under :class:`ProcessContext` the array reaches the workers by handle; an array that is not
    pooled is copied into the pool once per ``map``, so kernels that write into ``value`` write
    into that copy: write results into arrays from :func:`alloc` instead."""

    def __init__(self, array: np.ndarray, axis: Optional[int] = None) -> None:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"NdarrayFunctor takes a numpy array, not {type(array).__name__}")
        if array.ndim == 0:
            raise ValueError("NdarrayFunctor needs an array with at least one dimension")
        self.array = array
        axis = 0 if axis is None else int(axis)
        if not -array.ndim <= axis < array.ndim:
            raise getattr(np, "exceptions", np).AxisError(axis, array.ndim)
        self.axis = axis % array.ndim

    def split(self, num_workers: int) -> list[range]:
        return _ranges(self.array.shape[self.axis], num_workers)

    def iterate(self, share: range) -> Iterator[tuple[int, Any]]:
        a = self.array if self.axis == 0 else np.moveaxis(self.array, self.axis, 0)
        for i in share:
            yield i, a[i]

    def __len__(self) -> int:
        return self.array.shape[self.axis]


def _split(functor: Functor, num_workers: int) -> Sequence[Any]:
    shares = functor.split(num_workers)
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
        for index, value in functor.iterate(share):
            kernel(worker_id, index, value)
        return
    n = 0
    for index, value in functor.iterate(share):
        kernel(worker_id, index, value)
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
    if type(functor) is SequenceFunctor and isinstance(share, range) and share.step == 1:
        return (_SequenceSlice(functor.sequence[share.start : share.stop], share.start), None)
    return (functor, share)


def _run_share_task(task: tuple) -> None:
    """Runs in a worker process: the share's task, unpickled from its payload."""
    _run_share(*task)


class MapContext(abc.ABC):
    """Where ``map`` runs its kernels. Every context allocates in the default pool, so arrays
    from :meth:`alloc` can be shared with any process, whichever context made them."""

    num_workers: int = 1

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
        array (uninitialised without it). ``per_worker=True`` adds a leading axis of length
        :attr:`num_workers`, one row per ``worker_id``, for reductions."""
        if like is not None:
            like = np.asarray(like)
            if shape is None:
                shape = like.shape
            if dtype is None:
                dtype = like.dtype
        if shape is None:
            raise TypeError("alloc() needs a shape, or like= an array")
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        if per_worker:
            shape = (self.num_workers,) + shape
        order = _core.order_of(like, order) if like is not None else (order or "C").upper()
        if order not in ("C", "F"):
            raise ValueError(f"order must be 'C', 'F', 'A', 'K' or None, not {order!r}")
        out = _core.empty(shape, float if dtype is None else dtype, order)
        if fill is not None:
            np.copyto(out, fill, casting="unsafe")
        return out

    @abc.abstractmethod
    def map(self, kernel: Kernel, functor: Any, *, progress: bool = False) -> None:
        """Call ``kernel(worker_id, index, value)`` for every element of ``functor`` (see
        :func:`pyshm.map`)."""

    def close(self) -> None:
        """Release the context's workers (a no-op for contexts without any)."""

    def __enter__(self) -> "MapContext":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SerialContext(MapContext):
    """Runs every kernel call in this thread, one after the other (``worker_id`` 0)."""

    num_workers = 1

    def map(self, kernel: Kernel, functor: Any, *, progress: bool = False) -> None:
        functor = Functor.wrap(functor)
        bar = _bar(progress, functor)
        try:
            for share in _split(functor, 1):
                for index, value in functor.iterate(share):
                    kernel(0, index, value)
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
            functor = NdarrayFunctor(_core.asarray(functor.array), functor.axis)
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


def set_default_context(context: Union[MapContext, str], **kwargs: Any) -> MapContext:
    """Make ``context`` the default: a context object, or ``"serial"``, ``"threads"`` or
    ``"processes"`` with the keyword arguments of that context's class. Returns it."""
    global _default_context
    if isinstance(context, str):
        try:
            cls = _NAMED[context]
        except KeyError:
            raise ValueError(f"unknown context {context!r}: use 'serial', 'threads' or 'processes'") from None
        context = cls(**kwargs)
    elif kwargs:
        raise TypeError("keyword arguments go with a context name, not a context object")
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

    ``functor`` is a numpy array (its first axis), a list, tuple or range, an int ``n``, or a
    :class:`Functor`. ``context`` defaults to :func:`get_default_context`. Kernels return
    nothing: they write their results into arrays made with :func:`alloc` (or any pooled array).
    ``progress=True`` shows a tqdm bar (``pip install pyshm[progress]``).

    Raises the first exception a kernel raised (after every share finished), or
    ``concurrent.futures.process.BrokenProcessPool`` if a worker process died."""
    (context or get_default_context()).map(kernel, functor, progress=progress)

