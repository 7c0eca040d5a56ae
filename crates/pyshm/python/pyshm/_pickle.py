"""Pooled arrays travel as handles when multiprocessing (or loky/joblib) pickles them.

Invariants:

1. Only picklers that move objects between processes of one machine send handles:
   multiprocessing's ``ForkingPickler`` (Pool, Process arguments under spawn and forkserver,
   Queue, Pipe, ``concurrent.futures.ProcessPoolExecutor``) and loky's pickler (joblib). A plain
   ``pickle.dumps`` gives the data, because a handle written to a file or sent to another host
   would point at nothing there, unless it runs inside ``with pyshm.handles():``.
2. Registering with those picklers is the only global change, and it changes nothing for an
   array that does not live in a pool: it is reduced exactly as numpy reduces it.
3. A handle sent this way carries a transfer token, so the array outlives the sender's
   references until the receiver attaches it.
"""

from __future__ import annotations

import contextlib
import contextvars
import copyreg
import pickle
import sys
from multiprocessing.reduction import ForkingPickler
from typing import Any, Iterator, Optional

import numpy as np

from . import _handles, _native, _pools
from ._native import Handle

__all__ = ["handles", "register_loky"]


_in_handles = contextvars.ContextVar("pyshm_handles", default=False)
_copyreg_done = False
_loky_done: set[str] = set()


def pooled_reduction(a: np.ndarray) -> Optional[tuple[Handle, Any]]:
    """``(handle, reduction)`` for a pooled array, or ``None``: the :class:`Handle` made (with
    its transfer token) and ``(rebuild, args)``, whose args are the handle's own pickle
    arguments (pool, bytes[, retype]) then ``default`` and ``readonly`` when set."""
    h = _native.pooled_handle(a)
    if h is None:
        return None
    args: tuple = (*h.__reduce__()[1], _pools.is_default(h.pool), not a.flags.writeable)
    if len(args) == 4:  # no retype: keep the positions of `rebuild`'s arguments
        args = (args[0], args[1], None, args[2], args[3])
    while len(args) > 2 and not args[-1]:  # trailing defaults are left out: a smaller pickle
        args = args[:-1]
    return h, (_handles.rebuild, args)


def handle_reduction(a: np.ndarray) -> Any:
    """``(rebuild, args)`` for a pooled array, or ``None``."""
    r = pooled_reduction(a)
    return None if r is None else r[1]


def _reduce_for_transfer(a: np.ndarray) -> Any:
    # multiprocessing's pickler runs at the default protocol.
    return handle_reduction(a) or a.__reduce_ex__(pickle.DEFAULT_PROTOCOL)


def _reduce_for_loky(a: np.ndarray) -> Any:
    # loky pickles at the highest protocol, where numpy writes the data in place.
    return handle_reduction(a) or a.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


def _reduce_in_context(a: np.ndarray) -> Any:
    if _in_handles.get():
        r = handle_reduction(a)
        if r is not None:
            return r
    # Outside `handles()`: numpy's own reduction, in band (copyreg gives no protocol).
    return a.__reduce_ex__(4)


@contextlib.contextmanager
def handles() -> Iterator[None]:
    """Within this block (in this thread or task), ``pickle.dumps`` of a pooled array gives a
    handle instead of the data. The pickle is then only good for processes of the same pool on
    this machine, while the array lives (or until its handle is attached once).

    The first use registers a reducer for ``numpy.ndarray`` with ``copyreg``; outside the block
    that reducer gives numpy's own in-band reduction (protocol 5's out-of-band buffers are not
    used for plain ndarrays from then on).
    """
    global _copyreg_done
    if not _copyreg_done:
        copyreg.pickle(np.ndarray, _reduce_in_context)
        _copyreg_done = True
    token = _in_handles.set(True)
    try:
        yield
    finally:
        _in_handles.reset(token)


def register_loky() -> bool:
    """Register pyshm's reducer with loky (standalone, or vendored in joblib) so that joblib's
    process backend sends pooled arrays as handles. Done by itself when loky or joblib is
    imported before pyshm's first pool is made; returns whether a loky was found."""
    found = False
    for mod in ("joblib.externals.loky.backend.reduction", "loky.backend.reduction"):
        if mod in _loky_done:
            found = True
            continue
        try:
            reduction = __import__(mod, fromlist=["register"])
        except ImportError:
            continue
        reduction.register(np.ndarray, _reduce_for_loky)
        _loky_done.add(mod)
        found = True
    return found


def register_loky_if_loaded() -> None:
    """Register with loky if it (or joblib) is imported and not registered yet (called after
    each pool this process opens)."""
    if ("joblib" in sys.modules or "loky" in sys.modules) and len(_loky_done) < 2:
        register_loky()


ForkingPickler.register(np.ndarray, _reduce_for_transfer)
_pools.new_pool_hooks.append(register_loky_if_loaded)
