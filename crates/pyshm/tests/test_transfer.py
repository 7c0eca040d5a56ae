"""Arrays sent between processes under fork, spawn and forkserver travel as handles."""

from __future__ import annotations

import concurrent.futures
import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import pyshm
import workers


def test_a_pickled_handle_is_small_and_plain_pickle_gives_the_data():
    a = pyshm.zeros((1000, 1000))
    message = ForkingPickler.dumps(a)
    assert len(message) <= 200, len(message)
    b = ForkingPickler.loads(message)
    assert np.shares_memory(a, b)
    data = pickle.dumps(a)
    assert len(data) > a.nbytes, "plain pickle carries the data"
    c = pickle.loads(data)
    assert not pyshm.is_shared(c) and np.array_equal(c, a)
    with pyshm.handles():
        small = pickle.dumps(a[3])
    assert len(small) <= 200
    d = pickle.loads(small)
    assert np.shares_memory(d, a)
    assert len(pickle.dumps(a[3])) > 8000, "outside the block: data again"
    plain = np.arange(10)
    assert np.array_equal(ForkingPickler.loads(ForkingPickler.dumps(plain)), plain), "unpooled arrays unchanged"


def test_views_and_slices_are_written_on_the_other_side(ctx):
    a = pyshm.zeros((6, 10))
    views = [a[1], a[:, 3], a[::2, ::3], a[5:3:-1, 9:6:-1], a.T[2:4], a.view(np.int64)[4, 1:3]]
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        got = list(ex.map(workers.describe, views))
        for (shape, strides, dt, shared, _), v in zip(got, views):
            assert (shape, strides, dt, shared) == (v.shape, v.strides, v.dtype.str, True)
        # One after the other: the views overlap, so concurrent writes would race.
        for v, x in zip(views[:5], [1.0, 2.0, 3.0, 4.0, 5.0]):
            ex.submit(workers.fill, v, x).result()
    expect = np.zeros((6, 10))
    for v, x in zip([expect[1], expect[:, 3], expect[::2, ::3], expect[5:3:-1, 9:6:-1], expect.T[2:4]], [1, 2, 3, 4, 5]):
        v[...] = x
    assert np.array_equal(a, expect)


def test_a_multiprocessing_pool_writes_in_place_and_results_come_back_shared(ctx):
    x = pyshm.zeros((20, 50))
    with ctx.Pool(2) as p:
        p.starmap(workers.write_index, [(x, i) for i in range(20)])
        back = p.map(workers.echo, [x[i] for i in range(20)])
    assert np.array_equal(x[:, 0], np.arange(20))
    assert all(np.shares_memory(b, x) for b in back)


def test_two_tasks_receive_the_same_array_at_once(ctx):
    a = pyshm.full(100_000, 2.0)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        futures = [ex.submit(workers.total, a) for _ in range(8)]
        assert [f.result() for f in futures] == [200_000.0] * 8


def test_a_worker_sends_a_received_array_on_and_returns_it(ctx):
    a = pyshm.zeros(1000)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        back = ex.submit(workers.forward, a, ctx.get_start_method()).result()
    assert (a == 42).all() and np.shares_memory(back, a)


def test_two_hundred_temporary_arrays_each_arrive_intact(ctx):
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        futures = []
        for i in range(200):
            tmp = pyshm.full(1000 + i, float(i))
            futures.append(ex.submit(workers.total, tmp))
            del tmp  # the sender lets go before the worker attaches
        totals = [f.result() for f in futures]
    assert totals == [float(i * (1000 + i)) for i in range(200)]


def test_results_made_in_workers_come_back_shared(ctx):
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        results = list(ex.map(workers.new_array, [10, 20, 30], [1.0, 2.0, 3.0]))
    assert [r.sum() for r in results] == [10.0, 40.0, 90.0]
    assert all(pyshm.is_shared(r) for r in results)


def test_queues_and_pipes_carry_handles_and_the_sender_may_drop_first(ctx):
    parent, child = ctx.Pipe()
    p = ctx.Process(target=workers.send_handle_then_drop, args=(child,))
    p.start()
    a = parent.recv()
    assert parent.recv() == "dropped"
    assert a.shape == (4, 5) and (a == 3.0).all() and pyshm.is_shared(a)
    parent.send("bye")
    p.join(30)
    assert p.exitcode == 0
    q = ctx.Queue()
    src = pyshm.full(7, 1.5)
    q.put(src)
    got = q.get(timeout=30)
    assert np.shares_memory(got, src)


def test_lokys_executor_sends_handles():
    from joblib.externals.loky import get_reusable_executor

    assert pyshm.register_loky()
    x = pyshm.zeros((4, 1000))
    ex = get_reusable_executor(max_workers=2)
    out = list(ex.map(workers.fill, [x[i] for i in range(4)], [0.0, 1.0, 2.0, 3.0]))
    ex.shutdown(wait=True)
    assert (x[:, 0] == [0, 1, 2, 3]).all()
    assert all(np.shares_memory(o, x) for o in out)
