//! NumPy's data-memory handler (NEP 49) backed by a pool: while it is in effect, numpy takes
//! the data of every large enough array it allocates from the pool, and such arrays travel
//! between processes as handles like arrays made by `pyshm.empty`.
//!
//! # Invariants
//!
//! 1. Every pointer the handler got from a pool is a key of the process-local map
//!    ([`REGISTRY`]) until numpy frees it or `realloc` moves it, and the entry holds this
//!    process's reference to the block (a 1-D `uint8` [`SharedArray`] over the whole block), so
//!    a key is mapped memory that no other live allocation can share an address with.
//! 2. A pointer that is not a key came from the fallback handler: `free` and `realloc` tell the
//!    two apart by the map alone, never by the `size` numpy passes (not always the allocated
//!    size) nor by the `ctx` (a handler may free a pool pointer of another pyshm handler's pool).
//! 3. The handler's functions never need the GIL, never wait for memory and never unwind: what
//!    the pool cannot serve at once goes to the fallback, and a panic counts as such a case.
//! 4. A handler's state ([`HandlerBox`]) lives exactly as long as its capsule, which numpy keeps
//!    alive from its context variable and from every array made with it, and the state keeps
//!    the fallback's capsule alive.
//! 5. The map's lock is held only around one lookup, insert or remove: nothing is dropped and
//!    nothing calls out while it is held (dropping a [`SharedArray`] takes the pool's locks).
//! 6. After a fork, dropping an inherited entry never releases the parent's hold, because
//!    `shm-ndarray` tags each hold with the fork generation that took it.
//! 7. Once this process left the pool, every entry's hold is `NOT_HELD` (freeing it touches no
//!    slot) and the handler takes nothing more from that pool.
//!
//! # Protocol
//!
//! `make_allocator` builds a [`HandlerBox`]: numpy's `PyDataMem_Handler` (name `pyshm`, version
//! 1, the four functions below, and the box's [`HandlerState`] as `ctx`) followed by the state,
//! and wraps the handler in a capsule named `mem_handler` whose destructor frees the box
//! (invariant 4). numpy calls the handler of the array that owns the memory, also after the
//! handler was uninstalled, and picks the handler of a new array from a context variable, so
//! `PyDataMem_SetHandler` acts per thread and per asyncio task.
//!
//! The fallback is the handler in effect when the new one is made (numpy's default normally),
//! or, when that is a pyshm handler, its fallback: nested allocators never chain into each
//! other's pools. It serves what the pool does not (invariant 3): requests below `min_bytes`, a
//! pool this process left (the [`NativePool`]'s `left` flag), a full pool, and a pool configured
//! to wait (shm-ndarray has no allocation that skips the wait, so such a pool is not used).
//!
//! - `malloc(n)`: for `n >= min_bytes`, a `uint8` array of [`capacity_for`]`(n)` bytes (the
//!   pool's block size for `n`, so that the array is its whole block and `realloc` can grow
//!   into it), whose data pointer is entered in the map (invariant 1); otherwise the fallback's.
//!   A pool allocation may collect dead processes' memory or grow the pool (a new segment,
//!   under the pool's directory lock, which other processes hold only briefly).
//! - `calloc(k, n)`: the same, then `memset` to zero, because pool memory may be reused. It runs
//!   with the GIL as numpy holds it: a handler cannot know whether its caller holds the GIL.
//! - `realloc(p, n)`: a pool pointer stays in place when a fresh allocation of `n` bytes would
//!   get the same block; otherwise it moves (allocate as `malloc` does, copy, free). A fallback
//!   pointer moves into the pool when `malloc` would put `n` bytes there: the fallback's
//!   `realloc` first, so that the copy knows which bytes are valid without the old size.
//! - `free(p)`: a key is removed from the map and its [`SharedArray`] dropped after the lock
//!   (invariant 5), which releases this process's hold (a handle in flight keeps the block
//!   alive by its transfer token); anything else goes to the fallback (invariant 2).
//!
//! Fork (invariant 6): a child that joins the pool (a multiprocessing child does at once, any
//! child on its first pool operation) re-acquires every inherited array under its own slot and
//! releases only that hold; a child that never joins releases nothing. The map's lock, like the
//! pool's own locks, is a plain mutex: a fork while another thread is inside one of its few
//! instructions would leave it locked in the child (in practice every caller holds the GIL,
//! which the forking thread holds too).
//!
//! Leave (invariant 7): `NativePool.leave` sets `left` before `Pool::leave` marks every hold of
//! this process, handler blocks included, `NOT_HELD`; arrays stay mapped, so late reads and
//! writes cannot fault, and late frees touch no slot that another process may own by then.
//!
//! # Layout
//!
//! numpy's C API table (`_ARRAY_API`) gives `PyDataMem_SetHandler` (slot 304) and
//! `PyDataMem_GetHandler` (305) from C API feature version 0xf (numpy 1.22); rust-numpy does
//! not bind them, so [`mem_api`] reads the two slots after checking the version (slot 211).
//! [`RawHandler`] mirrors numpy's `PyDataMem_Handler` (`numpy/ndarraytypes.h`), with its size
//! and the allocator's offset asserted at compile time.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_uint, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::ffi::PyObject;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCapsule, PyCapsuleMethods, PyDict};
use shm_ndarray::{DType, Pool, SharedArray};

