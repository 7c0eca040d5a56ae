"""Dask distributed: pooled arrays travel by handle between processes of one host, by value to others.

Invariants:

1. After :func:`install`, every pooled ``numpy.ndarray`` (made by pyshm, born in the pool by the
   allocator, or a view of one) that Dask sends to a process on this host goes as a handle: task
   arguments (client -> scheduler -> worker), results (``result``, ``gather``), worker-to-worker
   dependencies and ``scatter``. To a process on another host, and when Dask writes without a
   connection (spilling to disk), it goes by value through Dask's own path. "On this host" is
   decided per connection from a host identity both ends exchange (``_dask_wire``, invariant 1).
2. Arrays that are not pooled keep Dask's own serializers, called unchanged.
3. Every process gets the hooks: this one and the scheduler when ``install`` runs, every worker
   through a worker plugin, also workers started later (restarts included). In each worker, tasks
   run with pyshm's numpy allocator for allocations of at least ``min_bytes``, in the client's
   default pool when the worker is on the client's host (its own pool otherwise), so their large
   results are born in the pool and come back by handle.
4. ``dask.sizeof`` of a pooled array received by handle is a handle's size: a shared block is
   counted once, by the process it was born in, not again on every holder.
5. :func:`pyshm.by_handle` arrays (``ByHandle``) always go as handles, whatever the peer: the
   caller asked for it (they fail to load on another host with ``PoolNotFoundError``). What Dask
   unpickles stays a ``ByHandle``, so relays send it on as a handle too.
"""

from __future__ import annotations

import pickle
from typing import Any, Optional

from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol.serialize import dask_deserialize, dask_serialize

from . import _core, _dask_wire, _native, _pools
from ._allocator import DEFAULT_MIN_BYTES
from ._by_handle import ByHandle

__all__ = ["install"]


@dask_serialize.register(ByHandle)
def _serialize(x: ByHandle) -> tuple[dict, list[bytes]]:
    return {}, [pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL)]


@dask_deserialize.register(ByHandle)
def _deserialize(header: dict, frames: list) -> Any:
    return pickle.loads(frames[0])  # still a ByHandle (invariant 5)


def _install_on_scheduler(client_keys: dict[str, str], dask_scheduler: Any = None) -> dict[str, str]:
    """Runs in the scheduler: hooks it, learns the client's comms, returns its identity."""
    _dask_wire.install_here()
    _dask_wire.hold_published(dask_scheduler)
    _dask_wire.learn(client_keys)
    return _dask_wire.identity(dask_scheduler)


def _identity(dask_worker: Any = None) -> dict[str, str]:
    return _dask_wire.identity(dask_worker)


class _Setup(WorkerPlugin):
    """Hooks a worker (invariant 3) and introduces it to the scheduler and its peers."""

    name = "pyshm-dask"

    def __init__(self, client_key: str, pool: Optional[str], keys: dict[str, str], min_bytes: Optional[int]) -> None:
        self.client_key = client_key
        self.pool = pool
        self.keys = keys
        self.min_bytes = min_bytes

    async def setup(self, worker: Any) -> None:
        _dask_wire.install_here()
        if self.min_bytes is None:
            _dask_wire.install_task_allocator(None)  # an earlier install's allocator is let go
        else:
            if self.pool is not None and _dask_wire.host_key() == self.client_key:
                native = _pools.pool_named(self.pool)
                _pools.adopt_default(native)
            else:  # another host: its own pool
                native = _core.native_of(_core.default_pool())
            _dask_wire.install_task_allocator(_native.make_allocator(native, self.min_bytes))
        _dask_wire.learn(self.keys)
        # The scheduler's comm to this worker was opened before the hooks: tell it who we are.
        await worker.scheduler.run_function(
            function=pickle.dumps(_dask_wire.learn), args=pickle.dumps((_dask_wire.identity(worker),)), wait=True
        )


def install(client: Any, min_bytes: Optional[int] = DEFAULT_MIN_BYTES) -> None:
    """Make pooled arrays travel by handle between ``client``, its scheduler and its workers
    when they are on this host, and by value to those on other hosts.

    Hooks this process, the scheduler and every worker of the cluster (also workers started
    later). Arrays that are not pooled keep Dask's own path. Call it once per client, before
    submitting work that should benefit.

    Parameters
    ----------
    client : distributed.Client
        The client whose cluster should send pooled arrays by handle.
    min_bytes : int or None, optional
        Tasks on workers of this host take numpy allocations of at least this many bytes
        (default 64 KiB) from the client's default pool, so their large results are born there
        and come back by handle; ``None`` leaves numpy's allocator alone (and turns off the
        allocator of an earlier ``install``).

    Raises
    ------
    ValueError
        For a ``min_bytes`` that is not a non-negative int or None.

    Notes
    -----
    "This host" means: the same kernel boot, the same /dev/shm (tmpfs instance), the same pid
    namespace and the same user, compared per connection; two containers with one hostname and
    boot id but their own /dev/shm are other hosts to each other. Spilled values are written by
    value. ``pyshm.by_handle`` arrays go as handles to every peer.

    Examples
    --------
    >>> from distributed import Client, LocalCluster  # doctest: +SKIP
    >>> import pyshm, pyshm.dask  # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2, processes=True))  # doctest: +SKIP
    >>> pyshm.dask.install(client)  # doctest: +SKIP
    >>> x = pyshm.zeros(20_000_000)  # doctest: +SKIP
    >>> y = client.submit(lambda a: a + 1, x).result()  # by handle both ways  # doctest: +SKIP
    """
    if min_bytes is not None and (isinstance(min_bytes, bool) or not isinstance(min_bytes, int) or min_bytes < 0):
        raise ValueError(f"min_bytes must be an int >= 0 or None, not {min_bytes!r}")
    _dask_wire.install_here()
    pool = _pools.default_native().name if min_bytes is not None else None
    mine = _dask_wire.identity()
    scheduler = client.run_on_scheduler(_install_on_scheduler, mine)
    _dask_wire.learn(scheduler)
    _dask_wire.learn_scheduler(client, client.run_on_scheduler(_dask_wire.host_key))
    client.register_plugin(_Setup(_dask_wire.host_key(), pool, {**mine, **scheduler}, min_bytes))
    workers = {}
    for keys in client.run(_identity).values():
        workers.update(keys)
    client.run(_dask_wire.learn, workers)
    _dask_wire.learn(workers)
