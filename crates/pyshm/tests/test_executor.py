"""pyshm.ProcessPoolExecutor: a drop-in executor whose arrays travel through the pool."""

from __future__ import annotations

import concurrent.futures
import gc
import sys
import threading
import time

import numpy as np
import pytest

import frontend_workers as fw
from quiet import quiet_arrays
import pyshm
from concurrent.futures.process import BrokenProcessPool


def test_it_is_the_standard_executor():
    assert issubclass(pyshm.ProcessPoolExecutor, concurrent.futures.ProcessPoolExecutor)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        pyshm.ProcessPoolExecutor(1, initializer=5)
    with pytest.raises(ValueError):
        pyshm.ProcessPoolExecutor(1, allocator_min_bytes=-1)


def test_results_are_born_in_the_pool_and_come_back_shared(ctx):
    with pyshm.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        x = pyshm.ones(100_000)
        y, shared_in_worker = ex.submit(fw.add_one_and_report, x).result()
        assert shared_in_worker  # x + 1 was allocated in the pool by the worker's allocator
        assert pyshm.is_shared(y) and (y == 2).all()
        # Small results are not allocated there, but still come back pooled.
        small, shared_small = ex.submit(fw.add_one_and_report, np.ones(3)).result()
        assert not shared_small and pyshm.is_shared(small) and (small == 2).all()


def test_a_pooled_argument_is_not_copied_and_a_plain_one_is_never_modified(ctx):
    with pyshm.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        pooled = pyshm.zeros(10)
        ex.submit(fw.fill_with, pooled, 7.0).result()
        assert (pooled == 7).all()  # the worker wrote into the caller's memory
        plain = np.zeros(10)
        assert ex.submit(fw.report, plain).result() == (True, 0.0)  # it arrived through the pool
        ex.submit(fw.fill_with, plain, 7.0).result()
        assert (plain == 0).all()  # a copy was sent, and the caller's array is untouched


def test_arrays_travel_at_any_depth_with_every_kind_of_array(ctx):
    structured = np.zeros(3, dtype=[("a", "i4"), ("b", "f8", (2,))])
    structured["a"] = [1, 2, 3]
    payload = {"t": (np.arange(4.0), [pyshm.ones(2), {"deep": np.arange(3)}]), "n": 5, "s": structured}
    with pyshm.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        out = ex.submit(fw.nested, payload).result()
        assert out["n"] == 5
        (a, a_shared), [(b, b_shared), deep] = out["t"]
        c, c_shared = deep["deep"]
        s, s_shared = out["s"]
        assert a_shared and b_shared and c_shared and s_shared
        assert (a == np.arange(4.0) * 2).all() and (b == 2).all() and (c == np.arange(3) * 2).all()
        assert s.dtype == structured.dtype and list(s["a"]) == [2, 4, 6]
        zero_d = ex.submit(fw.scalar_array, 3.5).result()
        assert zero_d.shape == () and zero_d == 3.5 and pyshm.is_shared(zero_d)
        objects = ex.submit(fw.object_array).result()  # object arrays are pickled, never fatal
        assert objects.dtype == object and objects[0] == {"a": 1} and not pyshm.is_shared(objects)


def test_registered_array_wrappers_send_their_array_through_the_pool(ctx):
    pyshm.register_array_wrapper(fw.Image, "data")
    pyshm.register_array_wrapper(fw.Slotted, "array")
    try:
        img = fw.Image(pyshm.zeros(4), {"name": "x"})
        s = fw.Slotted(pyshm.zeros(3), "lbl")
        with pyshm.ProcessPoolExecutor(1, mp_context=ctx) as ex:
            assert ex.submit(fw.touch_image, img).result() == (True, {"name": "x"}, "Image")
            assert ex.submit(fw.touch_slotted, s).result() == (True, "lbl")
        assert img.data[0] == -1 and s.array[0] == -1  # same memory: written by the worker
    finally:
        pyshm.unregister_array_wrapper(fw.Image)
        pyshm.unregister_array_wrapper(fw.Slotted)
    with pyshm.ProcessPoolExecutor(1, mp_context=ctx) as ex:  # unregistered: pickled as bytes
        assert ex.submit(fw.touch_image, fw.Image(pyshm.zeros(4), {})).result()[0] is False


def test_map_with_chunks_and_progress(ctx, capsys):
    x = pyshm.asarray(np.arange(100.0).reshape(20, 5))
    with pyshm.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        sums = list(ex.map(fw.row_sum, [x] * 20, range(20), chunksize=6, progress=True))
    assert sums == [float(r.sum()) for r in x]
    assert "20/20" in capsys.readouterr().err


