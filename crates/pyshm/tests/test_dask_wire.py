"""pyshm.dask.install: every pooled array goes by handle between processes of this host (task
arguments, results, worker-to-worker dependencies, scatter, gather), by value to another host
(a worker told so by PYSHM_HOST_TAG), by value to disk when spilled; blocks are freed when
nothing holds them, and a SIGKILLed worker is recovered by Dask and reclaimed by pyshm."""

from __future__ import annotations

import os
import signal
import time
from typing import Callable

import numpy as np
import pytest
from distributed import Client, LocalCluster, wait

import engine_workers as ew
from engine_workers import pool_of
import pyshm
import pyshm.dask
from pyshm import _dask_wire

T = 120  # every wait on Dask that takes a timeout is bounded


@pytest.fixture(autouse=True)
def _watchdog():
    """scatter, gather and run take no timeout: a hang ends the run with every thread's
    traceback instead of blocking CI."""
    import faulthandler

    faulthandler.dump_traceback_later(600, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _cluster(**kwargs):
    here = os.path.dirname(__file__)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, saved]))  # engine_workers
    try:
        return LocalCluster(threads_per_worker=1, processes=True, dashboard_address=":0", **kwargs)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def client():
    pyshm.zeros(1)
    with _cluster(n_workers=2) as cluster, Client(cluster) as c:
        pyshm.dask.install(c)
        yield c


def _until(predicate, what: str, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline} s: {what}")
        time.sleep(0.05)


def _freed(a) -> Callable[[], bool]:
    """A predicate: has ``a``'s block been freed? Asked of the block itself (a handle without a
    token, stale once freed), never of the pool's array count, which frees that earlier tests
    set going (Dask releases asynchronously) move at any time."""
    from pyshm import _native

    h = _native.pooled_handle(a, False)

    def freed() -> bool:
        try:
            pyshm.attach(h)
        except pyshm.StaleHandleError:
            return True
        return False

    return freed


def test_a_plain_pooled_argument_arrives_by_handle_and_the_result_comes_back_by_handle(client):
    a = pyshm.zeros(100_000)
    shared, typ, size = client.submit(ew.dask_write_first, a, pure=False).result(timeout=T)
    assert (shared, typ) == (True, "ndarray") and a[0] == 5.0  # the worker wrote our memory
    assert size == _dask_wire.HANDLE_SIZE  # the block is not counted again by the worker
    r = client.submit(ew.dask_full, 100_000, 2.0, pure=False).result(timeout=T)
    assert pyshm.is_shared(r) and (r == 2.0).all() and pool_of(r) == pool_of(a)


def test_views_go_by_handle_too(client):
    a = pyshm.zeros((300, 400))
    shared, typ, _ = client.submit(ew.dask_write_first, a[10, 50:], pure=False).result(timeout=T)
    assert shared and a[10, 50] == 5.0


def test_worker_to_worker_dependencies_scatter_and_gather(client):
    w1, w2 = sorted(client.scheduler_info()["workers"])
    made = client.submit(ew.dask_full, 50_000, 3.0, workers=[w1], pure=False)
    used = client.submit(ew.dask_shared_sum, made, workers=[w2], pure=False)
    assert used.result(timeout=T) == (True, 150_000.0)
    a = pyshm.full(50_000, 1.0)
    [s] = client.scatter([a])
    assert client.submit(ew.dask_shared_sum, s, pure=False).result(timeout=T) == (True, 50_000.0)
    back = client.gather(s)
    assert pyshm.is_shared(back) and pool_of(back) == pool_of(a)


def test_plain_arrays_keep_dasks_path(client):
    x = np.arange(50_000.0)
    shared, _, size = client.submit(ew.dask_write_first, x, pure=False).result(timeout=T)
    assert not shared and size == x.nbytes and x[0] == 0.0  # a copy, counted in full


