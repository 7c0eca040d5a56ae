//! The holder set of a [`RefCount`](crate::RefCount): which process slots hold the record.
//!
//! # Invariants
//!
//! 1. The set is the truth about who holds the record (refcount invariant 2): a slot is in it
//!    exactly while that process holds the record. Counts kept elsewhere (the holder count in
//!    the record's state word) are derived from it and rebuilt from it by a repair
//!    ([`HolderBitmap::count`]).
//! 2. Every change happens under the record's lock (refcount invariant 1), and one change is
//!    one atomic read-modify-write of one word: a holder killed inside a change has either
//!    changed the set or not, never half of a slot.
//!
//! # Layout
//!
//! `W` words of 64 bits; slot `s` is bit `s % 64` of word `s / 64`. Zeroed memory is the empty
//! set. A `RefCount<W>` names at most [`HolderBitmap::CAPACITY`] = `64 * W` slots.
//!
//! # API
//!
//! What the refcount needs of its holders, and nothing about how they are stored: the
//! record's code calls [`insert`](HolderBitmap::insert), [`remove`](HolderBitmap::remove),
//! [`contains`](HolderBitmap::contains), [`count`](HolderBitmap::count) and
//! [`iter`](HolderBitmap::iter), so another storage (issue 13 item 6: an inline list of slot
//! numbers with an overflow block, for 4,096 and more slots in the same 32 bytes) replaces this
//! file without touching the protocol.
//!
//! Orderings: `Relaxed` under the lock (its Acquire/Release orders them); the snapshot readers
//! outside the lock ([`HolderBitmap::iter`], [`HolderBitmap::contains_snapshot`]) load with
//! `Acquire`, pairing with the lock's Release, so a snapshot taken after a holder's unlock sees
//! its change (still only a snapshot: the set may change right after).

use crate::sync::{AtomicU64, Ordering};

/// What an [`insert`](HolderBitmap::insert) or [`remove`](HolderBitmap::remove) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// The set changed: the slot was added, or removed.
    Changed,
    /// It was already in the set (insert), or not in it (remove).
    Unchanged,
}

/// A slot number checked against the bitmap's capacity: its word and bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotBit {
    word: usize,
    bit: u64,
}

/// A set of holder slots: `64 * W` bits (see the module doc).
#[repr(C)]
pub(crate) struct HolderBitmap<const W: usize> {
    words: [AtomicU64; W],
}

impl<const W: usize> HolderBitmap<W> {
    /// Slots the set can name.
    pub(crate) const CAPACITY: u32 = 64 * W as u32;

    /// The empty set.
    pub(crate) fn new() -> Self {
        Self { words: core::array::from_fn(|_| AtomicU64::new(0)) }
    }

    /// `slot` checked against the capacity; `None` when it does not fit.
    #[inline]
    pub(crate) fn slot(slot: u32) -> Option<SlotBit> {
        (slot < Self::CAPACITY).then(|| SlotBit { word: slot as usize / 64, bit: 1 << (slot % 64) })
    }

    /// Makes `first` the only holder, whatever the words held before (a fresh record over
    /// memory that may hold anything).
    pub(crate) fn reset(&self, first: SlotBit) {
        for (i, w) in self.words.iter().enumerate() {
            w.store(if i == first.word { first.bit } else { 0 }, Ordering::Relaxed);
        }
    }

    /// Adds `slot` (under the record's lock).
    #[inline]
    pub(crate) fn insert(&self, slot: SlotBit) -> Change {
        let before = self.words[slot.word].fetch_or(slot.bit, Ordering::Relaxed);
        if before & slot.bit == 0 {
            Change::Changed
        } else {
            Change::Unchanged
        }
    }

    /// Removes `slot` (under the record's lock).
    #[inline]
    pub(crate) fn remove(&self, slot: SlotBit) -> Change {
        let before = self.words[slot.word].fetch_and(!slot.bit, Ordering::Relaxed);
        if before & slot.bit != 0 {
            Change::Changed
        } else {
            Change::Unchanged
        }
    }

    /// Whether `slot` is in the set (under the record's lock).
    #[inline]
    pub(crate) fn contains(&self, slot: SlotBit) -> bool {
        self.words[slot.word].load(Ordering::Relaxed) & slot.bit != 0
    }

    /// Whether `slot` is in the set, outside the lock (a snapshot; see the module doc).
    pub(crate) fn contains_snapshot(&self, slot: SlotBit) -> bool {
        // Acquire: pairs with the Release of the unlock after the change (module doc).
        self.words[slot.word].load(Ordering::Acquire) & slot.bit != 0
    }

    /// How many slots are in the set: a scan of every word, for a repair (invariant 1), never
    /// on a fast path.
    #[cold]
    pub(crate) fn count(&self) -> u32 {
        self.words.iter().map(|w| w.load(Ordering::Relaxed).count_ones()).sum()
    }

    /// The slots in the set, in increasing order (a snapshot outside the lock).
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, w)| {
            // Acquire: as in `contains_snapshot`.
            let mut bits = w.load(Ordering::Acquire);
            core::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let slot = i as u32 * 64 + bits.trailing_zeros();
                    bits &= bits - 1;
                    slot
                })
            })
        })
    }
}

#[cfg(all(test, not(all(shm_loom, feature = "loom"))))]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_count_iterate() {
        let set: HolderBitmap<4> = HolderBitmap::new();
        assert_eq!(HolderBitmap::<4>::CAPACITY, 256);
        assert!(HolderBitmap::<4>::slot(256).is_none(), "beyond the capacity");
        let s = |n| HolderBitmap::<4>::slot(n).unwrap();
        set.reset(s(200));
        assert_eq!(set.iter().collect::<Vec<_>>(), [200]);
        assert_eq!(set.insert(s(3)), Change::Changed);
        assert_eq!(set.insert(s(3)), Change::Unchanged);
        assert_eq!(set.insert(s(255)), Change::Changed);
        assert_eq!((set.count(), set.iter().collect::<Vec<_>>()), (3, vec![3, 200, 255]));
        assert!(set.contains(s(255)) && set.contains_snapshot(s(3)) && !set.contains(s(4)));
        assert_eq!(set.remove(s(200)), Change::Changed);
        assert_eq!(set.remove(s(200)), Change::Unchanged);
        assert_eq!(set.count(), 2);
        set.reset(s(0));
        assert_eq!(set.iter().collect::<Vec<_>>(), [0], "reset forgets every other slot");
    }
}
