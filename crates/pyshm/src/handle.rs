//! `pyshm.Handle`: the one Python form of a handle, made from a pooled array or view.
//!
//! Invariants:
//! 1. A [`Handle`] holds exactly what another process needs to attach the array: the pool's
//!    name, a `shm_ndarray::Handle` (decoded and checked by `shm-ndarray` when the object is
//!    made, so a malformed one never exists) and, for a view whose dtype differs from the
//!    array's, the view ([`Retype`]). Pickling sends the pool's name, the handle's bytes and
//!    the retype; unpickling checks them again.
//! 2. A retype's geometry is checked against the array it names, with shm-ndarray's one view
//!    check, before any memory is shown to numpy (`ndarray::view_inside`, at attach).
//! 3. A tracked handle carries a transfer token: the array outlives every holder until the
//!    handle is attached once, or given back with `NativePool.cancel` (without mapping the
//!    array) when it never will be.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple, PyType};

use crate::dtypes::{self, Described};
use crate::errors::{invalid_handle, Result};
use crate::ndarray::{geometry, owner_of};

/// A view with another dtype than its array's: the view's dtype, byte offset from the array's
/// data start, shape and byte strides (checked at attach, invariant 2).
pub(crate) struct Retype {
    /// The view's dtype.
    pub(crate) dtype: Arc<Described>,
    /// Bytes from the array's data start.
    pub(crate) offset: i64,
    /// The view's extents.
    pub(crate) shape: Vec<i64>,
    /// The view's byte strides.
    pub(crate) strides: Vec<i64>,
}

/// A small picklable reference to a pooled array or view, for `pyshm.attach` in any process
/// of the pool. A handle made by `pyshm.handle` keeps the array alive until it is first
/// attached, even if every process lets go of the array before; after that it attaches while
/// some process holds the array, and raises `StaleHandleError` once the array is freed.
///
/// `Handle(pool, data, retype=None)` rebuilds one from its parts (as pickling does): `pool` is
/// the pool's name, `data` the handle's bytes, `retype` `None` or `(dtype, offset, shape,
/// strides)` of a view with another dtype. Invalid parts raise `ValueError`.
#[pyclass(frozen, module = "pyshm", name = "Handle")]
pub(crate) struct Handle {
    /// The pool's name (kept as the Python string it arrives as or is made once).
    pub(crate) pool: Py<PyString>,
    pub(crate) handle: shm_ndarray::Handle,
    data: Py<PyBytes>,
    pub(crate) retype: Option<Retype>,
}

impl Handle {
    fn parts<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyString>, Bound<'py, PyBytes>, Bound<'py, PyAny>)> {
        Ok((self.pool.bind(py).clone(), self.data.bind(py).clone(), self.retype_tuple(py)?))
    }

    fn retype_tuple<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let Some(r) = &self.retype else { return Ok(py.None().into_bound(py)) };
        Ok(PyTuple::new(
            py,
            [
                r.dtype.descr.bind(py).clone().into_any(),
                r.offset.into_pyobject(py)?.into_any(),
                PyTuple::new(py, &r.shape)?.into_any(),
                PyTuple::new(py, &r.strides)?.into_any(),
            ],
        )?
        .into_any())
    }
}

#[pymethods]
impl Handle {
    #[new]
    #[pyo3(signature = (pool, data, retype=None))]
    fn new(pool: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>, retype: Option<&Bound<'_, PyAny>>) -> Result<Self> {
        let (Ok(pool), Ok(data)) = (pool.cast::<PyString>(), data.cast::<PyBytes>()) else {
            return Err(invalid_handle("invalid handle: expected a pool name (str) and the handle's bytes"));
        };
        let handle = shm_ndarray::Handle::from_bytes(data.as_bytes())?;
        let retype = match retype {
            Some(r) if !r.is_none() => {
                let (spec, offset, shape, strides): (Bound<'_, PyAny>, i64, Vec<i64>, Vec<i64>) =
                    r.extract().map_err(|_| invalid_handle("invalid handle: malformed view description"))?;
                Some(Retype { dtype: dtypes::describe_view(&spec)?, offset, shape, strides })
            }
            _ => None,
        };
        Ok(Self { pool: pool.clone().unbind(), handle, data: data.clone().unbind(), retype })
    }

    /// The name of the pool the array lives in.
    #[getter]
    fn pool<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        self.pool.bind(py).clone()
    }

