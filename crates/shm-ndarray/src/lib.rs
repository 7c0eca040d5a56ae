//! Typed n-dimensional arrays in a shared-memory pool, passed between processes by handles.
//!
//! A [`Pool`] is a set of arena segments that every process of a program maps once. An array
//! is two blocks: a small header (element type, shape, strides, a holder-tracked reference
//! count) in a metadata segment, and its data in a data segment. A [`Handle`] of 64 bytes plus
//! 16 per dimension names an array or a view of it; attaching it in another process validates
//! everything before memory is touched, and its transfer token keeps the array alive while the
//! handle is in flight.
//!
//! Lifetime: each process holds an array once, however many views and clones it has; the
//! array is freed when no process holds it, no handle is in flight and no name refers to it.
//! [`Pool::collect`] drops what dead processes held.
//!
//! Aliasing across processes: several processes may write the same array. Ordering those
//! writes is the caller's job (as with any shared memory); within one process, slices made
//! from an array's pointer follow Rust's usual rules, which [`ShmArray`] enforces for typed
//! access.
//!
//! # Example
//!
//! ```
//! use shm_ndarray::{Pool, PoolOptions, ShmArray};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::create(&PoolOptions::new().segment_capacity(4 << 20))?;
//! let mut a = ShmArray::<f64>::zeros(&pool, &[3, 4])?;
//! a.as_slice_mut().unwrap()[5] = 2.5;
//! let handle = a.handle()?; // send `handle.to_bytes()` to another process
//! let b = ShmArray::<f64>::attach(&pool, &handle)?;
//! assert_eq!(b.as_slice().unwrap()[5], 2.5);
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]

/// Every segment of a pool is named `pyshm-<pool>` or `pyshm-<pool>-<16 random hex digits>`;
/// the arena is told this prefix, and it is how `/dev/shm` is scanned for pools.
pub(crate) const NAME_PREFIX: &str = "pyshm-";

#[allow(unsafe_code)] // typed views of the directory block
mod directory;
#[allow(unsafe_code)] // the `Element` trait is unsafe to implement
mod dtype;
mod error;
mod handle;
#[allow(unsafe_code)] // the header lives in shared memory; its variable part is written by pointer
mod header;
#[doc(hidden)]
pub mod kill_points;
#[allow(unsafe_code)] // zeroed tables
mod locals;
#[allow(unsafe_code)] // views of the directory and headers inside mapped blocks; hand-rolled reference counts
mod pool;
#[allow(unsafe_code)] // spare allocations kept as addresses
mod recycle;
mod sync;
#[allow(unsafe_code)] // typed slices over array data
mod typed;

pub use directory::{MAX_NAME_LEN, MAX_SEGMENTS};
pub use dtype::{DType, DTypeError, DTypeKind, Element, Field, Format, StructLayout, MAX_DESCR_LEN};
pub use error::{ArrayError, HandleError, PoolError};
pub use handle::{Handle, HANDLE_FIXED_LEN};
pub use header::{view_fits, MAX_DIMS};
pub use pool::{
    clean_dead_pools, clean_pools, default_keep, list_pools, list_unreadable_pools, Backend, CleanReport,
    CollectReport, NameError, Pool, PoolInfo, PoolOptions, PoolStats, SharedArray, SkipReason, SkippedFile,
    DEFAULT_PROCESS_SLOTS, MAX_NAMES, MAX_PROCESSES,
};
pub use typed::{ShmArray, SliceMut, SliceRef, TypedError};
