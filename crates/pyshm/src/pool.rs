//! `NativePool`: a [`shm_ndarray::Pool`] as Python sees it, this process's registry of open
//! pools, and the figures pools report.
//!
//! Invariants:
//! 1. This process has at most one registered `NativePool` per pool name: `create` and `open`
//!    return the registered one when there is one, and register what they open otherwise. The
//!    registry (`open_pools`) is the only list of the pools this process uses; `leave` takes a
//!    pool out of it. (shm-ndarray's own table below it only shares one mapping per name.)
//! 2. No memory is read or written through a handle before `shm-ndarray` validated it; a view
//!    whose dtype differs from the array's is checked against the array's data length with its
//!    own item size (`ndarray::view_inside`).
//! 3. The GIL is released around waits (creating or opening a pool, an allocation that may wait
//!    for memory, collection) and around large fills.
//! 4. The figures (`PoolStats`, `CollectReport`, `PoolInfo`) are read-only snapshots, copied
//!    out of shm-ndarray's structs; they are pyshm's public classes (`module = "pyshm"`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use numpy::PyArrayDescr;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple, PyType};
use shm_ndarray::{ArrayError, Backend, Pool, PoolOptions, SharedArray};

use crate::allocator;
use crate::dtypes::{describe, numpy_dtype};
use crate::errors::{invalid_handle, PoolOSError, Result};
use crate::gil;
use crate::handle::Handle;
use crate::ndarray::{block_of, fill_zero, geometry, new_ndarray, view_inside, Block};

/// Arrays at least this large are filled with the GIL released.
const RELEASE_GIL_BYTES: u64 = 1 << 20;

/// The pools this process uses, by name (invariant 1). Entries are added and removed with the
/// GIL held, so a `Py` is never dropped without it.
static OPEN_POOLS: Mutex<Vec<Py<NativePool>>> = Mutex::new(Vec::new());

fn with_open<R>(f: impl FnOnce(&mut Vec<Py<NativePool>>) -> R) -> R {
    f(&mut OPEN_POOLS.lock().unwrap_or_else(|p| p.into_inner()))
}

fn registered(py: Python<'_>, name: &str) -> Option<Py<NativePool>> {
    with_open(|open| open.iter().find(|p| p.get().pool.name() == name).map(|p| p.clone_ref(py)))
}

