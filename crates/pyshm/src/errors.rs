//! Every Python exception the native module raises comes from here.
//!
//! Invariants:
//! 1. Each Rust error enum of the layers below becomes a Python exception in exactly one place:
//!    the `From<Error> for PyErr` below. Bindings return [`Result`], whose [`Error`] wraps the
//!    foreign enums (the orphan rule forbids `From<PoolError> for PyErr` here) and Python's own
//!    errors, so `?` works on both.
//! 2. An exception subclasses the nearest builtin, so `except MemoryError` or
//!    `except ValueError` keeps working: [`PoolMemoryError`] (a `MemoryError`) for a full pool,
//!    [`InvalidHandleError`] (a `ValueError`) for a handle that names nothing valid and its
//!    subclass [`StaleHandleError`] for one whose array was freed, [`PoolNotFoundError`] (a
//!    `FileNotFoundError`, errno `ENOENT`) for a pool that does not exist, [`PoolOSError`] (an
//!    `OSError`) for a failed system call, with the call's errno when there is one, its subclass
//!    [`PoolPermissionError`] (also a `PermissionError`) when that errno is `EACCES` or `EPERM`,
//!    `TimeoutError` for a pool whose creator did not finish in time, [`NameTableFullError`] (a
//!    `RuntimeError`) when a pool's name table is full, and [`PoolFullError`] (a `RuntimeError`:
//!    nothing is wrong with the array or the handle) when every process slot is taken, from
//!    every entry point, with its subclass [`TokenTableFullError`] when every transfer token
//!    slot is.
//! 3. pyshm's exception classes say `module = "pyshm"` and are re-exported there, so they
//!    pickle (from a worker to its caller) as themselves. None takes other constructor
//!    arguments than its builtin base, so the base's `__reduce__` rebuilds it (message, and
//!    errno for the `OSError`s).
//! 4. The message is the Rust error's `Display`, which names what failed (pool, segment, sizes).

use pyo3::create_exception;
use pyo3::exceptions::{
    PyFileExistsError, PyFileNotFoundError, PyMemoryError, PyOSError, PyPermissionError, PyRuntimeError,
    PyTimeoutError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use shm_arena::{CheckError, CreateError, OpenError, RegisterError};
use shm_ndarray::{ArrayError, DTypeError, HandleError, NameError, PoolError};

create_exception!(
    pyshm,
    InvalidHandleError,
    PyValueError,
    "A handle that names no valid array: malformed, corrupt, of another pool, or a view outside its array."
);
create_exception!(
    pyshm,
    StaleHandleError,
    InvalidHandleError,
    "A handle whose array was freed: its memory may now hold another array, so it is refused."
);
create_exception!(
    pyshm,
    PoolNotFoundError,
    PyFileNotFoundError,
    "The pool a handle or name refers to does not exist (any more)."
);
create_exception!(
    pyshm,
    PoolMemoryError,
    PyMemoryError,
    "The pool (or /dev/shm) has no room for the array: raise max_size, free arrays, or wait."
);
create_exception!(
    pyshm,
    PoolCorruptError,
    PyRuntimeError,
    "The pool's shared memory breaks its protocol (e.g. a lock held by a live process that is not one of the pool's): written by a buggy or hostile process of the same user. Nothing was taken over; recreate the pool."
);
create_exception!(
    pyshm,
    NameTableFullError,
    PyRuntimeError,
    "The pool holds as many names as it can (524,288): delete names (pyshm.delete) to make room. A RuntimeError, as it was before it had a class of its own."
);
create_exception!(
    pyshm,
    PoolFullError,
    PyRuntimeError,
    "A table of the pool is full: every process slot is taken by a live process (raised by joining, attaching, unpickling and making arrays alike), or, as its subclass TokenTableFullError, every transfer token slot."
);
create_exception!(
    pyshm,
    TokenTableFullError,
    PoolFullError,
    "No handle could be made: every transfer token slot of the pool is taken by a handle sent and not attached yet. Nothing was taken; send the data instead, let receivers attach, or reclaim old tokens (Pool.reclaim_tokens)."
);
create_exception!(
    pyshm,
    PoolOSError,
    PyOSError,
    "A system call on the pool's shared memory failed; `errno` is the call's error number when known."
);

/// `pyshm.PoolPermissionError`, made on first use: `create_exception!` takes one base, and this
/// class has two (`PoolOSError` and `PermissionError`).
static POOL_PERMISSION_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Docstring of [`pool_permission_error`]'s class.
const POOL_PERMISSION_DOC: &str = "A system call on the pool's shared memory was refused (EACCES or EPERM): a \
                                   PoolOSError that is also a PermissionError.";

/// The class `pyshm.PoolPermissionError`: `type(name, (PoolOSError, PermissionError), ...)`.
fn pool_permission_error(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    POOL_PERMISSION_ERROR
        .get_or_try_init(py, || {
            let bases = PyTuple::new(py, [py.get_type::<PoolOSError>(), py.get_type::<PyPermissionError>()])?;
            let dict = PyDict::new(py);
            dict.set_item("__module__", "pyshm")?;
            dict.set_item("__doc__", POOL_PERMISSION_DOC)?;
            let class = py.get_type::<PyType>().call1(("PoolPermissionError", bases, dict))?;
            Ok(class.cast_into::<PyType>().map_err(PyErr::from)?.unbind())
        })
        .map(|class| class.bind(py))
}

/// `EPERM`: an operation the caller is not allowed.
const EPERM: i32 = 1;
/// `EACCES`: permission denied by the file's mode.
const EACCES: i32 = 13;
/// `ENOENT`: what a missing pool or name reports as its errno.
const ENOENT: i32 = 2;
/// `EEXIST`: what an existing segment or name reports as its errno.
const EEXIST: i32 = 17;

/// Every error a binding returns (invariant 1).
#[derive(Debug)]
pub(crate) enum Error {
    /// An exception raised by Python or numpy, or one made here already.
    Py(PyErr),
    /// Opening, creating, joining a pool.
    Pool(PoolError),
    /// Making an array.
    Array(ArrayError),
    /// Reading or attaching a handle.
    Handle(HandleError),
    /// Array names.
    Name(NameError),
    /// A dtype the pool cannot hold.
    DType(DTypeError),
    /// A broken allocator invariant found by `check`.
    Check(CheckError),
}

/// What bindings return.
pub(crate) type Result<T> = std::result::Result<T, Error>;

macro_rules! from {
    ($($variant:ident($t:ty)),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::$variant(e)
            }
        }
    )*};
}

