"""numpy-style constructors, dtypes, and handles within one process."""

from __future__ import annotations

import numpy as np
import pytest

import pyshm

ALL_DTYPES = [
    "?", "i1", "u1", "<i2", ">i2", "<u2", "<i4", "<u4", "<i8", ">u8", "<f2", "<f4", ">f8", "g",
    "<c8", "<c16", "G", "<M8[ns]", "<M8[D]", "<m8[s]", "|S7", "<U5", "|V3",
    "<M8", ">m8", [("t", "<M8"), ("d", "<m8", (2,))],  # datetime64/timedelta64 with numpy's generic unit
    [("x", "<f8"), ("n", "<i4")],
    np.dtype([("a", "<i2"), ("b", "<f8")], align=True),
    [("pos", "<f4", (3,)), ("name", "|S4"), ("inner", [("u", "<u2"), ("t", "<M8[s]")])],
    # Structured layouts the list form loses: padding, titles, nesting with alignment, unicode
    # and quote characters in names, subarrays of structs.
    np.dtype({"names": ["a", "b"], "formats": ["<i2", ">f8"], "offsets": [0, 8], "itemsize": 24}),
    np.dtype({"names": ["x", "y"], "formats": ["<f4", "<u1"], "titles": ["the x", None]}),
    np.dtype([("h", "<u1"), ("s", np.dtype([("c", "<u1"), ("d", "<f8")], align=True))], align=True),
    np.dtype([("naïve \"q\" 'x'", "<i4"), ("ünï", "<U2", (2, 2))]),
    np.dtype([("grid", [("p", "<f2"), ("q", "|b1")], (2, 3)), ("m", "<m8[ms]")]),
]  # fmt: skip


@pytest.mark.parametrize("dt", [d for d in ALL_DTYPES if np.dtype(d).names], ids=str)
def test_structured_dtypes_keep_fields_offsets_titles_and_alignment(dt):
    dt = np.dtype(dt)
    a = pyshm.zeros(3, dtype=dt)
    for b in (pyshm.attach(pyshm.handle(a)), pyshm.attach(pyshm.handle(a))):  # built, then cached
        assert b.dtype == dt and b.dtype.itemsize == dt.itemsize
        assert b.dtype.fields == dt.fields and b.dtype.names == dt.names
        assert b.dtype.isalignedstruct == dt.isalignedstruct


def test_a_record_dtype_with_many_fields_still_fits():
    # Before the StructLayout grammar a structured dtype was kept as repr(dtype.descr), about 16
    # bytes a field, under the 4000-byte limit: 150 float fields (2440 bytes) were shareable.
    # The grammar spends about 42 bytes a field, so the same dtype is now refused.
    dt = np.dtype([(f"f{i}", "<f8") for i in range(150)])
    assert len(repr(dt.descr)) < 4000
    a = pyshm.zeros(3, dtype=dt)
    assert pyshm.attach(pyshm.handle(a)).dtype == dt


def test_renaming_a_structured_dtypes_fields_is_seen_by_receivers():
    # A structured dtype object is mutable (numpy lets `dtype.names` be reassigned), yet
    # dtypes.rs caches its description by the object's identity: arrays made after the rename
    # travel under the old field names.
    dt = np.dtype([("a", "<f8"), ("b", "<i4")])
    pyshm.zeros(2, dtype=dt)
    dt.names = ("p", "q")
    y = pyshm.zeros(2, dtype=dt)
    assert y.dtype.names == ("p", "q")
    assert pyshm.attach(pyshm.handle(y)).dtype.names == ("p", "q")


def test_a_title_that_is_not_a_str_is_refused():
    dt = np.dtype({"names": ["x"], "formats": ["<f4"], "titles": [7]})
    with pytest.raises(TypeError, match="title"):
        pyshm.empty(3, dtype=dt)


@pytest.mark.parametrize("dt", ALL_DTYPES, ids=str)
def test_every_dtype_round_trips_through_a_handle(dt):
    dt = np.dtype(dt)
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=6 * 4 * dt.itemsize, dtype=np.uint8)
    a = pyshm.empty((6, 4), dtype=dt)
    a.view(np.uint8).reshape(-1)[:] = raw
    b = pyshm.attach(pyshm.handle(a))
    assert b.dtype == dt and b.dtype.str == dt.str and b.dtype.descr == dt.descr
    assert b.shape == (6, 4) and np.shares_memory(a, b)
    assert bytes(b.view(np.uint8).reshape(-1)) == bytes(raw)