/// [`registered`] for a name that is a Python string: compared as Python strings, so the
/// common lookup (every unpickled handle) converts nothing to UTF-8.
fn registered_py(name: &Bound<'_, PyString>) -> PyResult<Option<Py<NativePool>>> {
    let py = name.py();
    let open = NativePool::open_pools(py);
    for p in open {
        let theirs = p.get().name.bind(py);
        if theirs.is(name) || theirs.as_any().eq(name)? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Registers `pool` unless a pool of its name is registered already; returns the registered
/// one.
fn register(py: Python<'_>, pool: Pool) -> PyResult<Py<NativePool>> {
    if let Some(p) = registered(py, pool.name()) {
        return Ok(p);
    }
    let name = PyString::new(py, pool.name()).unbind();
    let p = Py::new(py, NativePool { pool, name, left: Arc::new(allocator::Flag::new(false)) })?;
    with_open(|open| open.push(p.clone_ref(py)));
    Ok(p)
}

/// A pool as this process sees it.
#[pyclass(frozen, module = "pyshm._native")]
pub(crate) struct NativePool {
    pub(crate) pool: Pool,
    /// The pool's name as a Python string, made once.
    name: Py<PyString>,
    /// Set by `leave`: allocators made on this object take nothing more from the pool.
    pub(crate) left: Arc<allocator::Flag>,
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
    /// Creates a pool (or opens the one of that name); the pool registered under that name in
    /// this process if there is one (invariant 1).
    #[staticmethod]
    #[pyo3(signature = (name=None, size=None, max_size=None, wait=None, persistent=None, persist_while_named=false, keep=None, backend=None, process_slots=None))]
    #[allow(clippy::too_many_arguments)] // one argument per option, as pyshm.Pool passes them
    fn create(
        py: Python<'_>,
        name: Option<String>,
        size: Option<u64>,
        max_size: Option<u64>,
        wait: Option<f64>,
        persistent: Option<bool>,
        persist_while_named: bool,
        keep: Option<u64>,
        backend: Option<&str>,
        process_slots: Option<u32>,
    ) -> Result<Py<Self>> {
        let mut o = PoolOptions::new().wait(duration(wait)?).persist_while_named(persist_while_named);
        if let Some(n) = process_slots {
            o = o.process_slots(n);
        }
        if let Some(b) = backend {
            o = o.backend(b.parse::<Backend>()?);
        }
        if let Some(n) = name {
            o = o.name(n);
        }
        if let Some(s) = size {
            o = o.segment_capacity(s);
        }
        if let Some(m) = max_size {
            o = o.max_size(m);
        }
        if let Some(k) = keep {
            o = o.keep(k);
        }
        if let Some(p) = persistent {
            o = o.persistent(p);
        }
        let pool = gil::detach(py, || Pool::create(&o))?;
        if wait.is_some() {
            pool.set_wait(duration(wait)?);
        }
        Ok(register(py, pool)?)
    }

    /// The pool of that name: the registered one, or the existing pool opened and registered.
    #[staticmethod]
    fn open(py: Python<'_>, name: String) -> Result<Py<Self>> {
        if let Some(p) = registered(py, &name) {
            return Ok(p);
        }
        let pool = gil::detach(py, || Pool::open(&name))?;
        Ok(register(py, pool)?)
    }

    /// The pool registered under that name, or `None` (opens nothing).
    #[staticmethod]
    fn find(name: &Bound<'_, PyString>) -> PyResult<Option<Py<Self>>> {
        registered_py(name)
    }

    /// Every registered pool (invariant 1).
    #[staticmethod]
    fn open_pools(py: Python<'_>) -> Vec<Py<Self>> {
        with_open(|open| open.iter().map(|p| p.clone_ref(py)).collect())
    }

    /// Where the pool's growth segments live: `"shm"` (files in /dev/shm) or `"memfd"`.
    #[getter]
    fn backend(&self) -> &'static str {
        self.pool.backend().as_str()
    }

    /// The pool's name (its files in /dev/shm are `pyshm-<name>` and `pyshm-<name>-<random suffix>`).
    #[getter]
    fn name<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        self.name.bind(py).clone()
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
    ) -> Result<Bound<'py, PyAny>> {
        let fortran = match order.unwrap_or("C") {
            "C" | "c" => false,
            "F" | "f" => true,
            o => return Err(PyValueError::new_err(format!("order must be 'C' or 'F', not {o:?}")).into()),
        };
        let d = describe(dtype)?;
        let mut dims = shape_of(shape)?;
        dims.extend_from_slice(&d.subshape);
        let nbytes = dims.iter().try_fold(d.dtype.itemsize(), |acc, n| acc.checked_mul(*n)).unwrap_or(u64::MAX);
        // Release the GIL when the allocation may wait (or grow by a large segment), or the
        // fill is large (invariant 3).
        let slow = self.pool.wait().is_some() || nbytes >= 16 * RELEASE_GIL_BYTES;
        let make = || -> std::result::Result<SharedArray, ArrayError> {
            let a = self.pool.empty(&d.dtype, &dims, fortran)?;
            if zero {
                fill_zero(&a);
            }
            Ok(a)
        };
        let array = if slow || (zero && nbytes >= RELEASE_GIL_BYTES) { gil::detach(py, make) } else { make() }?;
        Ok(self.wrap(py, array, d.descr.bind(py))?)
    }

    /// The array (or view) a handle names.
    fn attach<'py>(&self, py: Python<'py>, handle: &Bound<'py, Handle>) -> Result<Bound<'py, PyAny>> {
        let h = handle.get();
        let array = self.pool.attach(&h.handle)?;
        let Some(retype) = &h.retype else {
            let descr = numpy_dtype(py, array.dtype())?;
            return Ok(self.wrap(py, array, &descr)?);
        };
        let itemsize = retype.dtype.dtype.itemsize();
        if !view_inside(retype.offset, &retype.shape, &retype.strides, itemsize, array.base_len()) {
            return Err(invalid_handle("invalid handle: the view lies outside its array"));
        }
        let array_descr = numpy_dtype(py, array.dtype())?;
        let block =
            Bound::new(py, Block { array, pool_name: self.pool.name().to_owned(), descr: array_descr.unbind() })?;
        let shape: Vec<u64> = retype.shape.iter().map(|n| *n as u64).collect();
        Ok(new_ndarray(block, retype.dtype.descr.bind(py), retype.offset as u64, &shape, &retype.strides)?)
    }

    /// Gives back the transfer token of a handle that will never be attached, without mapping
    /// its array (see `shm_ndarray::Pool::cancel`). `StaleHandleError` if it was attached or
    /// cancelled already.
    fn cancel(&self, handle: &Bound<'_, Handle>) -> Result<()> {
        Ok(self.pool.cancel(&handle.get().handle)?)
    }

    /// Usage figures.
    fn stats(&self, py: Python<'_>) -> PoolStats {
        let s = gil::detach(py, || self.pool.stats());
        PoolStats {
            capacity: s.capacity,
            used: s.used,
            free: s.free,
            largest_free: s.largest_free,
            arrays: s.arrays,
            segments: s.segments as u64,
            processes: s.processes as u64,
            reserved: s.reserved,
            held: s.held,
            handles_in_flight: s.handles_in_flight,
            token_slots: s.token_slots,
            live: s.live,
            warm: s.warm,
            keep: s.keep,
            overhead: s.overhead(),
            name_table: s.name_table,
        }
    }

    /// Frees what dead processes held; returns what it did.
    fn collect(&self, py: Python<'_>) -> CollectReport {
        let r = gil::detach(py, || self.pool.collect());
        CollectReport {
            dead_processes: r.dead_processes as u64,
            arrays_freed: r.arrays_freed as u64,
            blocks_recovered: r.blocks_recovered,
        }
    }

    /// Gives every free page of the pool back to the system; returns the bytes.
    fn trim(&self, py: Python<'_>) -> u64 {
        gil::detach(py, || self.pool.trim())
    }

    /// Checks every segment's allocator; raises RuntimeError on a violation.
    fn check(&self, py: Python<'_>) -> Result<()> {
        Ok(gil::detach(py, || self.pool.check())?)
    }

    // The name operations wait for the pool's directory lock, which another process may hold
    // for long (stopped, or listing half a million names): detached, or every thread of this
    // interpreter would stop with the one that waits (found in review).

    /// Registers `arr` (a pooled array) under `name`.
    fn publish(&self, py: Python<'_>, name: &str, arr: &Bound<'_, PyAny>) -> Result<()> {
        let g = geometry(arr).ok_or_else(|| PyTypeError::new_err("expected a numpy array"))?;
        let block = block_of(arr, &g).ok_or_else(|| PyValueError::new_err("the array does not live in a pool"))?;
        let array = &block.get().array;
        Ok(gil::detach(py, || self.pool.publish(name, array))?)
    }

    /// The array registered under `name`.
    fn lookup<'py>(&self, py: Python<'py>, name: &str) -> Result<Bound<'py, PyAny>> {
        let array = gil::detach(py, || self.pool.lookup(name))?;
        let descr = numpy_dtype(py, array.dtype())?;
        Ok(self.wrap(py, array, &descr)?)
    }

    /// Removes `name`.
    fn unpublish(&self, py: Python<'_>, name: &str) -> Result<()> {
        Ok(gil::detach(py, || self.pool.unpublish(name))?)
    }

    /// Every registered name.
    fn names(&self, py: Python<'_>) -> Result<Vec<String>> {
        Ok(gil::detach(py, || self.pool.names())?)
    }

    /// Registers this process now (after a fork: re-acquires inherited arrays).
    fn join(&self) -> Result<()> {
        Ok(self.pool.join()?)
    }

    /// Leaves the pool (see `shm_ndarray::Pool::leave`) and takes it out of the registry
    /// (invariant 1); allocators made on this object take nothing more from it.
    fn leave(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let this = slf.get();
        let removed = with_open(|open| {
            let at = open.iter().position(|p| p.as_ptr() == slf.as_ptr());
            at.map(|i| open.swap_remove(i))
        });
        drop(removed); // with the GIL held, after the registry's lock
                       // Relaxed: the GIL orders this with handlers called under it; a handler running without
                       // the GIL that misses it allocates once more (see `allocator::HandlerState::pool_alloc`).
        this.left.store(true, std::sync::atomic::Ordering::Relaxed);
        gil::detach(py, || this.pool.leave());
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
        Ok(gil::detach(py, || self.pool.reclaim_tokens_older_than(age)))
    }

    /// Cancels transfer tokens that the processes `pids`, all dead now, sent at most
    /// `seconds` ago (their unread messages are being discarded).
    fn reclaim_tokens_of_dead(&self, py: Python<'_>, pids: Vec<u32>, seconds: f64) -> PyResult<usize> {
        let age = duration(Some(seconds))?.unwrap_or_default();
        Ok(gil::detach(py, || self.pool.reclaim_tokens_of_dead(&pids, age)))
    }

    fn __repr__(&self) -> String {
        format!("<pyshm pool {:?}>", self.pool.name())
    }
}