use crate::pool::NativePool;

/// A process-local flag (pyshm has no loom model, so it needs no facade).
#[allow(clippy::disallowed_types)]
pub(crate) type Flag = std::sync::atomic::AtomicBool;

/// The capsule name numpy requires (and checks in `PyDataMem_SetHandler`).
const CAPSULE_NAME: &CStr = c"mem_handler";

/// The name numpy reports for arrays made by this handler (`get_handler_name`).
const HANDLER_NAME: &[u8] = b"pyshm";

/// numpy's C API feature version 1.22, the first with `PyDataMem_SetHandler`.
const NPY_1_22_API_VERSION: c_uint = 0xf;

/// Below this many bytes an array may be stored inside its header's block in the pool, whose
/// size is not a power of two: such requests are not rounded up to a power of two.
const ROUND_FROM: usize = 4096;

// ---------------------------------------------------------------------------------------------
// numpy's structures (numpy/ndarraytypes.h, version 1 of the handler)

type MallocFn = unsafe extern "C" fn(ctx: *mut c_void, size: usize) -> *mut c_void;
type CallocFn = unsafe extern "C" fn(ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void;
type ReallocFn = unsafe extern "C" fn(ctx: *mut c_void, ptr: *mut c_void, new_size: usize) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(ctx: *mut c_void, ptr: *mut c_void, size: usize);

/// numpy's `PyDataMemAllocator`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawAllocator {
    ctx: *mut c_void,
    malloc: Option<MallocFn>,
    calloc: Option<CallocFn>,
    realloc: Option<ReallocFn>,
    free: Option<FreeFn>,
}

/// numpy's `PyDataMem_Handler`.
#[repr(C)]
struct RawHandler {
    name: [c_char; 127],
    version: u8,
    allocator: RawAllocator,
}

// The layout numpy reads: a 128-byte name and version, then five pointers.
const _: () = assert!(std::mem::size_of::<RawHandler>() == 128 + 5 * std::mem::size_of::<usize>());
const _: () = assert!(std::mem::offset_of!(RawHandler, allocator) == 128);

// ---------------------------------------------------------------------------------------------
// numpy's C API: PyDataMem_SetHandler and PyDataMem_GetHandler

type SetHandlerFn = unsafe extern "C" fn(handler: *mut PyObject) -> *mut PyObject;
type GetHandlerFn = unsafe extern "C" fn() -> *mut PyObject;

struct MemApi {
    /// numpy's `_ARRAY_API` capsule, which holds the table the functions were read from.
    _table: Py<PyCapsule>,
    set_handler: SetHandlerFn,
    get_handler: GetHandlerFn,
}

static MEM_API: PyOnceLock<MemApi> = PyOnceLock::new();

