//! The crate's one door to atomics, the futex and process identity (house style 6).
//!
//! Invariants:
//! 1. No other module names an atomic type, calls the futex, or asks who is alive: everything
//!    goes through here, so one switch (`cfg(shm_loom)` with the `loom` feature, passed down to
//!    `shm-platform`) runs every primitive inside loom's model.
//! 2. What is swapped, and how loom models the futex and identities, is the platform layer's
//!    ([`shm_platform::sync::primitive`]); this module adds only what is process-local to this
//!    crate (the token-slot scan hint, and the bound on this process's tokens in flight).

pub(crate) use core::sync::atomic::Ordering;

pub(crate) use shm_platform::sync::dekker_fence;
pub(crate) use shm_platform::sync::primitive::*;

#[cfg(not(all(shm_loom, feature = "loom")))]
mod hint {
    // A process-local static, never in shared memory and never loom-modelled.
    #![allow(clippy::disallowed_types)]

    /// Process-local start for the next token-slot scan (a hint; any value is correct).
    static TOKEN_HINT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

    pub(crate) fn next_token_hint() -> usize {
        TOKEN_HINT.load(core::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_token_hint(next: usize) {
        TOKEN_HINT.store(next, core::sync::atomic::Ordering::Relaxed);
    }

    /// An upper bound on the tokens this process has in flight (transfer invariant 4): raised
    /// by every reservation, lowered only to a count just made. A forked child inherits its
    /// parent's, which is still an upper bound for the child (it has none yet).
    static SENT_BOUND: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

    /// Raises the bound by one; returns it as it was.
    pub(crate) fn note_reservation() -> usize {
        SENT_BOUND.fetch_add(1, core::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the bound to a fresh count.
    pub(crate) fn set_sent_bound(count: usize) {
        SENT_BOUND.store(count, core::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(all(shm_loom, feature = "loom"))]
mod hint {
    /// Under loom every scan starts at slot 0 (statics need `const` constructors).
    pub(crate) fn next_token_hint() -> usize {
        0
    }

    pub(crate) fn set_token_hint(_next: usize) {}

    /// Under loom the per-process bound never triggers (models have few slots and one
    /// "process").
    pub(crate) fn note_reservation() -> usize {
        0
    }

    pub(crate) fn set_sent_bound(_count: usize) {}
}

pub(crate) use hint::{next_token_hint, note_reservation, set_sent_bound, set_token_hint};
