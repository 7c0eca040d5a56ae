"""pyshm's executor writes a call to the workers itself when it can (``_direct_calls``): the
calls still leave in order, a full pipe hands the call to the feeder, and nothing changes for
the workers or the futures."""

from __future__ import annotations

import fcntl
import gc
import os
import signal
import threading
import time
import weakref

import pytest

import frontend_workers as fw
import pyshm
from concurrent.futures.process import BrokenProcessPool

F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ from Python 3.10


def _feeder_started(ex) -> bool:
    return ex._call_queue._thread is not None


def _link(fd: int):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def test_tiny_calls_go_direct_and_the_descriptor_is_closed_at_shutdown(ctx):
    ex = pyshm.ProcessPoolExecutor(2, mp_context=ctx)
    assert [ex.submit(fw.add_one, i).result() for i in range(50)] == list(range(1, 51))
    assert not _feeder_started(ex), "every tiny call was written by the submitting thread"
    fd = ex._pyshm_direct.fd
    pipe = _link(fd)
    assert pipe is not None and pipe == _link(ex._call_queue._writer.fileno()) and pipe.startswith("pipe:")
    ex.shutdown(wait=True)
    assert ex._pyshm_direct.fd is None
    assert _link(fd) != pipe, "the descriptor of the direct writes is closed"


def test_one_worker_runs_calls_in_submission_order_whichever_path_they_take(ctx):
    # Tiny calls go direct; calls with a 20 KB argument (more than PIPE_BUF) and calls behind
    # a full call queue go through the manager and the feeder. One worker runs what it reads
    # in the order it reads it: the order numbers must be the submission order.
    big = b"x" * 20_000
    with pyshm.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        futures = []
        for i in range(400):
            futures.append(ex.submit(fw.call_number, big if i % 7 == 3 else None))
            if i % 50 == 0:
                futures[-1].result()  # let the queue drain now and then: both paths alternate
        order = [f.result(timeout=120) for f in futures]
        assert _feeder_started(ex)
    assert order == sorted(order) and len(set(order)) == len(order)


def test_a_call_the_full_pipe_cannot_take_is_handed_to_the_feeder(ctx):
    flag = pyshm.zeros(2)
    payload = b"y" * 3000  # under PIPE_BUF: goes direct; two do not fit in one page
    with pyshm.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        assert ex.submit(fw.add_one, 1).result() == 2
        # One page of pipe: the second 3 KB call finds it full.
        fcntl.fcntl(ex._call_queue._writer.fileno(), F_SETPIPE_SZ, 4096)
        blocked = ex.submit(fw.announce_then_wait, flag, 60.0)
        deadline = time.monotonic() + 60
        while flag[1] == 0 and time.monotonic() < deadline:  # the worker has read it
            time.sleep(0.001)
        second = ex.submit(fw.call_number, payload)
        third = ex.submit(fw.call_number, payload)
        assert _feeder_started(ex), "the third call found the pipe full and went to the feeder"
        assert not third.cancel(), "it is running (in the call queue) as the manager would have made it"
        flag[0] = 1
        assert blocked.result(timeout=60)
        assert second.result(timeout=60) < third.result(timeout=60)


def test_a_call_that_cannot_be_pickled_fails_its_future_as_the_standard_executor_does(ctx):
    with pyshm.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        f = ex.submit(fw.add_one, threading.Lock())
        with pytest.raises(TypeError, match="lock"):
            f.result(timeout=60)
        assert ex.submit(fw.add_one, 1).result() == 2  # and the executor goes on


def test_threads_submitting_at_once_each_get_their_own_results(ctx):
    with pyshm.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        results: dict[int, list] = {}

        def submit_many(t: int) -> None:
            results[t] = [ex.submit(fw.add_one, t * 1000 + i).result() for i in range(100)]

        threads = [threading.Thread(target=submit_many, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
    assert all(results[t] == [t * 1000 + i + 1 for i in range(100)] for t in range(4))


def test_a_submit_refused_by_a_broken_pool_leaves_no_handle_in_flight(ctx):
    # An idle worker dies: the pool breaks with no future to fail. A later submit that could go
    # direct pickles its call first (a pooled argument becomes a handle); the refusal
    # (BrokenProcessPool) must give that handle back.
    pool = pyshm.default_pool()
    x = pyshm.ones(10)
    ex = pyshm.ProcessPoolExecutor(1, mp_context=ctx)
    try:
        worker = ex.submit(fw.pid).result(timeout=60)
        gc.collect()
        in_flight = pool.stats().handles_in_flight
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not ex._broken and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(3):
            with pytest.raises(BrokenProcessPool):
                ex.submit(fw.add_one, x)
        assert pool.stats().handles_in_flight == in_flight
    finally:
        ex.shutdown(wait=True)


def test_the_descriptor_is_closed_when_an_executor_that_was_not_shut_down_is_garbage(ctx):
    # Like the standard library's own pipe ends, the direct writes' descriptor goes once the
    # manager thread has ended (the executor was collected), without waiting for a collection
    # of reference cycles.
    gc.collect()
    gc.disable()
    try:
        ex = pyshm.ProcessPoolExecutor(1, mp_context=ctx)
        assert ex.submit(fw.add_one, 1).result(timeout=60) == 2
        fd = ex._pyshm_direct.fd
        pipe = _link(fd)
        manager = ex._executor_manager_thread
        ref = weakref.ref(ex)
        del ex
        assert ref() is None
        manager.join(60)
        assert not manager.is_alive()
        assert _link(fd) != pipe, "the descriptor of the direct writes is closed"
    finally:
        gc.enable()
