"""Named arrays and the command line, seen from separately started programs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import pyshm
from conftest import shm_entries

PYTHON = sys.executable


def run(code: str, **env: str) -> str:
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_named_arrays_are_shared_with_unrelated_programs_until_deleted():
    a = pyshm.create("shm://results", (3, 4), dtype=np.int32)
    assert (a == 0).all() and pyshm.is_shared(a)
    a[1] = [1, 2, 3, 4]
    assert "results" in pyshm.list()
    # Another program attaches by name, sees the data and writes into it.
    assert run("import pyshm; b = pyshm.attach('results'); print(b[1].sum()); b[2] = 9") == "10"
    assert (a[2] == 9).all()
    with pytest.raises(FileExistsError):
        pyshm.create("results", 3)
    del a
    # No process holds it now but the name keeps it.
    assert run("import pyshm; print(int(pyshm.attach('results')[2, 0]))") == "9"
    pyshm.delete("results")
    assert "results" not in pyshm.list()
    with pytest.raises(FileNotFoundError):
        pyshm.attach("results")
    with pytest.raises(FileNotFoundError):
        pyshm.delete("results")


def test_a_named_array_outlives_its_creator_and_goes_with_its_name():
    # Programs of their own named pool, which this test process never joins.
    own = {"PYSHM_NAMED_POOL": os.environ["PYSHM_NAMED_POOL"] + "b"}
    pool_files = lambda: {e for e in shm_entries() if e.startswith("pyshm-" + own["PYSHM_NAMED_POOL"])}  # noqa: E731
    run("import pyshm; pyshm.create('kept', 5)[:] = 4", **own)
    assert pool_files(), "the name keeps the pool after its only process exited"
    assert run("import pyshm; print(pyshm.attach('kept').sum()); print(pyshm.list())", **own) == "20.0\n['kept']"
    run("import pyshm; pyshm.delete('kept')", **own)
    assert not pool_files(), "the last name deleted and no process left: the pool is gone"


def test_the_cli_lists_pools_and_cleans_only_dead_ones():
    pyshm.empty(10)
    name = pyshm.default_pool().name
    ls = subprocess.run([PYTHON, "-m", "pyshm", "ls"], capture_output=True, text=True, timeout=60)
    assert ls.returncode == 0 and name in ls.stdout and "LIVE" in ls.stdout
    clean = subprocess.run([PYTHON, "-m", "pyshm", "clean"], capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0 and name not in clean.stdout
    assert any(e.startswith(f"pyshm-{name}") for e in shm_entries())


def test_nothing_is_left_after_a_normal_exit_with_workers():
    code = """
import concurrent.futures, multiprocessing as mp, numpy as np, pyshm
if __name__ == "__main__":
    a = pyshm.ones(1000)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
        r = list(ex.map(np.sum, [a, a[1:]]))
    keep = pyshm.zeros(10)  # still alive at exit
    print(pyshm.default_pool().name, r)
"""
    env = dict(os.environ)
    env.pop("PYSHM_POOL", None)
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    name = out.stdout.split()[0]
    assert not any(e.startswith(f"pyshm-{name}") for e in shm_entries())