/// Defines a read-only figures class: fields with their docs, a constructor taking the fields
/// in order (or by keyword; pickling uses it), `==`, and a repr that lists the fields.
macro_rules! figures {
    ($(#[doc = $doc:literal])* $name:ident { $($(#[doc = $fdoc:literal])* $field:ident: $t:ty,)* }) => {
        $(#[doc = $doc])*
        #[pyclass(frozen, eq, module = "pyshm")]
        #[derive(Clone, Debug, PartialEq)]
        pub(crate) struct $name {
            $($(#[doc = $fdoc])* #[pyo3(get)] pub(crate) $field: $t,)*
        }

        #[pymethods]
        impl $name {
            #[new]
            #[allow(clippy::too_many_arguments)] // one argument per field, as a NamedTuple takes them
            fn new($($field: $t),*) -> Self {
                Self { $($field),* }
            }

            fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyType>, Bound<'py, PyTuple>)> {
                // One object per field (a Rust tuple converts only up to 12 elements).
                let fields = [$(pyo3::IntoPyObjectExt::into_py_any(self.$field.clone(), py)?),*];
                Ok((py.get_type::<Self>(), PyTuple::new(py, fields)?))
            }

            fn __repr__(&self) -> String {
                let parts: Vec<String> = vec![$(format!(concat!(stringify!($field), "={:?}"), self.$field)),*];
                format!(concat!(stringify!($name), "({})"), parts.join(", "))
            }
        }
    };
}

figures! {
    /// A pool's usage, in bytes unless said otherwise.
    PoolStats {
        /// Bytes of address space of the data segments (sparse: see `held` for memory).
        capacity: u64,
        /// Bytes of blocks holding array data (small arrays, 4 KiB or less with their header,
        /// live in a metadata segment and count here too).
        used: u64,
        /// Bytes free in the data segments.
        free: u64,
        /// The largest block an array could get without the pool growing.
        largest_free: u64,
        /// Arrays alive in the pool (held by some process, a name or a handle in flight).
        arrays: u64,
        /// Segments (files in /dev/shm), metadata included.
        segments: u64,
        /// Processes registered in the pool.
        processes: u64,
        /// Bytes of freed small arrays' blocks that processes keep for their next small arrays
        /// (not in `used`): given back when a process leaves the pool, when memory runs short,
        /// or by `collect` when it dies.
        reserved: u64,
        /// Bytes the pool holds from /dev/shm: its segments' metadata and the pages reserved
        /// for blocks (what the pool costs the machine).
        held: u64,
        /// Handles sent and not attached (or cancelled) yet: each holds one of the pool's
        /// transfer token slots.
        handles_in_flight: u64,
        /// The pool's transfer token slots: how many handles can be in flight at once.
        token_slots: u64,
        /// Bytes of array data alive (every array's `nbytes`).
        live: u64,
        /// The warm reserve now: bytes of freed arrays' pages kept for reuse.
        warm: u64,
        /// The warm reserve's bound (`configure(keep=...)`).
        keep: u64,
        /// `held / live` (infinite when nothing is live but memory is held).
        overhead: f64,
        /// Bytes of metadata blocks the pool's name table holds: its index (none without
        /// names) and a 128-byte entry per name.
        name_table: u64,
    }
}

figures! {
    /// What `collect` reclaimed.
    CollectReport {
        /// Processes found dead and removed from the pool.
        dead_processes: u64,
        /// Arrays freed because only dead processes held them.
        arrays_freed: u64,
        /// Blocks recovered from allocations that dead processes left unfinished.
        blocks_recovered: u64,
    }
}

figures! {
    /// A pool found in /dev/shm by `list_pools`.
    PoolInfo {
        /// The pool's name.
        name: String,
        /// Bytes of its files (address space: segments are sparse, see `held`).
        bytes: u64,
        /// Bytes it holds from /dev/shm.
        held: u64,
        /// Bytes of freed arrays' pages kept for reuse (the warm reserve).
        warm: u64,
        /// The warm reserve's bound.
        keep: u64,
        /// Bytes of blocks holding array data.
        used: u64,
        /// Processes registered and alive.
        live_processes: u64,
        /// Whether it outlives its processes.
        persistent: bool,
        /// Where its growth segments live: `"shm"` or `"memfd"`.
        backend: String,
        /// Its memfd segments (not in /dev/shm, not counted in `bytes` or `used`).
        memfd_segments: u64,
    }
}

/// Every pool in /dev/shm.
#[pyfunction]
pub(crate) fn list_pools(py: Python<'_>) -> Vec<PoolInfo> {
    gil::detach(py, shm_ndarray::list_pools)
        .into_iter()
        .map(|p| PoolInfo {
            name: p.name,
            bytes: p.bytes,
            held: p.held,
            warm: p.warm,
            keep: p.keep,
            used: p.used,
            live_processes: p.live_processes as u64,
            persistent: p.persistent,
            backend: p.backend.as_str().to_owned(),
            memfd_segments: p.memfd_segments as u64,
        })
        .collect()
}

figures! {
    /// A pool file that `clean_pools` left in /dev/shm, and why.
    SkippedPoolFile {
        /// The file's name in /dev/shm.
        file: String,
        /// The pool it belongs to by its name.
        pool: String,
        /// Why it was left, in words ("owned by uid 65534, not by us", "in use by 2 live process(es)").
        reason: String,
        /// The file's owner when that is why it was left (another uid, or not a regular file); else None.
        owner_uid: Option<u32>,
        /// Why, as a word: "not_owned", "permissions", "not_a_file", "live", "persistent",
        /// "not_a_pool", "other_namespace", "other_version" (made by another pyshm version,
        /// mapped by no process) or "other_version_in_use" (so a program or the command line
        /// can word it its own way).
        kind: String,
    }
}

/// Removes pools of ours whose processes are all dead, never another user's files; returns
/// the names removed and every pool file left in place, with why.
#[pyfunction]
#[pyo3(signature = (include_persistent=false))]
pub(crate) fn clean_pools(py: Python<'_>, include_persistent: bool) -> (Vec<String>, Vec<SkippedPoolFile>) {
    let report = gil::detach(py, || shm_ndarray::clean_pools(include_persistent));
    (report.removed, report.skipped.into_iter().map(SkippedPoolFile::from).collect())
}

/// Our pools in /dev/shm that `list_pools` cannot read (another pyshm version, being created,
/// corrupt), each with why; nothing is removed.
#[pyfunction]
pub(crate) fn list_unreadable_pools(py: Python<'_>) -> Vec<SkippedPoolFile> {
    gil::detach(py, shm_ndarray::list_unreadable_pools).into_iter().map(SkippedPoolFile::from).collect()
}

impl From<shm_ndarray::SkippedFile> for SkippedPoolFile {
    fn from(s: shm_ndarray::SkippedFile) -> Self {
        use shm_ndarray::SkipReason;
        SkippedPoolFile {
            owner_uid: match s.reason {
                SkipReason::NotOwned { owner_uid } | SkipReason::NotAFile { owner_uid } => Some(owner_uid),
                _ => None,
            },
            kind: match s.reason {
                SkipReason::NotOwned { .. } => "not_owned",
                SkipReason::Permissions { .. } => "permissions",
                SkipReason::NotAFile { .. } => "not_a_file",
                SkipReason::Live { .. } => "live",
                SkipReason::Persistent => "persistent",
                SkipReason::NotAPool { .. } => "not_a_pool",
                SkipReason::OtherVersion { mapped_by: 0, .. } => "other_version",
                SkipReason::OtherVersion { .. } => "other_version_in_use",
                SkipReason::OtherNamespace { .. } => "other_namespace",
            }
            .to_owned(),
            reason: s.reason.to_string(),
            file: s.file,
            pool: s.pool,
        }
    }
}

/// Removes pools whose processes are all dead; returns their names.
#[pyfunction]
#[pyo3(signature = (include_persistent=false))]
pub(crate) fn clean_dead_pools(py: Python<'_>, include_persistent: bool) -> Vec<String> {
    gil::detach(py, || shm_ndarray::clean_dead_pools(include_persistent))
}

/// Free bytes in /dev/shm.
#[pyfunction]
pub(crate) fn shm_free_bytes() -> PyResult<u64> {
    shm_arena::shm_free_bytes().ok_or_else(|| PoolOSError::new_err("cannot read /dev/shm's free space"))
}
