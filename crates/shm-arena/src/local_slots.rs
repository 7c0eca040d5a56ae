//! [`LocalSlots`]: a process-local cache of nonzero 64-bit entries, in groups, sharded by thread.
//!
//! The arena keeps freed small blocks in one (`cache`), shm-ndarray its renewed array blocks
//! and spare allocations. Invariants:
//!
//! 1. An entry is put in a slot by one CAS from empty and taken by one swap to empty, so each
//!    entry is taken at most once.
//! 2. The put is Release and the take Acquire: whatever the putter wrote before putting an entry
//!    (an entry may stand for memory, such as an allocation handed from one thread to another)
//!    happens before the taker's use of it. (The arena's own entries would do with Relaxed: its
//!    tree's CAS orders the blocks. On x86-64 both compile to the same instructions.)
//! 3. Nothing here is shared between processes: the slots live in this process's heap. A
//!    forked child inherits a copy; whether it may use it is the owner's to say.
//!
//! Shards keep threads of one process off each other's cache lines: each thread uses one shard,
//! chosen round-robin on its first use, and finds and leaves entries there.

// Process-local atomics (invariant 3): never in shared memory, never loom-modelled.
#![allow(clippy::disallowed_types)]

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::sync::local::{AtomicU64, AtomicUsize};

const WORDS_PER_LINE: usize = 16;

#[repr(align(128))]
struct Line([AtomicU64; WORDS_PER_LINE]);

/// `shards` groups of `groups * SLOTS` entry words, each shard on cache lines of its own.
/// (`SLOTS` is a constant so that the scans of a group unroll.)
pub struct LocalSlots<const SLOTS: usize> {
    lines: Box<[Line]>,
    lines_per_shard: usize,
    /// Shards - 1: the shard count is a power of two, so a thread's shard is a mask away (a
    /// division on every take and put cost about 5 of the 60 ns of shm-ndarray's small-array
    /// create + drop).
    shard_mask: usize,
    groups: usize,
}

impl<const SLOTS: usize> LocalSlots<SLOTS> {
    /// Slots for `groups` groups of `SLOTS` entries each, in each of `shards` shards (rounded
    /// up to a power of two).
    pub fn new(groups: usize, shards: usize) -> Self {
        let shards = shards.max(1).next_power_of_two();
        let lines_per_shard = (groups * SLOTS).div_ceil(WORDS_PER_LINE);
        let lines = (0..lines_per_shard * shards).map(|_| Line(core::array::from_fn(|_| AtomicU64::new(0)))).collect();
        Self { lines, lines_per_shard, shard_mask: shards - 1, groups }
    }

    /// Groups of entries.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Entries per group and shard.
    pub fn slots(&self) -> usize {
        SLOTS
    }

    /// Index, in words, of slot 0 of `group` in `shard`.
    #[inline]
    fn base(&self, shard: usize, group: usize) -> usize {
        shard * self.lines_per_shard * WORDS_PER_LINE + group * SLOTS
    }

    #[inline]
    fn word(&self, i: usize) -> &AtomicU64 {
        &self.lines[i / WORDS_PER_LINE].0[i % WORDS_PER_LINE]
    }

    /// Takes an entry of `group` from the calling thread's shard, the one put last first.
    /// `None` also for a group beyond [`LocalSlots::groups`].
    #[inline]
    pub fn take(&self, group: usize) -> Option<u64> {
        if group >= self.groups {
            return None;
        }
        let base = self.base(this_threads_number() & self.shard_mask, group);
        for slot in (0..SLOTS).rev() {
            let w = self.word(base + slot);
            if w.load(Relaxed) != 0 {
                // Acquire: invariant 2.
                let v = w.swap(0, Acquire);
                if v != 0 {
                    return Some(v);
                }
            }
        }
        None
    }

    /// Puts nonzero `entry` into `group` of the calling thread's shard; false when it is full
    /// (and for entry 0 or a group beyond [`LocalSlots::groups`]).
    #[inline]
    pub fn put(&self, group: usize, entry: u64) -> bool {
        if group >= self.groups || entry == 0 {
            return false;
        }
        let base = self.base(this_threads_number() & self.shard_mask, group);
        for slot in 0..SLOTS {
            let w = self.word(base + slot);
            // Release: invariant 2.
            if w.load(Relaxed) == 0 && w.compare_exchange(0, entry, Release, Relaxed).is_ok() {
                return true;
            }
        }
        false
    }

    /// Takes every entry of every shard out, handing each to `f` with its group.
    pub fn drain(&self, mut f: impl FnMut(usize, u64)) {
        for shard in 0..=self.shard_mask {
            for group in 0..self.groups {
                for slot in 0..SLOTS {
                    // Acquire: invariant 2.
                    let v = self.word(self.base(shard, group) + slot).swap(0, Acquire);
                    if v != 0 {
                        f(group, v);
                    }
                }
            }
        }
    }

    /// Whether no slot holds an entry (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.lines.iter().all(|l| l.0.iter().all(|w| w.load(Relaxed) == 0))
    }

    /// Every entry, with the slots emptied, for an owner that holds `&mut self` (its drop).
    pub fn drain_mut(&mut self, mut f: impl FnMut(u64)) {
        for line in self.lines.iter_mut() {
            for w in line.0.iter_mut() {
                let v = core::mem::take(w.get_mut());
                if v != 0 {
                    f(v);
                }
            }
        }
    }
}

/// A per-thread number, assigned round-robin on a thread's first use.
#[inline]
fn this_threads_number() -> usize {
    // Process-local: a counter and a thread-local, never in shared memory.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::thread_local! {
        static SHARD: core::cell::Cell<usize> = const { core::cell::Cell::new(usize::MAX) };
    }
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Relaxed));
        }
        s.get()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_by_group_last_put_first_and_are_taken_once() {
        let c = LocalSlots::<2>::new(3, 4);
        assert!(c.put(1, 7) && c.put(1, 9));
        assert!(!c.put(1, 11), "two slots per group");
        assert_eq!((c.take(1), c.take(1), c.take(1)), (Some(9), Some(7), None));
        assert_eq!(c.take(0), None);
        assert!(c.put(2, 5) && !c.is_empty());
        let mut seen = Vec::new();
        c.drain(|g, v| seen.push((g, v)));
        assert_eq!(seen, vec![(2, 5)]);
        assert!(c.is_empty() && c.take(2).is_none());
        let mut c = c;
        c.put(0, 3);
        let mut kept = Vec::new();
        c.drain_mut(|v| kept.push(v));
        assert_eq!(kept, vec![3]);
        assert!(c.is_empty());
    }
}
