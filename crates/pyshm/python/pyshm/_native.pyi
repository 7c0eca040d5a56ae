"""Type stubs of pyshm's native module (kept in sync by tests/test_stubs.py and checked against the
module by mypy.stubtest in tests/test_typing.py)."""

from typing import Any, Optional, Sequence, SupportsIndex, Union, final

import numpy as np
from numpy.typing import DTypeLike, NDArray

#: A shape: an int (or anything with ``__index__``) or a sequence of them.
_ShapeLike = Union[SupportsIndex, Sequence[SupportsIndex]]

HANDLE_FIXED_LEN: int
"""Bytes of a handle without its view part (shm-ndarray's fixed encoding)."""
__version__: str
"""The pyshm crate's version."""

class InvalidHandleError(ValueError):
    """A handle that names no valid array: malformed, corrupt, of another pool, or a view
    outside its array."""

class StaleHandleError(InvalidHandleError):
    """A handle whose array was freed: its memory may now hold another array."""

class PoolNotFoundError(FileNotFoundError):
    """The pool a handle or name refers to does not exist (any more); errno ENOENT."""

class PoolMemoryError(MemoryError):
    """The pool (or /dev/shm) has no room for the array."""

class NameTableFullError(RuntimeError):
    """The pool holds as many names as it can (524,288): delete names to make room."""

class PoolCorruptError(RuntimeError):
    """The pool's shared memory breaks its protocol (a lock held by a live non-member)."""

class PoolFullError(RuntimeError):
    """A table of the pool is full: every process slot is taken by a live process (from
    joining, attaching, unpickling and making arrays alike)."""

class TokenTableFullError(PoolFullError):
    """No handle could be made: every transfer token slot of the pool is taken by a handle sent
    and not attached yet. Nothing was taken."""

class PoolOSError(OSError):
    """A system call on the pool's shared memory failed; ``errno`` is set when known."""

class PoolPermissionError(PoolOSError, PermissionError):
    """A system call on the pool's shared memory was refused (EACCES or EPERM): a
    PoolOSError that is also a PermissionError."""

@final
class Handle:
    """A small picklable reference to a pooled array or view (``pyshm.Handle``)."""

    def __new__(
        cls, pool: str, data: bytes, retype: Optional[tuple[DTypeLike, int, tuple[int, ...], tuple[int, ...]]] = None
    ) -> Handle:
        """A handle from its parts: the pool's name, the handle's bytes and the view's retype."""
    @property
    def pool(self) -> str:
        """The name of the pool the array lives in."""
    @property
    def data(self) -> bytes:
        """The handle's bytes."""
    @property
    def retype(self) -> Optional[tuple[np.dtype[Any], int, tuple[int, ...], tuple[int, ...]]]:
        """``(dtype, offset, shape, strides)`` of a view with another dtype than its array's."""

@final
class PoolStats:
    """A pool's usage, in bytes unless said otherwise (``pyshm.PoolStats``)."""

    def __new__(
        cls,
        capacity: int,
        used: int,
        free: int,
        largest_free: int,
        arrays: int,
        segments: int,
        processes: int,
        reserved: int,
        held: int,
        handles_in_flight: int,
        token_slots: int,
        live: int,
        warm: int,
        keep: int,
        overhead: float,
        name_table: int,
    ) -> PoolStats:
        """The figures, in this order (as pickling passes them)."""
    @property
    def capacity(self) -> int:
        """Bytes of address space of the data segments (sparse: see ``held`` for memory)."""
    @property
    def used(self) -> int:
        """Bytes of blocks holding array data."""
    @property
    def free(self) -> int:
        """Bytes free in the data segments."""
    @property
    def largest_free(self) -> int:
        """The largest block an array could get without the pool growing."""
    @property
    def arrays(self) -> int:
        """Arrays alive in the pool (held by some process, a name or a handle in flight)."""
    @property
    def segments(self) -> int:
        """Segments (files in /dev/shm), metadata included."""
    @property
    def processes(self) -> int:
        """Processes registered in the pool."""
    @property
    def reserved(self) -> int:
        """Bytes of freed small arrays' blocks that processes keep for their next small arrays."""
    @property
    def held(self) -> int:
        """Bytes the pool holds from /dev/shm: segment metadata and the pages of its blocks."""
    @property
    def handles_in_flight(self) -> int:
        """Handles sent and not attached (or cancelled) yet: each holds a transfer token slot."""
    @property
    def token_slots(self) -> int:
        """The pool's transfer token slots: how many handles can be in flight at once."""
    @property
    def live(self) -> int:
        """Bytes of array data alive (every array's ``nbytes``)."""
    @property
    def warm(self) -> int:
        """The warm reserve now: bytes of freed arrays' pages kept for reuse."""
    @property
    def keep(self) -> int:
        """The warm reserve's bound (``configure(keep=...)``)."""
    @property
    def overhead(self) -> float:
        """``held / live`` (infinite when nothing is live but memory is held)."""
    @property
    def name_table(self) -> int:
        """Bytes of metadata blocks the name table holds: its index and 128 bytes per name."""