def test_generic_datetime_units_are_kept_as_numpy_keeps_them():
    from multiprocessing.reduction import ForkingPickler

    for plain in (np.array([1, -2, "NaT"], dtype="m8"), np.array(["NaT", "NaT"], dtype="M8")):
        a = pyshm.asarray(plain)
        assert a.dtype == plain.dtype and np.datetime_data(a.dtype) == ("generic", 1)
        b = ForkingPickler.loads(ForkingPickler.dumps(a))
        assert np.shares_memory(a, b) and b.dtype == plain.dtype
        assert np.array_equal(b, plain, equal_nan=True)
    assert pyshm.zeros(2, "M8").dtype == np.zeros(2, "M8").dtype


POINTER_DTYPES = ["O", [("x", "<f8"), ("o", "O")]] + (["T"] if hasattr(np, "dtypes") and hasattr(np.dtypes, "StringDType") else [])


@pytest.mark.parametrize("dt", POINTER_DTYPES, ids=str)
def test_dtypes_holding_pointers_are_refused_naming_the_dtype(dt):
    with pytest.raises(TypeError, match="dtype"):
        pyshm.empty(3, dtype=dt)


def test_constructors_match_numpy():
    assert np.array_equal(pyshm.zeros((2, 3)), np.zeros((2, 3)))
    assert np.array_equal(pyshm.ones(4, dtype=np.int16), np.ones(4, dtype=np.int16))
    assert pyshm.ones(4, dtype=np.int16).dtype == np.int16
    f = pyshm.full((2, 2), 7)
    assert f.dtype == np.full((2, 2), 7).dtype and (f == 7).all()
    assert pyshm.full(3, 1.5, dtype=np.float32).dtype == np.float32
    assert pyshm.empty(5).dtype == np.float64 and pyshm.empty(5).shape == (5,)
    assert pyshm.empty((0, 3)).shape == (0, 3)
    assert pyshm.empty(()).shape == ()
    assert pyshm.zeros(3, dtype=("f4", (2,))).shape == (3, 2), "a subarray dtype extends the shape, as in numpy"
    for a in (pyshm.empty(3), pyshm.zeros(3), pyshm.ones(3), pyshm.full(3, 1)):
        assert type(a) is np.ndarray and a.flags.writeable and pyshm.is_shared(a)


def test_order_and_like_variants():
    f = pyshm.empty((3, 4), order="F")
    assert f.flags.f_contiguous and not f.flags.c_contiguous
    src = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    for fn in (pyshm.empty_like, pyshm.zeros_like, pyshm.ones_like):
        a = fn(src)
        assert a.shape == (3, 4) and a.dtype == src.dtype and a.flags.f_contiguous and pyshm.is_shared(a)
    assert pyshm.zeros_like(src, order="C").flags.c_contiguous
    assert pyshm.empty_like(src, dtype=np.int8, shape=(5,)).shape == (5,)
    assert (pyshm.full_like(src, 9) == 9).all()
    assert (pyshm.zeros_like([[1, 2], [3, 4]]) == 0).all()
    assert pyshm.empty(3, like=np.empty(0)).shape == (3,)
    with pytest.raises(TypeError, match="like"):
        pyshm.empty(3, like=[1])
    with pytest.raises(ValueError, match="order"):
        pyshm.empty(3, order="X")
    with pytest.raises(ValueError, match="negative"):
        pyshm.empty((2, -1))
    with pytest.raises(TypeError, match="shape"):
        pyshm.empty("abc")


def test_asarray_copies_only_what_is_not_pooled():
    x = pyshm.asarray([[1, 2], [3, 4]])
    assert pyshm.is_shared(x) and x.tolist() == [[1, 2], [3, 4]]
    assert pyshm.asarray(x) is x, "no copy for a pooled array"
    v = x[:, 1]
    assert pyshm.asarray(v) is v, "views are pooled too"
    y = pyshm.asarray(x, dtype=np.float32)
    assert y.dtype == np.float32 and not np.shares_memory(x, y)
    c = pyshm.copy(x)
    assert pyshm.is_shared(c) and not np.shares_memory(c, x) and (c == x).all()
    plain = np.arange(5)
    assert not pyshm.is_shared(plain) and pyshm.is_shared(pyshm.asarray(plain))
    assert not pyshm.is_shared(x + 1), "results of arithmetic are ordinary arrays"
    assert not pyshm.is_shared([1, 2]) and not pyshm.is_shared(None)


def test_views_keep_the_block_and_freeing_happens_with_the_last_view():
    before = pyshm.stats().used
    a = pyshm.empty(10_000)
    v = a[::3]
    del a
    assert pyshm.stats().used > before, "a view keeps the array"
    v[:] = 1
    del v
    assert pyshm.stats().used == before