/// The two handler functions of numpy's C API, after checking numpy has them.
fn mem_api(py: Python<'_>) -> PyResult<&'static MemApi> {
    MEM_API.get_or_try_init(py, || {
        // numpy 2 moved the module; trying the new name first avoids numpy 2's deprecation
        // warning for the old one.
        let module =
            py.import("numpy._core._multiarray_umath").or_else(|_| py.import("numpy.core._multiarray_umath"))?;
        let capsule = module.getattr("_ARRAY_API")?.cast_into::<PyCapsule>()?;
        let table = capsule.pointer_checked(None)?.cast::<Option<unsafe extern "C" fn() -> c_uint>>();
        // The table lives as long as its capsule, which `MemApi` keeps (extension modules
        // are never unloaded anyway).
        // SAFETY: slot 211 (`PyArray_GetNDArrayCFeatureVersion`) exists in every numpy that
        // rust-numpy loads (it checks the same slot first).
        let version_fn = unsafe { table.as_ptr().wrapping_add(211).read() };
        let version = match version_fn {
            // SAFETY: numpy's function, taking nothing, callable with the GIL.
            Some(f) => unsafe { f() },
            None => 0,
        };
        if version < NPY_1_22_API_VERSION {
            return Err(PyRuntimeError::new_err(format!(
                "pyshm's allocator needs numpy >= 1.22 (C API feature version 0x{NPY_1_22_API_VERSION:x}); this \
                 numpy has C API feature version 0x{version:x}"
            )));
        }
        let slots = table.as_ptr().cast::<*const c_void>();
        // SAFETY: from feature version 0xf the table has slots 304 and 305 (checked above).
        let set = unsafe { slots.wrapping_add(304).cast::<Option<SetHandlerFn>>().read() };
        // SAFETY: as above.
        let get = unsafe { slots.wrapping_add(305).cast::<Option<GetHandlerFn>>().read() };
        match (set, get) {
            (Some(set_handler), Some(get_handler)) => Ok(MemApi { _table: capsule.unbind(), set_handler, get_handler }),
            _ => Err(PyRuntimeError::new_err("numpy's C API table has no PyDataMem_SetHandler")),
        }
    })
}

/// The handler numpy will use for the next array in this context (a new reference).
fn current_handler(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let api = mem_api(py)?;
    // SAFETY: numpy's function, called with the GIL; returns a new reference or NULL with an
    // exception set.
    let h = unsafe { (api.get_handler)() };
    if h.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: a new reference we own.
    Ok(unsafe { Bound::from_owned_ptr(py, h) })
}

// ---------------------------------------------------------------------------------------------
// The process-local map (invariants 1, 2 and 5)

/// One allocation the handler took from a pool: this process's reference to its block.
pub(crate) struct Allocation {
    /// A 1-D `uint8` array over the whole block (`base_ptr` is the pointer numpy got).
    pub(crate) array: SharedArray,
    /// The name of the pool the block is in.
    pub(crate) pool_name: Arc<str>,
}

struct Registry {
    /// Data pointer -> allocation (invariant 1).
    by_ptr: HashMap<usize, Arc<Allocation>>,
    /// Bytes of blocks in `by_ptr`.
    bytes: u64,
    /// Addresses of the live [`HandlerBox`]es (invariant 4): tells a pyshm handler from
    /// another, without comparing function pointers.
    handlers: HashSet<usize>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

/// Runs `f` on the registry under its lock (invariant 5: `f` only looks up, inserts or removes).
fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut guard = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    let r = guard.get_or_insert_with(|| Registry { by_ptr: HashMap::new(), bytes: 0, handlers: HashSet::new() });
    f(r)
}

/// The allocation whose data starts at `data`, if the handler took it from a pool.
pub(crate) fn lookup(data: usize) -> Option<Arc<Allocation>> {
    with_registry(|r| r.by_ptr.get(&data).cloned())
}

fn insert(data: usize, a: Arc<Allocation>) {
    let len = a.array.base_len();
    let replaced = with_registry(|r| {
        r.bytes += len;
        let old = r.by_ptr.insert(data, a)?;
        r.bytes -= old.array.base_len();
        Some(old)
    });
    // Invariant 1 says there is none; if there were, it is dropped after the lock (invariant 5).
    drop(replaced);
}

fn remove(data: usize) -> Option<Arc<Allocation>> {
    with_registry(|r| {
        let a = r.by_ptr.remove(&data)?;
        r.bytes -= a.array.base_len();
        Some(a)
    })
}

/// The array size the pool gets for a request of `size` bytes: its block size, so that the
/// array covers its whole block. `None` if it overflows.
fn capacity_for(size: usize) -> Option<usize> {
    if size < ROUND_FROM {
        Some(size)
    } else {
        size.checked_next_power_of_two()
    }
}

/// Runs `f`, turning a panic into `None` (invariant 3).
fn guarded<T>(f: impl FnOnce() -> Option<T>) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok().flatten()
}

