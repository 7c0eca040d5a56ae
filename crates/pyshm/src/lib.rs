//! `pyshm._native`: the thin native layer of the pyshm Python package.
//!
//! Everything users call lives in the Python files beside this module; this module does only
//! what must be fast or must touch memory:
//!
//! - [`NativePool`] wraps a [`shm_ndarray::Pool`]: creating arrays, attaching handles, names,
//!   statistics, collection and leaving.
//! - Every pooled numpy array is an ordinary `numpy.ndarray` whose base chain ends at a
//!   [`Block`], the object that holds this process's reference to the array ([`SharedArray`]).
//!   numpy keeps the chain alive as long as any view of the data is alive, so the block is
//!   released exactly when the last array or view of it goes.
//! - [`pooled_handle`] turns a pooled array (or any view of one) into a handle: the pool's
//!   name, the handle's bytes, and for a view with another dtype than the array's, that view's
//!   geometry.
//! - [`allocator`] is numpy's data-memory handler backed by a pool: an array numpy allocated
//!   with it owns its data (no base), and its data pointer is a key of the handler's map, whose
//!   entry is a 1-D `uint8` array over the block. Such an array, and every view of it, travels
//!   as that array's handle plus the view's dtype and geometry (the retype path below).
//!
//! Invariants:
//! 1. No memory is read or written through a handle before `shm-ndarray` validated it; a view
//!    whose dtype differs from the array's is checked here against the array's data length
//!    with its own item size ([`view_inside`]).
//! 2. No Rust panic crosses into Python: every fallible call maps its error to a Python
//!    exception ([`to_py`]).
//! 3. The GIL is released around waits (an allocation that may wait for memory, collection)
//!    and around large fills.
#![deny(unsafe_code)]

#[allow(unsafe_code)] // numpy's handler structure, capsules, and the memory numpy is handed
mod allocator;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use numpy::npyffi::{
    npy_intp, NpyTypes, PyArrayObject, PyArray_Descr, NPY_ARRAY_OWNDATA, NPY_ARRAY_WRITEABLE, PY_ARRAY_API,
};
use numpy::PyArrayDescr;
use pyo3::create_exception;
use pyo3::exceptions::{
    PyFileExistsError, PyFileNotFoundError, PyMemoryError, PyOSError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple, PyType};
use shm_ndarray::{
    ArrayError, DType, DTypeError, Handle, HandleError, NameError, Pool, PoolError, PoolOptions, SharedArray,
};

create_exception!(
    _native,
    StaleHandleError,
    PyValueError,
    "A handle whose array was freed: its memory may now hold another array, so it is refused."
);
create_exception!(
    _native,
    PoolNotFoundError,
    PyFileNotFoundError,
    "The pool a handle or name refers to does not exist (any more)."
);

/// Arrays at least this large are filled with the GIL released.
const RELEASE_GIL_BYTES: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Errors (invariant 2)

fn pool_err(e: PoolError) -> PyErr {
    let msg = e.to_string();
    match e {
        PoolError::NotFound { .. } | PoolError::Gone { .. } => PoolNotFoundError::new_err(msg),
        PoolError::InvalidName { .. } | PoolError::Options(_) | PoolError::NotAPool { .. } => {
            PyValueError::new_err(msg)
        }
        PoolError::Create(shm_arena::CreateError::NoSpace { .. }) => PyMemoryError::new_err(msg),
        PoolError::Full { .. } => PyRuntimeError::new_err(msg),
        _ => PyOSError::new_err(msg),
    }
}

fn array_err(e: ArrayError) -> PyErr {
    let msg = e.to_string();
    match e {
        ArrayError::DType(_) => PyTypeError::new_err(msg),
        ArrayError::Shape { .. } => PyValueError::new_err(msg),
        ArrayError::OutOfMemory { .. } => PyMemoryError::new_err(msg),
        ArrayError::Grow(p) => pool_err(p),
        ArrayError::PoolGone => PoolNotFoundError::new_err(msg),
    }
}

