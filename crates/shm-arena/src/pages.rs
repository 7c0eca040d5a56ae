//! The reserved-page bitmap: one bit per page of a segment's data region, set while the page
//! is known to be reserved in the file (allocated by `fallocate`, so a write to it can never
//! `SIGBUS`).
//!
//! Invariants (docs/architecture.md, "Memory"):
//! 1. A set bit means the page is reserved. The converse need not hold: a process killed
//!    between `fallocate` and setting the bits, or between clearing them and punching, leaves
//!    a reserved page with a clear bit, which only costs a second (idempotent) `fallocate`
//!    later or a punch by the next trim.
//! 2. A bit is set only after its page was reserved (`fetch_or`, Release, after the syscall
//!    returned) and read with Acquire before a page is used without reserving it.
//! 3. A bit is cleared only by the holder of a block that covers the whole page (a block of at
//!    least a page, claimed in the tree and not yet freed), before it punches the page and
//!    before it frees the block. Nobody else can hold any part of that page meanwhile, so no
//!    one relies on the bit while it goes from set to clear; the tree's free (SeqCst) orders the
//!    clear before the next owner's check.
//! 4. Blocks smaller than a page share their page: they only ever set its bit (a reservation
//!    by two neighbours at once is two idempotent `fallocate`s), never clear it.
//! 5. The segment's reserved-page count follows the bits: whoever flips bits adds (or
//!    subtracts) exactly the bits it flipped, known from the `fetch_or`/`fetch_and` results.
//!    It is a hint for the pool's give-back policy, never for safety: a process killed
//!    between flipping and counting leaves it off by those pages (`Arena::stats` walks the
//!    bitmap instead).

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::sync::AtomicWords;

/// A view of the bitmap words (any store of atomic `u32` words: a mapping, heap, loom).
pub struct PageBits<'a, W: AtomicWords + ?Sized> {
    words: &'a W,
}

/// The bits of pages `[first, first + count)` word by word: (word index, mask).
fn masks(first: u64, count: u64) -> impl Iterator<Item = (usize, u32)> {
    let end = first + count;
    let mut page = first;
    core::iter::from_fn(move || {
        if page >= end {
            return None;
        }
        let word = page / 32;
        let lo = (page % 32) as u32;
        let hi = ((end - word * 32).min(32)) as u32;
        let mask = if hi - lo == 32 { u32::MAX } else { ((1u32 << (hi - lo)) - 1) << lo };
        page = (word + 1) * 32;
        Some((word as usize, mask))
    })
}

impl<'a, W: AtomicWords + ?Sized> PageBits<'a, W> {
    /// A view of `words` (32 pages per word).
    pub fn new(words: &'a W) -> Self {
        Self { words }
    }

    /// Whether every page of `[first, first + count)` is marked reserved (Acquire: invariant 2).
    #[inline]
    pub fn all_set(&self, first: u64, count: u64) -> bool {
        if count == 0 {
            return true;
        }
        // The hot path of every allocation: a plain loop over the words, no iterator.
        let last = first + count - 1;
        let (w0, w1) = ((first / 32) as usize, (last / 32) as usize);
        let lo = u32::MAX << (first % 32);
        let hi = u32::MAX >> (31 - last % 32);
        if w0 == w1 {
            let m = lo & hi;
            return self.words.load(w0, Acquire) & m == m;
        }
        if self.words.load(w0, Acquire) & lo != lo || self.words.load(w1, Acquire) & hi != hi {
            return false;
        }
        (w0 + 1..w1).all(|w| self.words.load(w, Acquire) == u32::MAX)
    }

    /// Marks `[first, first + count)` reserved; call only after reserving them (invariant 2).
    /// Returns how many bits were clear before (invariant 5).
    pub fn set(&self, first: u64, count: u64) -> u64 {
        masks(first, count).map(|(w, m)| u64::from((!self.words.fetch_or(w, m, Release) & m).count_ones())).sum()
    }

    /// Marks `[first, first + count)` not reserved, before punching them (invariant 3).
    /// Relaxed: the pages are the caller's alone; the block's free in the tree publishes it.
    /// Returns how many bits were set before (invariant 5).
    pub fn clear(&self, first: u64, count: u64) -> u64 {
        masks(first, count).map(|(w, m)| u64::from((self.words.fetch_and(w, !m, Relaxed) & m).count_ones())).sum()
    }

    /// Whether any page of `[first, first + count)` is marked reserved.
    pub fn any_set(&self, first: u64, count: u64) -> bool {
        masks(first, count).any(|(w, m)| self.words.load(w, Acquire) & m != 0)
    }

    /// Pages of `[first, first + count)` marked reserved.
    pub fn count_range(&self, first: u64, count: u64) -> u64 {
        masks(first, count).map(|(w, m)| u64::from((self.words.load(w, Relaxed) & m).count_ones())).sum()
    }

    /// Pages marked reserved among the first `pages` (a walk; approximate while others work).
    pub fn count(&self, pages: u64) -> u64 {
        masks(0, pages).map(|(w, m)| u64::from((self.words.load(w, Relaxed) & m).count_ones())).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_platform::sync::words::heap_words as words;

    #[test]
    fn masks_cover_exactly_the_range() {
        let m: Vec<_> = masks(30, 36).collect();
        assert_eq!(m, vec![(0, 0b11 << 30), (1, u32::MAX), (2, 0b11)]);
        assert_eq!(masks(0, 32).collect::<Vec<_>>(), vec![(0, u32::MAX)]);
        assert_eq!(masks(5, 1).collect::<Vec<_>>(), vec![(0, 1 << 5)]);
        assert_eq!(masks(5, 0).count(), 0);
    }

    #[test]
    fn set_clear_and_count() {
        let w = words(4);
        let bits = PageBits::new(&w[..]);
        assert!(!bits.all_set(3, 70));
        assert_eq!(bits.set(3, 70), 70);
        assert_eq!(bits.set(0, 10), 3, "only the bits that flip are counted");
        bits.clear(0, 3);
        assert!(bits.all_set(3, 70) && bits.all_set(40, 1));
        assert!(!bits.all_set(2, 2) && !bits.all_set(72, 2));
        assert_eq!(bits.count(128), 70);
        assert_eq!(bits.clear(10, 20), 20);
        assert_eq!(bits.clear(10, 20), 0);
        assert!(!bits.all_set(3, 70) && bits.all_set(30, 43));
        assert_eq!(bits.count(128), 50);
        assert!(bits.all_set(0, 0), "an empty range is trivially reserved");
        // all_set agrees with the word-by-word masks on every range of a small map.
        bits.clear(0, 128);
        bits.set(33, 60);
        for first in 0..100 {
            for count in 0..(128 - first) {
                let expected = masks(first, count).all(|(i, m)| w[i].load(Relaxed) & m == m);
                assert_eq!(bits.all_set(first, count), expected, "{first} {count}");
            }
        }
    }
}