// ---------------------------------------------------------------------------------------------
// The handler

/// The fallback handler: its capsule (a strong reference, released by the capsule destructor
/// of the [`HandlerBox`] that holds it) and a copy of its allocator.
struct Fallback {
    capsule: NonNull<PyObject>,
    allocator: RawAllocator,
}

impl Fallback {
    fn malloc(&self, size: usize) -> *mut c_void {
        match self.allocator.malloc {
            // SAFETY: the fallback's own function with its own ctx; its capsule is alive
            // (invariant 4).
            Some(f) => unsafe { f(self.allocator.ctx, size) },
            None => ptr::null_mut(),
        }
    }

    fn calloc(&self, nelem: usize, elsize: usize) -> *mut c_void {
        match self.allocator.calloc {
            // SAFETY: as in `malloc`.
            Some(f) => unsafe { f(self.allocator.ctx, nelem, elsize) },
            None => ptr::null_mut(),
        }
    }

    /// # Safety
    ///
    /// - `p` was returned by this fallback and not freed.
    unsafe fn realloc(&self, p: *mut c_void, new_size: usize) -> *mut c_void {
        match self.allocator.realloc {
            // SAFETY: as in `malloc`; `p` is the fallback's (the caller's promise).
            Some(f) => unsafe { f(self.allocator.ctx, p, new_size) },
            None => ptr::null_mut(),
        }
    }

    /// # Safety
    ///
    /// - `p` was returned by this fallback and not freed.
    unsafe fn free(&self, p: *mut c_void, size: usize) {
        if let Some(f) = self.allocator.free {
            // SAFETY: as in `realloc`.
            unsafe { f(self.allocator.ctx, p, size) }
        }
    }
}

/// What a pyshm handler knows: its pool, its threshold and its fallback.
struct HandlerState {
    pool: Pool,
    pool_name: Arc<str>,
    /// Set when this process left the pool through the [`NativePool`] (invariant 7).
    left: Arc<Flag>,
    min_bytes: usize,
    uint8: DType,
    fallback: Fallback,
}

/// What the capsule points to: numpy's handler first (the capsule's pointer is the box's
/// address), then the state its `ctx` points to.
#[repr(C)]
struct HandlerBox {
    handler: RawHandler,
    state: HandlerState,
}

impl HandlerState {
    /// A block of at least `size` bytes from the pool, entered in the map; `None` when the pool
    /// cannot serve it at once (invariant 3).
    fn pool_alloc(&self, size: usize) -> Option<NonNull<u8>> {
        // Relaxed: a handler that misses a concurrent leave allocates once more, which only
        // registers this process in the pool again (shm-ndarray's `Pool::leave`).
        if size == 0 || size < self.min_bytes || self.left.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        // The pool waits for memory only when configured to, and the handler never waits.
        if self.pool.wait().is_some_and(|w| !w.is_zero()) {
            return None;
        }
        let capacity = capacity_for(size)?;
        let array = self.pool.empty(&self.uint8, &[capacity as u64], false).ok()?;
        let data = array.base_ptr();
        // numpy aligns data to 16 bytes; pool blocks are aligned to at least 64.
        if data.as_ptr() as usize % 16 != 0 {
            return None;
        }
        insert(data.as_ptr() as usize, Arc::new(Allocation { array, pool_name: Arc::clone(&self.pool_name) }));
        Some(data)
    }

    fn malloc(&self, size: usize) -> *mut c_void {
        match guarded(|| self.pool_alloc(size)) {
            Some(p) => p.as_ptr().cast(),
            None => self.fallback.malloc(size),
        }
    }

