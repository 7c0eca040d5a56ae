"""pyshm.map and pyshm.alloc: kernels write into shared arrays, in serial, thread and process
contexts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import pyshm
from quiet import quiet_arrays
from concurrent.futures.process import BrokenProcessPool

PASHA_EXAMPLE = """\
import numpy as np
import pyshm as psh

inp = np.random.rand(100)
outp = psh.alloc(like=inp)

def triple_it(worker_id, index, value):
    outp[index] = 3 * value

psh.map(triple_it, inp)
"""


@pytest.fixture
def pctx(ctx):
    c = pyshm.ProcessContext(2, ctx.get_start_method())
    yield c
    c.close()


def run_script(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_pashas_example_runs_unchanged_but_for_the_import():
    r = run_script(PASHA_EXAMPLE + "assert np.allclose(outp, 3 * inp)\nprint(type(psh.get_default_context()).__name__)\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ProcessContext"


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_pashas_example_under_spawn_and_forkserver_with_a_main_guard(method, tmp_path):
    body = textwrap.indent(PASHA_EXAMPLE.split("\n", 2)[2], "    ")
    script = tmp_path / "example.py"
    script.write_text(
        f"import multiprocessing\nimport numpy as np\nimport pyshm as psh\n\n"
        f"if __name__ == '__main__':\n    multiprocessing.set_start_method({method!r})\n{body}"
        "    assert np.allclose(outp, 3 * inp)\n"
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_a_closure_over_pooled_arrays_and_a_lambda_run_in_processes(pctx):
    x = pyshm.asarray(np.arange(1000.0).reshape(100, 10))

    def make_kernel():
        out = pctx.alloc(100)

        def kernel(worker_id, index, value):
            out[index] = x[index].sum() + value

        return out, kernel

    out, kernel = make_kernel()
    pyshm.map(kernel, np.ones(100), context=pctx)
    assert np.allclose(out, x.sum(axis=1) + 1)
    seen = pctx.alloc(10, np.int64, fill=-1)
    pyshm.map(lambda w, i, v: seen.__setitem__(i, w), range(10), context=pctx)
    assert set(seen.tolist()) == {0, 1}  # two workers, each with its own id


_late = None


def test_the_workers_see_arrays_made_after_they_started(pctx):
    global _late
    first = pctx.alloc(4, fill=0)
    _late = first
    pyshm.map(_write_late, range(4), context=pctx)  # the workers start here
    second = pctx.alloc(4, fill=0)
    _late = second  # a new global array: sent again, never stale
    pyshm.map(_write_late, range(4), context=pctx)
    assert first.tolist() == [0, 1, 2, 3] and second.tolist() == [0, 1, 2, 3]


def _write_late(worker_id, index, value):
    _late[index] = value


def test_per_worker_rows_for_reductions(pctx):
    partial = pctx.alloc(3, np.int64, fill=0, per_worker=True)
    assert partial.shape == (2, 3)

    def kernel(worker_id, index, value):
        partial[worker_id, index % 3] += value

    pyshm.map(kernel, list(range(30)), context=pctx)
    assert partial.sum() == sum(range(30)) and (partial.sum(axis=1) > 0).all()


def test_ndarray_functor_along_an_axis_and_a_custom_functor(pctx):
    a = np.arange(24.0).reshape(2, 3, 4)
    out = pctx.alloc(4)

    def kernel(worker_id, index, value):
        out[index] = value.sum()

    pyshm.map(kernel, pyshm.NdarrayFunctor(a, axis=2), context=pctx)
    assert np.allclose(out, a.sum(axis=(0, 1)))

    squares = pctx.alloc(20, np.int64, fill=0)
    pyshm.map(lambda w, i, v: squares.__setitem__(i, v), Evens(), context=pctx)
    assert squares.tolist() == [i * i if i % 2 == 0 else 0 for i in range(20)]

    class Local(Evens):  # a class of no module: sent by value (cloudpickle)
        pass

    squares[:] = 0
    pyshm.map(lambda w, i, v: squares.__setitem__(i, v + 1), Local(), context=pctx)
    assert squares.tolist() == [i * i + 1 if i % 2 == 0 else 0 for i in range(20)]


class Evens(pyshm.Functor):
    """Even numbers below 20, each worker taking every n-th of them."""

    def split(self, n):
        return [range(k, 20, 2 * n) for k in range(0, 2 * n, 2)]

    def iterate(self, share):
        return ((i, i * i) for i in share)


def test_an_unpicklable_kernel_gets_a_clear_error(pctx):
    lock = threading.Lock()

    def kernel(worker_id, index, value):
        with lock:
            pass

    with pytest.raises(TypeError, match=r"uses 'lock', a lock, which cannot be pickled.*ThreadContext"):
        pyshm.map(kernel, range(4), context=pctx)


def test_a_kernel_error_is_raised_and_a_dead_worker_breaks_only_that_map(pctx):
    def failing(worker_id, index, value):
        if index == 7:
            raise KeyError("seven")

    with pytest.raises(KeyError, match="seven"):
        pyshm.map(failing, range(10), context=pctx)

    def dying(worker_id, index, value):
        if index == 3:
            os.kill(os.getpid(), 9)

    with pytest.raises(BrokenProcessPool):
        pyshm.map(dying, range(10), context=pctx)
    out = pctx.alloc(5, fill=0)
    pyshm.map(lambda w, i, v: out.__setitem__(i, v), range(5), context=pctx)  # new workers
    assert out.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("context", [pyshm.SerialContext(), pyshm.ThreadContext(3)])
def test_serial_and_thread_contexts(context):
    out = context.alloc(50, fill=0)
    ids = context.alloc(50, np.int64, fill=-1)

    def kernel(worker_id, index, value):
        out[index] = 2 * value
        ids[index] = worker_id

    pyshm.map(kernel, np.arange(50.0), context=context)
    assert np.allclose(out, 2 * np.arange(50.0))
    assert set(ids.tolist()) == set(range(context.num_workers))
    with pytest.raises(ZeroDivisionError):
        pyshm.map(lambda w, i, v: 1 / 0, range(5), context=context)
    context.close()


def test_default_context_and_its_names():
    old = pyshm.get_default_context()
    try:
        assert isinstance(old, pyshm.ProcessContext)
        assert old.num_workers == len(os.sched_getaffinity(0))
        ctx = pyshm.set_default_context("threads", num_workers=2)
        assert isinstance(ctx, pyshm.ThreadContext) and pyshm.get_default_context() is ctx
        assert pyshm.alloc(3, per_worker=True).shape == (2, 3)
        assert isinstance(pyshm.set_default_context("serial"), pyshm.SerialContext)
        with pytest.raises(ValueError, match="unknown context"):
            pyshm.set_default_context("gpu")
    finally:
        pyshm.set_default_context(old)


def test_alloc_follows_numpy():
    like = np.asfortranarray(np.ones((3, 4), dtype=np.float32))
    a = pyshm.alloc(like=like)
    assert a.shape == (3, 4) and a.dtype == np.float32 and a.flags.f_contiguous and pyshm.is_shared(a)
    assert pyshm.alloc((2, 2), fill=[1, 2]).tolist() == [[1, 2], [1, 2]]
    assert pyshm.alloc(3, np.int8, fill=5).tolist() == [5, 5, 5]
    assert pyshm.alloc(4).dtype == np.float64 and pyshm.alloc((2, 3), order="F").flags.f_contiguous
    with pytest.raises(TypeError, match="needs a shape"):
        pyshm.alloc()
    with pytest.raises(TypeError, match="cannot map over a dict"):
        pyshm.map(lambda w, i, v: None, {}, context=pyshm.SerialContext())


def test_progress_bar(capsys):
    out = pyshm.alloc(100, fill=0)
    ctx = pyshm.ProcessContext(2)
    try:
        pyshm.map(lambda w, i, v: out.__setitem__(i, v), range(100), context=ctx, progress=True)
    finally:
        ctx.close()
    assert out.sum() == sum(range(100))
    assert "100/100" in capsys.readouterr().err


def test_a_forked_child_runs_its_own_map_with_an_inherited_context():
    ctx = pyshm.ProcessContext(2, "fork")
    try:
        out = ctx.alloc(4, fill=0)
        pyshm.map(lambda w, i, v: out.__setitem__(i, 1), range(4), context=ctx)  # workers run
        pid = os.fork()
        if pid == 0:  # the child: the inherited executor has no manager thread here
            code = 1
            try:
                signal.alarm(60)  # a hang fails the test instead of blocking it
                pyshm.map(lambda w, i, v: out.__setitem__(i, 2), range(4), context=ctx)
                code = 0 if out.tolist() == [2, 2, 2, 2] else 2
                ctx.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert out.tolist() == [2, 2, 2, 2]
    finally:
        ctx.close()


def test_a_functor_with_too_many_shares_is_refused(pctx):
    class Many(pyshm.Functor):
        def split(self, n):
            return [range(i, i + 1) for i in range(n + 1)]

        def iterate(self, share):
            return ((i, i) for i in share)

    with pytest.raises(ValueError, match="at most 2"):
        pyshm.map(lambda w, i, v: None, Many(), context=pctx)


def test_a_dead_worker_leaves_no_share_behind(pctx):
    import gc
    import time

    pool = pyshm.default_pool()
    before = quiet_arrays(pool)

    def dying(worker_id, index, value):
        if worker_id == 0:
            os.kill(os.getpid(), 9)

    for _ in range(3):
        with pytest.raises(BrokenProcessPool):
            pyshm.map(dying, np.ones((2, 100_000)), context=pctx)  # an input copied per map
    deadline = time.monotonic() + 60
    while pool.stats().arrays != before and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.02)
    assert pool.stats().arrays == before


_table = np.arange(10.0) * 10  # a plain numpy array the kernel below reads


def test_a_kernel_reading_a_plain_global_array_gets_its_current_values(pctx):
    global _table
    _table = np.arange(10.0) * 10
    out = pctx.alloc(10, fill=0)

    def kernel(worker_id, index, value):
        out[index] = _table[index] + value

    pyshm.map(kernel, [1] * 10, context=pctx)
    assert out.tolist() == [i * 10.0 + 1 for i in range(10)]
    _table = np.arange(10.0) * 100  # rebound after the workers started: sent again
    pyshm.map(kernel, [1] * 10, context=pctx)
    assert out.tolist() == [i * 100.0 + 1 for i in range(10)]
