"""The native module's classes: exceptions, handles, figures, the pool registry."""

from __future__ import annotations

import errno
import gc
import pickle

import numpy as np
import pytest

import pyshm
from pyshm import _native


def test_exceptions_subclass_the_nearest_builtin_and_pickle_as_themselves():
    assert issubclass(pyshm.StaleHandleError, pyshm.InvalidHandleError)
    assert issubclass(pyshm.InvalidHandleError, ValueError)
    assert issubclass(pyshm.PoolMemoryError, MemoryError)
    assert issubclass(pyshm.PoolNotFoundError, FileNotFoundError)
    assert issubclass(pyshm.PoolOSError, OSError)
    for cls in (pyshm.StaleHandleError, pyshm.InvalidHandleError, pyshm.PoolMemoryError, pyshm.PoolOSError):
        assert cls.__module__ == "pyshm"
        e = pickle.loads(pickle.dumps(cls("why")))
        assert type(e) is cls and str(e) == "why"


def test_a_missing_pool_carries_errno_enoent():
    with pytest.raises(pyshm.PoolNotFoundError) as e:
        pyshm.Pool.open("no_such_pool_for_pyshm_tests")
    assert e.value.errno == errno.ENOENT and "no_such_pool_for_pyshm_tests" in str(e.value)
    e2 = pickle.loads(pickle.dumps(e.value))
    assert type(e2) is pyshm.PoolNotFoundError and e2.errno == errno.ENOENT


def test_a_full_pool_is_a_pool_memory_error():
    with pyshm.Pool(size=1 << 20, max_size=1 << 20) as pool:
        with pytest.raises(pyshm.PoolMemoryError, match="out of memory"):
            pool.empty(4 << 20, dtype=np.uint8)


def test_handles_are_one_class_with_named_parts_that_pickle_and_compare():
    a = pyshm.zeros(16, dtype=np.uint8)
    h = pyshm.handle(a[2:10])
    assert type(h) is pyshm.Handle is _native.Handle and pyshm.Handle.__module__ == "pyshm"
    assert h.pool == pyshm.default_pool().name and isinstance(h.data, bytes) and h.retype is None
    h2 = pickle.loads(pickle.dumps(h))
    assert h2 == h and hash(h2) == hash(h) and h2 != pyshm.handle(a)
    assert np.shares_memory(pyshm.attach(h2), a)
    v = pyshm.handle(a.view(np.int32)[1:3])
    dt, offset, shape, strides = v.retype
    assert (dt, offset, shape, strides) == (np.dtype(np.int32), 4, (2,), (4,))
    v2 = pickle.loads(pickle.dumps(v))
    assert v2 == v and v2 != h
    assert np.array_equal(pyshm.attach(v2), a.view(np.int32)[1:3])
    assert "pyshm.Handle" in repr(h)
    with pytest.raises(ValueError):
        pyshm.Handle(h.pool, "not bytes")
    with pytest.raises(ValueError):
        pyshm.Handle(h.pool, h.data, ("not", "a", "view"))


def test_cancel_gives_back_an_unclaimed_handles_token_once():
    pool = pyshm.default_pool()
    gc.collect()
    before = pool.stats().arrays
    a = pyshm.zeros(1000)
    h = pyshm.handle(a)
    del a
    gc.collect()
    assert pool.stats().arrays == before + 1, "the handle's token keeps the array"
    _native.NativePool.find(h.pool).cancel(h)
    assert pool.stats().arrays == before
    with pytest.raises(pyshm.StaleHandleError):
        _native.NativePool.find(h.pool).cancel(h)
    with pytest.raises(pyshm.StaleHandleError):
        pyshm.attach(h)


