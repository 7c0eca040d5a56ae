//! The crate's only door to atomics (house style 6).
//!
//! Invariants:
//! 1. Code outside this module names no atomic type directly (`clippy.toml` forbids it), so one
//!    switch decides whether an algorithm runs on real atomics or inside loom's model.
//! 2. Words that live in mapped shared memory are always real atomics ([`SharedU32`],
//!    [`SharedU64`]): loom's atomics are handles into loom's model, not plain memory, and cannot
//!    be placed in a mapping. Algorithms that loom must check are therefore written against
//!    [`AtomicWords`], which both kinds of store implement.
//!
//! Under `--cfg shm_loom` together with the `loom` feature, [`AtomicWords`] is also implemented
//! for slices of loom's atomics, which is how the models in `tests/loom_*.rs` run the tree.

pub mod words;

pub use words::AtomicWords;

/// Atomics for process-local state that no loom model covers: the local block cache and its
/// thread numbering (statics need `const` constructors, which loom's atomics lack). Algorithms
/// that loom checks use [`AtomicWords`] instead.
#[allow(clippy::disallowed_types)]
pub(crate) mod local {
    pub(crate) use core::sync::atomic::{AtomicU64, AtomicUsize};
}

/// A 32-bit word inside mapped shared memory: always a real atomic, never loom's (invariant 2).
#[allow(clippy::disallowed_types)]
pub type SharedU32 = core::sync::atomic::AtomicU32;

/// A 64-bit word inside mapped shared memory: always a real atomic, never loom's (invariant 2).
#[allow(clippy::disallowed_types)]
pub type SharedU64 = core::sync::atomic::AtomicU64;
