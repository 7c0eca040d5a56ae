"""pyshm for asyncio programs: run functions in worker processes and map over pooled arrays.

``await aio.run(fn, *args)`` runs ``fn(*args)`` in a :class:`pyshm.ProcessPoolExecutor`, and
``async for chunk, result in aio.map(fn, array)`` calls ``fn`` on chunks of a pooled array in
worker processes, yielding each result as its chunk completes. Arrays travel by handle both ways.

Invariants:

1. Nothing here blocks the event loop: submitting queues work (multiprocessing pickles in its
   own thread), copying an array into the pool runs in a thread, and results are awaited.
2. An executor passed in is used and never shut down. Without one, the module's own executor
   (one worker per usable CPU) is made on first use and shut down at interpreter exit.
3. Cancelling the consumer of :func:`map` (or closing the generator) cancels the chunks that
   have not started; chunks already running finish in their worker and their results are
   dropped.
4. Only asyncio's public API is used, so this runs under anyio's asyncio backend too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import math
import os
import threading
from typing import Any, AsyncIterator, Callable, Optional

import numpy as np

from . import _core, _executor

__all__ = ["map", "run"]

_default: Optional[_executor.ProcessPoolExecutor] = None
_default_pid = 0
_default_lock = threading.Lock()

#: Arrays smaller than this are copied into the pool in the event loop's thread.
_COPY_IN_THREAD_BYTES = 1 << 20


def _executor_for(executor: Optional[concurrent.futures.Executor]) -> concurrent.futures.Executor:
    global _default, _default_pid
    if executor is not None:
        return executor
    with _default_lock:
        if _default is None or _default_pid != os.getpid():  # none yet, or the parent's (fork)
            _default = _executor.ProcessPoolExecutor(_executor.usable_cpus())
            _default_pid = os.getpid()
        return _default


async def run(fn: Callable[..., Any], *args: Any, executor: Optional[concurrent.futures.Executor] = None) -> Any:
    """``fn(*args)`` in a worker process (or in ``executor``), awaited without blocking the
    event loop. Cancelling the awaiting task cancels the call if it has not started."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor_for(executor), functools.partial(fn, *args))


async def _pooled(array: Any) -> np.ndarray:
    if isinstance(array, np.ndarray) and _core.is_shared(array):
        return array
    a = np.asarray(array)
    if a.nbytes < _COPY_IN_THREAD_BYTES:
        return _core.asarray(a)
    return await asyncio.get_running_loop().run_in_executor(None, _core.asarray, a)


async def map(  # noqa: A001 (the name says what it does, like builtins.map)
    fn: Callable[[np.ndarray], Any],
    array: Any,
    *,
    chunk_size: Optional[int] = None,
    axis: int = 0,
    executor: Optional[concurrent.futures.Executor] = None,
    progress: bool = False,
) -> AsyncIterator[tuple[slice, Any]]:
    """Call ``fn(chunk)`` for chunks of ``array`` along ``axis`` in worker processes, and yield
    ``(chunk_slice, result)`` as each completes (in completion order).

    ``array`` is moved into the pool first if it is not there (in a thread, once), and each
    chunk is a view of it sent by handle, so ``fn`` may also write into its chunk.
    ``chunk_slice`` is the ``slice`` along ``axis`` (``array[(slice(None),) * axis +
    (chunk_slice,)]`` is the chunk). ``chunk_size`` defaults to an even split into four chunks
    per worker. ``progress=True`` shows a tqdm bar of finished chunks.

    Use it as ``async for sl, result in pyshm.aio.map(fn, a): ...``; leaving the loop early
    and closing the generator (``contextlib.aclosing``), or cancelling the consumer, cancels
    the chunks not yet started."""
    ex = _executor_for(executor)
    a = await _pooled(array)
    if a.ndim == 0:
        raise ValueError("aio.map needs an array with at least one dimension")
    if not -a.ndim <= axis < a.ndim:
        raise getattr(np, "exceptions", np).AxisError(axis, a.ndim)
    axis %= a.ndim
    n = a.shape[axis]
    if chunk_size is None:
        workers = getattr(ex, "_max_workers", None) or _executor.usable_cpus()
        chunk_size = max(1, math.ceil(n / (4 * workers)))
    elif not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, not {chunk_size!r}")
    bar = None
    if progress:
        from . import _progress

        bar = _progress.bar(math.ceil(n / chunk_size), "pyshm.aio.map")
    slices = {}
    try:
        for start in range(0, n, chunk_size):
            s = slice(start, min(start + chunk_size, n))
            future = asyncio.wrap_future(ex.submit(fn, a[(slice(None),) * axis + (s,)]))
            slices[future] = s
        pending = set(slices)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: slices[f].start):
                if bar is not None:
                    bar.update(1)
                yield slices[future], future.result()
    finally:
        for future in slices:
            future.cancel()
        if bar is not None:
            bar.close()
