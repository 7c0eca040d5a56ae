"""Named arrays (SharedArray's model): any program on the machine can attach them by name.

They live in one named pool (``PYSHM_NAMED_POOL``, default ``named``: ``/dev/shm/pyshm-named``)
that persists while it holds at least one name, and goes with its last process once the last
name is deleted. A named array lives until it is deleted, even with no process attached.
"""

from __future__ import annotations

import os
from typing import Any, List

import numpy as np

from . import _pools
from ._native import NativePool

__all__ = ["create", "attach", "delete", "list_names"]


def _pool() -> NativePool:
    name = os.environ.get("PYSHM_NAMED_POOL") or "named"
    n = NativePool.find(name)
    if n is not None:
        return n
    return _pools.track(NativePool.create(name, persistent=False, persist_while_named=True))


def _strip(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"an array name is a str, not {type(name).__name__}")
    return name[len("shm://") :] if name.startswith("shm://") else name


def create(name: str, shape: Any, dtype: Any = float) -> np.ndarray:
    """Create a zero-filled array named ``name`` (``FileExistsError`` if the name is taken)."""
    pool = _pool()
    a = pool.empty(shape, dtype, "C", True)
    pool.publish(_strip(name), a)
    return a


def attach(name: str) -> np.ndarray:
    """The array named ``name`` (``FileNotFoundError`` if there is none)."""
    return _pool().lookup(_strip(name))


def delete(name: str) -> None:
    """Delete the name; the array is freed once no process holds it."""
    _pool().unpublish(_strip(name))


def list_names() -> List[str]:
    """Every array name, sorted."""
    return sorted(_pool().names())