def test_del_and_cancel_free_the_block(client):
    f = client.submit(ew.dask_full, 200_000, 4.0, pure=False)
    r = f.result(timeout=T)
    assert pyshm.is_shared(r) and pool_of(r) == pyshm.default_pool().name
    freed = _freed(r)
    del f, r
    _until(freed, "the result's block freed after del")
    a = pyshm.zeros(200_000)
    freed = _freed(a)
    g = client.submit(ew.dask_shared_sum, a, pure=False)
    g.cancel()
    del g, a
    _until(freed, "the argument's block freed after cancel")


def test_spilled_values_are_written_and_come_back_right(client):
    f = client.submit(ew.dask_full, 100_000, 6.0, pure=False)
    f.result(timeout=T)

    def spill(dask_worker, key=f.key):
        data = dask_worker.data
        if key not in data:
            return None
        while key in data.fast:
            data.evict()
        return key in data.slow

    assert True in client.run(spill).values()
    r = f.result(timeout=T)
    assert (r == 6.0).all() and r.shape == (100_000,)
    assert client.submit(ew.dask_shared_sum, f, pure=False).result(timeout=T)[1] == 600_000.0


def test_another_host_gets_values_and_nothing_leaks():
    pool = pyshm.default_pool()
    before = pool.stats().arrays
    # Handles other tests left in flight are theirs (with Python 3.9's distributed 2024.8,
    # test_dask.py's ByHandle scatter leaves one, reclaimed by age): count only ours.
    pending = pool.stats().handles_in_flight
    # PYSHM_POOL emptied: a worker on another host cannot inherit our pool's name.
    with _cluster(n_workers=1, env={"PYSHM_HOST_TAG": "elsewhere", "PYSHM_POOL": ""}) as cluster, Client(cluster) as c:
        pyshm.dask.install(c)
        assert pool.name not in c.run(ew.dask_default_pool_name).values()
        a = pyshm.full(100_000, 1.5)
        shared, _, size = c.submit(ew.dask_write_first, a, pure=False).result(timeout=T)
        assert not shared and size == a.nbytes and a[0] == 1.5  # a copy went
        r = c.submit(ew.dask_full, 100_000, 7.0, pure=False).result(timeout=T)
        assert (r == 7.0).all() and pool_of_or_none(r) != pool_of(a)
        [s] = c.scatter([a])
        assert c.submit(ew.dask_shared_sum, s, pure=False).result(timeout=T) == (False, 150_000.0)
        freed = _freed(a)
        del s, r, a
        _until(lambda: sum(c.run(ew.dask_pool_arrays).values()) == 0, "the other host's arrays freed")
    _until(freed, "our argument freed")
    # Nothing else of ours left behind (the count may only end lower: frees that earlier tests'
    # Dask releases set going land whenever they do).
    _until(lambda: pool.stats().arrays <= before, "our arrays freed")
    assert pool.stats().handles_in_flight == pending  # no token was left pending on our side


def pool_of_or_none(a):
    from pyshm import _native

    h = _native.pooled_handle(a, False)
    return None if h is None else h.pool


def test_a_killed_worker_is_recovered_by_dask_and_reclaimed_by_pyshm(client):
    pool = pyshm.default_pool()
    before = pool.stats().arrays
    w, *survivors = sorted(client.scheduler_info()["workers"])
    held = [
        client.submit(ew.dask_full, 100_000, float(i), workers=[w], allow_other_workers=True, pure=False)
        for i in range(3)
    ]
    wait(held, timeout=T)
    assert pool.stats().arrays >= before + 3
    pid = client.submit(ew.dask_pid, workers=[w], pure=False).result(timeout=T)
    os.kill(pid, signal.SIGKILL)
    _until(lambda: _gone(pid), "the worker process is gone")
    assert [float(h.result(timeout=T)[0]) for h in held] == [0.0, 1.0, 2.0]  # recomputed
    del held
    _until(lambda: pool.collect() is not None and pool.stats().arrays <= before, "the dead worker's arrays reclaimed")
    # The worker the nanny started in its place was hooked by the plugin too.
    _until(lambda: len(client.scheduler_info()["workers"]) == 2, "a replacement worker")
    new = sorted(set(client.scheduler_info()["workers"]) - {w} - set(survivors))
    a = pyshm.zeros(10_000)
    for addr in new:
        # Tasks that reach it before its setup told the scheduler its key go by value (correct,
        # slower): wait for that first.
        _until(lambda: client.run_on_scheduler(_knows, addr), "the scheduler knows the new worker's key")
        assert client.submit(ew.dask_write_first, a, workers=[addr], pure=False).result(timeout=T)[0]


