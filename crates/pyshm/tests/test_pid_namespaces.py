"""A process in another pid namespace (another container sharing /dev/shm) is refused by a
pool with PoolPermissionError and leaves it alone (issue 13 item 7). Needs root, as CI runs."""

from __future__ import annotations

import subprocess
import sys

from multiprocessing.reduction import ForkingPickler

import numpy as np

import pyshm

CHILD = """
import sys, pyshm
from multiprocessing.reduction import ForkingPickler
try:
    ForkingPickler.loads(bytes.fromhex(sys.argv[1]))
except pyshm.PoolPermissionError as e:
    sys.exit(0 if "another pid namespace" in str(e) else 3)
sys.exit(4)
"""


def test_a_process_of_another_pid_namespace_gets_pool_permission_error_and_takes_nothing():
    with pyshm.Pool() as pool:
        a = pool.full(3, 2.0)
        message = ForkingPickler.dumps(a)
        run = subprocess.run(
            ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", CHILD, message.hex()],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        assert pool.stats().processes == 1 and pool.collect().dead_processes == 0
        assert np.shares_memory(ForkingPickler.loads(message), a), "the handle's token is still there"
