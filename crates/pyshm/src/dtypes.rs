//! numpy's dtype objects and shm-ndarray's descriptions, converted both ways here and cached.
//!
//! Invariants:
//! 1. A description is written only for a dtype that can live in shared memory: no Python
//!    objects anywhere in it (object dtypes, structured dtypes with object fields, numpy 2's
//!    `StringDType`), and only numpy's built-in kinds (`biufcmMSUV`); anything else is a
//!    `TypeError` naming the dtype.
//! 2. A dtype read back from a description has exactly the description's item size and is
//!    shareable (invariant 1), or the handle that carried it is refused as invalid.
//! 3. The caches are keyed by object identity or by description text; an identity entry holds
//!    a strong reference to its key, so the address cannot be reused while the entry exists.
//!    Only specs that cannot change meaning (dtype objects, `type` objects, `str`) are cached
//!    by identity. Both caches are bounded: cleared when full.
//! 4. No dtype with fields is cached, by spec or by description: numpy lets a program rename a
//!    structured dtype's fields in place (`dt.names = ...`), on the spec it passed or on the
//!    dtype object of an array it got (which a cache would hand to the next array too), and
//!    arrays made or attached afterwards must carry the names of that moment (found in review).
//!
//! 4. A datetime64 or timedelta64 without a unit (`np.dtype("M8")`, numpy's generic unit) is
//!    described with the unit written out, `<M8[generic]`, which numpy reads back as the same
//!    dtype (shm-ndarray wants a unit for these kinds).
//!
//! This module uses numpy and Python's standard library only, never the pyshm package: a simple
//! dtype is described by numpy's `dtype.str`, a structured one by shm-ndarray's
//! [`StructLayout`] text built from the dtype's fields (see `shm_ndarray::dtype`'s grammar), and
//! read back by building the dict `numpy.dtype` takes. Descriptions written by older versions
//! (Python reprs of the `descr` list or dict) are read with `ast.literal_eval`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use numpy::{PyArrayDescr, PyArrayDescrMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple, PyType};
use shm_ndarray::{DType, Field, Format, StructLayout};

use crate::errors::{invalid_handle, Result};

/// What a numpy dtype becomes in the pool: the element type (a subarray dtype's base) and the
/// subarray's shape, appended to the array's shape as numpy does.
pub(crate) struct Described {
    /// numpy's dtype object of the element.
    pub(crate) descr: Py<PyArrayDescr>,
    /// The pool's description of it.
    pub(crate) dtype: DType,
    /// The subarray's shape (empty for a plain dtype).
    pub(crate) subshape: Vec<u64>,
}