fn handle_err(e: HandleError) -> PyErr {
    let msg = e.to_string();
    match e {
        HandleError::Stale => StaleHandleError::new_err(msg),
        // A segment the pool does not have: the handle is corrupt (a pool that is gone fails
        // earlier, when it is opened by name).
        _ => PyValueError::new_err(msg),
    }
}

fn name_err(e: NameError) -> PyErr {
    let msg = e.to_string();
    match e {
        NameError::NotFound(_) => PyFileNotFoundError::new_err(msg),
        NameError::Exists(_) => PyFileExistsError::new_err(msg),
        NameError::Invalid(_) | NameError::AlreadyNamed => PyValueError::new_err(msg),
        NameError::Full => PyRuntimeError::new_err(msg),
        NameError::Handle(h) => handle_err(h),
    }
}

fn dtype_err(e: DTypeError) -> PyErr {
    PyTypeError::new_err(e.to_string())
}

// ---------------------------------------------------------------------------------------------
// dtypes: numpy's dtype objects <-> shm-ndarray's descriptions, both ways cached

/// What a numpy dtype becomes in the pool: the element type (a subarray dtype's base) and the
/// subarray's shape, appended to the array's shape as numpy does.
struct Described {
    descr: Py<PyArrayDescr>,
    dtype: DType,
    subshape: Vec<u64>,
}

/// Caches keyed by object identity; each entry holds a strong reference to its key, so the
/// address cannot be reused while the entry exists. Bounded: cleared when full.
struct Caches {
    /// dtype specs that cannot change (`type` objects, `str`, dtype objects) -> described.
    by_spec: HashMap<usize, (Py<PyAny>, Arc<Described>)>,
    /// description string -> numpy dtype object, for arrays attached from other processes.
    by_descr: HashMap<String, Py<PyArrayDescr>>,
}

const CACHE_LIMIT: usize = 512;

static CACHES: Mutex<Option<Caches>> = Mutex::new(None);

fn with_caches<R>(f: impl FnOnce(&mut Caches) -> R) -> R {
    let mut guard = CACHES.lock().unwrap_or_else(|p| p.into_inner());
    let caches = guard.get_or_insert_with(|| Caches { by_spec: HashMap::new(), by_descr: HashMap::new() });
    f(caches)
}

/// The Python helper module (`pyshm._dtypes`) that does the rare, slow conversions.
fn helper<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("pyshm._dtypes")?.getattr(name)
}

/// A dtype spec (anything `numpy.dtype()` accepts) as the pool describes it.
fn describe(spec: &Bound<'_, PyAny>) -> PyResult<Arc<Described>> {
    let key = spec.as_ptr() as usize;
    if let Some(d) = with_caches(|c| c.by_spec.get(&key).map(|(_, d)| Arc::clone(d))) {
        return Ok(d);
    }
    let py = spec.py();
    // (base dtype, description, item size, subarray shape); raises TypeError for objects.
    let t = helper(py, "describe")?.call1((spec,))?;
    let (descr, text, itemsize, subshape): (Bound<'_, PyArrayDescr>, String, u64, Vec<u64>) = t.extract()?;
    let dtype = DType::new(&text, itemsize).map_err(dtype_err)?;
    let d = Arc::new(Described { descr: descr.unbind(), dtype, subshape });
    // Only specs that cannot change meaning may be cached by identity.
    let immutable =
        spec.is_instance_of::<PyArrayDescr>() || spec.is_instance_of::<PyType>() || spec.is_instance_of::<PyString>();
    if immutable {
        with_caches(|c| {
            if c.by_spec.len() >= CACHE_LIMIT {
                c.by_spec.clear();
            }
            c.by_spec.insert(key, (spec.clone().unbind(), Arc::clone(&d)));
        });
    }
    Ok(d)
}

/// The numpy dtype of a description written by any process.
fn numpy_dtype<'py>(py: Python<'py>, dtype: &DType) -> PyResult<Bound<'py, PyArrayDescr>> {
    if let Some(d) = with_caches(|c| c.by_descr.get(dtype.descr()).map(|d| d.clone_ref(py))) {
        return Ok(d.into_bound(py));
    }
    let d = helper(py, "from_description")?.call1((dtype.descr(), dtype.itemsize()))?;
    let d = d.cast_into::<PyArrayDescr>()?;
    with_caches(|c| {
        if c.by_descr.len() >= CACHE_LIMIT {
            c.by_descr.clear();
        }
        c.by_descr.insert(dtype.descr().to_owned(), d.clone().unbind());
    });
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// Blocks: the base object of every pooled ndarray

