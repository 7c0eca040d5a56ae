"""joblib: the "pyshm" backend sends pooled arrays as handles; plain arrays as joblib does."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed

import pyshm
import pyshm.joblib

from engine_workers import joblib_add_one, joblib_flags, joblib_write_first, pool_of


@pytest.fixture(scope="module")
def backend():
    with joblib.parallel_config(backend="pyshm", n_jobs=2):
        yield


def test_pooled_arguments_are_the_callers_memory_and_writable(backend):
    x = pyshm.zeros(300_000)  # above joblib's 1 MB memmapping threshold
    assert Parallel()(delayed(joblib_flags)(x) for _ in range(2)) == [(True, "ndarray")] * 2
    Parallel()(delayed(joblib_write_first)(x[i:]) for i in range(4))
    assert list(x[:4]) == [42.0] * 4


def test_results_are_born_in_the_pool_and_come_back_by_handle(backend):
    x = pyshm.ones(300_000)
    (r,) = Parallel()(delayed(joblib_add_one)(x) for _ in range(1))
    assert pyshm.is_shared(r) and r.flags.writeable and (r == 2).all()
    assert pool_of(r) == pool_of(x)


def test_plain_arrays_travel_as_under_joblibs_default(backend):
    p = np.zeros(300_000)
    assert Parallel()(delayed(joblib_flags)(p) for _ in range(2)) == [(False, "memmap")] * 2
    (r,) = Parallel()(delayed(joblib_add_one)(p[:10]) for _ in range(1))
    assert type(r) is np.ndarray and (r == 1).all()


def test_the_default_backend_still_gets_the_right_data():
    x = pyshm.ones(300_000)
    with joblib.parallel_config(backend="loky", n_jobs=2):
        r = Parallel()(delayed(joblib_add_one)(x) for _ in range(2))
    assert all((a == 2).all() for a in r)


def test_register_is_idempotent_and_import_pyshm_registers_nothing():
    import subprocess
    import sys

    code = "import joblib, pyshm; from joblib.parallel import BACKENDS; print('pyshm' in BACKENDS)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
    pyshm.joblib.register()
    pyshm.joblib.register()
    from joblib.parallel import BACKENDS

    assert BACKENDS["pyshm"] is pyshm.joblib.PyshmBackend


def test_a_failing_first_task_surfaces_and_the_next_call_does_not_wait_for_it(backend):
    from engine_workers import joblib_fail_on_zero

    with pytest.raises(ValueError, match="task 0 fails"):
        Parallel(timeout=120)(delayed(joblib_fail_on_zero)(i) for i in range(4))
    assert Parallel(timeout=120)(delayed(joblib_fail_on_zero)(i) for i in range(1, 6)) == [1, 2, 3, 4, 5]
    assert sorted(Parallel(timeout=120, return_as="generator_unordered")(delayed(abs)(-i) for i in range(3))) == [0, 1, 2]


def test_unordered_results_come_as_they_complete_not_after_the_first_submitted(backend, tmp_path):
    """Job 0 waits (60 s at most) until the caller has received another result: under
    ``generator_unordered`` the backend must not hold results back until job 0 is done."""
    from engine_workers import joblib_wait_for

    marker = str(tmp_path / "got-one")
    jobs = [delayed(joblib_wait_for)(marker, 60.0)] + [delayed(abs)(-i) for i in range(1, 3)]
    out = []
    for r in Parallel(timeout=120, return_as="generator_unordered")(jobs):
        out.append(r)
        open(marker, "a").close()
    assert sorted(map(str, out)) == ["1", "2", "seen"]


def test_an_error_in_a_later_task_surfaces_without_waiting_for_the_first(backend, tmp_path):
    """joblib raises a task's error as soon as it is known; job 0 (waiting 60 s at most for a
    marker made only afterwards) must not be waited for first."""
    from engine_workers import joblib_fail_on_zero, joblib_wait_for

    marker = str(tmp_path / "raised")
    with pytest.raises(ValueError, match="task 0 fails"):
        Parallel(timeout=120)([delayed(joblib_wait_for)(marker, 60.0), delayed(joblib_fail_on_zero)(0)])
    timed_out = (tmp_path / "raised.timed-out").exists()
    open(marker, "a").close()
    assert not timed_out