    fn calloc(&self, nelem: usize, elsize: usize) -> *mut c_void {
        let Some(size) = nelem.checked_mul(elsize) else { return ptr::null_mut() };
        let pooled = guarded(|| {
            let p = self.pool_alloc(size)?;
            // Pool memory may have been used before. `memset` over pages this process has
            // mapped runs at memory bandwidth (3 ms for 160 MB); punching a hole in the segment
            // (`MADV_REMOVE`) costs less here but makes every later first touch a page fault
            // of tmpfs, which measured 20 times slower over the array's life.
            // SAFETY: a block of at least `size` bytes that nobody else can see yet (it is
            // ours until numpy has the pointer).
            unsafe { ptr::write_bytes(p.as_ptr(), 0, size) };
            Some(p)
        });
        match pooled {
            Some(p) => p.as_ptr().cast(),
            None => self.fallback.calloc(nelem, elsize),
        }
    }

    /// # Safety
    ///
    /// - `p` is null, or was returned by a pyshm handler (in the map, or from this handler's
    ///   fallback) and not freed since.
    unsafe fn realloc(&self, p: *mut c_void, new_size: usize) -> *mut c_void {
        if p.is_null() {
            return self.malloc(new_size);
        }
        if let Some(a) = lookup(p as usize) {
            // A pool pointer (invariant 2).
            let capacity = a.array.base_len() as usize;
            drop(a);
            if new_size >= self.min_bytes && capacity_for(new_size) == Some(capacity) {
                return p;
            }
            let q = self.malloc(new_size);
            if q.is_null() {
                return q; // `p` stays valid, as realloc promises
            }
            // SAFETY: `p` has `capacity` readable bytes (its block, kept by the map), `q` has
            // `new_size` writable ones, and they are distinct allocations.
            unsafe { ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), capacity.min(new_size)) };
            // SAFETY: `p` is a pool pointer not freed yet (the caller's promise).
            unsafe { self.free(p, capacity) };
            return q;
        }
        // A fallback pointer: into the pool if it now qualifies and the pool serves it.
        let Some(q) = guarded(|| self.pool_alloc(new_size)) else {
            // SAFETY: `p` is this fallback's (not in the map: invariant 2).
            return unsafe { self.fallback.realloc(p, new_size) };
        };
        // SAFETY: as above.
        let r = unsafe { self.fallback.realloc(p, new_size) };
        if r.is_null() {
            // SAFETY: `q` was just entered in the map and nobody else has it.
            unsafe { self.free(q.as_ptr().cast(), new_size) };
            return ptr::null_mut();
        }
        // SAFETY: `r` has `new_size` readable bytes (its first bytes are `p`'s), `q` has as
        // many writable ones, and they are distinct allocations.
        unsafe { ptr::copy_nonoverlapping(r.cast::<u8>(), q.as_ptr(), new_size) };
        // SAFETY: `r` is the fallback's and not freed.
        unsafe { self.fallback.free(r, new_size) };
        q.as_ptr().cast()
    }

    /// # Safety
    ///
    /// - As for [`HandlerState::realloc`]; `p` is not used afterwards.
    unsafe fn free(&self, p: *mut c_void, size: usize) {
        if p.is_null() {
            return;
        }
        // Removed under the lock, dropped after it (invariant 5).
        match catch_unwind(|| remove(p as usize)) {
            Ok(Some(a)) => {
                let _ = catch_unwind(AssertUnwindSafe(|| drop(a)));
            }
            // SAFETY: not in the map, so the fallback's (invariant 2).
            Ok(None) => unsafe { self.fallback.free(p, size) },
            // The map itself failed: leaking the block is safe, giving the fallback a pointer
            // that may be a pool's is not.
            Err(_) => {}
        }
    }
}

/// # Safety
///
/// numpy's promise: `ctx` is the `ctx` of the handler whose capsule is alive (invariant 4),
/// here always a [`HandlerState`].
unsafe fn state<'a>(ctx: *mut c_void) -> &'a HandlerState {
    // SAFETY: the caller's promise; the state is never mutated after the box is built.
    unsafe { &*ctx.cast::<HandlerState>() }
}

// Each entry point runs its body under `catch_unwind` (invariant 3): the bodies guard every
// step that can fail, so this is the last resort, which answers NULL or frees nothing.

unsafe extern "C" fn handler_malloc(ctx: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: numpy passes the ctx of this handler (see `state`).
    let s = unsafe { state(ctx) };
    catch_unwind(AssertUnwindSafe(|| s.malloc(size))).unwrap_or(ptr::null_mut())
}

