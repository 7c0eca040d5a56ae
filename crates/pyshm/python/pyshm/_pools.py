"""The pools this process uses: the default pool, its configuration, exit and fork.

Invariants (docs/architecture.md, "The Python layer"):

1. The native module keeps the one registry of the pools this process uses
   (``NativePool.open_pools()``; ``create`` and ``open`` return the registered pool of a name).
   At exit each is left once: this process's references are released, its slot is given up,
   and the last process out of a non-persistent pool unlinks it. The leave runs as a
   ``multiprocessing.util.Finalize`` with a low priority, so in the main process it runs after
   multiprocessing has terminated and joined its children, and in a multiprocessing child it
   runs when the child's ``run()`` returns.
2. Fork is handled here and only here: in a new multiprocessing child, the exit hook is
   registered again and every inherited pool is joined at once (``shm-ndarray`` re-acquires
   the inherited arrays then, or on the child's first use of a pool).
3. The default pool is named by ``PYSHM_POOL`` in the environment: a process that creates it
   sets the variable, so processes it starts (fork, spawn, forkserver, or any program it runs)
   find the same pool; a process that receives a handle from a sender's default pool and has
   none yet adopts that pool as its default.

Every name here without a leading underscore is for the rest of the package; the public API
(``configure``) is re-exported by ``pyshm``.
"""

from __future__ import annotations

import math
import multiprocessing.util
import os
import threading
from typing import Any, Callable, Optional

import numpy as np

from ._native import NativePool, PoolNotFoundError

__all__ = ["configure"]

lock = threading.RLock()
"""Guards the default pool and the configuration."""

default: Optional[NativePool] = None
"""The default pool once it exists (read without the lock on the hot path)."""

_config: dict[str, Any] = {
    "size": None,
    "max_size": None,
    "wait": None,
    "keep": None,
    "backend": None,
    "process_slots": None,
}

BACKENDS = ("shm", "memfd")
#: The most process slots a pool can have (the native library's ``MAX_PROCESSES``).
MAX_PROCESSES = 4096


def check_process_slots(value: Any) -> Optional[int]:
    """``process_slots`` as an int, or None; ValueError unless it is a number of processes from 1 to 4,096."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_PROCESSES:
        raise ValueError(f"process_slots must be a number of processes from 1 to {MAX_PROCESSES}, not {value!r}")
    return int(value)
"""Where the default pool's growth segments live: files in /dev/shm, or memfds."""

new_pool_hooks: list[Callable[[], None]] = []
"""Called after each pool this process opens (``_pickle`` adds loky's registration)."""


# --------------------------------------------------------------------------------------------
# Sizes from the environment