@final
class CollectReport:
    """What ``collect`` reclaimed (``pyshm.CollectReport``)."""

    def __new__(cls, dead_processes: int, arrays_freed: int, blocks_recovered: int) -> CollectReport:
        """The figures, in this order (as pickling passes them)."""
    @property
    def dead_processes(self) -> int:
        """Dead processes whose holdings were reclaimed."""
    @property
    def arrays_freed(self) -> int:
        """Arrays freed because only dead processes held them."""
    @property
    def blocks_recovered(self) -> int:
        """Blocks given back to the allocator (including ones a dead process was moving)."""

@final
class PoolInfo:
    """A pool found in /dev/shm by ``list_pools``."""

    def __new__(
        cls,
        name: str,
        bytes: int,
        held: int,
        warm: int,
        keep: int,
        used: int,
        live_processes: int,
        persistent: bool,
        backend: str,
        memfd_segments: int,
    ) -> PoolInfo:
        """The fields, in this order (as pickling passes them)."""
    @property
    def name(self) -> str:
        """The pool's name (its files are ``pyshm-<name>`` and ``pyshm-<name>-<suffix>``)."""
    @property
    def bytes(self) -> int:
        """Bytes of its files in /dev/shm (address space: segments are sparse, see ``held``)."""
    @property
    def held(self) -> int:
        """Bytes it holds from /dev/shm."""
    @property
    def warm(self) -> int:
        """Bytes of freed arrays' pages kept for reuse (the warm reserve)."""
    @property
    def keep(self) -> int:
        """The warm reserve's bound."""
    @property
    def used(self) -> int:
        """Bytes of blocks holding array data."""
    @property
    def live_processes(self) -> int:
        """Processes registered in the pool and still alive."""
    @property
    def persistent(self) -> bool:
        """Whether it outlives its processes."""
    @property
    def backend(self) -> str:
        """Where its growth segments live: ``"shm"`` or ``"memfd"``."""
    @property
    def memfd_segments(self) -> int:
        """Its memfd segments (not in /dev/shm, not counted in ``bytes`` or ``used``)."""

@final
class SkippedPoolFile:
    """A pool file that ``clean_pools`` left in /dev/shm, and why."""

    def __new__(cls, file: str, pool: str, reason: str, owner_uid: Optional[int], kind: str) -> SkippedPoolFile:
        """The fields, in this order (as pickling passes them)."""
    @property
    def file(self) -> str:
        """The file's name in /dev/shm."""
    @property
    def pool(self) -> str:
        """The pool it belongs to by its name."""
    @property
    def reason(self) -> str:
        """Why it was left, in words."""
    @property
    def owner_uid(self) -> Optional[int]:
        """The file's owner when that is why it was left; else None."""
    @property
    def kind(self) -> str:
        """Why, as a word: not_owned, permissions, not_a_file, live, persistent, not_a_pool,
        other_namespace, other_version (made by another pyshm version, mapped by no process) or
        other_version_in_use."""

@final
class Block:
    """This process's reference to a pooled array: the ``base`` of every numpy array over its data."""

    @property
    def pool_name(self) -> str:
        """The name of the pool the array lives in."""
    @property
    def nbytes(self) -> int:
        """Bytes of the array's data."""

