"""Shared fixtures: each test session uses its own named-array pool, and no test may leave
anything new in /dev/shm (checked once at the end; `cargo xtask test` checks again)."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

# Named arrays of this session live in their own pool, never in a user's.
os.environ.setdefault("PYSHM_NAMED_POOL", f"test{uuid.uuid4().hex[:12]}")
sys.path.insert(0, os.path.dirname(__file__))  # `workers` for spawned children

METHODS = ["fork", "spawn", "forkserver"]


def shm_entries() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if e.startswith("pyshm")}


@pytest.fixture(params=METHODS)
def ctx(request):
    import multiprocessing as mp

    return mp.get_context(request.param)
