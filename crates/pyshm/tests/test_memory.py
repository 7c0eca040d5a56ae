"""What the pool costs /dev/shm: ``stats().held`` and ``trim()``."""

import os

import numpy as np
import pytest

import pyshm


def test_held_counts_pages_and_trim_gives_freed_memory_back():
    with pyshm.Pool() as pool:
        fresh = pool.stats().held
        assert 0 < fresh <= 4 << 20, "a fresh pool holds its metadata only"
        keep = pool.full(1 << 20, 7, dtype=np.uint8)
        arrays = [pool.zeros(1 << 20, dtype=np.uint8) for _ in range(8)]
        full = pool.stats().held
        assert full >= fresh + (9 << 20)
        del arrays
        assert pool.stats().held == full, "freed memory stays for reuse"
        assert pool.trim() >= 8 << 20
        assert pool.stats().held <= full - (8 << 20)
        assert (keep == 7).all(), "a live array keeps its data"
        again = pool.zeros(1 << 20, dtype=np.uint8)
        assert (again == 0).all()
        pool.check()
        del keep, again


def test_module_level_trim_uses_the_default_pool():
    a = pyshm.zeros(1 << 20, dtype=np.uint8)
    del a
    assert pyshm.trim() >= 0
    assert pyshm.stats().held > 0


def test_freed_memory_beyond_keep_goes_back_without_a_call():
    keep = 8 << 20
    with pyshm.Pool(keep=keep) as pool:
        arrays = [pool.full(4 << 20, 3, dtype=np.uint8) for _ in range(6)]
        s = pool.stats()
        assert (s.live, s.keep) == (24 << 20, keep)
        assert 1.0 <= s.overhead < 1.2, s
        del arrays
        s = pool.stats()
        # warm counts the metadata segment's free pages too (the freed headers' page): the
        # policy keeps the data within keep, the headers add a page or two.
        assert s.live == 0 and s.warm <= keep + (64 << 10), s
        assert s.held <= keep + (4 << 20), s
        pool.trim()
        s = pool.stats()
        assert s.warm == 0 and s.held <= 4 << 20, s
        pool.check()


def test_keep_is_configurable_and_checked(tmp_path):
    import subprocess
    import sys

    with pytest.raises(ValueError, match="keep"):
        pyshm.Pool(keep=-1)
    with pytest.raises(ValueError, match="keep"):
        pyshm.configure(keep=-1)
    with pyshm.Pool(keep=0) as pool:
        a = pool.full(1 << 20, 1, dtype=np.uint8)
        del a
        # Every data page goes back; the freed header's page in the metadata segment (kept for
        # the next header, and counted as warm) goes back with trim.
        assert pool.stats().warm <= 64 << 10, "keep=0: every free gives its data pages back"
        pool.trim()
        assert pool.stats().warm == 0
    # PYSHM_KEEP sets the default pool's (0 allowed).
    code = "import pyshm; print(pyshm.stats().keep)"
    env = {**os.environ, "PYSHM_KEEP": "3M"}
    env.pop("PYSHM_POOL", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == 3 << 20