def test_handles_name_views_with_their_own_geometry_and_dtype():
    a = pyshm.empty((6, 8))
    a[:] = np.arange(48).reshape(6, 8)
    for view in (a[1:5, ::-2], a.T, a[::2, 3], a[2, 4:5], a.view(np.int32)[:, 3:7], a.view(np.uint8)[5, -3:]):
        b = pyshm.attach(pyshm.handle(view))
        assert b.shape == view.shape and b.strides == view.strides and b.dtype == view.dtype
        assert np.shares_memory(a, b) and bytes(b.tobytes()) == bytes(view.tobytes())
    h = pyshm.handle(a[2:4])
    assert pyshm.attach(h) is not None and pyshm.attach(h).shape == (2, 8), "a handle attaches again while alive"
    with pytest.raises(ValueError, match="pool"):
        pyshm.handle(np.zeros(3))


def test_a_handle_attached_after_its_array_was_freed_is_stale():
    a = pyshm.full(100, 5.0)
    h = pyshm.handle(a)
    b = pyshm.attach(h)  # claims the token
    del a, b
    with pytest.raises(pyshm.StaleHandleError):
        pyshm.attach(h)
    assert issubclass(pyshm.StaleHandleError, ValueError)
    c = pyshm.full(100, 6.0)  # may reuse the block: the handle must not reach it
    with pytest.raises(pyshm.StaleHandleError):
        pyshm.attach(h)
    assert (c == 6.0).all()


def test_many_threads_allocate_at_once():
    import threading

    errors = []

    def work(k):
        try:
            for i in range(300):
                a = pyshm.full(64 + k, float(i))
                b = pyshm.attach(pyshm.handle(a))
                assert (b == i).all()
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_configure_after_first_use_refuses_sizes_but_changes_wait():
    pyshm.empty(1)
    with pytest.raises(RuntimeError, match="exists already"):
        pyshm.configure(size=1 << 20)
    pyshm.configure(wait=0.5)
    assert pyshm.default_pool().wait == 0.5
    pyshm.configure(wait=0)
    with pytest.raises(ValueError):
        pyshm.configure(wait=-1)


def test_stats_count_arrays_and_bytes():
    before = pyshm.stats()
    a, b = pyshm.empty(1000), pyshm.empty(10)
    s = pyshm.stats()
    assert s.arrays == before.arrays + 2 and s.used >= before.used + 8000
    assert s.largest_free <= s.free <= s.capacity
    assert s.segments >= 2 and s.processes >= 1
    del a, b
    after = pyshm.stats()
    assert (after.arrays, after.used) == (before.arrays, before.used)


def test_a_small_arrays_block_is_kept_for_the_next_one_and_counted_as_reserved():
    with pyshm.Pool() as pool:
        before = pool.stats()
        a = pool.empty(8)  # 64 bytes after a header of 192: one block of 256 bytes
        assert pool.stats().reserved == before.reserved
        del a
        s = pool.stats()
        assert (s.arrays, s.used) == (before.arrays, before.used)
        assert s.reserved == before.reserved + 256, "kept (renewed) for this process's next array"
        b = pool.zeros(8)
        assert pool.stats().reserved == before.reserved, "the next array of that size takes it"
        assert not b.any()
        del b


def test_numpy_details_unsized_strings_and_order_none():
    for code in ("S", "U"):
        assert pyshm.empty(3, dtype=code).dtype == np.empty(3, dtype=code).dtype
    assert pyshm.empty(3, order=None).flags.c_contiguous


def test_loky_gets_numpys_own_reduction_for_unpooled_arrays():
    import pickle

    from pyshm import _pickle

    plain = np.arange(3)
    assert _pickle._reduce_for_loky(plain)[0] is plain.__reduce_ex__(pickle.HIGHEST_PROTOCOL)[0]
    assert _pickle._reduce_for_transfer(plain)[0] is plain.__reduce_ex__(pickle.DEFAULT_PROTOCOL)[0]


def test_renaming_the_fields_of_an_attached_arrays_dtype_does_not_rename_later_attaches():
    dt = np.dtype([("a", "<f8"), ("b", "<i4")])
    x = pyshm.zeros(2, dtype=dt)
    first = pyshm.attach(pyshm.handle(x))
    first.dtype.names = ("p", "q")
    assert pyshm.attach(pyshm.handle(x)).dtype.names == ("a", "b")


def test_deeply_nested_structured_dtypes_travel():
    dt = np.dtype([("leaf", "<f8")])
    for depth in range(40):
        dt = np.dtype([(f"level{depth}", dt), ("pad", "u1")])
    a = pyshm.zeros(2, dtype=dt)
    assert pyshm.attach(pyshm.handle(a)).dtype == dt


def test_a_dtype_nested_too_deep_is_refused_naming_the_real_limit():
    # The limit is 64 levels (shm-ndarray's MAX_DEPTH); the error says 16, the old limit.
    dt = np.dtype("<f8")
    for _ in range(70):
        dt = np.dtype([("f", dt)])
    with pytest.raises(TypeError) as info:
        pyshm.zeros(2, dtype=dt)
    assert "deeper than 64 levels" in str(info.value), str(info.value)[-80:]
