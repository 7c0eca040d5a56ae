"""pyshm's types are checked, not only named: ``mypy.stubtest`` compares the stubs and annotations
with the imported module (allowlist: stubtest_allowlist.txt, and stubtest_allowlist_mypy1.txt for
the older mypy of Python 3.9; each entry with its reason), and
``mypy --strict`` checks that the constructors type as numpy's own do (typing_cases.py).

mypy is a test requirement (``cargo xtask test`` installs it): without it these tests fail."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "mypy.ini")


def mypy(tmp_path, *args: str) -> str:
    """Runs ``python -m <args>`` (a mypy entry point) from an empty directory, so that the
    installed pyshm is the one checked, with a cache of its own; fails with mypy's output."""
    assert importlib.util.find_spec("mypy") is not None, "mypy is a test requirement: pip install mypy"
    r = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MYPY_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout}{r.stderr}"
    return r.stdout


def test_stubtest_finds_the_stubs_and_annotations_true_to_the_module(tmp_path):
    allowlists = ["--allowlist", os.path.join(HERE, "stubtest_allowlist.txt")]
    from mypy.version import __version__ as mypy_version

    if int(mypy_version.split(".")[0]) < 2:  # Python 3.9's mypy: see the file for why
        allowlists += ["--allowlist", os.path.join(HERE, "stubtest_allowlist_mypy1.txt"), "--ignore-unused-allowlist"]
    mypy(tmp_path, "mypy.stubtest", "pyshm", "--mypy-config-file", CONFIG, *allowlists)


def test_constructors_type_as_numpys_under_mypy_strict(tmp_path):
    out = mypy(tmp_path, "mypy", "--config-file", CONFIG, "--strict", os.path.join(HERE, "typing_cases.py"))
    assert "Success" in out, out


def test_what_the_types_accept_works_at_runtime():
    """Shapes are ``SupportsIndex`` or sequences of it, and ``dtype=None`` is float64 (the
    overloads' first case), for every constructor that takes a shape, as numpy."""
    import numpy as np

    import pyshm

    for shape, want in [(np.int64(3), (3,)), ((np.int64(2), 3), (2, 3)), ([np.uint8(2), np.intp(1)], (2, 1)),
                        ((), ()), (np.array([2, 3]), (2, 3))]:  # fmt: skip
        for make in (pyshm.empty, pyshm.zeros, pyshm.ones, lambda s, dtype: pyshm.full(s, 1.0, dtype)):
            a = make(shape, dtype=None)
            assert a.shape == want and a.dtype == np.float64 and pyshm.is_shared(a)
            assert np.zeros(shape, dtype=None).shape == want  # what numpy does with the same
        with pyshm.Pool() as pool:
            assert pool.zeros(shape, np.int32).shape == want
    a = pyshm.create("test_typing_shape", (np.int64(2), 3), None)
    try:
        assert a.shape == (2, 3) and a.dtype == np.float64
    finally:
        pyshm.delete("test_typing_shape")
    for bad in (3.0, "3", (2.0,), None):
        try:
            pyshm.zeros(bad)
        except TypeError as e:
            assert "shape must be an int or a sequence of ints" in str(e)
        else:
            raise AssertionError(f"the shape {bad!r} was accepted")