/// Both caches (invariant 3).
struct Caches {
    /// dtype specs that cannot change -> described.
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

/// Raises `TypeError` if `dt` cannot live in shared memory (invariant 1).
fn check_shareable(dt: &Bound<'_, PyArrayDescr>) -> PyResult<()> {
    if dt.has_object() || dt.kind() == b'O' {
        return Err(PyTypeError::new_err(format!(
            "dtype {} holds Python objects, which cannot live in shared memory; use a numeric, string (S/U) or \
             structured dtype",
            dt.repr()?
        )));
    }
    if !b"biufcmMSUV".contains(&dt.kind()) {
        return Err(PyTypeError::new_err(format!(
            "dtype {} (kind {:?}) cannot be shared by its bytes",
            dt.repr()?,
            char::from(dt.kind())
        )));
    }
    Ok(())
}

/// A dtype spec (anything `numpy.dtype()` accepts) as the pool describes it.
pub(crate) fn describe(spec: &Bound<'_, PyAny>) -> Result<Arc<Described>> {
    let key = spec.as_ptr() as usize;
    if let Some(d) = with_caches(|c| c.by_spec.get(&key).map(|(_, d)| Arc::clone(d))) {
        return Ok(d);
    }
    let py = spec.py();
    let mut dt = if spec.is_none() {
        // numpy's `dtype=None` is its default, float64; rust-numpy's converter would return no
        // descriptor and set no error for it.
        numpy::dtype::<f64>(py)
    } else {
        PyArrayDescr::new(py, spec)?
    };
    if dt.itemsize() == 0 && matches!(dt.kind(), b'S' | b'U') {
        // A flexible type without a size (`np.dtype("U")`): one character, as numpy does.
        let order = if dt.kind() == b'U' { char::from(dt.byteorder()) } else { '|' };
        dt = PyArrayDescr::new(py, format!("{order}{}1", char::from(dt.kind())))?;
    }
    let mut subshape = Vec::new();
    if dt.has_subarray() {
        subshape = dt.shape().into_iter().map(|n| n as u64).collect();
        dt = dt.base();
    }
    check_shareable(&dt)?;
    let text = if dt.has_fields() { layout_of(&dt)?.to_text() } else { simple_text(&dt)? };
    let dtype = DType::new(&text, dt.itemsize() as u64)?;
    let d = Arc::new(Described { descr: dt.unbind(), dtype, subshape });
    let immutable =
        spec.is_instance_of::<PyArrayDescr>() || spec.is_instance_of::<PyType>() || spec.is_instance_of::<PyString>();
    // Invariant 4: fields can be renamed in place.
    if immutable && !d.descr.bind(py).has_fields() {
        with_caches(|c| {
            if c.by_spec.len() >= CACHE_LIMIT {
                c.by_spec.clear();
            }
            c.by_spec.insert(key, (spec.clone().unbind(), Arc::clone(&d)));
        });
    }
    Ok(d)
}

/// The layout of a structured dtype, read from numpy's `fields`.
fn layout_of(dt: &Bound<'_, PyArrayDescr>) -> Result<StructLayout> {
    let fields = dt.getattr("fields")?;
    let names = dt.names().unwrap_or_default();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        // (dtype, offset) or (dtype, offset, title).
        let entry = fields.get_item(&name)?;
        let field_dt = entry.get_item(0)?.cast_into::<PyArrayDescr>().map_err(PyErr::from)?;
        let offset: u64 = entry.get_item(1)?.extract()?;
        let title = if entry.len()? > 2 {
            let t = entry.get_item(2)?;
            Some(t.extract::<String>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "field {name:?} has a title that is not a str ({t:?}); it cannot be shared"
                ))
            })?)
        } else {
            None
        };
        out.push(Field { name, title, offset, format: format_of(&field_dt)? });
    }
    Ok(StructLayout { fields: out, itemsize: dt.itemsize() as u64, aligned: dt.is_aligned_struct() })
}

fn format_of(dt: &Bound<'_, PyArrayDescr>) -> Result<Format> {
    if dt.has_subarray() {
        let shape = dt.shape().into_iter().map(|n| n as u64).collect();
        return Ok(Format::Subarray { base: Box::new(format_of(&dt.base())?), shape });
    }
    if dt.has_fields() {
        return Ok(Format::Struct(layout_of(dt)?));
    }
    check_shareable(dt)?;
    let text = simple_text(dt)?;
    Ok(Format::Simple(DType::new(&text, dt.itemsize() as u64)?))
}

/// The description of a dtype without fields: numpy's `dtype.str`, with a generic datetime's
/// unit written out (invariant 4).
fn simple_text(dt: &Bound<'_, PyArrayDescr>) -> PyResult<String> {
    let text: String = dt.getattr("str")?.extract()?;
    Ok(if matches!(dt.kind(), b'M' | b'm') && !text.ends_with(']') { format!("{text}[generic]") } else { text })
}