from!(
    Py(PyErr),
    Pool(PoolError),
    Array(ArrayError),
    Handle(HandleError),
    Name(NameError),
    DType(DTypeError),
    Check(CheckError)
);

/// An invalid-handle error with this message.
pub(crate) fn invalid_handle(msg: impl Into<String>) -> Error {
    Error::Py(InvalidHandleError::new_err(msg.into()))
}

/// A failed system call: errno and message (invariant 2).
fn os_error(errno: Option<i32>, msg: String) -> PyErr {
    match errno {
        Some(e @ (EACCES | EPERM)) => Python::attach(|py| match pool_permission_error(py) {
            Ok(class) => PyErr::from_type(class.clone(), (e, msg)),
            Err(err) => err,
        }),
        Some(e) => PoolOSError::new_err((e, msg)),
        None => PoolOSError::new_err(msg),
    }
}

fn create_err(e: CreateError) -> PyErr {
    let msg = e.to_string();
    match e {
        CreateError::NoSpace { .. } => PoolMemoryError::new_err(msg),
        CreateError::AlreadyExists { .. } => PyFileExistsError::new_err((EEXIST, msg)),
        CreateError::Sys { source, .. } => os_error(Some(source.raw_os_error()), msg),
        CreateError::Map { source, .. } => os_error(source.raw_os_error(), msg),
        CreateError::Register(r) => register_err(r, msg),
        CreateError::Layout(_) | CreateError::InvalidName { .. } => os_error(None, msg),
    }
}

fn open_err(e: OpenError) -> PyErr {
    let msg = e.to_string();
    match e {
        OpenError::NotFound { .. } => PoolNotFoundError::new_err((ENOENT, msg)),
        OpenError::NotInitialized { .. } => PyTimeoutError::new_err(msg),
        OpenError::Sys { source, .. } => os_error(Some(source.raw_os_error()), msg),
        OpenError::Map { source, .. } => os_error(source.raw_os_error(), msg),
        OpenError::Register(r) => register_err(r, msg),
        // A file in the pool's place that another user owns, or whose mode lets others in, or
        // that is not a regular file: refused before it was mapped, as the kernel refuses
        // what a user may not open (EACCES).
        OpenError::NotOwned { .. } | OpenError::Permissions { .. } | OpenError::NotAFile { .. } => {
            os_error(Some(EACCES), msg)
        }
        // A file that is not a (readable) pool segment: no system call failed.
        _ => os_error(None, msg),
    }
}

fn register_err(e: RegisterError, msg: String) -> PyErr {
    match e {
        // An arena's owner table is full only when more than about 1,014 processes allocate in
        // one segment at once, and a pool then goes on to another segment: left for a
        // standalone arena, and the same outcome for the caller as a full pool.
        RegisterError::Full { .. } => PoolFullError::new_err(msg),
        RegisterError::Identity(_) => os_error(None, msg),
    }
}

