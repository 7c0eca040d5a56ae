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

    use core::sync::atomic::{
        AtomicU64, AtomicUsize,
        Ordering::{Acquire, Relaxed, Release},
    };

    /// Token tables this process keeps a bound for at once (more take turns).
    const TABLES: usize = 32;
    /// The bound of a table not seen yet: at least any quota, so the first reservation counts.
    const UNKNOWN: usize = usize::MAX / 2;

    /// Per token table (by its key, 0 = entry unused), an upper bound on the tokens this
    /// process has in flight there (transfer invariant 4): raised by every reservation, lowered
    /// only to a count of that table just made. One bound per table: a count of one table says
    /// nothing about another (found in review). A forked child inherits its parent's bounds,
    /// still upper bounds for the child (it has no tokens yet).
    static KEYS: [AtomicU64; TABLES] = [const { AtomicU64::new(0) }; TABLES];
    static BOUNDS: [AtomicUsize; TABLES] = [const { AtomicUsize::new(UNKNOWN) }; TABLES];

    /// Next entry to give to a table when all are taken.
    static VICTIM: AtomicUsize = AtomicUsize::new(0);

    /// The bound of table `key`, taking an unused entry the first time, or else another
    /// table's: its bound restarts at [`UNKNOWN`], so either table counts at its next
    /// reservation, which keeps every bound an upper bound.
    fn bound_of(key: u64) -> &'static AtomicUsize {
        let key = key.max(1);
        for (k, bound) in KEYS.iter().zip(&BOUNDS) {
            let held = match k.load(Acquire) {
                0 => k.compare_exchange(0, key, Acquire, Acquire).unwrap_or_else(|held| held),
                held => held,
            };
            if held == 0 || held == key {
                return bound;
            }
        }
        let v = VICTIM.fetch_add(1, Relaxed) % TABLES;
        BOUNDS[v].store(UNKNOWN, Relaxed);
        // Release: a thread that finds `key` here sees the bound reset with it.
        KEYS[v].store(key, Release);
        &BOUNDS[v]
    }

    /// Raises the bound of table `key` by one; returns it as it was ([`UNKNOWN`] or more when the
    /// table has no bound yet: the caller counts).
    pub(crate) fn note_reservation(key: u64) -> usize {
        bound_of(key).fetch_add(1, Relaxed)
    }

    /// Sets the bound of table `key` to a fresh count.
    pub(crate) fn set_sent_bound(key: u64, count: usize) {
        bound_of(key).store(count, Relaxed);
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
    pub(crate) fn note_reservation(_key: u64) -> usize {
        0
    }

    pub(crate) fn set_sent_bound(_key: u64, _count: usize) {}
}

pub(crate) use hint::{next_token_hint, note_reservation, set_sent_bound, set_token_hint};
