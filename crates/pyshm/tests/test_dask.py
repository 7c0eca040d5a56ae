"""Dask distributed: pyshm.dask.install lets by_handle arrays travel as handles; plain arrays
keep Dask's path."""

from __future__ import annotations

import os

import numpy as np
import pytest
from distributed import Client, LocalCluster

import engine_workers
from engine_workers import pool_of
import pyshm
import pyshm.dask


@pytest.fixture(scope="module")
def client():
    pyshm.zeros(1)
    here = os.path.dirname(__file__)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, saved]))  # engine_workers
    try:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    with cluster, Client(cluster) as c:
        pyshm.dask.install(c)
        yield c


def test_a_worker_writes_into_the_callers_array_and_its_result_comes_back_by_handle(client):
    a = pyshm.zeros(300_000)
    r = client.submit(engine_workers.dask_write_and_make, pyshm.by_handle(a), pure=False).result(timeout=120)
    assert a[0] == 9.0
    assert pyshm.is_shared(r) and (r == 2).all() and pool_of(r) == pool_of(a)


def test_scatter_and_plain_arrays(client):
    a = pyshm.zeros(1000)
    [s] = client.scatter([pyshm.by_handle(a)])
    assert client.submit(engine_workers.dask_describe, s).result(timeout=120) == (True, True, "ByHandle")
    plain = client.submit(engine_workers.dask_describe, np.zeros(1000), pure=False).result(timeout=120)
    assert plain[1:] == (False, "ndarray")


def test_naming_a_by_handle_array_takes_no_token(client):
    # Dask names an argument of a pure call, a scattered or delayed value, by a hash of it;
    # dask before 2024.12 hashed arrays by pickling them, and a pickle never loaded keeps its
    # array alive through its token.
    from dask.base import tokenize

    pool = pyshm.default_pool()
    a = pyshm.zeros(1000)
    in_flight = pool.stats().handles_in_flight
    name = tokenize(pyshm.by_handle(a))
    assert pool.stats().handles_in_flight == in_flight
    assert tokenize(pyshm.by_handle(a)) == name, "the same data, the same name"
    a[0] = 1
    assert tokenize(pyshm.by_handle(a)) != name, "other data, another name"
    [s] = client.scatter([pyshm.by_handle(a)])
    assert client.submit(engine_workers.dask_describe, s).result(timeout=120)[:2] == (True, True)
    del s
    r = client.submit(engine_workers.dask_describe, pyshm.by_handle(a)).result(timeout=120)  # pure
    assert r[:2] == (True, True)
    assert pool.stats().handles_in_flight == in_flight, "every handle sent was attached"

