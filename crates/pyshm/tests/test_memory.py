"""What the pool costs /dev/shm: ``stats().held`` and ``trim()``."""

import numpy as np

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
