"""pyshm.by_handle: pickles as a handle by any pickler, unpickles to the pooled array itself
(still marked, so a relay sends it on as a handle)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import cloudpickle
import numpy as np
import pytest

import pyshm
from pyshm import _by_handle

from engine_workers import pool_of


def test_pickles_small_and_unpickles_to_the_same_memory():
    a = pyshm.zeros(100_000)
    for dumps in (pickle.dumps, cloudpickle.dumps, lambda o: pickle.dumps(o, protocol=5)):
        data = dumps(pyshm.by_handle(a))
        assert len(data) < 400
        b = pickle.loads(data)
        assert type(b) is pyshm.ByHandle and b.flags.writeable
        b[1] += 1
    assert a[1] == 3


def test_is_the_array_itself_in_this_process_and_ufuncs_give_plain_arrays():
    a = pyshm.asarray(np.arange(10.0))
    w = pyshm.by_handle(a)
    w[0] = 5
    assert a[0] == 5 and isinstance(w, np.ndarray)
    assert type(w + 1) is np.ndarray and type(np.sum(w)) is np.float64
    assert type(pickle.loads(pickle.dumps(w[2:5]))) is pyshm.ByHandle


def test_a_read_only_view_stays_read_only():
    a = pyshm.zeros(10)
    v = a[:]
    v.flags.writeable = False
    assert not pickle.loads(pickle.dumps(pyshm.by_handle(v))).flags.writeable


def test_refuses_an_array_outside_the_pool():
    with pytest.raises(ValueError, match="pyshm.asarray"):
        pyshm.by_handle(np.zeros(3))


def test_another_host_gets_an_error_naming_the_pool_and_the_host():
    a = pyshm.zeros(10)
    data = pickle.dumps(pyshm.by_handle(a))
    host, boot = _by_handle.host_identity()
    forged = data.replace(boot.encode(), b"0" * len(boot))
    with pytest.raises(pyshm.PoolNotFoundError, match=f"pool '{pool_of(a)}' on host '{host}'"):
        pickle.loads(forged)
    pickle.loads(data)  # the token of the pickle that was loaded is claimed


def test_a_relay_sends_it_on_as_a_handle():
    a = pyshm.zeros(100_000)
    relayed = pickle.dumps(pickle.loads(pickle.dumps(pyshm.by_handle(a))))
    assert len(relayed) < 400
    pickle.loads(relayed)[0] = 4
    assert a[0] == 4


def test_a_pool_that_is_not_reachable_gives_the_same_error():
    h = pyshm._native.pooled_handle(pyshm.zeros(10), False)  # no token: nothing left pending
    host, boot = _by_handle.host_identity()
    with pytest.raises(pyshm.PoolNotFoundError, match="not reachable here"):
        _by_handle._rebuild(host, boot, "pyshm_gone_for_test", h.__reduce__()[1][1])


def test_another_process_writes_into_the_senders_array(tmp_path):
    a = pyshm.zeros(1000)
    path = tmp_path / "arg.pickle"
    path.write_bytes(pickle.dumps(pyshm.by_handle(a)))
    code = "import pickle, sys; b = pickle.load(open(sys.argv[1], 'rb')); b[:] = 7"
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert (a == 7).all()


def test_a_result_comes_back_by_handle(tmp_path):
    path = tmp_path / "result.pickle"
    code = (
        "import pickle, sys, pyshm; r = pyshm.full(1000, 3.0); "
        "open(sys.argv[1], 'wb').write(pickle.dumps(pyshm.by_handle(r))); "
        "print(pyshm.default_pool().name)"
    )
    mine = pool_of(pyshm.zeros(1))
    env = dict(os.environ, PYSHM_POOL=mine)  # the child's results are born in our pool
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    r = pickle.loads(path.read_bytes())
    assert pyshm.is_shared(r) and (r == 3).all() and pool_of(r) == out.stdout.strip() == mine


def test_a_payload_records_its_by_handle_arrays_and_gives_their_tokens_back():
    # pyshm's executor, map and aio send payloads: a by-handle array inside one is a handle of
    # the payload, given back when its pickle fails or its receiver dies (found in review).
    from pyshm import _transfer

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("not this one")

    a = pyshm.zeros(10)
    before = pyshm.default_pool().stats().handles_in_flight
    with pytest.raises(RuntimeError, match="not this one"):
        _transfer.Payload([pyshm.by_handle(a), Unpicklable()]).freeze()
    assert pyshm.default_pool().stats().handles_in_flight == before, "the failed payload's token"
    p = _transfer.Payload({"x": pyshm.by_handle(a)}).freeze()
    assert len(p.handles) == 1
    p.release()  # the receiver died before loading it
    assert pyshm.default_pool().stats().handles_in_flight == before