/// This process's reference to a pooled array: the `base` of every numpy array over its data.
/// Released when numpy drops the last array or view that uses it.
#[pyclass(frozen, module = "pyshm._native")]
struct Block {
    array: SharedArray,
    pool_name: String,
    /// The dtype object the array was made with (views with another dtype travel differently).
    descr: Py<PyArrayDescr>,
}

#[pymethods]
impl Block {
    /// The name of the pool the array lives in.
    #[getter]
    fn pool_name(&self) -> &str {
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
fn view_inside(offset: i64, shape: &[i64], strides: &[i64], itemsize: u64, len: u64) -> bool {
    let (Ok(offset), Ok(shape)) =
        (u64::try_from(offset), shape.iter().map(|n| u64::try_from(*n)).collect::<Result<Vec<_>, _>>())
    else {
        return false;
    };
    shape.len() <= shm_ndarray::MAX_DIMS && shm_ndarray::view_fits(offset, &shape, strides, itemsize, len)
}

/// A numpy array over `block`'s data: `data_offset` bytes from the data start, with this
/// shape and these byte strides, of dtype `descr`. The caller has checked the geometry.
fn new_ndarray<'py>(
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

#[allow(unsafe_code)]
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
struct Geometry {
    data: usize,
    shape: Vec<i128>,
    strides: Vec<i128>,
    descr: *mut pyo3::ffi::PyObject,
    base: *mut pyo3::ffi::PyObject,
    flags: std::os::raw::c_int,
}

#[allow(unsafe_code)]
fn geometry(arr: &Bound<'_, PyAny>) -> Option<Geometry> {
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
enum Owner<'py> {
    /// An array the pool made (`empty`, `attach`, `lookup`): its base chain ends at its block.
    Block(Bound<'py, Block>),
    /// An array numpy allocated with a pyshm handler: its base chain ends at an array that owns
    /// its data, whose pointer is in the handler's map (`allocator`, invariant 1).
    Allocation(Arc<allocator::Allocation>),
}

impl Owner<'_> {
    /// This process's reference to the whole array.
    fn array(&self) -> &SharedArray {
        match self {
            Owner::Block(b) => &b.get().array,
            Owner::Allocation(a) => &a.array,
        }
    }

    fn pool_name(&self) -> &str {
        match self {
            Owner::Block(b) => &b.get().pool_name,
            Owner::Allocation(a) => &a.pool_name,
        }
    }

    /// The dtype object of the whole array (`uint8` for a handler's block).
    fn descr<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self {
            Owner::Block(b) => b.get().descr.bind(py).clone().into_any(),
            Owner::Allocation(_) => numpy::dtype::<u8>(py).into_any(),
        }
    }
}

/// What holds `arr`'s memory, if `arr` is a pooled array or a view of one: the end of its base
/// chain, which numpy keeps short (the block, or a pooled array whose base is the block; for a
/// handler's array, the array that owns the data, or a view whose base is that array).
#[allow(unsafe_code)]
fn owner_of<'py>(arr: &Bound<'py, PyAny>, g: &Geometry) -> Option<Owner<'py>> {
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
            return allocator::shareable(&descr).then_some(Owner::Allocation(allocation));
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
fn block_of<'py>(arr: &Bound<'py, PyAny>, g: &Geometry) -> Option<Bound<'py, Block>> {
    match owner_of(arr, g)? {
        Owner::Block(b) => Some(b),
        Owner::Allocation(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Handles

/// `None` if `arr` is not a numpy array over pool memory; otherwise `(pool name, handle bytes,
/// retype)`, where `retype` is `None` when the view has the array's dtype (the handle carries
/// the view), or `(dtype, offset, shape, strides)` for a view with another dtype (the handle
/// then names the array, and the receiver checks the view against it). An array allocated by
/// a pyshm handler is a view of its block, a `uint8` array: it takes the second form unless it
/// is `uint8` itself.
///
/// With `tracked`, the handle carries a transfer token that keeps the array alive until the
/// handle is attached, even if every holder lets go first.
#[pyfunction]
#[pyo3(signature = (arr, tracked = true))]
fn pooled_handle<'py>(arr: &Bound<'py, PyAny>, tracked: bool) -> PyResult<Option<Bound<'py, PyTuple>>> {
    let py = arr.py();
    let Some(g) = geometry(arr) else { return Ok(None) };
    let Some(owner) = owner_of(arr, &g) else { return Ok(None) };
    let array = owner.array();
    let start = array.base_ptr().as_ptr() as usize;
    let offset = g.data as i128 - start as i128;
    let owner_descr = owner.descr(py);
    // SAFETY-free identity check first: the dtype object the array was made with.
    let same_dtype = g.descr == owner_descr.as_ptr() || {
        #[allow(unsafe_code)]
        // SAFETY: `descr` is the array's live dtype object (the array holds it).
        let d = unsafe { Bound::from_borrowed_ptr(py, g.descr) };
        d.eq(&owner_descr)?
    };
    let make = |view: &SharedArray| -> PyResult<Vec<u8>> {
        let h = if tracked { view.handle().map_err(handle_err)? } else { view.untracked_handle() };
        Ok(h.to_bytes())
    };
    let name = PyString::new(py, owner.pool_name());
    if same_dtype {
        let shape: Vec<u64> = g.shape.iter().map(|n| *n as u64).collect();
        let strides: Vec<i64> = g.strides.iter().map(|s| *s as i64).collect();
        let view = array.view(offset as u64, &shape, &strides).map_err(handle_err)?;
        let bytes = PyBytes::new(py, &make(&view)?);
        return Ok(Some(PyTuple::new(py, [name.into_any(), bytes.into_any(), py.None().into_bound(py)])?));
    }
    #[allow(unsafe_code)]
    // SAFETY: as above.
    let d = unsafe { Bound::from_borrowed_ptr(py, g.descr) };
    let shape: Vec<i64> = g.shape.iter().map(|n| *n as i64).collect();
    let strides: Vec<i64> = g.strides.iter().map(|s| *s as i64).collect();
    let retype = PyTuple::new(
        py,
        [
            d,
            (offset as i64).into_pyobject(py)?.into_any(),
            PyTuple::new(py, shape)?.into_any(),
            PyTuple::new(py, strides)?.into_any(),
        ],
    )?;
    let bytes = PyBytes::new(py, &make(array)?);
    Ok(Some(PyTuple::new(py, [name.into_any(), bytes.into_any(), retype.into_any()])?))
}

