//! numpy arrays over pool blocks: making them, reading their geometry, finding their owner.
//!
//! Invariants:
//! 1. Every pooled numpy array is an ordinary `numpy.ndarray` whose base chain ends at a
//!    [`Block`], this process's reference to the array ([`SharedArray`]). numpy keeps the chain
//!    alive as long as any view of the data is alive, so the block (and with it the mapping the
//!    data pointer points into) is released exactly when the last array or view of it goes.
//! 2. An array is made over a block only with a geometry checked to lie inside the block's
//!    data: the pool's own geometry, or a view checked by [`view_inside`] (shm-ndarray's one
//!    view check, `shm_ndarray::view_fits`).
//! 3. A base chain is followed for a few hops only ([`owner_of`]): a longer chain is treated
//!    as not pooled, so no input recurses deeply.

use std::sync::Arc;

use numpy::npyffi::{
    npy_intp, NpyTypes, PyArrayObject, PyArray_Descr, NPY_ARRAY_OWNDATA, NPY_ARRAY_WRITEABLE, PY_ARRAY_API,
};
use numpy::PyArrayDescr;
use pyo3::prelude::*;
use shm_ndarray::SharedArray;

use crate::{allocator, dtypes};

/// This process's reference to a pooled array: the `base` of every numpy array over its data.
/// Released when numpy drops the last array or view that uses it.
#[pyclass(frozen, module = "pyshm._native")]
pub(crate) struct Block {
    /// This process's reference to the array.
    pub(crate) array: SharedArray,
    /// The pool's name.
    pub(crate) pool_name: String,
    /// The dtype object the array was made with (views with another dtype travel differently).
    pub(crate) descr: Py<PyArrayDescr>,
}

#[pymethods]
impl Block {
    /// The name of the pool the array lives in.
    #[getter]
    /// The name of the pool the array lives in.
    pub(crate) fn pool_name(&self) -> &str {
        &self.pool_name
    }

    /// Bytes of the array's data.
    #[getter]
    fn nbytes(&self) -> u64 {
        self.array.base_len()
    }

    fn __repr__(&self) -> String {
        format!(
            "<pyshm block of {} bytes in pool {:?}, {} {:?}>",
            self.array.base_len(),
            self.pool_name,
            self.array.dtype().descr(),
            self.array.shape()
        )
    }
}

/// Whether a view (`offset` bytes from the data start, `shape`, byte `strides`, items of
/// `itemsize` bytes) lies inside `len` bytes (invariant 1): shm-ndarray's one view check, after
/// refusing what numpy's signed integers can say and a handle cannot (negative sizes or offset,
/// more than [`shm_ndarray::MAX_DIMS`] dimensions).
pub(crate) fn view_inside(offset: i64, shape: &[i64], strides: &[i64], itemsize: u64, len: u64) -> bool {
    let (Ok(offset), Ok(shape)) =
        (u64::try_from(offset), shape.iter().map(|n| u64::try_from(*n)).collect::<Result<Vec<_>, _>>())
    else {
        return false;
    };
    shape.len() <= shm_ndarray::MAX_DIMS && shm_ndarray::view_fits(offset, &shape, strides, itemsize, len)
}

/// A numpy array over `block`'s data: `data_offset` bytes from the data start, with this
/// shape and these byte strides, of dtype `descr`. The caller has checked the geometry
/// (invariant 2).
///
/// The block becomes the array's base, so numpy keeps it (and the mapping `data` points into)
/// alive as long as any view of the array (invariant 1).
pub(crate) fn new_ndarray<'py>(
    block: Bound<'py, Block>,
    descr: &Bound<'py, PyArrayDescr>,
    data_offset: u64,
    shape: &[u64],
    strides: &[i64],
) -> PyResult<Bound<'py, PyAny>> {
    let py = block.py();
    let mut dims: Vec<npy_intp> = shape.iter().map(|n| *n as npy_intp).collect();
    let mut steps: Vec<npy_intp> = strides.iter().map(|s| *s as npy_intp).collect();
    let data = block.get().array.base_ptr().as_ptr().wrapping_add(data_offset as usize);
    new_ndarray_raw(py, block.into_any(), descr, &mut dims, &mut steps, data)
}

