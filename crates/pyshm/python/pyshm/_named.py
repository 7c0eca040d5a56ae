"""Named arrays (SharedArray's model): any program of the same user can attach them by name.

They live in one named pool per user (``PYSHM_NAMED_POOL``, default ``named_<uid>`` for the
effective uid: ``/dev/shm/pyshm-named_1000``) that persists while it holds at least one name, and
goes with its last process once the last name is deleted. A named array lives until it is
deleted, even with no process attached.

Named arrays are not shared between users: a pool is opened only if its files belong to the
caller's effective uid and no one else may read or write them, so a pool another user created
under the name (to read or overwrite the arrays) is refused with an ``OSError`` that names the
file and its owner. Sharing across users is not offered.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, List, Tuple

import numpy as np

from . import _pools
from ._native import NativePool

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ._typing import DTypeSpec, ShapeLike

__all__ = ["NamedArray", "create", "attach", "delete", "list_names"]


def pool_name() -> str:
    """The name of this user's named-array pool: ``PYSHM_NAMED_POOL``, else ``named_<euid>``.

    One fixed name for every user would let the first user to create it receive every other
    user's named arrays; a name per user keeps each user's arrays in a pool of their own.
    """
    return os.environ.get("PYSHM_NAMED_POOL") or f"named_{os.geteuid()}"


def named_pool() -> NativePool:
    """This user's named-array pool, opened or created (also where named locks live)."""
    name = pool_name()
    n = NativePool.find(name)
    if n is not None:
        return n
    return _pools.track(NativePool.create(name, persistent=False, persist_while_named=True))


def _strip(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"an array name is a str, not {type(name).__name__}")
    name = name[len("shm://") :] if name.startswith("shm://") else name
    if name.startswith("\x00"):
        # The names of named locks and events (`_locks.HIDDEN`): no array name can take,
        # reach or delete one.
        raise ValueError(
            f"array names cannot start with a NUL byte ({name!r}): those are the names of "
            "pyshm's named locks and events (remove one with pyshm.Lock.unlink or pyshm.Event.unlink)"
        )
    return name


def create(name: str, shape: ShapeLike, dtype: DTypeSpec = float) -> NDArray[Any]:
    """Create a zero-filled array named ``name`` (``FileExistsError`` if the name is taken).

    ``shape`` and ``dtype`` are as :func:`pyshm.zeros` takes them, and so is the array's type
    (``_named.pyi``): ``create("x", 3, np.int32)`` is an int32 array."""
    pool = named_pool()
    a = pool.empty(shape, dtype, "C", True)
    pool.publish(_strip(name), a)
    return a


def attach(name: str) -> NDArray[Any]:
    """The array named ``name`` (``FileNotFoundError`` if there is none)."""
    return named_pool().lookup(_strip(name))


def delete(name: str) -> None:
    """Delete the name; the array is freed once no process holds it."""
    named_pool().unpublish(_strip(name))


class NamedArray(str):
    """An entry of :func:`pyshm.list`: the array's name (a ``str``, usable wherever a name is),
    with its ``dtype`` and ``shape`` as they were when the list was made.

    Examples
    --------
    >>> import numpy as np, pyshm
    >>> _ = pyshm.create("doc-example", (2, 3), np.int16)
    >>> [(n, n.dtype, n.shape) for n in pyshm.list() if n == "doc-example"]
    [('doc-example', dtype('int16'), (2, 3))]
    >>> pyshm.delete("doc-example")
    """

    dtype: np.dtype
    shape: Tuple[int, ...]

    def __new__(cls, name: str, dtype: Any, shape: Tuple[int, ...]) -> "NamedArray":
        entry = super().__new__(cls, name)
        entry.dtype = np.dtype(dtype)
        entry.shape = tuple(shape)
        return entry

    def __reduce__(self) -> Any:
        return (NamedArray, (str(self), self.dtype, self.shape))


def list_names() -> List[NamedArray]:
    """Every array name, sorted, each a :class:`NamedArray` (a ``str``) carrying the array's
    dtype and shape. Names of locks and events (which start with a NUL byte) are not array
    names; a name deleted while the list is made is left out."""
    pool = named_pool()
    entries = []
    for name in sorted(n for n in pool.names() if not n.startswith("\x00")):
        try:
            a = pool.lookup(name)
        except (FileNotFoundError, ValueError):  # deleted (or its array freed) meanwhile
            continue
        entries.append(NamedArray(name, a.dtype, a.shape))
        del a
    return entries
