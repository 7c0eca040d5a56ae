//! A process-local cache of small free blocks, sharded by thread.
//!
//! Invariants:
//! 1. A block in the cache is `CACHED` in the tree under this process's owner tag: it is still
//!    a block for everyone else, a second free of it is refused by the tree, and if this process
//!    dies the recovery of its tag frees it like any other block it held.
//! 2. An entry is put in a slot by one CAS from empty and taken by one swap to empty, so each
//!    entry is taken at most once; the tree's `unpark` CAS then confirms it.
//! 3. Nothing here is shared between processes: the cache lives in this process's heap, so a
//!    forked child must forget its copy ([`LocalCache::forget_all`]) — those blocks belong to
//!    the parent's tag.
//!
//! Why: an allocation and free of a small block through the tree climbs to the root and back
//! (tens of atomic operations in an empty tree); through the cache it is four, and the block
//! handed out is the one freed last, whose pages are warm. Shards keep threads of one process
//! off each other's cache lines.

// Process-local atomics (invariant 3): never in shared memory, never loom-modelled.
#![allow(clippy::disallowed_types)]

use core::sync::atomic::Ordering::Relaxed;

use crate::sync::local::{AtomicU64, AtomicUsize};
use crate::tree::NodeRef;

const WORDS_PER_LINE: usize = 16;

#[repr(align(128))]
struct Line([AtomicU64; WORDS_PER_LINE]);

/// The cache: `shards` groups of `orders * slots` entry words, each group on its own lines.
pub(crate) struct LocalCache {
    lines: Box<[Line]>,
    lines_per_shard: usize,
    shards: usize,
    orders: u32,
    slots: usize,
}

fn encode(r: NodeRef) -> u64 {
    ((r.index as u64) << 15) | (u64::from(r.generation) << 1) | 1
}

fn decode(v: u64) -> NodeRef {
    NodeRef { index: (v >> 15) as usize, generation: ((v >> 1) & 0x3FFF) as u32 }
}

impl LocalCache {
    /// A cache for block orders `0..orders` with `slots` entries per order and shard.
    pub(crate) fn new(orders: u32, slots: usize, shards: usize) -> Self {
        let words = orders as usize * slots;
        let lines_per_shard = words.div_ceil(WORDS_PER_LINE);
        let lines = (0..lines_per_shard * shards).map(|_| Line(core::array::from_fn(|_| AtomicU64::new(0)))).collect();
        Self { lines, lines_per_shard, shards, orders, slots }
    }

    /// Whether blocks of `order` are cached at all.
    #[inline]
    pub(crate) fn caches(&self, order: u32) -> bool {
        order < self.orders && self.slots > 0
    }

    #[inline]
    fn word(&self, shard: usize, order: u32, slot: usize) -> &AtomicU64 {
        let i = order as usize * self.slots + slot;
        &self.lines[shard * self.lines_per_shard + i / WORDS_PER_LINE].0[i % WORDS_PER_LINE]
    }

    /// Takes a cached block of `order` from the calling thread's shard.
    #[inline]
    pub(crate) fn pop(&self, order: u32) -> Option<NodeRef> {
        let shard = shard_of_this_thread(self.shards);
        for slot in (0..self.slots).rev() {
            let w = self.word(shard, order, slot);
            // Relaxed: the entry carries no data; the tree's unpark CAS (SeqCst) on the node
            // word orders the block's memory (invariant 2).
            if w.load(Relaxed) != 0 {
                let v = w.swap(0, Relaxed);
                if v != 0 {
                    return Some(decode(v));
                }
            }
        }
        None
    }

    /// Puts a parked block into the calling thread's shard; false when the shard is full.
    #[inline]
    pub(crate) fn push(&self, order: u32, block: NodeRef) -> bool {
        let shard = shard_of_this_thread(self.shards);
        let v = encode(block);
        for slot in 0..self.slots {
            let w = self.word(shard, order, slot);
            if w.load(Relaxed) == 0 && w.compare_exchange(0, v, Relaxed, Relaxed).is_ok() {
                return true;
            }
        }
        false
    }

    /// Takes every entry of every shard out, handing each to `f`.
    pub(crate) fn drain(&self, mut f: impl FnMut(u32, NodeRef)) {
        for shard in 0..self.shards {
            for order in 0..self.orders {
                for slot in 0..self.slots {
                    let v = self.word(shard, order, slot).swap(0, Relaxed);
                    if v != 0 {
                        f(order, decode(v));
                    }
                }
            }
        }
    }

    /// Forgets every entry without touching the tree (invariant 3: after a fork).
    pub(crate) fn forget_all(&self) {
        self.drain(|_, _| {});
    }
}

/// A small per-thread number, assigned round-robin on a thread's first use.
fn shard_of_this_thread(shards: usize) -> usize {
    // Process-local and never in shared memory: a plain counter and thread-local.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed);
    }
    SHARD.with(|s| *s) % shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_are_taken_once() {
        let c = LocalCache::new(3, 2, 4);
        assert!(c.caches(2) && !c.caches(3));
        let a = NodeRef { index: (1 << 30) + 5, generation: 0x3FFF };
        let b = NodeRef { index: 9, generation: 1 };
        assert!(c.push(1, a) && c.push(1, b));
        assert!(!c.push(1, b), "two slots per order");
        assert_eq!(c.pop(1), Some(b));
        assert_eq!(c.pop(1), Some(a));
        assert_eq!(c.pop(1), None);
        assert_eq!(c.pop(0), None);
        c.push(2, a);
        let mut seen = Vec::new();
        c.drain(|o, r| seen.push((o, r)));
        assert_eq!(seen, vec![(2, a)]);
        assert_eq!(c.pop(2), None);
    }
}