fn new_ndarray_raw<'py>(
    py: Python<'py>,
    base: Bound<'py, PyAny>,
    descr: &Bound<'py, PyArrayDescr>,
    dims: &mut [npy_intp],
    strides: &mut [npy_intp],
    data: *mut u8,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: with the GIL held, numpy's API table (loaded on first use) holds the type object.
    let subtype = unsafe { numpy::npyffi::get_type_object(py, NpyTypes::PyArray_Type) };
    // `PyArray_NewFromDescr` steals a reference to the descr: give it a new one.
    let descr_ptr = descr.clone().into_ptr().cast::<PyArray_Descr>();
    // `data` points into the block's mapping, which lives as long as the block (its
    // `SharedArray` holds the pool, which holds the mapping); the block becomes the array's base
    // below, so numpy keeps it alive as long as any view of the array.
    // SAFETY: `dims` and `strides` hold `nd` entries each (numpy copies them); `data` stays
    // valid as said above, and the caller checked the geometry is inside the block (invariant 1).
    let arr = unsafe {
        PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            subtype,
            descr_ptr,
            dims.len() as std::os::raw::c_int,
            dims.as_mut_ptr(),
            strides.as_mut_ptr(),
            data.cast(),
            NPY_ARRAY_WRITEABLE,
            std::ptr::null_mut(),
        )
    };
    if arr.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: a new, non-null reference that we own.
    let arr = unsafe { Bound::from_owned_ptr(py, arr) };
    // SAFETY: `arr` is an ndarray without a base; `PyArray_SetBaseObject` steals the reference
    // `into_ptr` gives it, also on failure.
    if unsafe { PY_ARRAY_API.PyArray_SetBaseObject(py, arr.as_ptr().cast::<PyArrayObject>(), base.into_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    Ok(arr)
}

/// The geometry of a numpy array: data pointer, shape, byte strides, dtype object, base, flags.
pub(crate) struct Geometry {
    /// The data pointer.
    pub(crate) data: usize,
    /// Extents.
    pub(crate) shape: Vec<i128>,
    /// Byte strides.
    pub(crate) strides: Vec<i128>,
    /// The dtype object (borrowed from the array).
    pub(crate) descr: *mut pyo3::ffi::PyObject,
    /// The base object (borrowed from the array), or null.
    pub(crate) base: *mut pyo3::ffi::PyObject,
    /// numpy's flags.
    pub(crate) flags: std::os::raw::c_int,
}

pub(crate) fn geometry(arr: &Bound<'_, PyAny>) -> Option<Geometry> {
    let py = arr.py();
    // SAFETY: `PyArray_Check` accepts any live object pointer (`arr` holds one).
    if unsafe { numpy::npyffi::PyArray_Check(py, arr.as_ptr()) } == 0 {
        return None;
    }
    // SAFETY: an ndarray (or subclass) is a `PyArrayObject`, alive while `arr` is.
    let f = unsafe { &(*arr.as_ptr().cast::<PyArrayObject>()).fields };
    let nd = f.nd as usize;
    let (dims, steps): (&[npy_intp], &[npy_intp]) = if nd == 0 {
        (&[], &[]) // the pointers may be null then
    } else {
        // SAFETY: an ndarray's `dimensions` holds `nd` entries, alive while `arr` is.
        let dims = unsafe { std::slice::from_raw_parts(f.dimensions, nd) };
        // SAFETY: as are its `strides`.
        let steps = unsafe { std::slice::from_raw_parts(f.strides, nd) };
        (dims, steps)
    };
    Some(Geometry {
        data: f.data as usize,
        shape: dims.iter().map(|n| i128::from(*n as i64)).collect(),
        strides: steps.iter().map(|s| i128::from(*s as i64)).collect(),
        descr: f.descr.cast(),
        base: f.base,
        flags: f.flags,
    })
}

/// What holds a pooled array's memory in this process.
pub(crate) enum Owner<'py> {
    /// An array the pool made (`empty`, `attach`, `lookup`): its base chain ends at its block.
    Block(Bound<'py, Block>),
    /// An array numpy allocated with a pyshm handler: its base chain ends at an array that owns
    /// its data, whose pointer is in the handler's map (`allocator`, invariant 1).
    Allocation(Arc<allocator::Allocation>),
}

impl Owner<'_> {
    /// This process's reference to the whole array.
    pub(crate) fn array(&self) -> &SharedArray {
        match self {
            Owner::Block(b) => &b.get().array,
            Owner::Allocation(a) => &a.array,
        }
    }

    /// The name of the pool the array lives in.
    pub(crate) fn pool_name(&self) -> &str {
        match self {
            Owner::Block(b) => &b.get().pool_name,
            Owner::Allocation(a) => &a.pool_name,
        }
    }

    /// The dtype object of the whole array (`uint8` for a handler's block).
    pub(crate) fn descr<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self {
            Owner::Block(b) => b.get().descr.bind(py).clone().into_any(),
            Owner::Allocation(_) => numpy::dtype::<u8>(py).into_any(),
        }
    }
}