def parse_size(text: str, what: str, zero: bool = False) -> int:
    """``"512M"``, ``"2G"``, ``"1048576"`` -> bytes (``zero``: 0 is allowed)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = 1
    for suffix, s in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(suffix):
            t, scale = t[:-1], s
            break
    try:
        value = float(t) * scale
    except ValueError:
        raise ValueError(f"{what}={text!r}: expected a size such as 512M or 2G") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{what}={text!r}: expected a {'non-negative' if zero else 'positive'} size")
    return int(value)


def env_config() -> dict[str, Any]:
    """The configuration, with the environment filling what ``configure`` did not set."""
    cfg = dict(_config)
    if cfg["size"] is None and os.environ.get("PYSHM_SIZE"):
        cfg["size"] = parse_size(os.environ["PYSHM_SIZE"], "PYSHM_SIZE")
    if cfg["max_size"] is None and os.environ.get("PYSHM_MAX_SIZE"):
        cfg["max_size"] = parse_size(os.environ["PYSHM_MAX_SIZE"], "PYSHM_MAX_SIZE")
    if cfg["keep"] is None and os.environ.get("PYSHM_KEEP"):
        cfg["keep"] = parse_size(os.environ["PYSHM_KEEP"], "PYSHM_KEEP", zero=True)
    if cfg["wait"] is None and os.environ.get("PYSHM_WAIT"):
        try:
            cfg["wait"] = float(os.environ["PYSHM_WAIT"])
        except ValueError:
            raise ValueError(f"PYSHM_WAIT={os.environ['PYSHM_WAIT']!r}: expected seconds") from None
    if cfg["backend"] is None and os.environ.get("PYSHM_BACKEND"):
        backend = os.environ["PYSHM_BACKEND"].strip().lower()
        if backend not in BACKENDS:
            raise ValueError(f"PYSHM_BACKEND={os.environ['PYSHM_BACKEND']!r}: expected 'shm' or 'memfd'")
        cfg["backend"] = backend
    if cfg["process_slots"] is None and os.environ.get("PYSHM_PROCESS_SLOTS"):
        text = os.environ["PYSHM_PROCESS_SLOTS"]
        if not text.strip().isdigit() or not 1 <= int(text) <= MAX_PROCESSES:
            raise ValueError(f"PYSHM_PROCESS_SLOTS={text!r}: expected a number of processes from 1 to {MAX_PROCESSES}")
        cfg["process_slots"] = int(text)
    return cfg


def configure(
    size: Optional[int] = None,
    max_size: Optional[int] = None,
    wait: Optional[float] = None,
    keep: Optional[int] = None,
    backend: Optional[str] = None,
    process_slots: Optional[int] = None,
) -> None:
    """Set up the default pool before its first use.

    ``size`` is the capacity of each data segment (a larger array gets a segment of its own),
    ``max_size`` the most bytes the pool may hold in /dev/shm in all (default: half of
    /dev/shm), ``wait`` how many seconds an allocation may wait for other processes to free
    memory before it raises ``MemoryError`` (default: do not wait), and ``keep`` the warm
    reserve: how many bytes of freed arrays the pool keeps for reuse (default 512 MiB, at most
    an eighth of /dev/shm; freed memory beyond it goes back to the system at once).
    ``backend`` says where the pool's segments live: ``"shm"`` (default), files in /dev/shm, or
    ``"memfd"``, anonymous memory shared with the program's other processes by descriptor,
    which does not count against /dev/shm (for containers with a small /dev/shm; only the
    pool's first segment, about 1.4 MiB, stays there). ``process_slots`` is how many processes
    may use the pool at once (default 255, at most 4,096; about 1,000 can map one pool at once
    for now); one more raises ``PoolFullError``. The environment variables ``PYSHM_SIZE``,
    ``PYSHM_MAX_SIZE``, ``PYSHM_KEEP`` (``512M``, ``2G``, ...), ``PYSHM_WAIT``,
    ``PYSHM_BACKEND`` and ``PYSHM_PROCESS_SLOTS`` do the same.

    Once the default pool exists only ``wait`` can change; changing ``size``, ``max_size``,
    ``keep``, ``backend`` or ``process_slots`` then raises ``RuntimeError``.
    """
    for what, v in (("size", size), ("max_size", max_size)):
        if v is not None and (not isinstance(v, (int, np.integer)) or v <= 0):
            raise ValueError(f"{what} must be a positive number of bytes, not {v!r}")
    if keep is not None and (not isinstance(keep, (int, np.integer)) or keep < 0):
        raise ValueError(f"keep must be a non-negative number of bytes, not {keep!r}")
    if wait is not None and not (isinstance(wait, (int, float)) and wait >= 0):
        raise ValueError(f"wait must be a non-negative number of seconds, not {wait!r}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be 'shm' or 'memfd', not {backend!r}")
    process_slots = check_process_slots(process_slots)
    with lock:
        if default is not None and (
            size is not None
            or max_size is not None
            or keep is not None
            or backend is not None
            or process_slots is not None
        ):
            raise RuntimeError(
                "the default pool exists already; call pyshm.configure() before the first array, "
                "or set PYSHM_SIZE / PYSHM_MAX_SIZE / PYSHM_KEEP / PYSHM_BACKEND / PYSHM_PROCESS_SLOTS "
                "in the environment"
            )
        if process_slots is not None:
            _config["process_slots"] = int(process_slots)
        if backend is not None:
            _config["backend"] = backend
        if size is not None:
            _config["size"] = int(size)
        if max_size is not None:
            _config["max_size"] = int(max_size)
        if keep is not None:
            _config["keep"] = int(keep)
        if wait is not None:
            _config["wait"] = float(wait)
            if default is not None:
                default.wait = float(wait)


# --------------------------------------------------------------------------------------------
# Exit and fork (invariants 1 and 2)


def _leave_all() -> None:
    """Leave every pool this process uses (at exit)."""
    global default
    with lock:
        default = None
    for n in NativePool.open_pools():
        n.leave()  # also takes it out of the registry


class _ExitHook:
    """Registers ``_leave_all`` with multiprocessing's exit machinery, again in each child."""

    def __init__(self) -> None:
        self.registered = False

    def ensure(self) -> None:
        if not self.registered:
            with lock:
                if self.registered:
                    return
                self.registered = True
                multiprocessing.util.Finalize(None, _leave_all, exitpriority=-100)
                multiprocessing.util.register_after_fork(self, _ExitHook._after_fork)

    def _after_fork(self) -> None:
        # In a new multiprocessing child (fork or forkserver), before its target runs.
        # multiprocessing cleared its finalizers: register ours again.
        multiprocessing.util.Finalize(None, _leave_all, exitpriority=-100)
        # Register at once in every inherited pool: this re-acquires the inherited arrays
        # before the parent can free them, instead of at the child's first use. Only in
        # multiprocessing children: a plain `os.fork` child may `exec` another program, which
        # would then count as a member holding every array for as long as it runs.
        for n in NativePool.open_pools():
            try:
                n.join()
            except Exception:  # a full process table: the first real use reports it
                pass


_exit_hook = _ExitHook()


def track(native: NativePool) -> NativePool:
    """``native`` (just created or opened, so registered by the native module), after the
    exit hook and the new-pool hooks ran."""
    _exit_hook.ensure()
    for hook in new_pool_hooks:
        hook()
    return native


def pool_named(name: str) -> NativePool:
    """The pool of that name, opened if this process has not yet."""
    n = NativePool.find(name)
    if n is not None:
        return n
    return track(NativePool.open(name))


def forget(native: NativePool) -> None:
    """``native`` is being closed: it is not the default pool any more."""
    global default
    with lock:
        if default is native:
            default = None


# --------------------------------------------------------------------------------------------
# The default pool (invariant 3)


def create_default() -> NativePool:
    """The default pool, created (or opened by ``PYSHM_POOL``) on first use."""
    global default
    with lock:
        if default is not None:
            return default
        cfg = env_config()
        name = os.environ.get("PYSHM_POOL") or None
        native = None
        if name is not None:
            native = NativePool.find(name)
            if native is None:
                try:
                    native = NativePool.open(name)
                except PoolNotFoundError:
                    native = None
        if native is None:
            native = NativePool.create(
                name,
                cfg["size"],
                cfg["max_size"],
                cfg["wait"],
                persistent=False,
                keep=cfg["keep"],
                backend=cfg["backend"],
                process_slots=cfg["process_slots"],
            )
            os.environ["PYSHM_POOL"] = native.name
        elif cfg["wait"] is not None:
            native.wait = cfg["wait"]
        native = track(native)
        default = native
        return native


def default_native() -> NativePool:
    """The default pool's native object (created on first use)."""
    return default or create_default()


def adopt_default(native: NativePool) -> None:
    """Make ``native`` the default pool if this process has none yet."""
    global default
    with lock:
        if default is None:
            default = native
            wait = env_config()["wait"]
            if wait is not None:
                native.wait = wait


def is_default(name: str) -> bool:
    """Whether ``name`` is the default pool's name."""
    return default is not None and default.name == name