/// Whether `arr` is a numpy array over pool memory.
#[pyfunction]
fn is_pooled(arr: &Bound<'_, PyAny>) -> bool {
    geometry(arr).is_some_and(|g| owner_of(arr, &g).is_some())
}

/// The name of the pool `arr` lives in, or `None`.
#[pyfunction]
fn pool_name_of(arr: &Bound<'_, PyAny>) -> Option<String> {
    let g = geometry(arr)?;
    owner_of(arr, &g).map(|o| o.pool_name().to_owned())
}

// ---------------------------------------------------------------------------------------------
// Pools

/// A pool as this process sees it.
#[pyclass(frozen, module = "pyshm._native")]
struct NativePool {
    pool: Pool,
    /// Set by `leave`: allocators made on this object take nothing more from the pool.
    left: Arc<allocator::Flag>,
}

impl NativePool {
    fn new(pool: Pool) -> Self {
        Self { pool, left: Arc::new(allocator::Flag::new(false)) }
    }
}

fn shape_of(shape: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
    let dims: Vec<i64> = if let Ok(n) = shape.extract::<i64>() {
        vec![n]
    } else {
        shape.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "shape must be an int or a sequence of ints, not {}",
                shape.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            ))
        })?
    };
    dims.into_iter()
        .map(|n| u64::try_from(n).map_err(|_| PyValueError::new_err("negative dimensions are not allowed")))
        .collect()
}

