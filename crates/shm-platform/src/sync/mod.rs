//! The only door to atomics for the crates above (house style 6): the loom facade.
//!
//! Invariants:
//! 1. Code outside this module, in this crate, `shm-arena` and `shm-sync`, names no atomic type
//!    directly (`clippy.toml` forbids it), so one switch (`--cfg shm_loom` with this crate's
//!    `loom` feature, which the crates above pass down) decides whether an algorithm runs on
//!    real atomics or inside loom's model.
//! 2. Words that live in mapped shared memory are always real atomics ([`SharedU32`],
//!    [`SharedU64`]): loom's atomics are handles into loom's model, not plain memory, and cannot
//!    be placed in a mapping. Algorithms that loom must check are therefore written against
//!    [`AtomicWords`], which both kinds of store implement.
//!
//! Under `--cfg shm_loom` together with the `loom` feature, [`AtomicWords`] is also implemented
//! for slices of loom's atomics, which is how the models in `shm-arena/tests/loom_*.rs` run the
//! tree. The primitives of `shm-sync` are `repr(C)` structs of atomics that loom checks
//! directly: they take their atomics, futex and process identity from [`primitive`], which
//! swaps all three for loom's models.

pub mod primitive;
pub mod words;

pub use words::{heap_words, AtomicWords};

/// Atomics for process-local state that no loom model covers: the local block cache and its
/// thread numbering (statics need `const` constructors, which loom's atomics lack). Algorithms
/// that loom checks use [`AtomicWords`] instead.
#[allow(clippy::disallowed_types)]
pub mod local {
    pub use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
}

/// A 32-bit word inside mapped shared memory: always a real atomic, never loom's (invariant 2).
#[allow(clippy::disallowed_types)]
pub type SharedU32 = core::sync::atomic::AtomicU32;

/// A 64-bit word inside mapped shared memory: always a real atomic, never loom's (invariant 2).
#[allow(clippy::disallowed_types)]
pub type SharedU64 = core::sync::atomic::AtomicU64;

/// Orders a Dekker pair for loom: a no-op in real builds.
///
/// The tree's protocols contain Dekker-style pairs across two words: one side writes word A
/// then reads word B, the other writes B then reads A, and at least one must see the other's
/// write. Every tree access is `SeqCst`, and the single total order of `SeqCst` operations
/// guarantees exactly that (C++20 [atomics.order]). loom, however, models `SeqCst` accesses as
/// `AcqRel` (tokio-rs/loom#180) while it does model `SeqCst` fences, which give the same
/// guarantee when placed between the write and the read. So under loom this is
/// `fence(SeqCst)`, placed at each such point, and loom checks the same reasoning the real
/// build relies on. (A fence in the real build would be a redundant `mfence` on x86-64.)
#[inline(always)]
pub fn dekker_fence() {
    #[cfg(all(shm_loom, feature = "loom"))]
    loom::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}