def _knows(addr: str) -> bool:
    return _dask_wire._known.get(addr) is not None


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].startswith("Z")
    except OSError:
        return True


RELAYED_CLIENT = """
import sys
from distributed import Client
import pyshm.dask
with Client(sys.argv[1], timeout=60) as c:
    pyshm.dask.install(c)
    r = c.get_dataset("pyshm-relayed").result(timeout=60)
    print(float(r.sum()), r.shape, pyshm.is_shared(r))
"""


def test_the_scheduler_relays_values_to_a_client_on_another_host(client):
    """gather goes worker -> scheduler (this host: a handle) -> client elsewhere: the scheduler
    turns the handle into a value for that hop."""
    import subprocess
    import sys

    f = client.submit(ew.dask_full, 50_000, 2.5, pure=False)
    f.result(timeout=T)
    client.publish_dataset(f, name="pyshm-relayed")
    try:
        env = {**os.environ, "PYSHM_HOST_TAG": "elsewhere"}
        env.pop("PYSHM_POOL", None)
        out = subprocess.run(
            [sys.executable, "-c", RELAYED_CLIENT, client.scheduler.address],
            env=env,
            capture_output=True,
            text=True,
            timeout=T,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.split()[-3:] == ["125000.0", "(50000,)", "False"]
    finally:
        client.unpublish_dataset("pyshm-relayed")


def test_a_learnt_address_does_not_make_a_later_peer_without_a_key_local():
    """Addresses learnt by ``learn`` include the ephemeral ports of comms that close; a process
    that later connects from a reused port and announces no host key (one without pyshm.dask,
    whose numpy deserializer cannot read a handle) must get values."""
    addr = "tcp://127.0.0.1:1"
    _dask_wire.learn({addr: _dask_wire.host_key()})
    try:
        a = pyshm.zeros(1000)
        pending = pyshm.default_pool().stats().handles_in_flight  # other tests' leftovers too
        header, frames = _dask_wire._serialize(a, context={"recipient": {"address": addr}})
        assert _dask_wire.KEY not in header and bytes(frames[-1]) == a.tobytes()
        here = {"recipient": {"address": addr, _dask_wire.KEY: _dask_wire.host_key()}}
        assert _dask_wire.KEY in _dask_wire._serialize(a, context=here)[0]  # announced: a handle
        assert pyshm.default_pool().stats().handles_in_flight == pending + 1  # that handle's token
        pyshm.default_pool().reclaim_handles(0.0)  # never sent: give it back
    finally:
        _dask_wire._known.pop(addr, None)


RELAYED_KINDS = """
import sys
from distributed import Client
import pyshm.dask
with Client(sys.argv[1], timeout=60) as c:
    pyshm.dask.install(c)
    for kind in sys.argv[2:]:
        try:
            r = c.get_dataset("pyshm-relayed-" + kind).result(timeout=60)
            a = {"list": lambda: r[0], "dict": lambda: r["a"], "box": lambda: r.array}[kind]()
            print(kind, float(a.sum()), pyshm.is_shared(a))
        except Exception as e:
            print(kind, "failed:", type(e).__name__)
"""


@pytest.mark.parametrize("kinds", [("list", "dict", "box")])
def test_the_scheduler_relays_values_inside_collections_to_another_host(client, kinds):
    """A result that is a list or dict holding a pooled array is serialized element by element
    (sub-headers): the relay must find the handles there too."""
    import subprocess
    import sys

    fs = {k: client.submit(ew.dask_full_in, k, 50_000, 2.5, pure=False) for k in kinds}
    for k, f in fs.items():
        f.result(timeout=T)
        client.publish_dataset(f, name="pyshm-relayed-" + k)
    try:
        here = os.path.dirname(__file__)
        env = {**os.environ, "PYSHM_HOST_TAG": "elsewhere", "PYTHONPATH": here}
        env.pop("PYSHM_POOL", None)
        out = subprocess.run(
            [sys.executable, "-c", RELAYED_KINDS, client.scheduler.address, *kinds],
            env=env,
            capture_output=True,
            text=True,
            timeout=T,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.splitlines()[-len(kinds) :] == [f"{k} 125000.0 False" for k in kinds], out.stderr[-3000:]
    finally:
        for k in kinds:
            client.unpublish_dataset("pyshm-relayed-" + k)


def test_a_published_pooled_array_can_be_got_again_and_unpublishing_frees_it(client):
    """The scheduler keeps a published value (``publish_dataset``) as received and sends it to
    every ``get_dataset``: it must not keep a one-use handle."""
    import gc

    pool = pyshm.default_pool()
    _until(lambda: pool.stats().handles_in_flight == 0, "no handle in flight before")
    before = pool.stats().arrays
    a = pyshm.full(10_000, 3.0)
    client.publish_dataset(a, name="pyshm-published")
    del a
    try:
        for _ in range(2):
            r = client.get_dataset("pyshm-published")
            assert pyshm.is_shared(r) and float(r.sum()) == 30_000.0
            del r
            gc.collect()
    finally:
        client.unpublish_dataset("pyshm-published")
    client.publish_dataset(pyshm.full(10_000, 4.0), name="pyshm-never-read")
    client.unpublish_dataset("pyshm-never-read")
    _until(lambda: pool.stats().arrays <= before, f"the published arrays freed after unpublish ({before} before, {pool.stats().arrays} now)")
    assert pool.stats().handles_in_flight == 0


def test_installing_again_with_min_bytes_none_turns_the_workers_allocator_off(client):
    try:
        pyshm.dask.install(client, min_bytes=None)
        r = client.submit(ew.dask_full, 100_000, 1.0, pure=False).result(timeout=T)
        assert not pyshm.is_shared(r) and (r == 1.0).all()
    finally:
        pyshm.dask.install(client)
    r = client.submit(ew.dask_full, 100_000, 1.0, pure=False).result(timeout=T)
    assert pyshm.is_shared(r)


def test_a_worker_with_its_own_dev_shm_on_this_machine_gets_values():
    """Two containers of one machine (one boot id, one hostname) with separate /dev/shm: a
    worker in a private mount namespace with its own tmpfs on /dev/shm (as root, like CI)."""
    import subprocess
    import sys

    with _cluster(n_workers=0) as cluster, Client(cluster) as c:
        env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
        env.pop("PYSHM_POOL", None)
        env.pop("PYSHM_HOST_TAG", None)
        worker = (
            f"mount -t tmpfs -o size=64m tmpfs /dev/shm && exec {sys.executable} -m distributed.cli.dask_worker "
            f"{cluster.scheduler_address} --nthreads 1 --no-nanny --no-dashboard"
        )
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", worker],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            c.wait_for_workers(1, timeout=T)
            pyshm.dask.install(c)
            [theirs] = c.run(_dask_wire.host_key).values()
            ours = _dask_wire.host_key()
            assert theirs != ours and theirs.split(":")[0] == ours.split(":")[0]  # one boot
            a = pyshm.full(100_000, 1.5)
            shared, _, size = c.submit(ew.dask_write_first, a, pure=False).result(timeout=T)
            assert not shared and size == a.nbytes and a[0] == 1.5  # a copy went
            r = c.submit(ew.dask_full, 100_000, 7.0, pure=False).result(timeout=T)
            assert (r == 7.0).all() and not pyshm.is_shared(r)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