    /// The handle's bytes (shm-ndarray's encoding).
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.data.bind(py).clone()
    }

    /// `None`, or `(dtype, offset, shape, strides)` of a view whose dtype differs from its
    /// array's (the handle's bytes then name the whole array).
    #[getter]
    fn retype<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.retype_tuple(py)
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyType>, Bound<'py, PyTuple>)> {
        let (pool, data, retype) = self.parts(py)?;
        let args = if self.retype.is_some() {
            PyTuple::new(py, [pool.into_any(), data.into_any(), retype])?
        } else {
            PyTuple::new(py, [pool.into_any(), data.into_any()])? // a smaller pickle
        };
        Ok((py.get_type::<Self>(), args))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = other.py();
        let Ok(other) = other.cast::<Handle>() else { return Ok(false) };
        let other = other.get();
        Ok(self.pool.bind(py).to_cow()? == other.pool.bind(py).to_cow()?
            && self.handle == other.handle
            && match (&self.retype, &other.retype) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    a.dtype.dtype == b.dtype.dtype
                        && (a.offset, &a.shape, &a.strides) == (b.offset, &b.shape, &b.strides)
                }
                _ => false,
            })
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<u64> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.pool.bind(py).to_cow()?.hash(&mut h);
        self.handle.to_bytes().hash(&mut h); // the decoded handle, as `__eq__` compares it
        Ok(h.finish())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("<pyshm.Handle pool={} {} bytes>", self.pool.bind(py), self.data.bind(py).as_bytes().len())
    }
}

/// `None` if `arr` is not a numpy array over pool memory; otherwise a [`Handle`] to it. The
/// handle carries the view itself when the view has the array's dtype; a view with another
/// dtype gets the whole array's handle plus a [`Retype`] (the receiver checks the view against
/// the array). An array allocated by a pyshm handler is a view of its block, a `uint8` array:
/// it takes the second form unless it is `uint8` itself.
///
/// With `tracked`, the handle carries a transfer token that keeps the array alive until the
/// handle is attached, even if every holder lets go first (invariant 3).
#[pyfunction]
#[pyo3(signature = (arr, tracked = true))]
pub(crate) fn pooled_handle(arr: &Bound<'_, PyAny>, tracked: bool) -> Result<Option<Handle>> {
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
    let make = |view: &shm_ndarray::SharedArray| -> Result<shm_ndarray::Handle> {
        Ok(if tracked { view.handle()? } else { view.untracked_handle() })
    };
    let wrap = |handle: shm_ndarray::Handle, retype: Option<Retype>| Handle {
        pool: PyString::new(py, owner.pool_name()).unbind(),
        data: PyBytes::new(py, &handle.to_bytes()).unbind(),
        handle,
        retype,
    };
    if same_dtype {
        let shape: Vec<u64> = g.shape.iter().map(|n| *n as u64).collect();
        let strides: Vec<i64> = g.strides.iter().map(|s| *s as i64).collect();
        let view = array.view(offset as u64, &shape, &strides)?;
        return Ok(Some(wrap(make(&view)?, None)));
    }
    #[allow(unsafe_code)]
    // SAFETY: as above.
    let d = unsafe { Bound::from_borrowed_ptr(py, g.descr) };
    let retype = Retype {
        dtype: dtypes::describe_view(&d)?,
        offset: offset as i64,
        shape: g.shape.iter().map(|n| *n as i64).collect(),
        strides: g.strides.iter().map(|s| *s as i64).collect(),
    };
    Ok(Some(wrap(make(array)?, Some(retype))))
}
