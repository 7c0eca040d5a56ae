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
    assert ls.returncode == 0 and name in ls.stdout and "PROCS" in ls.stdout
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


def test_the_named_pool_is_per_user_by_default():
    env = {k: v for k, v in os.environ.items() if k != "PYSHM_NAMED_POOL"}
    code = "import pyshm._named as n; print(n.pool_name())"
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"named_{os.geteuid()}"
    assert run(code, PYSHM_NAMED_POOL="chosen") == "chosen"


def test_another_user_cannot_capture_named_arrays():
    # The attacker takes our pool's name first (the name is predictable: named_<uid>) and lets
    # everyone in. As root it is uid 65534; otherwise it is us, and the 0666 mode is refused.
    target = os.environ["PYSHM_NAMED_POOL"] + "x"
    attacker_env = {k: v for k, v in os.environ.items() if k != "PYSHM_POOL"}
    attacker_env["PYSHM_NAMED_POOL"] = target
    attacker = [PYTHON, "-c"]
    if os.geteuid() == 0:
        attacker = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *attacker]
    plant = f"""
import glob, os, pyshm
pyshm.create('bait', 1)
for f in glob.glob('/dev/shm/pyshm-{target}*'):
    os.chmod(f, 0o666)
"""
    files = lambda: sorted(e for e in shm_entries() if e == f"pyshm-{target}" or e.startswith(f"pyshm-{target}-"))  # noqa: E731
    try:
        out = subprocess.run([*attacker, plant], capture_output=True, text=True, timeout=60, env=attacker_env)
        assert out.returncode == 0, out.stderr
        assert files(), "the attacker's pool is there"
        # The victim's program: its named array must not land in the attacker's pool.
        victim = """
import pyshm
try:
    pyshm.create('secret', 4)[:] = 42
except OSError as e:
    print('refused:', e)
"""
        said = run(victim, PYSHM_NAMED_POOL=target)
        assert said.startswith("refused:"), said
        assert f"/dev/shm/pyshm-{target}" in said
        assert ("uid 65534" in said) if os.geteuid() == 0 else ("0666" in said), said
        # The attacker looks (its own pyshm refuses a 0666 pool too: it closes it up first).
        look = f"import glob, os, pyshm\nfor f in glob.glob('/dev/shm/pyshm-{target}*'): os.chmod(f, 0o600)\nprint(pyshm.list())"
        seen = subprocess.run([*attacker, look], capture_output=True, text=True, timeout=60, env=attacker_env)
        assert seen.returncode == 0, seen.stderr
        assert seen.stdout.strip() == "['bait']", "the attacker sees only its own names"
    finally:
        for f in files():
            os.unlink(f"/dev/shm/{f}")


def test_clean_leaves_another_users_files_alone_and_says_so():
    from pyshm import _native

    # A dead pool of the attacker's (uid 65534 as root; else ours, opened up to everyone).
    name = os.environ["PYSHM_NAMED_POOL"] + "dead"
    attacker = [PYTHON, "-c"]
    if os.geteuid() == 0:
        attacker = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *attacker]
    plant = f"""
import glob, os
from pyshm._native import NativePool
p = NativePool.create({name!r}, persistent=False)
a = p.empty(100_000, "u1", "C", True)
for f in glob.glob('/dev/shm/pyshm-{name}*'):
    os.chmod(f, 0o666)
os._exit(0)  # dead, without leaving the pool
"""
    env = {k: v for k, v in os.environ.items() if k != "PYSHM_POOL"}
    files = lambda: sorted(e for e in shm_entries() if e == f"pyshm-{name}" or e.startswith(f"pyshm-{name}-"))  # noqa: E731
    try:
        out = subprocess.run([*attacker, plant], capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        planted = files()
        assert len(planted) == 2, planted
        removed, skipped = _native.clean_pools()
        assert files() == planted, "another user's files were removed"
        assert name not in removed
        why = {s.file: s for s in skipped}
        for f in planted:
            assert why[f].pool == name
            if os.geteuid() == 0:
                assert why[f].owner_uid == 65534 and "uid 65534" in why[f].reason
            else:
                assert why[f].owner_uid is None and "0666" in why[f].reason
        assert _native.clean_dead_pools() is not None and files() == planted
    finally:
        for f in files():
            os.unlink(f"/dev/shm/{f}")


def test_list_entries_are_names_with_dtype_and_shape_and_a_full_table_has_its_own_error():
    pyshm.create("typed", (2, 5), np.uint8)
    try:
        (entry,) = [n for n in pyshm.list() if n == "typed"]
        assert isinstance(entry, str) and entry.dtype == np.uint8 and entry.shape == (2, 5)
        assert pyshm.attach(entry).shape == (2, 5)  # usable as the name
        made = []
        with pytest.raises(pyshm.NameTableFullError, match="name table is full"):
            for i in range(100_000):
                pyshm.create(f"filler{i}", 1)
                made.append(f"filler{i}")
        assert isinstance(pyshm.NameTableFullError("x"), RuntimeError) and len(made) < 100_000
    finally:
        for name in ["typed"] + [n for n in pyshm.list() if n.startswith("filler")]:
            pyshm.delete(name)
