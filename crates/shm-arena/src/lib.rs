//! A segment of shared memory and a lock-free, crash-safe buddy allocator whose whole state lives
//! inside the segment.
//!
//! # Why
//!
//! Handing data to another process through a segment per object costs a `shm_open`, an
//! `ftruncate`, an `mmap` and fresh page faults every time (tens of microseconds, plus two file
//! descriptors). An arena is mapped once per process; allocating and freeing blocks inside it
//! takes tens of nanoseconds, makes no syscall, and hands freed blocks out again while their
//! pages are still warm.
//!
//! # What holds
//!
//! 1. Any number of processes (and threads) allocate and free concurrently without a lock:
//!    every state change is one atomic operation on a word of the segment (the buddy tree).
//! 2. Blocks are named by offset, size and generation ([`Block`]), never by pointer; every
//!    reference from outside is validated before memory is touched, and a double free or a stale
//!    reference is a typed error ([`BlockError`]), never corruption.
//! 3. A process killed at any instruction never corrupts the tree for the others and never
//!    causes a block to be handed out twice. Its blocks carry its owner tag, so a survivor's
//!    [`Arena::recover_dead_owners`] gets every byte back, including blocks caught mid-allocation
//!    or mid-free.
//! 4. A segment is created exclusively, mode 0600, under an unguessable name. It is sparse:
//!    its metadata is reserved at creation and a block's pages when the block is handed out
//!    (or every page up front with [`ArenaOptions::reserve_whole`]), so a full `/dev/shm` is
//!    [`CreateError::NoSpace`] or [`AllocError::NoSpace`], never a `SIGBUS`. Freed pages go back
//!    to the system on request ([`Arena::free_and_release`], [`Arena::release_free`]).
//!    Opening validates the header completely; a foreign, truncated, corrupt or other-version
//!    segment is an [`OpenError`].
//! 5. Another user is never trusted: a named segment is mapped only if its open descriptor is
//!    a regular file owned by this process's effective uid with no group or other permission
//!    bits ([`Ownership`]); otherwise [`OpenError::NotOwned`], [`OpenError::Permissions`] or
//!    [`OpenError::NotAFile`] says whose file it is, and nothing was mapped.
//!
//! # Example
//!
//! ```
//! use shm_arena::{Arena, ArenaOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Process A creates a named arena and allocates a block.
//! let a = ArenaOptions::new(16 << 20).create()?;
//! let block = a.alloc(4096)?;
//! // SAFETY: the block is ours alone until freed.
//! unsafe { a.bytes_mut(block)?.fill(7) };
//! a.disown(block)?; // it must outlive A's handle
//!
//! // Process B (here the same process) opens it by name and reads the block.
//! let b = Arena::open(a.name().unwrap())?;
//! // SAFETY: nobody writes the block meanwhile.
//! assert!(unsafe { b.bytes(block)? }.iter().all(|x| *x == 7));
//! b.free(block)?;
//! a.unlink()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layers
//!
//! The futex, process identity ([`process::ProcessIdentity`] tells a live process from a dead
//! one across pid reuse) and the loom facade come from the platform crate `shm-platform`; the
//! arena re-exports what its own API names ([`process`], [`sync`]). The buddy tree is written
//! against a store of atomic words, so the same code runs over a mapping, over heap memory
//! (tests) and under loom. `docs/architecture.md` describes the protocols.
//!
//! # Features
//!
//! - `internals`: makes the building blocks public (`tree`, the lock-free buddy tree; `layout`,
//!   the segment layout; `pages`, the reserved-page bitmap; `trim`, the trim protocol;
//!   `sync::AtomicWords`, `sync::FutexWord`). For the fuzz targets, the loom models and the
//!   benches; outside semver, they change with the protocols.
//! - `loom`: with `RUSTFLAGS="--cfg shm_loom"`, runs the tree and the trim protocol on loom's atomics (and turns on
//!   `internals`, which the models need).
#![deny(unsafe_code)]

#[allow(unsafe_code)] // views of the validated layout, and block pointers
mod arena;
mod block;
mod cache;
pub mod error;
#[cfg(feature = "internals")]
pub mod layout;
#[cfg(not(feature = "internals"))]
#[allow(unreachable_pub)] // its `pub` items are the `internals` API
mod layout;
pub mod local_slots;
#[allow(unsafe_code)] // the view of the bitmap region
mod memory;
mod options;
mod owners;
#[cfg(feature = "internals")]
pub mod pages;
#[cfg(not(feature = "internals"))]
#[allow(unreachable_pub)] // its `pub` items are the `internals` API
mod pages;
mod registration;
#[allow(unsafe_code)] // the mapping and the typed views into it
mod segment;
pub mod sync;
#[allow(unsafe_code)] // thin syscall wrappers (rustix)
pub(crate) mod sys;
#[cfg(feature = "internals")]
pub mod tree;
#[cfg(not(feature = "internals"))]
#[allow(unreachable_pub)] // its `pub` items are the `internals` API
mod tree;
#[cfg(feature = "internals")]
pub mod trim;
#[cfg(not(feature = "internals"))]
#[allow(unreachable_pub)] // its `pub` items are the `internals` API
mod trim;

/// Support for the loom models (`tests/loom_*.rs`): declare the calling model thread's process
/// dead, let timed futex waits time out at once, and name the thread's fake process.
#[cfg(all(shm_loom, feature = "loom"))]
pub mod loom_support {
    pub use shm_platform::sync::primitive::IdentityBits;

    /// The calling loom thread's fake process is dead from now on.
    pub fn die() {
        shm_platform::sync::primitive::die();
    }
    /// Whether timed futex waits return `TimedOut` at once (after a yield).
    pub fn timeouts_fire(on: bool) {
        shm_platform::sync::primitive::set_timeouts_fire(on);
    }
    /// The calling loom thread's fake process.
    pub fn current_identity() -> IdentityBits {
        shm_platform::sync::primitive::current_identity()
    }
    /// Whether the model declared `who` dead.
    pub fn is_dead(who: IdentityBits) -> bool {
        shm_platform::sync::primitive::is_dead(who)
    }
}

pub use shm_platform::process;

pub use arena::{Arena, ArenaStats, CheckError, Recovery};
pub use block::Block;
pub use error::{AllocError, BlockError, CreateError, OpenError, RegisterError};
pub use layout::LayoutError;
pub use memory::{Admit, ParkedBlock};
pub use options::{
    ArenaOptions, OpenOptions, DEFAULT_MIN_BLOCK, DEFAULT_NAME_PREFIX, DEFAULT_OPEN_WAIT, DEFAULT_OWNER_SLOTS,
};
pub use owners::{OwnerInfo, SlotState};
pub use segment::{
    list_segments, random_u64, shm_free_bytes, unlink, Ownership, SegmentFile, SegmentName, LAYOUT_VERSION, MAGIC,
};
pub use tree::{BlockStateError, TreeReport, TreeViolation};
pub use trim::TRIM_CHUNK;

/// The README's two-process example, run as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