unsafe extern "C" fn handler_calloc(ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    // SAFETY: as in `handler_malloc`.
    let s = unsafe { state(ctx) };
    catch_unwind(AssertUnwindSafe(|| s.calloc(nelem, elsize))).unwrap_or(ptr::null_mut())
}

unsafe extern "C" fn handler_realloc(ctx: *mut c_void, p: *mut c_void, new_size: usize) -> *mut c_void {
    // SAFETY: as in `handler_malloc`.
    let s = unsafe { state(ctx) };
    // SAFETY: numpy reallocates only memory this handler gave it.
    catch_unwind(AssertUnwindSafe(|| unsafe { s.realloc(p, new_size) })).unwrap_or(ptr::null_mut())
}

unsafe extern "C" fn handler_free(ctx: *mut c_void, p: *mut c_void, size: usize) {
    // SAFETY: as in `handler_malloc`.
    let s = unsafe { state(ctx) };
    // SAFETY: numpy frees only memory this handler gave it, once.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { s.free(p, size) }));
}

/// Frees a [`HandlerBox`] with its capsule (invariant 4).
unsafe extern "C" fn capsule_destructor(capsule: *mut PyObject) {
    // SAFETY: CPython calls a capsule's destructor with the GIL held, on the capsule we made.
    let p = unsafe { pyo3::ffi::PyCapsule_GetPointer(capsule, CAPSULE_NAME.as_ptr()) };
    if p.is_null() {
        // SAFETY: the GIL is held; the failed lookup set an exception, which a destructor must
        // not leave behind.
        unsafe { pyo3::ffi::PyErr_Clear() };
        return;
    }
    let _ = catch_unwind(|| with_registry(|r| r.handlers.remove(&(p as usize))));
    // SAFETY: `p` came from `Box::into_raw` in `make_allocator` and this is its capsule's only
    // destructor call, so we own the box again.
    let boxed = unsafe { Box::from_raw(p.cast::<HandlerBox>()) };
    let fallback = boxed.state.fallback.capsule;
    // Dropping the state may drop the last reference to the pool, which then leaves it; no
    // panic may unwind out of this `extern "C"` function (invariant 3).
    let _ = catch_unwind(AssertUnwindSafe(|| drop(boxed)));
    // SAFETY: the box held this strong reference; the GIL is held.
    unsafe { pyo3::ffi::Py_DecRef(fallback.as_ptr()) };
}

/// The fallback for a new handler: the handler in effect now, or its fallback if it is a pyshm
/// handler (so pyshm handlers never chain).
fn fallback_of(current: Bound<'_, PyAny>) -> PyResult<Fallback> {
    let capsule = current.cast_into::<PyCapsule>()?;
    let p = capsule.pointer_checked(Some(CAPSULE_NAME))?;
    let ours = with_registry(|r| r.handlers.contains(&(p.as_ptr() as usize)));
    if ours {
        // SAFETY: a live HandlerBox (in the registry until its destructor runs, and the
        // capsule, which we hold, keeps it alive).
        let b = unsafe { &*p.as_ptr().cast::<HandlerBox>() };
        let inner = b.state.fallback.capsule;
        // SAFETY: a live object (the box holds a reference); the GIL is held.
        unsafe { pyo3::ffi::Py_IncRef(inner.as_ptr()) };
        return Ok(Fallback { capsule: inner, allocator: b.state.fallback.allocator });
    }
    // SAFETY: a `mem_handler` capsule points to a `PyDataMem_Handler` (numpy's contract),
    // alive while the capsule is; we copy its allocator and keep the capsule.
    let allocator = unsafe { (*p.as_ptr().cast::<RawHandler>()).allocator };
    if allocator.malloc.is_none() || allocator.free.is_none() {
        return Err(PyRuntimeError::new_err("numpy's current memory handler has no malloc or free"));
    }
    let capsule = NonNull::new(capsule.into_any().into_ptr()).expect("a bound object is not null");
    Ok(Fallback { capsule, allocator })
}

// ---------------------------------------------------------------------------------------------
// Python functions