@final
class NativePool:
    """One pool, registered once per process (``pyshm.Pool`` is a view of it)."""

    @staticmethod
    def create(
        name: Optional[str] = None,
        size: Optional[int] = None,
        max_size: Optional[int] = None,
        wait: Optional[float] = None,
        persistent: Optional[bool] = None,
        persist_while_named: bool = False,
        keep: Optional[int] = None,
        backend: Optional[str] = None,
        process_slots: Optional[int] = None,
    ) -> NativePool:
        """Create a pool (or open the one of that name); the one registered here if there is one."""
    @staticmethod
    def open(name: str) -> NativePool:
        """The pool of that name: the registered one, or the existing pool opened and registered."""
    @staticmethod
    def find(name: str) -> Optional[NativePool]:
        """The pool registered under that name, or None (opens nothing)."""
    @staticmethod
    def open_pools() -> list[NativePool]:
        """Every registered pool."""
    @property
    def backend(self) -> str:
        """Where the pool's growth segments live: ``"shm"`` or ``"memfd"``."""
    @property
    def name(self) -> str:
        """The pool's name."""
    @property
    def id(self) -> bytes:
        """The pool's unique id (a name may be reused by a later pool)."""
    @property
    def live_processes(self) -> int:
        """Processes registered."""
    wait: Optional[float]
    """Seconds an allocation waits for other processes to free memory (None: not at all)."""
    def empty(
        self, shape: _ShapeLike, dtype: Optional[DTypeLike], order: Optional[str] = ..., zero: bool = False
    ) -> NDArray[Any]:
        """A new array: ``shape``, numpy dtype spec, "C" or "F" order, zero-filled or not."""
    def attach(self, handle: Handle) -> NDArray[Any]:
        """The array (or view) a handle names."""
    def cancel(self, handle: Handle) -> None:
        """Give back a handle's transfer token without attaching it."""
    def stats(self) -> PoolStats:
        """Usage figures."""
    def collect(self) -> CollectReport:
        """Free what dead processes held; return what it did."""
    def trim(self) -> int:
        """Give every free page of the pool back to the system; return the bytes."""
    def check(self) -> None:
        """Check every segment's allocator; RuntimeError on a violation."""
    def publish(self, name: str, arr: NDArray[Any]) -> None:
        """Register ``arr`` (a pooled array) under ``name``."""
    def lookup(self, name: str) -> NDArray[Any]:
        """The array registered under ``name``."""
    def unpublish(self, name: str) -> None:
        """Remove ``name``."""
    def names(self) -> list[str]:
        """Every registered name."""
    def join(self) -> None:
        """Register this process now (after a fork: re-acquire inherited arrays)."""
    def leave(self) -> None:
        """Leave the pool; allocators made on this object take nothing more from it."""
    def unlink(self) -> None:
        """Unlink the pool's files now."""
    def reclaim_tokens(self, seconds: float) -> int:
        """Cancel transfer tokens older than ``seconds`` (handles never attached); return how many."""
    def reclaim_tokens_of_dead(self, pids: list[int], seconds: float) -> int:
        """Cancel transfer tokens that the processes ``pids``, all dead now, sent at most
        ``seconds`` ago; return how many."""

def pooled_handle(arr: object, tracked: bool = True) -> Optional[Handle]:
    """A handle to ``arr`` if it is a pooled array or view, else None."""

def is_pooled(arr: object) -> bool:
    """Whether ``arr`` is a numpy array whose data lives in a pool."""

def pool_name_of(arr: object) -> Optional[str]:
    """The name of the pool ``arr``'s data lives in, or None."""

def list_pools() -> list[PoolInfo]:
    """Every pool in /dev/shm."""

def list_unreadable_pools() -> list[SkippedPoolFile]:
    """Our pools in /dev/shm that ``list_pools`` cannot read (another pyshm version, being
    created, corrupt), each with why; nothing is removed."""

def clean_dead_pools(include_persistent: bool = False) -> list[str]:
    """Remove pools whose processes are all dead; return their names."""

def clean_pools(include_persistent: bool = False) -> tuple[list[str], list[SkippedPoolFile]]:
    """Remove our pools whose processes are all dead; return their names and the files left, with why."""

def shm_free_bytes() -> int:
    """Free bytes in /dev/shm."""

# pyshm.Lock and pyshm.Event (src/locks.rs): `state` is a pooled uint64 array of 4.
def lock_acquire(state: Any, blocking: bool, timeout: Optional[float]) -> int:
    """Takes the lock in ``state``: 0 not acquired, 1 acquired, 2 acquired from a dead holder.
    ``timeout`` in seconds (``None``: wait as long as a live process holds it)."""
def lock_release(state: Any) -> None:
    """Releases the lock in ``state``, held by this process (``RuntimeError`` otherwise)."""
def lock_holder(state: Any) -> Optional[int]:
    """Pid of the process holding the lock in ``state``, or ``None``."""
def event_set(state: Any) -> None:
    """Sets the event in ``state`` and wakes its waiters."""
def event_clear(state: Any) -> None:
    """Clears the event in ``state``."""
def event_is_set(state: Any) -> bool:
    """Whether the event in ``state`` is set."""
def event_wait(state: Any, timeout: Optional[float]) -> bool:
    """Waits for the event in ``state`` to be set, at most ``timeout`` seconds (``None``:
    forever); whether it is set."""

# numpy's data-memory handler backed by a pool (src/allocator.rs). A handler is a PyCapsule
# named "mem_handler".
def make_allocator(pool: NativePool, min_bytes: int) -> Any:
    """A new ``mem_handler`` capsule taking numpy allocations of at least ``min_bytes`` from ``pool``."""

def set_handler(handler: Optional[Any]) -> Any:
    """Make ``handler`` (None: numpy's default) this context's handler; return the previous one."""

def get_handler() -> Any:
    """The handler numpy uses for new arrays in this context."""

def allocator_stats() -> dict[str, int]:
    """This process's pool allocations by handlers: live allocations, their bytes, live handlers."""
