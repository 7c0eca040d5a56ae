"""How ``pyshm.dask`` sends every pooled array by handle to a peer of this host, by value to others.

Dask moves data two ways, and both are hooked here, per connection:

- ``Serialize`` (task results by ``gather``, worker-to-worker dependencies, ``scatter``): the
  ``dask_serialize`` function for ``numpy.ndarray`` is replaced by :func:`_serialize`, which Dask
  calls with the connection's ``context`` (``context["recipient"]`` is the peer's handshake).
- ``ToPickle`` and the pickle family (task graphs with their arguments, a task's ``run_spec``):
  ``distributed.protocol.pickle.dumps`` runs without the connection, so the comm's message encoder
  (``distributed.protocol.dumps``) is wrapped to record, in a context variable, whether the peer
  is on this host, and the pickle ``dumps`` uses a pickler with a ``reducer_override`` for pooled
  arrays only while it is set. The client pickles its graph (``Client._graph_to_futures``)
  before it has a connection; that method is wrapped to set the variable from the key of the
  client's scheduler, its only recipient.

Invariants:

1. **Host identity.** :func:`host_key` is ``boot id : device and inode of /dev/shm : pid namespace
   : euid`` (plus ``PYSHM_HOST_TAG`` when set, which tests use to play another host). A handle
   works exactly between processes that agree on all of them: the same kernel boot, the same
   tmpfs instance (a device number names one mounted tmpfs while it exists, so two containers
   with one hostname and boot id but their own /dev/shm differ; a /dev/shm bind-mounted into
   both is the same), the same pid namespace (pools refuse other namespaces) and the same user
   (pools are 0600). No nonce is needed: nothing in it is chosen by a process.
2. **Per connection.** A peer is on this host when its key, learnt in the comm handshake
   (``Comm.handshake_info`` is extended, so both ends of every comm opened after
   :func:`install_here` carry it) or set by :func:`learn` on the comms open when it runs (comms
   opened before), equals ours. Unknown means another host: by value. An address alone never
   makes a later comm local: addresses learnt include ephemeral ports, which the kernel gives
   again to other processes, perhaps ones without these hooks that cannot read a handle.
3. **Plain arrays are untouched.** An array not in a pool, and every array sent to another host
   or written without a connection (spilling to disk, ``serialize_bytelist``), is serialized by
   Dask's own numpy serializer or plain pickle, called unchanged.
4. **Tokens.** Each handle carries a transfer token that the receiver's attach consumes. A
   pickling attempt that Dask discards (plain pickle failed and it retries, or it switches to
   cloudpickle) gives back the tokens it made. A message lost on the wire keeps its arrays until
   ``Pool.reclaim_handles`` or the pool's end.
5. **Dask's message log holds no arrays.** ``BatchedSend`` keeps the last messages under 1 MB
   it wrote (``recent_message_log``, for debugging); a message with handles is that small, so it
   would keep the arrays of the last thousand tasks alive. In a hooked process the log keeps
   every message with its ``ToPickle``/``Serialize`` parts replaced by their class name.
6. **Relays.** The scheduler forwards ``gather``/``scatter`` data without deserializing it. In a
   process that runs a scheduler, a message to a peer not on this host is first rid of handles:
   each ``Serialized`` whose header tree (``sub-header``, a collection's ``sub-headers``) names
   a host key is deserialized here (the scheduler received it, so it is on the sender's host)
   and sent by value. A handle can hide in two places of that tree: an ndarray's sub-header
   (:func:`_serialize`), and a part Dask pickled whole (an object holding a pooled array), whose
   header gets the key from the wrapped ``pickle`` family when its pickle made a handle.
7. **What the scheduler keeps holds no handles.** A handle is good for one receiver while the
   sender holds its array; ``publish_dataset`` values are kept by the scheduler as received and
   sent to every ``get_dataset``. :func:`hold_published` attaches them on arrival (the
   scheduler then holds the array until ``unpublish_dataset``), so each reader gets a handle of
   its own, or a value on another host.
"""

from __future__ import annotations

