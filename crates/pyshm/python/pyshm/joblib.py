"""A joblib backend, ``"pyshm"``, under which pooled arrays travel as handles.

Invariants:

1. ``import pyshm`` registers nothing with joblib. Importing this module (or calling
   :func:`register`, which is idempotent) registers the backend name ``"pyshm"`` with
   ``joblib.register_parallel_backend``; nothing else in joblib or loky is changed.
2. The backend is joblib's loky backend with two reducers wrapped, on its own executor only: a
   pooled array (argument or result) is sent as a handle with a transfer token (writable on the
   other side, the same memory); every other array is given to joblib's own reducer, so plain
   arrays are memory-mapped or copied exactly as under joblib's default backend.
3. Its workers are told apart from the default backend's by ``PYSHM_JOBLIB`` in their
   environment, so joblib never reuses one backend's executor (and reducers) for the other; they
   join the caller's default pool (``PYSHM_POOL``) and install pyshm's numpy allocator for
   allocations of at least ``allocator_min_bytes``, so large results are born in the pool.
4. joblib's retrieval loop polls the next job's status with ``time.sleep(0.01)``, which for a
   task of a few tens of milliseconds adds up to 10 ms (most of the backend's gap to
   ``pyshm.ProcessPoolExecutor``). Before that loop starts (``retrieval_context``), the backend
   waits on an event that is set, after joblib's own callback ran, by the completion of the
   first job, of any job that failed (joblib raises a task's error as soon as it is known), or
   of any job under ``return_as="generator_unordered"`` (whose results come in completion
   order), so the loop's first look finds something to do. Later jobs are polled as joblib does.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Optional

import joblib
import numpy as np
from joblib._parallel_backends import LokyBackend

from . import _allocator, _pickle, _pools
from ._allocator import DEFAULT_MIN_BYTES

__all__ = ["PyshmBackend", "register"]


class _PooledFirst:
    """A loky reducer for ``numpy.ndarray``: a handle for a pooled array, ``fallback``
    (joblib's own reducer) for any other (invariant 2). Pickled into workers with the result
    queue, so it is a plain module-level class."""

    __slots__ = ("fallback",)

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def __call__(self, a: np.ndarray) -> Any:
        r = _pickle.handle_reduction(a)
        return r if r is not None else self.fallback(a)

    def __reduce__(self) -> Any:
        return (_PooledFirst, (self.fallback,))


def _wrap(reducers: Optional[dict]) -> None:
    if reducers is None:
        return
    for cls in (np.ndarray, np.memmap):
        r = reducers.get(cls)
        if r is not None and not isinstance(r, _PooledFirst):
            reducers[cls] = _PooledFirst(r)


def _failed(out: Any) -> bool:
    """Whether a finished loky future ended in an error (joblib then aborts the call)."""
    try:
        return out.exception(timeout=0) is not None
    except Exception:  # cancelled, or not a future: count it as an error, the wait ends
        return True


def _worker_init(min_bytes: Optional[int]) -> None:
    """Runs first in each worker: joins the default pool and installs the allocator."""
    if min_bytes is not None:
        _allocator.install_allocator(min_bytes=min_bytes)


class PyshmBackend(LokyBackend):
    """joblib's loky backend with pooled arrays sent as handles (see the module's invariants).

    Parameters
    ----------
    allocator_min_bytes : int or None, optional
        Workers take numpy allocations of at least this many bytes from the pool (default
        64 KiB), so large results come back as handles; ``None`` leaves numpy's allocator.
    **kwargs
        joblib's loky backend arguments (``idle_worker_timeout``, ``max_nbytes``, ...).
    """

    _first_done: Optional[threading.Event] = None  # what retrieval waits for (invariant 4)

    def __init__(self, *args: Any, allocator_min_bytes: Optional[int] = DEFAULT_MIN_BYTES, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allocator_min_bytes = allocator_min_bytes

    def submit(self, func: Any, callback: Any = None) -> Any:
        ready = self._first_done
        first = ready is None
        if ready is None:
            ready = self._first_done = threading.Event()
        ordered = getattr(getattr(self, "parallel", None), "return_ordered", True)

        def completed(out: Any) -> None:
            try:
                if callback is not None:
                    callback(out)
            finally:
                # After joblib's callback: its status is set (invariant 4).
                if first or not ordered or _failed(out):
                    ready.set()

        return super().submit(func, callback=completed)

    @contextlib.contextmanager
    def retrieval_context(self) -> Iterator[None]:
        with super().retrieval_context():
            first, self._first_done = self._first_done, None
            if first is not None:
                first.wait(getattr(getattr(self, "parallel", None), "timeout", None))
            yield

    def _prepare_worker_env(self, n_jobs: int) -> dict:
        env = super()._prepare_worker_env(n_jobs)
        env["PYSHM_POOL"] = _pools.default_native().name
        env["PYSHM_JOBLIB"] = "1"
        return env

    def configure(
        self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None, require: Any = None, **kwargs: Any
    ) -> int:
        self._first_done = None  # a job of an earlier call that never reached retrieval
        kwargs.setdefault("initializer", _worker_init)
        kwargs.setdefault("initargs", (self.allocator_min_bytes,))
        n = super().configure(n_jobs, parallel, prefer, require, **kwargs)
        workers = getattr(self, "_workers", None)  # absent when joblib fell back to sequential
        if workers is not None:
            _wrap(getattr(getattr(workers, "_call_queue", None), "_reducers", None))
            _wrap(getattr(getattr(workers, "_result_queue", None), "_reducers", None))
        return n


def register() -> None:
    """Register the joblib backend ``"pyshm"`` (done when this module is imported).

    Examples
    --------
    >>> import joblib, pyshm, pyshm.joblib
    >>> x = pyshm.zeros(1000)
    >>> with joblib.parallel_config(backend="pyshm", n_jobs=2):
    ...     r = joblib.Parallel()(joblib.delayed(sum)(x) for _ in range(2))
    >>> r
    [np.float64(0.0), np.float64(0.0)]
    """
    joblib.register_parallel_backend("pyshm", PyshmBackend)


register()
