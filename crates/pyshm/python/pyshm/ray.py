"""Ray: pooled arrays in a task's arguments and results travel as handles.

Invariants:

1. Nothing here registers anything with Ray: Ray serializes every object that is not a
   :class:`pyshm.ByHandle` exactly as it would without pyshm (its zero-copy path for plain
   arrays stays untouched; a serializer registered for ``numpy.ndarray`` would slow it 5-15x).
2. :func:`remote` is ``ray.remote`` plus two wraps: on the caller's side, each pooled array among
   a call's arguments (or an item of a list, tuple or dict argument) is marked
   :func:`pyshm.by_handle`; on the worker's side, the function runs under pyshm's allocator
   (allocations of at least ``allocator_min_bytes`` are born in the pool) and each pooled array
   in its result is marked the same way. A task then gets writable arrays over the caller's
   memory and the caller gets results without a copy; plain arrays are left to Ray.
3. A worker joins the caller's default pool when it first attaches one of its handles (the
   handle says it came from the sender's default pool), so results are born there.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import numpy as np
import ray

from . import _allocator
from ._allocator import DEFAULT_MIN_BYTES
from ._by_handle import by_handle, wrap_pooled

__all__ = ["RemoteFunction", "put", "remote"]


def _run_by_handle(fn: Callable[..., Any], min_bytes: Optional[int]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if min_bytes is None:
            return wrap_pooled(fn(*args, **kwargs))
        with _allocator.allocator(min_bytes=min_bytes):
            result = fn(*args, **kwargs)
        return wrap_pooled(result)

    return run


class RemoteFunction:
    """A ``ray.remote`` function whose pooled arguments and results travel as handles.

    Made by :func:`remote`. ``f.remote(...)`` and ``f.options(...)`` work as Ray's.
    """

    def __init__(self, remote_function: Any) -> None:
        self._remote_function = remote_function

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit a call, as Ray's ``remote``; pooled arrays go as handles (invariant 2)."""
        args = tuple(wrap_pooled(a) for a in args)
        kwargs = {k: wrap_pooled(v) for k, v in kwargs.items()}
        return self._remote_function.remote(*args, **kwargs)

    def options(self, **options: Any) -> "RemoteFunction":
        """The same function with Ray's per-call options."""
        return RemoteFunction(self._remote_function.options(**options))


def remote(*args: Any, allocator_min_bytes: Optional[int] = DEFAULT_MIN_BYTES, **options: Any) -> Any:
    """``ray.remote`` for functions whose pooled arrays should travel as handles.

    Use it as ``@pyshm.ray.remote`` or ``@pyshm.ray.remote(num_cpus=1, ...)`` (Ray's options).
    Pooled arrays among the arguments arrive writable, over the caller's memory; the task's
    allocations of at least ``allocator_min_bytes`` bytes (default 64 KiB; ``None``: numpy's
    own allocator) are born in the pool and its pooled results come back as handles. Plain
    arrays and every other object are sent by Ray as usual.

    Examples
    --------
    >>> import pyshm, pyshm.ray, ray  # doctest: +SKIP
    >>> @pyshm.ray.remote
    ... def add_one(x):
    ...     x += 1
    ...     return x * 2
    >>> a = pyshm.zeros(10)
    >>> r = ray.get(add_one.remote(a))  # a is now all ones, r all twos, in the pool
    """
    if len(args) == 1 and callable(args[0]) and not options:
        return RemoteFunction(ray.remote(_run_by_handle(args[0], allocator_min_bytes)))
    if args:
        raise TypeError("pyshm.ray.remote takes a function, or only keyword options")

    def decorate(fn: Callable[..., Any]) -> RemoteFunction:
        return RemoteFunction(ray.remote(**options)(_run_by_handle(fn, allocator_min_bytes)))

    return decorate


def put(a: np.ndarray) -> Any:
    """``ray.put(pyshm.by_handle(a))``: an object reference that Ray's workers and ``ray.get``
    resolve to the pooled array itself (``a`` must live in a pool)."""
    return ray.put(by_handle(a))
