//! Atomic words in shared memory, from the platform layer (`shm-platform`), and the one door
//! through which this crate's protocols reach atomics and the futex (house style 6).
//!
//! [`SharedU32`] and [`SharedU64`] are the types to place in a block that several processes
//! map (for instance behind [`Arena::root_word`](crate::Arena::root_word)): always real
//! atomics, never loom's. With the `internals` feature this module also exports the stores the
//! protocols are written against, for the loom models, the fuzz targets and the benches:
//! `AtomicWords` (the buddy tree's words, `heap_words`) and `FutexWord` (one word with a futex:
//! the trim state).
//!
//! Invariants:
//! 1. A protocol of this crate names no atomic type and calls no futex except through the
//!    traits here, so one switch (`--cfg shm_loom` with the `loom` feature) runs it over loom's
//!    atomics and modelled futex, while the arena runs the same code over its mapped words.
//! 2. In the normal build every trait method is an `#[inline]` call of the real atomic or of
//!    `shm_platform::futex`: going through the trait costs nothing.

#[cfg(feature = "internals")]
pub use shm_platform::sync::{heap_words, words, AtomicWords};
pub use shm_platform::sync::{SharedU32, SharedU64};

#[cfg(not(feature = "internals"))]
pub(crate) use shm_platform::sync::AtomicWords;
pub(crate) use shm_platform::sync::{dekker_fence, local};

pub use shm_platform::sync::primitive::Waited;

use core::sync::atomic::Ordering;
use std::time::Duration;

/// One atomic `u32` that processes also sleep on (a futex word), as a protocol sees it.
///
/// Implemented for [`SharedU32`] (the mapped word, the shared futex of `shm_platform::futex`)
/// and, under `--cfg shm_loom` with the `loom` feature, for loom's `AtomicU32` with the
/// platform layer's modelled futex (`shm_platform::sync::primitive`, invariant 3 there: a
/// wakeup that is lost shows as a loom deadlock).
pub trait FutexWord {
    /// Atomically loads the word.
    fn load(&self, order: Ordering) -> u32;
    /// Compare-and-exchange (strong).
    fn compare_exchange(&self, current: u32, new: u32, success: Ordering, failure: Ordering) -> Result<u32, u32>;
    /// Compare-and-exchange that may fail spuriously (for loops).
    fn compare_exchange_weak(&self, current: u32, new: u32, success: Ordering, failure: Ordering) -> Result<u32, u32>;
    /// Atomic wrapping add; returns the previous value.
    fn fetch_add(&self, value: u32, order: Ordering) -> u32;
    /// Atomic wrapping subtract; returns the previous value.
    fn fetch_sub(&self, value: u32, order: Ordering) -> u32;
    /// Sleeps while the word holds `expected`, at most `timeout` (a shared futex wait).
    fn wait(&self, expected: u32, timeout: Duration) -> Waited;
    /// Wakes every sleeper on the word.
    fn wake_all(&self);

    /// `AtomicU32::fetch_update`, the same loop (a load, then weak CASes).
    ///
    /// # Errors
    ///
    /// The value `f` refused, as `fetch_update` returns it.
    #[inline]
    fn fetch_update(&self, set: Ordering, fetch: Ordering, mut f: impl FnMut(u32) -> Option<u32>) -> Result<u32, u32> {
        let mut prev = self.load(fetch);
        while let Some(next) = f(prev) {
            match self.compare_exchange_weak(prev, next, set, fetch) {
                x @ Ok(_) => return x,
                Err(now) => prev = now,
            }
        }
        Err(prev)
    }
}

impl FutexWord for SharedU32 {
    #[inline]
    fn load(&self, order: Ordering) -> u32 {
        SharedU32::load(self, order)
    }
    #[inline]
    fn compare_exchange(&self, current: u32, new: u32, success: Ordering, failure: Ordering) -> Result<u32, u32> {
        SharedU32::compare_exchange(self, current, new, success, failure)
    }
    #[inline]
    fn compare_exchange_weak(&self, current: u32, new: u32, success: Ordering, failure: Ordering) -> Result<u32, u32> {
        SharedU32::compare_exchange_weak(self, current, new, success, failure)
    }
    #[inline]
    fn fetch_add(&self, value: u32, order: Ordering) -> u32 {
        SharedU32::fetch_add(self, value, order)
    }
    #[inline]
    fn fetch_sub(&self, value: u32, order: Ordering) -> u32 {
        SharedU32::fetch_sub(self, value, order)
    }
    #[inline]
    fn wait(&self, expected: u32, timeout: Duration) -> Waited {
        match shm_platform::futex::wait(self, expected, timeout) {
            shm_platform::futex::WaitOutcome::TimedOut => Waited::TimedOut,
            _ => Waited::Woken,
        }
    }
    #[inline]
    fn wake_all(&self) {
        shm_platform::futex::wake(self, u32::MAX);
    }
}

#[cfg(all(shm_loom, feature = "loom"))]
impl FutexWord for loom::sync::atomic::AtomicU32 {
    fn load(&self, order: Ordering) -> u32 {
        loom::sync::atomic::AtomicU32::load(self, order)
    }
    fn compare_exchange(&self, current: u32, new: u32, success: Ordering, failure: Ordering) -> Result<u32, u32> {
        loom::sync::atomic::AtomicU32::compare_exchange(self, current, new, success, failure)
    }
    fn compare_exchange_weak(&self, current: u32, new: u32, success: Ordering, failure: Ordering) -> Result<u32, u32> {
        loom::sync::atomic::AtomicU32::compare_exchange_weak(self, current, new, success, failure)
    }
    fn fetch_add(&self, value: u32, order: Ordering) -> u32 {
        loom::sync::atomic::AtomicU32::fetch_add(self, value, order)
    }
    fn fetch_sub(&self, value: u32, order: Ordering) -> u32 {
        loom::sync::atomic::AtomicU32::fetch_sub(self, value, order)
    }
    fn wait(&self, expected: u32, timeout: Duration) -> Waited {
        shm_platform::sync::primitive::futex_wait(self, expected, timeout)
    }
    fn wake_all(&self) {
        shm_platform::sync::primitive::futex_wake(self, u32::MAX);
    }
}