import contextvars
import inspect
import io
import os
import pickle
import threading
import weakref
from typing import Any, Optional

import cloudpickle
import numpy as np
from dask.sizeof import sizeof
from distributed.comm.core import Comm
from distributed.protocol import core as dcore
from distributed.protocol import numpy as dnumpy  # noqa: F401 (registers Dask's numpy serializer first)
from distributed.protocol import pickle as dpickle
from distributed.protocol.serialize import (
    Pickled,
    Serialize,
    Serialized,
    ToPickle,
    dask_deserialize,
    dask_serialize,
)

from . import _by_handle, _handles, _native, _pickle
from ._native import PoolNotFoundError, TokenTableFullError

__all__ = [
    "host_key",
    "install_here",
    "learn",
    "learn_scheduler",
    "identity",
    "install_task_allocator",
    "hold_published",
]

KEY = "pyshm-host"
"""The handshake entry (and ``_serialize``'s sub-header entry) that carries a host key."""

HANDLE_SIZE = 256
"""What ``sizeof`` says for a pooled array this process received by handle: about a handle's
pickle. Its block is counted once, by the process it was made in."""

_lock = threading.Lock()
_installed = False
_key: Optional[str] = None
_known: dict[str, str] = {}  # comm address -> host key, as learnt (a record: invariant 2)
_to_this_host = contextvars.ContextVar("pyshm_dask_to_this_host", default=False)
_received: dict[int, weakref.ref] = {}  # id -> arrays attached from a handle here (sizeof)
_made: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar("pyshm_dask_made", default=None)


def host_key() -> str:
    """This process's host identity (invariant 1), read once."""
    global _key
    if _key is None:
        boot = _by_handle.host_identity()[1] or "?"
        try:
            st = os.stat("/dev/shm")
            shm = f"{st.st_dev}.{st.st_ino}"
        except OSError:
            shm = "?"
        try:
            pidns = str(os.stat("/proc/self/ns/pid").st_ino)
        except OSError:
            pidns = "?"
        _key = f"{boot}:{shm}:{pidns}:{os.geteuid()}:{os.environ.get('PYSHM_HOST_TAG', '')}"
    return _key


def _peer_key(context: Optional[dict]) -> Optional[str]:
    if not context:
        return None
    r = context.get("recipient")
    if not r:
        return None
    return r.get(KEY)  # never _known by address (invariant 2)


def _to_peer_here(context: Optional[dict]) -> bool:
    return _peer_key(context) == host_key()


# --- receiving ---------------------------------------------------------------------------------


def _forget(ident: int) -> Any:
    return lambda _ref: _received.pop(ident, None)


def _rebuild(*args: Any) -> np.ndarray:
    """Attaches an array sent by handle (``_handles.rebuild``'s arguments) and records it as
    received, for ``sizeof``."""
    a = _handles.rebuild(*args)
    _received[id(a)] = weakref.ref(a, _forget(id(a)))
    return a


def _was_received(x: np.ndarray) -> bool:
    b: Any = x
    while isinstance(b, np.ndarray):
        r = _received.get(id(b))
        if r is not None and r() is b:
            return True
        b = b.base
    return False


# --- the Serialize path ------------------------------------------------------------------------

_numpy_serialize = dask_serialize.dispatch(np.ndarray)
_numpy_deserialize = dask_deserialize.dispatch(np.ndarray)
_numpy_sizeof = sizeof.dispatch(np.ndarray)


def _reduction(x: np.ndarray) -> Any:
    """``(handle, args for _rebuild)`` of a pooled plain ndarray, or None (not pooled, a
    subclass, or the token table is full: by value then)."""
    if type(x) is not np.ndarray:
        return None
    try:
        r = _pickle.pooled_reduction(x)
    except TokenTableFullError:
        return None
    if r is None:
        return None
    return r[0], r[1][1]


def _serialize(x: np.ndarray, context: Optional[dict] = None) -> tuple[dict, list]:
    if _to_peer_here(context):
        r = _reduction(x)
        if r is not None:
            return {KEY: host_key()}, [pickle.dumps(r[1], protocol=pickle.HIGHEST_PROTOCOL)]
    return _numpy_serialize(x, context=context)