def test_progress_without_tqdm_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pyshm.ProcessPoolExecutor(1) as ex:
        with pytest.raises(ImportError, match=r"pip install 'pyshm\[progress\]'"):
            ex.map(fw.pid, [], progress=True)


def test_exceptions_and_shutdown_with_cancel_futures(ctx):
    ex = pyshm.ProcessPoolExecutor(1, mp_context=ctx)
    with pytest.raises(ValueError, match="boom"):
        ex.submit(fw.fail, "boom").result()
    flag = pyshm.zeros(1, dtype=np.int8)
    first = ex.submit(fw.wait_for_flag, flag, 60.0)
    deadline = time.monotonic() + 30
    while not first.running() and time.monotonic() < deadline:  # handed to the worker
        time.sleep(0.01)
    rest = [ex.submit(fw.sleep_then, 0, i) for i in range(20)]

    def release_first_once_cancelled() -> None:
        # The worker stays busy until the shutdown has cancelled what it could (bounded).
        deadline = time.monotonic() + 60
        while not any(f.cancelled() for f in rest) and time.monotonic() < deadline:
            time.sleep(0.01)
        flag[0] = 1

    releaser = threading.Thread(target=release_first_once_cancelled)
    releaser.start()
    ex.shutdown(wait=True, cancel_futures=True)
    releaser.join()
    assert first.result() is True
    assert any(f.cancelled() for f in rest)
    with pytest.raises(RuntimeError):
        ex.submit(fw.pid)


def test_max_tasks_per_child_replaces_workers():
    import multiprocessing as mp

    if sys.version_info < (3, 11):  # the standard library's executor has no such argument yet
        with pytest.raises(TypeError, match="max_tasks_per_child"):
            pyshm.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), max_tasks_per_child=1)
        return
    with pyshm.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), max_tasks_per_child=1) as ex:
        pids = {ex.submit(fw.pid).result() for _ in range(3)}
        x = pyshm.zeros(3)
        ex.submit(fw.write_index, x, 2).result()
    assert len(pids) == 3 and x[2] == 2


def test_a_dead_worker_breaks_the_pool_promptly_and_what_it_held_is_reclaimed(ctx):
    pool = pyshm.default_pool()
    x = pyshm.zeros(1000)
    before = quiet_arrays(pool)  # earlier tests' garbage goes now, not during the count
    ex = pyshm.ProcessPoolExecutor(2, mp_context=ctx)
    try:
        assert ex.submit(fw.report, x).result()[0]
        # Submitted before the worker dies (a submit after that raises at once): some of
        # these run, the rest are in flight to, or queued for, the pool that breaks.
        queued = [ex.submit(fw.sleep_then, 0.2, pyshm.ones(10)) for _ in range(4)]
        doomed = ex.submit(fw.hold_then_die, x)
        with pytest.raises(BrokenProcessPool):
            doomed.result(timeout=60)
        for f in queued:
            try:
                assert (f.result(timeout=60) == 1).all()
            except BrokenProcessPool:
                pass
        del queued, f  # finished futures hold their results
    finally:
        ex.shutdown(wait=True)
    # The dead worker's arrays and the handles no worker attached are reclaimed in the
    # background once the workers have exited: wait for that (bounded), then check.
    deadline = time.monotonic() + 60
    while pool.stats().arrays > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.stats().arrays == before
    pool.check()
    x[0] = 1  # the caller's array is intact
    assert x[0] == 1


def test_the_handles_dead_workers_sent_and_nobody_read_are_dropped_when_the_pool_breaks(ctx):
    # A result a worker wrote and the owner never read (the manager stops reading when the
    # pool breaks; a terminated worker may leave half a message) keeps its array alive by its
    # handle's token: the broken pool discards it. A handle made and sent nowhere stands for it.
    pool = pyshm.default_pool()
    before, in_flight = quiet_arrays(pool), pool.stats().handles_in_flight
    ex = pyshm.ProcessPoolExecutor(1, mp_context=ctx)
    try:
        with pytest.raises(BrokenProcessPool):
            ex.submit(fw.send_then_die, 1000).result(timeout=60)
    finally:
        ex.shutdown(wait=True)
    assert _settled_arrays(pool, before) == before
    assert pool.stats().handles_in_flight == in_flight
    pool.check()


