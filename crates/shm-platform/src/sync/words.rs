//! A store of atomic 32-bit words: the one abstraction every shared algorithm is written against.
//!
//! Invariants:
//! 1. Every access to a word of the store is atomic; nothing ever reads or writes it as plain
//!    memory, in this process or another.
//! 2. An index out of range is a bug of the caller, never the result of data read from shared
//!    memory: algorithms validate indices they read from the store before using them.
//!
//! The same buddy-tree code then runs over a mapping (`[SharedU32]`), over heap memory in unit
//! and property tests (`Vec<SharedU32>`), and over loom's atomics in the models.

use core::sync::atomic::Ordering;

/// A fixed-length array of atomic `u32` words.
///
/// Implemented for slices of real atomics (mapped or heap memory) and, under `cfg(shm_loom)`,
/// for slices of loom's atomics. Methods panic only on an out-of-range index (invariant 2).
pub trait AtomicWords {
    /// Number of words.
    fn len(&self) -> usize;
    /// True when the store has no words.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Atomically loads word `i`.
    fn load(&self, i: usize, order: Ordering) -> u32;
    /// Atomically stores `value` into word `i`.
    fn store(&self, i: usize, value: u32, order: Ordering);
    /// Atomically replaces word `i` with `value`, returning the previous value.
    fn swap(&self, i: usize, value: u32, order: Ordering) -> u32;
    /// Compare-and-exchange on word `i` (strong: fails only when the value differs).
    fn compare_exchange(
        &self,
        i: usize,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u32, u32>;
    /// Atomic bitwise or on word `i`, returning the previous value.
    fn fetch_or(&self, i: usize, bits: u32, order: Ordering) -> u32;
    /// Atomic bitwise and on word `i`, returning the previous value.
    fn fetch_and(&self, i: usize, bits: u32, order: Ordering) -> u32;
}

macro_rules! impl_atomic_words {
    ($atomic:ty) => {
        impl AtomicWords for [$atomic] {
            #[inline]
            fn len(&self) -> usize {
                <[$atomic]>::len(self)
            }
            #[inline]
            fn load(&self, i: usize, order: Ordering) -> u32 {
                self[i].load(order)
            }
            #[inline]
            fn store(&self, i: usize, value: u32, order: Ordering) {
                self[i].store(value, order)
            }
            #[inline]
            fn swap(&self, i: usize, value: u32, order: Ordering) -> u32 {
                self[i].swap(value, order)
            }
            #[inline]
            fn compare_exchange(
                &self,
                i: usize,
                current: u32,
                new: u32,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u32, u32> {
                self[i].compare_exchange(current, new, success, failure)
            }
            #[inline]
            fn fetch_or(&self, i: usize, bits: u32, order: Ordering) -> u32 {
                self[i].fetch_or(bits, order)
            }
            #[inline]
            fn fetch_and(&self, i: usize, bits: u32, order: Ordering) -> u32 {
                self[i].fetch_and(bits, order)
            }
        }
    };
}

impl_atomic_words!(super::SharedU32);

#[cfg(all(shm_loom, feature = "loom"))]
impl_atomic_words!(loom::sync::atomic::AtomicU32);

/// Allocates a zeroed store of `len` real atomic words on the heap (tests, process-local trees).
pub fn heap_words(len: usize) -> Box<[super::SharedU32]> {
    (0..len).map(|_| super::SharedU32::new(0)).collect()
}