fn duration(seconds: Option<f64>) -> PyResult<Option<Duration>> {
    seconds
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| PyValueError::new_err(format!("wait must be a non-negative number of seconds, not {s}")))
        })
        .transpose()
}

impl NativePool {
    fn wrap<'py>(
        &self,
        py: Python<'py>,
        array: SharedArray,
        descr: &Bound<'py, PyArrayDescr>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let offset = array.offset();
        let shape = array.shape().to_vec();
        let strides = array.strides().to_vec();
        let block =
            Bound::new(py, Block { array, pool_name: self.pool.name().to_owned(), descr: descr.clone().unbind() })?;
        new_ndarray(block, descr, offset, &shape, &strides)
    }
}

#[pymethods]
impl NativePool {
    /// Creates a pool (or opens the one of that name).
    #[staticmethod]
    #[pyo3(signature = (name=None, size=None, max_size=None, wait=None, persistent=None, persist_while_named=false))]
    fn create(
        py: Python<'_>,
        name: Option<String>,
        size: Option<u64>,
        max_size: Option<u64>,
        wait: Option<f64>,
        persistent: Option<bool>,
        persist_while_named: bool,
    ) -> PyResult<Self> {
        let mut o = PoolOptions::new().wait(duration(wait)?).persist_while_named(persist_while_named);
        if let Some(n) = name {
            o = o.name(n);
        }
        if let Some(s) = size {
            o = o.segment_capacity(s);
        }
        if let Some(m) = max_size {
            o = o.max_size(m);
        }
        if let Some(p) = persistent {
            o = o.persistent(p);
        }
        let pool = py.detach(|| Pool::create(&o)).map_err(pool_err)?;
        if wait.is_some() {
            pool.set_wait(duration(wait)?);
        }
        Ok(Self::new(pool))
    }

    /// Opens an existing pool by name.
    #[staticmethod]
    fn open(py: Python<'_>, name: String) -> PyResult<Self> {
        let pool = py.detach(|| Pool::open(&name)).map_err(pool_err)?;
        Ok(Self::new(pool))
    }

    /// The pool's name (its files in /dev/shm are `pyshm-<name>` and `pyshm-<name>-<n>`).
    #[getter]
    fn name(&self) -> &str {
        self.pool.name()
    }