fn pool_err(e: PoolError) -> PyErr {
    let msg = e.to_string();
    match e {
        PoolError::NotFound { .. } | PoolError::Gone { .. } | PoolError::SegmentUnreachable { .. } => {
            PoolNotFoundError::new_err((ENOENT, msg))
        }
        PoolError::InvalidName { .. }
        | PoolError::Options(_)
        | PoolError::NotAPool { .. }
        | PoolError::OtherVersion { .. } => PyValueError::new_err(msg),
        PoolError::Full { .. } => PoolFullError::new_err(msg),
        // Joining is not permitted across pid namespaces (EPERM): a PoolPermissionError.
        PoolError::OtherNamespace { .. } => os_error(Some(EPERM), msg),
        PoolError::Create(c) => create_err(c),
        PoolError::Open(o) => open_err(o),
        PoolError::Alloc(_) => PoolMemoryError::new_err(msg),
    }
}

fn handle_err(e: HandleError) -> PyErr {
    let msg = e.to_string();
    match e {
        HandleError::Stale => StaleHandleError::new_err(msg),
        HandleError::Stranger { .. } => PoolCorruptError::new_err(msg),
        HandleError::TokensFull { .. } | HandleError::SenderQuota { .. } => TokenTableFullError::new_err(msg),
        HandleError::PoolFull { .. } => PoolFullError::new_err(msg),
        HandleError::NoHolderRoom { .. } => PoolMemoryError::new_err(msg),
        HandleError::OtherNamespace { .. } => os_error(Some(EPERM), msg),
        // A segment the pool does not have: the handle is corrupt (a pool that is gone fails
        // earlier, when it is opened by name).
        _ => InvalidHandleError::new_err(msg),
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Py(e) => e,
            Error::Pool(e) => pool_err(e),
            Error::Array(e) => {
                let msg = e.to_string();
                match e {
                    ArrayError::DType(_) => PyTypeError::new_err(msg),
                    ArrayError::Shape { .. } => PyValueError::new_err(msg),
                    // shm-ndarray names its Rust options; say what they are called here.
                    ArrayError::OutOfMemory { .. } => PoolMemoryError::new_err(format!(
                        "{msg}; from Python: pyshm.configure(max_size=...) or PYSHM_MAX_SIZE, and \
                         pyshm.configure(wait=seconds) or PYSHM_WAIT"
                    )),
                    ArrayError::NoSpace { .. } => PoolMemoryError::new_err(msg),
                    ArrayError::Grow(p) => pool_err(p),
                    ArrayError::PoolGone => PoolNotFoundError::new_err((ENOENT, msg)),
                }
            }
            Error::Handle(e) => handle_err(e),
            Error::Name(e) => {
                let msg = e.to_string();
                match e {
                    NameError::NotFound(_) => PyFileNotFoundError::new_err((ENOENT, msg)),
                    NameError::Exists(_) => PyFileExistsError::new_err((EEXIST, msg)),
                    NameError::Invalid(_) | NameError::AlreadyNamed => PyValueError::new_err(msg),
                    NameError::Full => NameTableFullError::new_err(format!(
                        "{msg}: delete names with pyshm.delete (names of locks and events count too)"
                    )),
                    NameError::Handle(h) => handle_err(h),
                    // No memory for the table's blocks: what a full pool raises for an array.
                    NameError::Memory(a) => PyErr::from(Error::Array(a)),
                }
            }
            Error::DType(e) => PyTypeError::new_err(e.to_string()),
            Error::Check(e) => PyRuntimeError::new_err(e.to_string()),
        }
    }
}

/// The exception classes, for the module's export list.
pub(crate) fn add_exceptions(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("InvalidHandleError", py.get_type::<InvalidHandleError>())?;
    m.add("StaleHandleError", py.get_type::<StaleHandleError>())?;
    m.add("PoolNotFoundError", py.get_type::<PoolNotFoundError>())?;
    m.add("PoolMemoryError", py.get_type::<PoolMemoryError>())?;
    m.add("PoolOSError", py.get_type::<PoolOSError>())?;
    m.add("PoolCorruptError", py.get_type::<PoolCorruptError>())?;
    m.add("NameTableFullError", py.get_type::<NameTableFullError>())?;
    m.add("PoolFullError", py.get_type::<PoolFullError>())?;
    m.add("TokenTableFullError", py.get_type::<TokenTableFullError>())?;
    m.add("PoolPermissionError", pool_permission_error(py)?)?;
    Ok(())
}
