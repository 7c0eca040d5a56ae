"""Type stubs of pyshm's native module (kept in sync by tests/test_stubs.py)."""

from typing import Any, Optional, Sequence, Union

import numpy as np

HANDLE_FIXED_LEN: int
__version__: str

class InvalidHandleError(ValueError):
    """A handle that names no valid array: malformed, corrupt, of another pool, or a view
    outside its array."""

class StaleHandleError(InvalidHandleError):
    """A handle whose array was freed: its memory may now hold another array."""

class PoolNotFoundError(FileNotFoundError):
    """The pool a handle or name refers to does not exist (any more); errno ENOENT."""

class PoolMemoryError(MemoryError):
    """The pool (or /dev/shm) has no room for the array."""

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

class Handle:
    """A small picklable reference to a pooled array or view (``pyshm.Handle``)."""

    def __init__(self, pool: str, data: bytes, retype: Optional[tuple[Any, int, tuple[int, ...], tuple[int, ...]]] = None) -> None: ...
    @property
    def pool(self) -> str:
        """The name of the pool the array lives in."""
    @property
    def data(self) -> bytes:
        """The handle's bytes."""
    @property
    def retype(self) -> Optional[tuple[np.dtype, int, tuple[int, ...], tuple[int, ...]]]:
        """``(dtype, offset, shape, strides)`` of a view with another dtype than its array's."""

class PoolStats:
    """A pool's usage, in bytes unless said otherwise (``pyshm.PoolStats``)."""

    def __init__(
        self,
        capacity: int,
        used: int,
        free: int,
        largest_free: int,
        arrays: int,
        segments: int,
        processes: int,
        reserved: int,
        handles_in_flight: int,
        token_slots: int,
    ) -> None: ...
    @property
    def capacity(self) -> int:
        """Bytes of data segments reserved in /dev/shm (metadata segments not included)."""
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
    def handles_in_flight(self) -> int:
        """Handles sent and not attached (or cancelled) yet: each holds a transfer token slot."""
    @property
    def token_slots(self) -> int:
        """The pool's transfer token slots: how many handles can be in flight at once."""

class CollectReport:
    """What ``collect`` reclaimed (``pyshm.CollectReport``)."""

    def __init__(self, dead_processes: int, arrays_freed: int, blocks_recovered: int) -> None: ...
    @property
    def dead_processes(self) -> int: ...
    @property
    def arrays_freed(self) -> int: ...
    @property
    def blocks_recovered(self) -> int: ...

class PoolInfo:
    """A pool found in /dev/shm by ``list_pools``."""

    def __init__(self, name: str, bytes: int, used: int, live_processes: int, persistent: bool) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def bytes(self) -> int: ...
    @property
    def used(self) -> int: ...
    @property
    def live_processes(self) -> int: ...
    @property
    def persistent(self) -> bool: ...

class SkippedPoolFile:
    """A pool file that ``clean_pools`` left in /dev/shm, and why."""

    def __init__(self, file: str, pool: str, reason: str, owner_uid: Optional[int], kind: str) -> None: ...
    @property
    def file(self) -> str: ...
    @property
    def pool(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def owner_uid(self) -> Optional[int]: ...
    @property
    def kind(self) -> str: ...

class Block:
    @property
    def pool_name(self) -> str: ...
    @property
    def nbytes(self) -> int: ...

class NativePool:
    @staticmethod
    def create(
        name: Optional[str] = None,
        size: Optional[int] = None,
        max_size: Optional[int] = None,
        wait: Optional[float] = None,
        persistent: Optional[bool] = None,
        persist_while_named: bool = False,
    ) -> NativePool: ...
    @staticmethod
    def open(name: str) -> NativePool: ...
    @staticmethod
    def find(name: str) -> Optional[NativePool]: ...
    @staticmethod
    def open_pools() -> list[NativePool]: ...
    @property
    def name(self) -> str: ...
    @property
    def id(self) -> bytes: ...
    @property
    def live_processes(self) -> int: ...
    wait: Optional[float]
    def empty(
        self, shape: Union[int, Sequence[int]], dtype: Any, order: Optional[str] = "C", zero: bool = False
    ) -> np.ndarray: ...
    def attach(self, handle: Handle) -> np.ndarray: ...
    def cancel(self, handle: Handle) -> None: ...
    def stats(self) -> PoolStats: ...
    def collect(self) -> CollectReport: ...
    def check(self) -> None: ...
    def publish(self, name: str, arr: np.ndarray) -> None: ...
    def lookup(self, name: str) -> np.ndarray: ...
    def unpublish(self, name: str) -> None: ...
    def names(self) -> list[str]: ...
    def join(self) -> None: ...
    def leave(self) -> None: ...
    def unlink(self) -> None: ...
    def reclaim_tokens(self, seconds: float) -> int: ...

def pooled_handle(arr: Any, tracked: bool = True) -> Optional[Handle]: ...
def is_pooled(arr: Any) -> bool: ...
def pool_name_of(arr: Any) -> Optional[str]: ...
def list_pools() -> list[PoolInfo]: ...
def clean_dead_pools(include_persistent: bool = False) -> list[str]: ...
def clean_pools(include_persistent: bool = False) -> tuple[list[str], list[SkippedPoolFile]]: ...
def shm_free_bytes() -> int: ...

# numpy's data-memory handler backed by a pool (src/allocator.rs). A handler is a PyCapsule
# named "mem_handler".
def make_allocator(pool: NativePool, min_bytes: int) -> Any: ...
def set_handler(handler: Optional[Any]) -> Any: ...
def get_handler() -> Any: ...
def allocator_stats() -> dict[str, int]: ...
