//! Atomic words in shared memory, from the platform layer (`shm-platform`).
//!
//! [`SharedU32`] and [`SharedU64`] are the types to place in a block that several processes
//! map (for instance behind [`Arena::root_word`](crate::Arena::root_word)): always real
//! atomics, never loom's. With the `internals` feature this module also exports the store of
//! atomic words the buddy tree is written against (`AtomicWords`, `heap_words`), for the
//! loom models, the fuzz targets and the benches.

#[cfg(feature = "internals")]
pub use shm_platform::sync::{heap_words, words, AtomicWords};
pub use shm_platform::sync::{SharedU32, SharedU64};

#[cfg(not(feature = "internals"))]
pub(crate) use shm_platform::sync::AtomicWords;
pub(crate) use shm_platform::sync::{dekker_fence, local};