/// The numpy dtype of a description written by any process (invariant 2).
pub(crate) fn numpy_dtype<'py>(py: Python<'py>, dtype: &DType) -> Result<Bound<'py, PyArrayDescr>> {
    if let Some(d) = with_caches(|c| c.by_descr.get(dtype.descr()).map(|d| d.clone_ref(py))) {
        // A legacy description does not fix its item size: the hit must have the header's.
        if d.bind(py).itemsize() as u64 == dtype.itemsize() {
            return Ok(d.into_bound(py));
        }
    }
    let text = dtype.descr();
    let built = match dtype.structure() {
        Some(layout) => layout_spec(py, &layout).and_then(|spec| PyArrayDescr::new(py, spec)),
        None if text.starts_with(['[', '{']) => py
            .import("ast")
            .and_then(|ast| ast.getattr("literal_eval")?.call1((text,)))
            .and_then(|spec| PyArrayDescr::new(py, spec)),
        None => PyArrayDescr::new(py, text),
    };
    let d = built.map_err(|e| invalid_handle(format!("invalid handle: unreadable dtype description {text:?}: {e}")))?;
    if d.itemsize() as u64 != dtype.itemsize() {
        return Err(invalid_handle(format!(
            "invalid handle: dtype {text:?} has item size {}, not {}",
            d.itemsize(),
            dtype.itemsize()
        )));
    }
    check_shareable(&d).map_err(|e| invalid_handle(format!("invalid handle: {e}")))?;
    if d.has_fields() {
        return Ok(d); // invariant 4
    }
    with_caches(|c| {
        if c.by_descr.len() >= CACHE_LIMIT {
            c.by_descr.clear();
        }
        c.by_descr.insert(text.to_owned(), d.clone().unbind());
    });
    Ok(d)
}

/// The dict `numpy.dtype` takes for a layout (names, formats, offsets, itemsize, ...).
fn layout_spec<'py>(py: Python<'py>, layout: &StructLayout) -> PyResult<Bound<'py, PyAny>> {
    let spec = PyDict::new(py);
    let names = PyList::empty(py);
    let formats = PyList::empty(py);
    let offsets = PyList::empty(py);
    let titles = PyList::empty(py);
    for f in &layout.fields {
        names.append(&f.name)?;
        formats.append(format_spec(py, &f.format)?)?;
        offsets.append(f.offset)?;
        titles.append(&f.title)?;
    }
    spec.set_item("names", names)?;
    spec.set_item("formats", formats)?;
    spec.set_item("offsets", offsets)?;
    spec.set_item("itemsize", layout.itemsize)?;
    if layout.aligned {
        spec.set_item("aligned", true)?;
    }
    if layout.fields.iter().any(|f| f.title.is_some()) {
        spec.set_item("titles", titles)?;
    }
    Ok(spec.into_any())
}

fn format_spec<'py>(py: Python<'py>, format: &Format) -> PyResult<Bound<'py, PyAny>> {
    Ok(match format {
        Format::Simple(d) => PyString::new(py, d.descr()).into_any(),
        Format::Struct(s) => PyArrayDescr::new(py, layout_spec(py, s)?)?.into_any(),
        Format::Subarray { base, shape } => {
            PyTuple::new(py, [format_spec(py, base)?, PyTuple::new(py, shape)?.into_any()])?.into_any()
        }
    })
}

/// Whether an array of this dtype can be read by its bytes in another process (invariant 1);
/// the numpy allocator's arrays are shared only then.
pub(crate) fn shareable(descr: &Bound<'_, PyAny>) -> bool {
    descr.cast::<PyArrayDescr>().is_ok_and(|d| check_shareable(d).is_ok())
}

/// A description of a view's dtype that arrives from Python (a retype), refused as an invalid
/// handle when it is not a dtype the pool can describe.
pub(crate) fn describe_view(spec: &Bound<'_, PyAny>) -> Result<Arc<Described>> {
    let d = describe(spec).map_err(|e| {
        let e = PyErr::from(e);
        invalid_handle(format!("invalid handle: malformed view dtype: {e}"))
    })?;
    if !d.subshape.is_empty() {
        return Err(invalid_handle("invalid handle: a view's dtype cannot be a subarray"));
    }
    Ok(d)
}
