"""Dask distributed: :func:`pyshm.by_handle` arrays travel as handles between client and workers.

Invariants:

1. Dask serializes data with its own families before pickle, and its numpy serializer would
   claim a :class:`pyshm.ByHandle` (a ``numpy.ndarray`` subclass) and send the data. Importing
   this module registers a ``dask_serialize``/``dask_deserialize`` pair for ``ByHandle`` only:
   its one frame is the object's pickle (a handle). Plain arrays keep Dask's numpy serializer.
2. Both ends of a connection need the pair: :func:`install` registers it in this process and, with
   a worker plugin, in every worker of the client's cluster, including workers started later.
3. Only ``by_handle`` arrays go by handle; a handle that reaches another machine fails to load
   with ``PoolNotFoundError`` naming the pool and both hosts (see ``pyshm.by_handle``). Choosing
   between handle and value per connection for every pooled array is not built yet
   (docs/architecture.md, "Scale-out engines").
4. What Dask unpickles stays a ``ByHandle`` (the pooled array itself, marked), so it goes on as a
   handle through every further hop: client, scheduler (which unpickles a task's arguments and
   pickles them again for the worker), worker, another worker.
"""

from __future__ import annotations

import pickle
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol.serialize import dask_deserialize, dask_serialize

from ._by_handle import ByHandle

__all__ = ["install"]


@dask_serialize.register(ByHandle)
def _serialize(x: ByHandle) -> tuple[dict, list[bytes]]:
    return {}, [pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL)]


@dask_deserialize.register(ByHandle)
def _deserialize(header: dict, frames: list) -> Any:
    return pickle.loads(frames[0])  # still a ByHandle (invariant 4)


class _Setup(WorkerPlugin):
    """Imports this module in a worker (invariant 2)."""

    name = "pyshm-by-handle"

    def setup(self, worker: Any) -> None:
        import pyshm.dask  # noqa: F401 (registers the serializers)


def install(client: Any) -> None:
    """Make ``pyshm.by_handle`` arrays travel as handles between ``client`` and its workers.

    Registers pyshm's Dask serializer for :class:`pyshm.ByHandle` here and, as a worker plugin, in
    every worker of the cluster (also those started later). Plain arrays keep Dask's own path.

    Parameters
    ----------
    client : distributed.Client
        The client whose workers should load the serializer.
    """
    client.register_plugin(_Setup())
