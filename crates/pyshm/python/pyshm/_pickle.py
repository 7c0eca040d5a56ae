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
4. ``handles()`` changes the process only while some thread is inside a block: its ``copyreg``
   reducer is registered, and the module functions ``pickle.dumps`` and ``pickle.dump`` are
   replaced by tracking ones (invariant 5), when the first block opens; when the last one
   closes, whatever happened inside, each is put back as it was (the previous reducer, or none;
   the functions it replaced), unless someone replaced it meanwhile: then theirs stays. A
   tracking function someone took while a block was open (``from pickle import dumps``) still
   works after it: it calls the function it replaced.
5. A pickle that fails at any point gives back the token of every handle it made, wherever its
   pickler is entered through a hook: ``ForkingPickler.dump`` (which ``ForkingPickler.dumps``,
   multiprocessing's queues, pipes and process start all go through) and the ``dump`` of loky's
   pickler class (once registered, also classes ``set_loky_pickler`` makes later) are wrapped
   for good, and ``pickle.dumps`` and ``pickle.dump`` while a ``handles()`` block is open
   (invariant 4). Each wrapper records the handles made inside its call (``_Sends``) and
   cancels them when it raises (any ``BaseException``). A pickle inside another's (a payload's,
   or a plain one inside a ``ForkingPickler`` one, and the reverse) hands its handles on to the
   outer one when it succeeds, so the outer one's failure gives them back too. A wrapper
   changes nothing else: it calls the function it replaced. Not covered: a ``pickle.Pickler``
   used directly (``pickle.Pickler(f).dump(x)``, and any other pickler class, cloudpickle's or
   dill's) and ``dumps``/``dump`` taken while no block was open (``from pickle import dumps``
   at import, ``_pickle.dumps``); their failures inside a block leave tokens pending until
   ``Pool.reclaim_handles``. ``pickle.Pickler`` itself is not
   swapped for a tracking subclass during a block: a class that subclasses it while a block
   is open (cloudpickle's or dill's pickler imported then, a user's pickler) would keep that
   subclass as its base for good, which breaks invariant 4; code that checks
   ``type(p) is pickle.Pickler`` or ``isinstance(p, pickle.Pickler)`` would answer otherwise
   for picklers made on either side of the block's edges. (Speed is not the reason: like the
   function wrappers it would cost one Python call per pickle, not per object.)
