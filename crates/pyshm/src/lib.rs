//! `pyshm._native`: the thin native layer of the pyshm Python package.
//!
//! Everything users call lives in the Python files beside this module; this module does only
//! what must be fast or must touch memory. It knows numpy and the layers below
//! (`shm-ndarray`, `shm-arena`), never the pyshm Python package.
//!
//! Invariants (each module states its own in detail):
//! 1. No memory is read or written through a handle before `shm-ndarray` validated it, and no
//!    array is shown to numpy outside its block ([`ndarray`], [`handle`]).
//! 2. No Rust panic crosses into Python, and every Rust error becomes a Python exception in
//!    one place ([`errors`]).
//! 3. The GIL is released around waits (an allocation that may wait for memory, collection)
//!    and around large fills ([`pool`]), always through [`gil::detach`], which is safe when
//!    the interpreter exits meanwhile.
//!
//! Layout:
//! - [`errors`]: the exception classes and the one mapping of Rust errors to them.
//! - [`dtypes`]: numpy dtypes to shm-ndarray's descriptions and back, cached.
//! - [`ndarray`]: numpy arrays over blocks ([`ndarray::Block`], the base of every pooled
//!   array), their geometry, and the owner at the end of a base chain.
//! - [`handle`]: `pyshm.Handle`, the one Python form of a handle, and `pooled_handle`.
//! - [`pool`]: `NativePool` (a `shm_ndarray::Pool`), this process's registry of open pools,
//!   and the figures pools report (`PoolStats`, `CollectReport`, `PoolInfo`, `SkippedPoolFile`).
//! - [`allocator`]: numpy's data-memory handler backed by a pool (NEP 49).
//! - [`gil`]: releasing the GIL without a crash at interpreter exit.
//! - [`locks`]: `pyshm.Lock` and `pyshm.Event` over shm-sync's robust mutex and flag.
#![deny(unsafe_code)]

#[allow(unsafe_code)] // numpy's handler structure, capsules, and the memory numpy is handed
mod allocator;
mod dtypes;
mod errors;
mod gil;
mod handle;
#[allow(unsafe_code)] // a mutex and a flag over a checked pooled block
mod locks;
#[allow(unsafe_code)] // numpy's C API: arrays over blocks, reading an array's fields
mod ndarray;
mod pool;

use pyo3::prelude::*;

/// The module's export list: every class, exception, function and constant Python sees.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    gil::register_at_exit(m)?;
    errors::add_exceptions(m)?;
    m.add_class::<pool::NativePool>()?;
    m.add_class::<pool::PoolStats>()?;
    m.add_class::<pool::CollectReport>()?;
    m.add_class::<pool::PoolInfo>()?;
    m.add_class::<pool::SkippedPoolFile>()?;
    m.add_class::<ndarray::Block>()?;
    m.add_class::<handle::Handle>()?;
    m.add("HANDLE_FIXED_LEN", shm_ndarray::HANDLE_FIXED_LEN)?;
    // The package's version (pyproject.toml takes it from this crate too: one source).
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(handle::pooled_handle, m)?)?;
    m.add_function(wrap_pyfunction!(ndarray::is_pooled, m)?)?;
    m.add_function(wrap_pyfunction!(ndarray::pool_name_of, m)?)?;
    m.add_function(wrap_pyfunction!(pool::list_pools, m)?)?;
    m.add_function(wrap_pyfunction!(pool::list_unreadable_pools, m)?)?;
    m.add_function(wrap_pyfunction!(pool::clean_dead_pools, m)?)?;
    m.add_function(wrap_pyfunction!(pool::clean_pools, m)?)?;
    m.add_function(wrap_pyfunction!(pool::shm_free_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(allocator::make_allocator, m)?)?;
    m.add_function(wrap_pyfunction!(allocator::set_handler, m)?)?;
    m.add_function(wrap_pyfunction!(allocator::get_handler, m)?)?;
    m.add_function(wrap_pyfunction!(allocator::allocator_stats, m)?)?;
    m.add_function(wrap_pyfunction!(locks::lock_acquire, m)?)?;
    m.add_function(wrap_pyfunction!(locks::lock_release, m)?)?;
    m.add_function(wrap_pyfunction!(locks::lock_holder, m)?)?;
    m.add_function(wrap_pyfunction!(locks::event_set, m)?)?;
    m.add_function(wrap_pyfunction!(locks::event_clear, m)?)?;
    m.add_function(wrap_pyfunction!(locks::event_is_set, m)?)?;
    m.add_function(wrap_pyfunction!(locks::event_wait, m)?)?;
    Ok(())
}
