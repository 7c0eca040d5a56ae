"""A baseline for tests that count a pool's arrays: taken once what earlier tests set going
in the background is over."""

from __future__ import annotations

import gc
import threading
import time


def quiet_arrays(pool, timeout: float = 60.0) -> int:
    """The pool's array count once no earlier executor's reclaim thread runs (a broken pool's
    reclaim frees what its workers held after the test that broke it ended), bounded by
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gc.collect()
        if not any(t.name == "pyshm-reclaim" and t.is_alive() for t in threading.enumerate()):
            break
        time.sleep(0.02)
    gc.collect()
    return pool.stats().arrays