/// What holds `arr`'s memory, if `arr` is a pooled array or a view of one: the end of its base
/// chain, which numpy keeps short (the block, or a pooled array whose base is the block; for a
/// handler's array, the array that owns the data, or a view whose base is that array).
pub(crate) fn owner_of<'py>(arr: &Bound<'py, PyAny>, g: &Geometry) -> Option<Owner<'py>> {
    let py = arr.py();
    let (mut base_ptr, mut data, mut flags) = (g.base, g.data, g.flags);
    // numpy collapses a view's base to the array that owns the memory, or to an array that
    // does not own it but is a base already (`a[1:].base is a`, whose base is the block); views
    // of other array types can chain further. A few hops cover every layout numpy makes; a
    // longer chain is not followed (it is treated as not pooled), so no input recurses deeply.
    for _ in 0..8 {
        if base_ptr.is_null() {
            // The array that owns the memory: numpy allocated it, maybe with a pyshm handler.
            if flags & NPY_ARRAY_OWNDATA == 0 {
                return None;
            }
            let allocation = allocator::lookup(data)?;
            // SAFETY: `descr` is `arr`'s live dtype object (`arr` holds it).
            let descr = unsafe { Bound::from_borrowed_ptr(py, g.descr) };
            // Python objects are pointers into this process: never shared, even in the pool
            // (the handler cannot know the dtype of what it allocates).
            return dtypes::shareable(&descr).then_some(Owner::Allocation(allocation));
        }
        // SAFETY: a live object: the array before it in the chain holds a reference to it, and
        // that array is held by `arr`'s chain, which we hold.
        let base = unsafe { Bound::from_borrowed_ptr(py, base_ptr) };
        match base.cast_into::<Block>() {
            Ok(b) => return Some(Owner::Block(b)),
            Err(e) => {
                let next = geometry(&e.into_inner())?;
                (base_ptr, data, flags) = (next.base, next.data, next.flags);
            }
        }
    }
    None
}

/// The block behind an array the pool made, if `arr` is one (or a view of one).
pub(crate) fn block_of<'py>(arr: &Bound<'py, PyAny>, g: &Geometry) -> Option<Bound<'py, Block>> {
    match owner_of(arr, g)? {
        Owner::Block(b) => Some(b),
        Owner::Allocation(_) => None,
    }
}

/// Whether `arr` is a numpy array over pool memory.
#[pyfunction]
pub(crate) fn is_pooled(arr: &Bound<'_, PyAny>) -> bool {
    geometry(arr).is_some_and(|g| owner_of(arr, &g).is_some())
}

/// The name of the pool `arr` lives in, or `None`.
#[pyfunction]
pub(crate) fn pool_name_of(arr: &Bound<'_, PyAny>) -> Option<String> {
    let g = geometry(arr)?;
    owner_of(arr, &g).map(|o| o.pool_name().to_owned())
}

/// Fills a new array's data with zeros.
pub(crate) fn fill_zero(a: &SharedArray) {
    // SAFETY: the array was just created by this thread: nobody else can see it (no handle or
    // name exists yet), and its data block is `base_len` bytes long.
    unsafe { std::ptr::write_bytes(a.base_ptr().as_ptr(), 0, a.base_len() as usize) };
}