6. When the pool's token table is full, ``ForkingPickler`` and loky send that array by value
   (numpy's own pickle, a copy), so a message is never dropped for want of a token; the
   receiver's unpickling of the handles before it gives their tokens back. Only where a handle
   was asked for explicitly (``pyshm.handle``, ``handles()``) is ``TokenTableFullError``
   raised.
"""

from __future__ import annotations

import contextlib
import contextvars
import copyreg
import functools
import os
import pickle
import sys
import threading
from multiprocessing.reduction import ForkingPickler
from typing import Any, Iterator, Optional

import numpy as np

from . import _handles, _native, _pools
from ._native import Handle, TokenTableFullError

__all__ = ["handles", "register_loky"]


_in_handles = contextvars.ContextVar("pyshm_handles", default=False)
_loky_done: set[str] = set()


class _Sends(threading.local):
    """The handles made by each ``ForkingPickler.dump`` running in this thread, innermost last
    (invariant 5)."""

    def __init__(self) -> None:
        self.frames: list[list[Handle]] = []


_sends = _Sends()


def _give_back(handles: list[Handle]) -> None:
    for h in handles:
        try:
            _handles.cancel(h)
        except (ValueError, OSError):  # attached or cancelled already, or the pool is gone here
            pass


def _tracked(call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, a pickle, giving back the handles made inside it when it
    raises, and handing them on to the pickle it runs inside when it succeeds (invariant 5)."""
    frames = _sends.frames
    frame: list[Handle] = []
    frames.append(frame)
    try:
        result = call(*args, **kwargs)
    except BaseException:
        frames.pop()
        _give_back(frame)
        raise
    frames.pop()
    if frames:  # a pickle inside another: its handles travel with the outer one
        frames[-1].extend(frame)
    return result


def _tracking_dump(previous: Any) -> Any:
    """A pickler class's ``dump`` that gives back the handles it made when it fails (invariant
    5)."""

    @functools.wraps(previous)
    def dump(self: Any, obj: Any) -> Any:
        return _tracked(previous, self, obj)

    dump._pyshm_tracking = True  # type: ignore[attr-defined]
    return dump


def _tracking_function(previous: Any) -> Any:
    """``pickle.dumps`` or ``pickle.dump`` that gives back the handles it made when it fails,
    in place while a ``handles()`` block is open (invariants 4 and 5)."""

    @functools.wraps(previous)
    def function(*args: Any, **kwargs: Any) -> Any:
        return _tracked(previous, *args, **kwargs)

    function._pyshm_tracking = True  # type: ignore[attr-defined]
    return function


def pooled_reduction(a: np.ndarray) -> Optional[tuple[Handle, Any]]:
    """``(handle, reduction)`` for a pooled array, or ``None``: the :class:`Handle` made (with
    its transfer token) and ``(rebuild, args)``, whose args are the handle's own pickle
    arguments (pool, bytes[, retype]) then ``default`` and ``readonly`` when set. The handle is
    recorded with the tracked pickle running in this thread, if any (invariant 5).
    Raises ``TokenTableFullError`` when the pool's token table is full."""
    h = _native.pooled_handle(a)
    if h is None:
        return None
    if _sends.frames:
        _sends.frames[-1].append(h)
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


def _handle_or_none(a: np.ndarray) -> Any:
    """``handle_reduction(a)``, or ``None`` when the pool's token table is full (invariant 6)."""
    try:
        return handle_reduction(a)
    except TokenTableFullError:
        return None


def _reduce_for_transfer(a: np.ndarray) -> Any:
    # multiprocessing's pickler runs at the default protocol.
    return _handle_or_none(a) or a.__reduce_ex__(pickle.DEFAULT_PROTOCOL)


def _reduce_for_loky(a: np.ndarray) -> Any:
    # loky pickles at the highest protocol, where numpy writes the data in place.
    return _handle_or_none(a) or a.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


class _AsNumpyPickles:
    """Stands for a plain array inside the ``copyreg`` reducer, which is not told the protocol:
    the pickler calls this object's ``__reduce_ex__`` with it, so the array is reduced exactly
    as numpy (or the reducer registered before ``handles()``) would at that protocol (with
    protocol 5, numpy's buffer stays out of band). It unpickles as that array."""

    __slots__ = ("a", "reducer")

    def __init__(self, a: np.ndarray, reducer: Any) -> None:
        self.a = a
        self.reducer = reducer

    def __reduce_ex__(self, protocol: int) -> Any:
        if self.reducer is not None:
            return self.reducer(self.a)
        return self.a.__reduce_ex__(protocol)


def _reduce_in_context(a: np.ndarray) -> Any:
    if _in_handles.get():
        r = handle_reduction(a)
        if r is not None:
            return r
    if a.dtype.hasobject:
        # No buffer to keep out of band, and the array itself must be what is reduced, so the
        # pickler's memo finds it when its objects refer back to it (a wrapper made afresh at
        # each reference recursed forever; found in review).
        previous = _registration.previous
        return previous(a) if previous is not None else a.__reduce__()
    # `np.asarray` of the array rebuilt from its own reduction: that same array, no copy.
    return (np.asarray, (_AsNumpyPickles(a, _registration.previous),))


class _Registration:
    """What ``handles()`` changes while some thread is inside a block (invariant 4): the
    ``copyreg`` reducer for ``numpy.ndarray`` and the tracking ``pickle.dumps`` and
    ``pickle.dump``. ``depths`` counts the open blocks of each thread (by thread id),
    ``previous`` is the reducer it replaced (``None`` for none), ``functions`` maps each
    replaced name of ``pickle`` to ``(the function it replaced, its tracking function)``. A
    forked child keeps only the blocks of the thread that forked, the only thread it has."""

    _FUNCTIONS = ("dumps", "dump")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depths: dict[int, int] = {}
        self.previous: Any = None
        self.functions: dict[str, tuple[Any, Any]] = {}

    def enter(self) -> None:
        with self.lock:
            if not self.depths:
                self.previous = copyreg.dispatch_table.get(np.ndarray)
                copyreg.dispatch_table[np.ndarray] = _reduce_in_context
                for name in self._FUNCTIONS:
                    replaced = getattr(pickle, name)
                    self.functions[name] = (replaced, _tracking_function(replaced))
                    setattr(pickle, name, self.functions[name][1])
            me = threading.get_ident()
            self.depths[me] = self.depths.get(me, 0) + 1

    def exit(self) -> None:
        with self.lock:
            me = threading.get_ident()
            if me not in self.depths:  # a block left by another thread than entered it
                me = next(iter(self.depths))
            self.depths[me] -= 1
            if self.depths[me] == 0:
                del self.depths[me]
            self._unregister_if_unused()

    def _unregister_if_unused(self) -> None:
        if self.depths:
            return
        # Put back what was there, unless someone replaced ours meanwhile: then theirs stays.
        if copyreg.dispatch_table.get(np.ndarray) is _reduce_in_context:
            if self.previous is None:
                del copyreg.dispatch_table[np.ndarray]
            else:
                copyreg.dispatch_table[np.ndarray] = self.previous
        self.previous = None
        for name, (replaced, tracking) in self.functions.items():
            if getattr(pickle, name, None) is tracking:
                setattr(pickle, name, replaced)
        self.functions = {}

    def after_fork_in_child(self) -> None:
        # The lock may have been held by a thread the child does not have.
        self.lock = threading.Lock()
        me = threading.get_ident()
        self.depths = {me: self.depths[me]} if me in self.depths else {}
        self._unregister_if_unused()


_registration = _Registration()
os.register_at_fork(after_in_child=_registration.after_fork_in_child)


@contextlib.contextmanager
def handles() -> Iterator[None]:
    """Within this block (in this thread or asyncio task), ``pickle.dumps`` of a pooled array
    gives a handle instead of the data.

    The pickle is then only good for processes of the same pool on this machine, while the array
    lives (or until its handle is attached once). Blocks nest, and leaving one, normally or by
    an exception, puts back exactly what entering it changed.

    Notes
    -----
    Plain pickle has no per-call hook, so while any thread is inside a block a reducer for
    ``numpy.ndarray`` is registered with ``copyreg`` (the last block to exit removes it, or puts
    back the reducer that was there before). Arrays outside the pool, and pooled arrays pickled
    by other threads meanwhile, are reduced by numpy at the pickler's protocol (protocol 5 keeps
    their buffer out of band) and wrapped in ``numpy.asarray``, a few bytes more. After the
    last block, ``numpy.ndarray`` pickles exactly as before the first.

    A ``pickle.dumps`` or ``pickle.dump`` that raises part-way (something unpicklable after a
    pooled array, a ``KeyboardInterrupt`` from a ``__reduce__``, a full disk) gives back the
    handles it already made, so their arrays are freed as usual: during the same window the
    functions ``pickle.dumps`` and ``pickle.dump`` are replaced by wrappers that track them
    (for every thread: outside a block they still give the data), and the last block to exit
    puts the originals back (a replacement made meanwhile stays). Only calls that look the function up on the ``pickle`` module
    while a block is open are covered. Not covered, so their failures leave the tokens of the
    arrays pickled before them taken until ``Pool.reclaim_handles``: a pickler used directly
    (``pickle.Pickler(f).dump(x)``, or any other pickler class such as cloudpickle's), and a
    function bound while no block was open (``from pickle import dumps`` at import,
    ``_pickle.dumps``), which is the original, untracked one.
    """
    _registration.enter()
    try:
        token = _in_handles.set(True)
        try:
            yield
        finally:
            _in_handles.reset(token)
    finally:
        _registration.exit()


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
        _track_loky(reduction)
        _loky_done.add(mod)
        found = True
    return found


def _track_loky_pickler(reduction: Any) -> None:
    """Wrap the ``dump`` of loky's current pickler class like ``ForkingPickler.dump`` (invariant
    5), once per class."""
    cls = reduction.get_loky_pickler()
    if cls is not None and not getattr(cls.__dict__.get("dump"), "_pyshm_tracking", False):
        cls.dump = _tracking_dump(cls.dump)


def _track_loky(reduction: Any) -> None:
    """Make loky's pickles give back their handles when they fail (invariant 5): its pickler
    class now, and each one ``set_loky_pickler`` makes later (loky makes a new class there)."""
    _track_loky_pickler(reduction)
    original = reduction.set_loky_pickler
    if getattr(original, "_pyshm_tracking", False):
        return

    @functools.wraps(original)
    def set_loky_pickler(loky_pickler: Any = None) -> None:
        original(loky_pickler)
        _track_loky_pickler(reduction)

    set_loky_pickler._pyshm_tracking = True  # type: ignore[attr-defined]
    reduction.set_loky_pickler = set_loky_pickler


def register_loky_if_loaded() -> None:
    """Register with loky if it (or joblib) is imported and not registered yet (called after
    each pool this process opens)."""
    if ("joblib" in sys.modules or "loky" in sys.modules) and len(_loky_done) < 2:
        register_loky()


ForkingPickler.register(np.ndarray, _reduce_for_transfer)
if not getattr(ForkingPickler.__dict__.get("dump"), "_pyshm_tracking", False):  # once, also on reload
    ForkingPickler.dump = _tracking_dump(ForkingPickler.dump)  # type: ignore[method-assign]
_pools.new_pool_hooks.append(register_loky_if_loaded)