/// A new `mem_handler` capsule taking numpy allocations of at least `min_bytes` bytes from
/// `pool`; install it with `set_handler`.
#[pyfunction]
pub(crate) fn make_allocator(py: Python<'_>, pool: &NativePool, min_bytes: u64) -> crate::errors::Result<Py<PyAny>> {
    if pool.left.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(PyValueError::new_err(format!("the pool {:?} was closed", pool.pool.name())).into());
    }
    let fallback = fallback_of(current_handler(py)?)?;
    let mut name = [0 as c_char; 127];
    for (d, s) in name.iter_mut().zip(HANDLER_NAME) {
        *d = *s as c_char;
    }
    let state = HandlerState {
        pool: pool.pool.clone(),
        pool_name: Arc::from(pool.pool.name()),
        left: Arc::clone(&pool.left),
        min_bytes: usize::try_from(min_bytes).unwrap_or(usize::MAX),
        uint8: DType::new("|u1", 1)?,
        fallback,
    };
    let allocator = RawAllocator {
        ctx: ptr::null_mut(),
        malloc: Some(handler_malloc),
        calloc: Some(handler_calloc),
        realloc: Some(handler_realloc),
        free: Some(handler_free),
    };
    let raw = Box::into_raw(Box::new(HandlerBox { handler: RawHandler { name, version: 1, allocator }, state }));
    // SAFETY: `raw` is a fresh box, ours until the capsule owns it; the state never moves.
    let state = unsafe { ptr::addr_of_mut!((*raw).state) };
    // SAFETY: as above.
    unsafe { (*raw).handler.allocator.ctx = state.cast() };
    with_registry(|r| r.handlers.insert(raw as usize));
    // SAFETY: `raw` points at the handler (first field of a repr(C) box), valid until the
    // destructor frees it; the name is static.
    let capsule = unsafe { pyo3::ffi::PyCapsule_New(raw.cast(), CAPSULE_NAME.as_ptr(), Some(capsule_destructor)) };
    if capsule.is_null() {
        with_registry(|r| r.handlers.remove(&(raw as usize)));
        // SAFETY: the capsule was not made, so the box is still ours alone.
        let boxed = unsafe { Box::from_raw(raw) };
        let fallback = boxed.state.fallback.capsule;
        drop(boxed);
        // SAFETY: the box's reference; the GIL is held.
        unsafe { pyo3::ffi::Py_DecRef(fallback.as_ptr()) };
        return Err(PyErr::fetch(py).into());
    }
    // SAFETY: a new reference we own.
    Ok(unsafe { Bound::from_owned_ptr(py, capsule) }.unbind())
}

/// Makes `handler` (a `mem_handler` capsule, or None for numpy's default) the handler of this
/// context; returns the previous one.
#[pyfunction]
#[pyo3(signature = (handler))]
pub(crate) fn set_handler<'py>(py: Python<'py>, handler: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let api = mem_api(py)?;
    // numpy 2.0 (the newest for Python 3.9) installs any object unchecked, and then crashes.
    if handler.is_some_and(|h| h.cast::<PyCapsule>().map_or(true, |c| !c.is_valid_checked(Some(CAPSULE_NAME)))) {
        return Err(PyValueError::new_err("a handler must be a capsule named 'mem_handler'"));
    }
    let h = handler.map_or(ptr::null_mut(), |h| h.as_ptr());
    // SAFETY: numpy's function with the GIL held; it takes its own reference to `h` (or uses
    // its default for NULL), checks the capsule's name, and returns a new reference or NULL
    // with an exception set.
    let old = unsafe { (api.set_handler)(h) };
    if old.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: a new reference we own.
    Ok(unsafe { Bound::from_owned_ptr(py, old) })
}

/// The handler numpy uses for new arrays in this context.
#[pyfunction]
pub(crate) fn get_handler(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    current_handler(py)
}

/// This process's pool allocations by handlers: live allocations, their bytes, live handlers.
#[pyfunction]
pub(crate) fn allocator_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let (allocations, bytes, handlers) = with_registry(|r| (r.by_ptr.len(), r.bytes, r.handlers.len()));
    let d = PyDict::new(py);
    d.set_item("allocations", allocations)?;
    d.set_item("bytes", bytes)?;
    d.set_item("handlers", handlers)?;
    Ok(d)
}