    /// 16 random bytes that identify the pool in handles.
    #[getter]
    fn id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.pool.id())
    }

    /// A new array: `shape`, numpy dtype spec, "C" or "F" order, zero-filled or not.
    #[pyo3(signature = (shape, dtype, order=Some("C"), zero=false))]
    fn empty<'py>(
        &self,
        py: Python<'py>,
        shape: &Bound<'py, PyAny>,
        dtype: &Bound<'py, PyAny>,
        order: Option<&str>,
        zero: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fortran = match order.unwrap_or("C") {
            "C" | "c" => false,
            "F" | "f" => true,
            o => return Err(PyValueError::new_err(format!("order must be 'C' or 'F', not {o:?}"))),
        };
        let d = describe(dtype)?;
        let mut dims = shape_of(shape)?;
        dims.extend_from_slice(&d.subshape);
        let nbytes = dims.iter().try_fold(d.dtype.itemsize(), |acc, n| acc.checked_mul(*n)).unwrap_or(u64::MAX);
        // Release the GIL when the allocation may wait (or grow by a large segment), or the
        // fill is large (invariant 3).
        let slow = self.pool.wait().is_some() || nbytes >= 16 * RELEASE_GIL_BYTES;
        let make = || -> Result<SharedArray, ArrayError> {
            let a = self.pool.empty(&d.dtype, &dims, fortran)?;
            if zero {
                // SAFETY-free: the block is ours alone until a handle or name exists.
                fill_zero(&a);
            }
            Ok(a)
        };
        let array =
            if slow || (zero && nbytes >= RELEASE_GIL_BYTES) { py.detach(make) } else { make() }.map_err(array_err)?;
        self.wrap(py, array, d.descr.bind(py))
    }

    /// The array a handle names (`retype` as `pooled_handle` gives it).
    #[pyo3(signature = (handle, retype=None))]
    fn attach<'py>(
        &self,
        py: Python<'py>,
        handle: &[u8],
        retype: Option<&Bound<'py, PyTuple>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let h = Handle::from_bytes(handle).map_err(handle_err)?;
        let array = self.pool.attach(&h).map_err(handle_err)?;
        let Some(retype) = retype else {
            let descr = numpy_dtype(py, array.dtype())?;
            return self.wrap(py, array, &descr);
        };
        let (spec, offset, shape, strides): (Bound<'py, PyAny>, i64, Vec<i64>, Vec<i64>) =
            retype.extract().map_err(|_| PyValueError::new_err("invalid handle: malformed view description"))?;
        let d = describe(&spec)?;
        if !d.subshape.is_empty() {
            return Err(PyValueError::new_err("invalid handle: a view's dtype cannot be a subarray"));
        }
        if !view_inside(offset, &shape, &strides, d.dtype.itemsize(), array.base_len()) {
            return Err(PyValueError::new_err("invalid handle: the view lies outside its array"));
        }
        let array_descr = numpy_dtype(py, array.dtype())?;
        let block =
            Bound::new(py, Block { array, pool_name: self.pool.name().to_owned(), descr: array_descr.unbind() })?;
        let shape: Vec<u64> = shape.iter().map(|n| *n as u64).collect();
        new_ndarray(block, d.descr.bind(py), offset as u64, &shape, &strides)
    }

    /// Usage figures.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| self.pool.stats());
        let d = PyDict::new(py);
        d.set_item("capacity", s.capacity)?;
        d.set_item("used", s.used)?;
        d.set_item("free", s.free)?;
        d.set_item("largest_free", s.largest_free)?;
        d.set_item("arrays", s.arrays)?;
        d.set_item("segments", s.segments)?;
        d.set_item("processes", s.processes)?;
        d.set_item("reserved", s.reserved)?;
        Ok(d)
    }

    /// Frees what dead processes held; returns what it did.
    fn collect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = py.detach(|| self.pool.collect());
        let d = PyDict::new(py);
        d.set_item("dead_processes", r.dead_processes)?;
        d.set_item("arrays_freed", r.arrays_freed)?;
        d.set_item("blocks_recovered", r.blocks_recovered)?;
        Ok(d)
    }

    /// Checks every segment's allocator; raises RuntimeError on a violation.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.pool.check()).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Registers `arr` (a pooled array) under `name`.
    fn publish(&self, name: &str, arr: &Bound<'_, PyAny>) -> PyResult<()> {
        let g = geometry(arr).ok_or_else(|| PyTypeError::new_err("expected a numpy array"))?;
        let block = block_of(arr, &g).ok_or_else(|| PyValueError::new_err("the array does not live in a pool"))?;
        self.pool.publish(name, &block.get().array).map_err(name_err)
    }

    /// The array registered under `name`.
    fn lookup<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let array = self.pool.lookup(name).map_err(name_err)?;
        let descr = numpy_dtype(py, array.dtype())?;
        self.wrap(py, array, &descr)
    }

    /// Removes `name`.
    fn unpublish(&self, name: &str) -> PyResult<()> {
        self.pool.unpublish(name).map_err(name_err)
    }

    /// Every registered name.
    fn names(&self) -> Vec<String> {
        self.pool.names()
    }

    /// Registers this process now (after a fork: re-acquires inherited arrays).
    fn join(&self) -> PyResult<()> {
        self.pool.join().map_err(pool_err)
    }

    /// Leaves the pool (see `shm_ndarray::Pool::leave`); allocators made on this object take
    /// nothing more from it.
    fn leave(&self, py: Python<'_>) {
        // Relaxed: the GIL orders this with handlers called under it; a handler running without
        // the GIL that misses it allocates once more (see `allocator::HandlerState::pool_alloc`).
        self.left.store(true, std::sync::atomic::Ordering::Relaxed);
        py.detach(|| self.pool.leave());
    }

    /// Unlinks the pool's files now.
    fn unlink(&self) {
        self.pool.unlink();
    }

    /// Processes registered.
    #[getter]
    fn live_processes(&self) -> usize {
        self.pool.live_processes()
    }

    /// Seconds an allocation waits for other processes to free memory (None: not at all).
    #[getter]
    fn get_wait(&self) -> Option<f64> {
        self.pool.wait().map(|d| d.as_secs_f64())
    }

    #[setter]
    fn set_wait(&self, seconds: Option<f64>) -> PyResult<()> {
        self.pool.set_wait(duration(seconds)?);
        Ok(())
    }

    /// Cancels transfer tokens older than `seconds` (handles never attached).
    fn reclaim_tokens(&self, py: Python<'_>, seconds: f64) -> PyResult<usize> {
        let age = duration(Some(seconds))?.unwrap_or_default();
        Ok(py.detach(|| self.pool.reclaim_tokens_older_than(age)))
    }

    fn __repr__(&self) -> String {
        format!("<pyshm pool {:?}>", self.pool.name())
    }
}

