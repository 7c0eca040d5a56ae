"""Ray: pyshm.ray.remote and by_handle send pooled arrays as handles; plain arrays as Ray does."""

from __future__ import annotations

import os

import numpy as np
import pytest

import pyshm
import pyshm.ray
import ray

import engine_workers
from engine_workers import pool_of


@pytest.fixture(scope="module")
def cluster():
    pyshm.zeros(1)  # the default pool exists, so Ray's workers inherit PYSHM_POOL
    here = os.path.dirname(__file__)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, saved]))  # engine_workers
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    yield
    ray.shutdown()


def test_a_pooled_argument_arrives_writable_and_results_come_back_by_handle(cluster):
    f = pyshm.ray.remote(engine_workers.ray_add_one_in_place)
    a = pyshm.zeros(300_000)
    r = ray.get(f.remote(a), timeout=120)
    assert (a == 1).all() and (r == 2).all()
    assert pyshm.is_shared(r) and r.flags.writeable and pool_of(r) == pool_of(a)


def test_plain_arrays_take_rays_own_path(cluster):
    d = pyshm.ray.remote(engine_workers.ray_describe)
    assert ray.get(d.remote(np.zeros(300_000)), timeout=120) == (False, False, "ndarray")
    assert ray.get(d.options(num_cpus=1).remote(pyshm.zeros(300_000)), timeout=120) == (True, True, "ByHandle")


def test_by_handle_and_put_with_plain_ray_remote(cluster):
    d = ray.remote(engine_workers.ray_describe)
    a = pyshm.zeros(1000)
    assert ray.get(d.remote(pyshm.by_handle(a)), timeout=120) == (True, True, "ByHandle")
    ref = pyshm.ray.put(a)
    assert ray.get(d.remote(ref), timeout=120) == (True, True, "ByHandle")
    b = ray.get(ref, timeout=120)
    b[0] = 5
    assert a[0] == 5