def _deserialize(header: dict, frames: list) -> np.ndarray:
    sender = header.get(KEY)
    if sender is None:
        return _numpy_deserialize(header, frames)
    args = pickle.loads(frames[0])
    if sender != host_key():
        raise PoolNotFoundError(
            f"an array of pool {args[0]!r} was sent by handle from another host ({sender}) to this "
            f"one ({host_key()}); pyshm.dask sends by value to peers it knows are elsewhere, so a "
            f"relay passed it on"
        )
    return _rebuild(*args)


def _sizeof(x: np.ndarray) -> int:
    if _native.is_pooled(x) and _was_received(x):
        return HANDLE_SIZE
    return _numpy_sizeof(x)


# --- the pickle path ---------------------------------------------------------------------------


class _Sent:
    """Mixin: a pickler whose ``reducer_override`` sends pooled ndarrays as handles and records
    the handles (invariant 4)."""

    sent: list

    def _pooled(self, obj: Any) -> Any:
        if type(obj) is not np.ndarray:
            return None
        r = _reduction(obj)
        if r is None:
            return None
        self.sent.append(r[0])
        made = _made.get()
        if made is not None:  # inside the pickle family's dumps (invariant 6)
            made.append(r[0])
        return (_rebuild, r[1])


class _PlainPickler(_Sent, pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        r = self._pooled(obj)
        return NotImplemented if r is None else r


class _DaskPickler(_Sent, dpickle._DaskPickler):
    def reducer_override(self, obj: Any) -> Any:
        r = self._pooled(obj)
        return super().reducer_override(obj) if r is None else r


class _CloudPickler(_Sent, cloudpickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        r = self._pooled(obj)
        return super().reducer_override(obj) if r is None else r


def _give_back(handles: list) -> None:
    """Cancel the tokens of handles a discarded pickle made (invariant 4)."""
    for h in handles:
        try:
            _handles.cancel(h)
        except (ValueError, OSError):  # attached or cancelled already, or the pool is gone here
            pass


_dask_pickle_dumps = dpickle.dumps


def _pickle_dumps(x: Any, *, buffer_callback: Any = None, protocol: int = dpickle.HIGHEST_PROTOCOL) -> bytes:
    """``distributed.protocol.pickle.dumps``; to a peer on this host, with pooled ndarrays as
    handles (the same three attempts in the same order as Dask's)."""
    if not _to_this_host.get():
        return _dask_pickle_dumps(x, buffer_callback=buffer_callback, protocol=protocol)
    buffers: list = []
    kwargs: dict = {"protocol": protocol or dpickle.HIGHEST_PROTOCOL}
    if kwargs["protocol"] >= 5 and buffer_callback is not None:
        kwargs["buffer_callback"] = buffers.append
    sent: list = []

    def attempt(cls: Any) -> bytes:
        _give_back(sent)  # a discarded earlier attempt's tokens
        sent.clear()
        buffers.clear()
        f = io.BytesIO()
        p = cls(f, **kwargs)
        p.sent = sent
        p.dump(x)
        return f.getvalue()

    try:
        try:
            result = attempt(_PlainPickler)
        except Exception:
            result = attempt(_DaskPickler)
        if b"__main__" in result or (
            getattr(inspect.getmodule(x), "__name__", None) in cloudpickle.list_registry_pickle_by_value()
        ):
            if len(result) < 1000 or not dpickle._always_use_pickle_for(x):
                result = attempt(_CloudPickler)
    except Exception:
        try:
            result = attempt(_CloudPickler)
        except BaseException:
            _give_back(sent)
            raise
    if buffer_callback is not None:
        for b in buffers:
            buffer_callback(b)
    return result


_dask_dumps = dcore.dumps


_dask_pickle_family: Any = None


def _pickle_family_dumps(x: Any, context: Optional[dict] = None) -> tuple[dict, list]:
    """Dask's ``pickle`` serialization family; a header whose pickle made handles names this
    host's key (invariant 6)."""
    made: list = []
    token = _made.set(made)
    try:
        header, frames = _dask_pickle_family(x, context=context)
    finally:
        _made.reset(token)
    if made:
        header[KEY] = host_key()
    return header, frames


def _has_handles(header: Any) -> bool:
    """Whether a ``Serialized`` header tree names a host key (invariant 6)."""
    if not isinstance(header, dict):
        return False
    if KEY in header or _has_handles(header.get("sub-header")):
        return True
    subs = header.get("sub-headers")
    return isinstance(subs, (list, tuple)) and any(_has_handles(h) for h in subs)


def _values_for_relay(msg: Any) -> Any:
    """``msg`` with every handle in a ``Serialized`` attached and made a value (invariant 6)."""
    if isinstance(msg, Serialized):
        if _has_handles(msg.header):
            from distributed.protocol.serialize import merge_and_deserialize

            try:
                return Serialize(merge_and_deserialize(msg.header, msg.frames))
            except Exception:  # e.g. a class the scheduler cannot import: the far end says why
                return msg
        return msg
    if type(msg) is dict:
        return {k: _values_for_relay(v) for k, v in msg.items()}
    if type(msg) in (list, tuple):
        return type(msg)(_values_for_relay(v) for v in msg)
    return msg


def hold_published(scheduler: Any) -> None:
    """Make ``scheduler``'s ``publish_put`` keep attached arrays, not handles (invariant 7)."""
    put = scheduler.handlers.get("publish_put")
    if put is None or getattr(put, "_pyshm", False):
        return

    def publish_put(**kwargs: Any) -> Any:
        data = kwargs.get("data")
        if data is not None:
            # A list of Serialized values; one Serialized in older distributed (2024.8).
            if type(data) in (list, tuple):
                kwargs["data"] = type(data)(_values_for_relay(d) for d in data)
            else:
                kwargs["data"] = _values_for_relay(data)
        return put(**kwargs)

    publish_put._pyshm = True  # type: ignore[attr-defined]
    scheduler.handlers["publish_put"] = publish_put


def _runs_scheduler() -> bool:
    from distributed.scheduler import Scheduler

    return any(True for _ in Scheduler._instances)


def _dumps(
    msg: Any, serializers: Any = None, on_error: str = "message", context: Any = None, frame_split_size: Any = None
) -> list:
    """``distributed.protocol.dumps`` with the peer's whereabouts in ``_to_this_host``."""
    here = _to_peer_here(context)
    if not here and context and _runs_scheduler():
        msg = _values_for_relay(msg)
    token = _to_this_host.set(here)
    try:
        return _dask_dumps(msg, serializers=serializers, on_error=on_error, context=context, frame_split_size=frame_split_size)
    finally:
        _to_this_host.reset(token)


def _client_sends(method: Any) -> Any:
    """``Client._graph_to_futures``, which pickles the graph (with the arguments of ``submit``)
    before it has a connection: the recipient is the client's scheduler, whose key
    :func:`learn_scheduler` recorded on the client."""

    def graph_to_futures(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _to_this_host.set(getattr(self, "_pyshm_scheduler_key", None) == host_key())
        try:
            return method(self, *args, **kwargs)
        finally:
            _to_this_host.reset(token)

    graph_to_futures._pyshm = True  # type: ignore[attr-defined]
    return graph_to_futures


def learn_scheduler(client: Any, key: str) -> None:
    """Record on ``client`` the host key of its scheduler (see :func:`_client_sends`)."""
    client._pyshm_scheduler_key = key


_dask_handshake_info = Comm.handshake_info


def _handshake_info(self: Comm) -> dict:
    info = _dask_handshake_info(self)
    info[KEY] = host_key()
    return info


class _LogWithoutData:
    """``BatchedSend.recent_message_log`` seen through this: ``append`` strips the payload's
    data parts (invariant 5); everything else is the deque's."""

    __slots__ = ("log",)

    def __init__(self, log: Any) -> None:
        self.log = log

    def append(self, payload: Any) -> None:
        if type(payload) is list:
            payload = [_strip(m) for m in payload]
        self.log.append(payload)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.log, name)

    def __iter__(self) -> Any:
        return iter(self.log)

    def __len__(self) -> int:
        return len(self.log)


def _strip(msg: Any) -> Any:
    if type(msg) is not dict:
        return msg
    return {k: (f"<{type(v).__name__}>" if isinstance(v, (Serialize, Serialized, ToPickle, Pickled)) else v) for k, v in msg.items()}


def _log_property() -> property:
    def get(self: Any) -> Any:
        return _LogWithoutData(self.__dict__["recent_message_log"])

    def put(self: Any, value: Any) -> None:
        self.__dict__["recent_message_log"] = value

    return property(get, put)


# --- installing ----------------------------------------------------------------------------------


def install_here() -> None:
    """Hook this process's Dask (the module's docstring); idempotent."""
    global _installed, _dask_pickle_family
    with _lock:
        if _installed:
            return
        import distributed.protocol as dprotocol

        from distributed.protocol.serialize import families

        dask_serialize.register(np.ndarray)(_serialize)
        _dask_pickle_family = families["pickle"][0]
        families["pickle"] = (_pickle_family_dumps, families["pickle"][1], True)
        dask_deserialize.register(np.ndarray)(_deserialize)
        sizeof.register(np.ndarray)(_sizeof)
        dpickle.dumps = _pickle_dumps
        dcore.dumps = _dumps
        dprotocol.dumps = _dumps
        Comm.handshake_info = _handshake_info  # type: ignore[method-assign]
        from distributed.batched import BatchedSend
        from distributed.client import Client

        BatchedSend.recent_message_log = _log_property()  # type: ignore[assignment]

        if not getattr(Client._graph_to_futures, "_pyshm", False):
            Client._graph_to_futures = _client_sends(Client._graph_to_futures)  # type: ignore[method-assign]
        _installed = True


def identity(server: Any = None) -> dict[str, str]:
    """``{address: host key}`` for every address a peer may see this process at: the listening
    addresses of ``server`` and the local end of each open comm."""
    key = host_key()
    out = {}
    for c in list(Comm._instances):
        try:
            if not c.closed():
                out[c.local_address] = key
        except Exception:  # a comm half torn down
            continue
    for addr in getattr(server, "listen_addresses", None) or [getattr(server, "address", None)]:
        if addr:
            out[addr] = key
    return out


def learn(keys: dict[str, str]) -> None:
    """Record peers' host keys by address and tag the comms already open to them (invariant 2)."""
    _known.update(keys)
    for c in list(Comm._instances):
        info = getattr(c, "remote_info", None)
        if isinstance(info, dict) and KEY not in info:
            try:
                k = keys.get(c.peer_address)
            except Exception:
                continue
            if k is not None:
                info[KEY] = k


_task_handler: Any = None


def install_task_allocator(handler: Any) -> None:
    """Run every task of this worker with ``handler`` (a pyshm allocator capsule) as numpy's
    allocator, so that its large results are born in the pool; ``None``: numpy's own again."""
    global _task_handler
    import distributed.worker as dworker

    _task_handler = handler
    # The function a worker runs each task through, in its executor thread, looked up by name
    # at every call: `_run_task_simple` in recent distributed, `apply_function_simple` in older
    # ones (such as 2024.8.0, the newest for Python 3.9).
    name = "_run_task_simple" if hasattr(dworker, "_run_task_simple") else "apply_function_simple"
    run = getattr(dworker, name)
    if getattr(run, "_pyshm", False):
        return

    def run_task_simple(*args: Any, **kwargs: Any) -> Any:
        if _task_handler is None:
            return run(*args, **kwargs)
        previous = _native.set_handler(_task_handler)
        try:
            return run(*args, **kwargs)
        finally:
            _native.set_handler(previous)

    run_task_simple._pyshm = True  # type: ignore[attr-defined]
    setattr(dworker, name, run_task_simple)