#[allow(unsafe_code)]
fn fill_zero(a: &SharedArray) {
    // SAFETY: the array was just created by this thread: nobody else can see it (no handle or
    // name exists yet), and its data block is `base_len` bytes long.
    unsafe { std::ptr::write_bytes(a.base_ptr().as_ptr(), 0, a.base_len() as usize) };
}

/// Every pool in /dev/shm: a list of dicts (name, bytes, used, live_processes, persistent).
#[pyfunction]
fn list_pools(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let pools = py.detach(shm_ndarray::list_pools);
    pools
        .into_iter()
        .map(|p| {
            let d = PyDict::new(py);
            d.set_item("name", p.name)?;
            d.set_item("bytes", p.bytes)?;
            d.set_item("used", p.used)?;
            d.set_item("live_processes", p.live_processes)?;
            d.set_item("persistent", p.persistent)?;
            Ok(d)
        })
        .collect()
}

/// Removes pools whose processes are all dead; returns their names.
#[pyfunction]
#[pyo3(signature = (include_persistent=false))]
fn clean_dead_pools(py: Python<'_>, include_persistent: bool) -> Vec<String> {
    py.detach(|| shm_ndarray::clean_dead_pools(include_persistent))
}

/// Free bytes in /dev/shm.
#[pyfunction]
fn shm_free_bytes() -> PyResult<u64> {
    shm_arena::shm_free_bytes().ok_or_else(|| PyOSError::new_err("cannot read /dev/shm's free space"))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<NativePool>()?;
    m.add_class::<Block>()?;
    m.add("StaleHandleError", py.get_type::<StaleHandleError>())?;
    m.add("PoolNotFoundError", py.get_type::<PoolNotFoundError>())?;
    m.add("HANDLE_FIXED_LEN", shm_ndarray::HANDLE_FIXED_LEN)?;
    m.add_function(wrap_pyfunction!(pooled_handle, m)?)?;
    m.add_function(wrap_pyfunction!(is_pooled, m)?)?;
    m.add_function(wrap_pyfunction!(pool_name_of, m)?)?;
    m.add_function(wrap_pyfunction!(list_pools, m)?)?;
    m.add_function(wrap_pyfunction!(clean_dead_pools, m)?)?;
    m.add_function(wrap_pyfunction!(shm_free_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(allocator::make_allocator, m)?)?;
    m.add_function(wrap_pyfunction!(allocator::set_handler, m)?)?;
    m.add_function(wrap_pyfunction!(allocator::get_handler, m)?)?;
    m.add_function(wrap_pyfunction!(allocator::allocator_stats, m)?)?;
    Ok(())
}