def test_figures_are_read_only_named_values_that_pickle():
    s = pyshm.stats()
    assert isinstance(s, pyshm.PoolStats) and s.capacity >= s.free >= 0
    assert pickle.loads(pickle.dumps(s)) == s and repr(s).startswith("PoolStats(capacity=")
    with pytest.raises(AttributeError):
        s.used = 0  # type: ignore[misc]
    r = pyshm.collect()
    assert isinstance(r, pyshm.CollectReport) and pickle.loads(pickle.dumps(r)) == r
    assert r.dead_processes >= 0 and r.arrays_freed >= 0 and r.blocks_recovered >= 0
    infos = {p.name: p for p in _native.list_pools()}
    assert isinstance(infos[pyshm.default_pool().name], _native.PoolInfo)


def test_the_native_registry_has_one_pool_per_name_until_it_is_closed():
    with pyshm.Pool() as p:
        native = _native.NativePool.find(p.name)
        assert native is not None and _native.NativePool.open(p.name) is native
        assert pyshm.Pool.open(p.name)._native is native
        assert native in _native.NativePool.open_pools()
    assert _native.NativePool.find(p.name) is None


def test_a_retype_with_a_subarray_dtype_is_an_invalid_handle_error():
    # Every other malformed view raises InvalidHandleError (errors.rs invariant 2, guide's table).
    h = pyshm.handle(pyshm.zeros(4))
    with pytest.raises(pyshm.InvalidHandleError):
        pyshm.Handle(h.pool, h.data, (np.dtype(("<f8", (2,))), 0, (1,), (16,)))


def test_equal_handles_hash_equal():
    # Every byte of a handle is read (reserved ones must be zero), so equal handles have equal
    # bytes and hash alike (Python's hash contract; sets, dicts).
    h = pyshm.handle(pyshm.zeros(4))
    same = pyshm.Handle(h.pool, bytes(bytearray(h.data)))
    assert same == h and hash(same) == hash(h) and len({h, same}) == 1
    data = bytearray(h.data)
    data[60] ^= 0xFF
    with pytest.raises(pyshm.InvalidHandleError):
        pyshm.Handle(h.pool, bytes(data))


def test_a_cached_dtype_is_not_used_for_a_header_with_another_item_size():
    # numpy_dtype caches dtypes by description text only. A legacy description does not fix its
    # item size, so a header (written by a buggy or hostile process of the pool) may pair the
    # text of a cached dtype with another item size: the check made on a cache miss must hold
    # on a hit too, or numpy reads past the array's data.
    import ctypes

    dt = np.dtype([("x", "<f8")])
    text = b'{"itemsize":8,"fields":[{"name":"x","offset":0,"format":"<f8"}]}'
    legacy = b"[('x', '<f8')]".ljust(len(text))  # the same length, so the header's layout stays

    def rewrite(a, itemsize):
        # A small array's data follows its header in the same block: 128 fixed bytes (the item
        # size at +104), shape and strides, then the description.
        p = a.ctypes.data
        raw = ctypes.string_at(p - 512, 512)
        descr_at = p - 512 + raw.rindex(text)
        ctypes.memmove(descr_at, legacy, len(legacy))
        ctypes.c_uint64.from_address(descr_at - 128 - 16 * a.ndim + 104).value = itemsize

    a = pyshm.empty(4, dtype=dt)
    rewrite(a, 8)  # a consistent legacy header: its dtype gets cached
    h = pyshm.handle(a)
    del a
    gc.collect()
    assert pyshm.attach(h).dtype == dt

    c = pyshm.empty(64, dtype=dt)  # 512 bytes of data
    rewrite(c, 1)
    data = bytearray(pyshm.handle(c).data)
    data[64:72] = (512).to_bytes(8, "little")  # shape: 512 items of 1 byte, stride 1
    data[72:80] = (1).to_bytes(8, "little")
    crafted = pyshm.Handle(h.pool, bytes(data))
    del c
    gc.collect()
    with pytest.raises(pyshm.InvalidHandleError, match="item size"):
        d = pyshm.attach(crafted)
        print("reaches", (d.shape[0] - 1) * d.strides[0] + d.dtype.itemsize, "bytes of 512")