def test_a_handle_in_a_result_the_owner_read_stays_attachable_when_the_pool_breaks(ctx):
    # The broken pool discards what the dead workers sent and nobody read, not what was
    # delivered: a task's result that is a handle stays the caller's to attach.
    ex = pyshm.ProcessPoolExecutor(2, mp_context=ctx)
    try:
        h = ex.submit(fw.handle_to_full, 10, 7.0).result(timeout=60)
        with pytest.raises(BrokenProcessPool):
            ex.submit(fw.send_then_die, 1000).result(timeout=60)
    finally:
        ex.shutdown(wait=True)
    deadline = time.monotonic() + 60
    while ex._pyshm_reclaim_state != "done" and time.monotonic() < deadline:  # the reclaim ran
        time.sleep(0.02)
    assert ex._pyshm_reclaim_state == "done"
    a = pyshm.attach(h)
    assert (a == 7.0).all() and a.shape == (10,)


def test_a_dead_workers_handle_made_before_another_workers_result_was_read_is_dropped(ctx):
    # Worker B has pickled a result (its handle made) and not written it when worker A's result
    # is read; then B dies. B's handle is in a result nobody will read: the broken pool drops
    # it, though it was made before the manager's last read (that read was of A's result).
    pool = pyshm.default_pool()
    before, in_flight = quiet_arrays(pool), pool.stats().handles_in_flight
    flag = pyshm.zeros(2)
    ex = pyshm.ProcessPoolExecutor(2, mp_context=ctx)
    try:
        assert ex.submit(fw.add_one, 1).result() == 2
        dying = ex.submit(fw.handle_wait_then_die, flag, 1000)
        deadline = time.monotonic() + 60
        while flag[1] == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        y, _ = ex.submit(fw.add_one_and_report, pyshm.ones(10)).result(timeout=60)  # read now
        assert (y == 2).all()
        del y
        flag[0] = 1
        with pytest.raises(BrokenProcessPool):
            dying.result(timeout=60)
    finally:
        ex.shutdown(wait=True)
    del flag
    assert _settled_arrays(pool, before) == before
    assert pool.stats().handles_in_flight == in_flight


def _settled_arrays(pool, expected, timeout=60.0):
    """The pool's array count once it reaches `expected` (or the deadline passes)."""
    deadline = time.monotonic() + timeout
    while pool.stats().arrays != expected and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.02)
    return pool.stats().arrays


def test_failures_to_pickle_or_unpickle_leak_nothing_and_keep_the_worker(ctx):
    import threading

    pool = pyshm.default_pool()
    before = quiet_arrays(pool)
    with pyshm.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        worker = ex.submit(fw.pid).result()
        for _ in range(3):  # the arrays are handles already when the lock fails to pickle
            with pytest.raises(TypeError):
                ex.submit(fw.report, np.ones(100_000), threading.Lock()).result()
            with pytest.raises(TypeError):  # the same on the way back
                ex.submit(fw.with_lock).result()
            with pytest.raises(pyshm.PayloadError, match="could not unpickle its task"):
                ex.submit(fw.report, np.ones(100_000), fw.Unloadable()).result()
        assert ex.submit(fw.pid).result() == worker  # the worker survived all of it
    assert _settled_arrays(pool, before) == before


def test_a_task_whose_unpickling_raises_system_exit_fails_with_payload_error(ctx):
    pool = pyshm.default_pool()
    before = quiet_arrays(pool)
    with pyshm.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        worker = ex.submit(fw.pid).result()
        for bad, name in ((fw.ExitsWhenLoaded(), "SystemExit"), (fw.InterruptsWhenLoaded(), "KeyboardInterrupt")):
            with pytest.raises(pyshm.PayloadError, match=f"could not unpickle its task: {name}"):
                ex.submit(fw.report, np.ones(100_000), bad).result()
        assert ex.submit(fw.pid).result() == worker  # the worker lives on
    assert _settled_arrays(pool, before) == before  # the handles the tasks carried are dropped


def test_small_views_of_large_results_do_not_pin_their_block(ctx):
    with pyshm.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        r = ex.submit(fw.top5, 1).result()
    assert r.shape == (5,) and pyshm.is_shared(r)
    assert r.base.nbytes < 1 << 20  # a copy of the view, not the 8 MB block of the sort


def test_a_future_does_not_keep_its_executor_alive(ctx):
    import weakref

    ex = pyshm.ProcessPoolExecutor(1, mp_context=ctx)
    f = ex.submit(fw.pid)
    f.result()
    ref = weakref.ref(ex)
    ex.shutdown()
    del ex
    gc.collect()
    assert ref() is None and f.result() > 0
