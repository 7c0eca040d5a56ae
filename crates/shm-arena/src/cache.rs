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
//! handed out is the one freed last, whose pages are warm. The slots are a
//! [`LocalSlots`](crate::local_slots::LocalSlots), sharded by thread.

use core::sync::atomic::Ordering::Relaxed;

use crate::arena::Arena;
use crate::local_slots::LocalSlots;
use crate::tree::NodeRef;

/// The cache: for each block order below `orders`, `SLOTS` entries per thread shard.
pub(crate) struct LocalCache<const SLOTS: usize = { crate::arena::CACHE_SLOTS }> {
    slots: LocalSlots<SLOTS>,
}

fn encode(r: NodeRef) -> u64 {
    ((r.index as u64) << 15) | (u64::from(r.generation) << 1) | 1
}

fn decode(v: u64) -> NodeRef {
    NodeRef { index: (v >> 15) as usize, generation: ((v >> 1) & 0x3FFF) as u32 }
}

impl<const SLOTS: usize> LocalCache<SLOTS> {
    /// A cache for block orders `0..orders` with `SLOTS` entries per order and shard.
    pub(crate) fn new(orders: u32, shards: usize) -> Self {
        Self { slots: LocalSlots::new(orders as usize, shards) }
    }

    /// Whether blocks of `order` are cached at all.
    #[inline]
    pub(crate) fn caches(&self, order: u32) -> bool {
        (order as usize) < self.slots.groups() && self.slots.slots() > 0
    }

    /// Takes a cached block of `order` from the calling thread's shard (the tree's unpark CAS
    /// then confirms it: invariant 2).
    #[inline]
    pub(crate) fn pop(&self, order: u32) -> Option<NodeRef> {
        self.slots.take(order as usize).map(decode)
    }

    /// Puts a parked block into the calling thread's shard; false when the shard is full.
    #[inline]
    pub(crate) fn push(&self, order: u32, block: NodeRef) -> bool {
        self.slots.put(order as usize, encode(block))
    }

    /// Takes every entry of every shard out, handing each to `f`.
    pub(crate) fn drain(&self, mut f: impl FnMut(u32, NodeRef)) {
        self.slots.drain(|order, v| f(order as u32, decode(v)));
    }

    /// Forgets every entry without touching the tree (invariant 3: after a fork).
    pub(crate) fn forget_all(&self) {
        self.drain(|_, _| {});
    }
}

/// Emptying caches: on request, and when an allocation asked every handle to (the trim epoch).
impl Arena {
    /// Returns the small blocks this process keeps cached after frees to the shared tree, so
    /// that they coalesce and other processes can use them (like `malloc_trim`).
    ///
    /// The allocator does this by itself before it reports exhaustion.
    pub fn trim(&self) {
        if let Some(tag) = self.registered_tag() {
            self.flush_cache(tag);
        }
    }

    /// Asks every handle of this arena, in every process, to empty its cache at its next
    /// allocation or free (the trim epoch, which an allocation that finds no block bumps too),
    /// so that a later trim of the shared tree ([`Arena::release_free`]) finds those blocks free.
    pub fn ask_caches_back(&self) {
        // Relaxed: a request, as in `trim_if_asked`.
        self.segment.trim_word().fetch_add(1, Relaxed);
    }

    /// Empties our cache if some allocation asked every handle to (the segment's trim epoch).
    #[inline]
    pub(crate) fn trim_if_asked(&self, tag: u16) {
        // Relaxed: a request, not a hand-over of data; the blocks themselves synchronise through
        // their node words when they are freed to the tree.
        let epoch = self.segment.trim_word().load(Relaxed);
        if epoch != self.seen_trim.load(Relaxed) {
            self.trim_slow(tag, epoch);
        }
    }

    #[cold]
    fn trim_slow(&self, tag: u16, epoch: u32) {
        self.seen_trim.store(epoch, Relaxed);
        self.flush_cache(tag);
    }

    pub(crate) fn flush_cache(&self, tag: u16) {
        let tree = self.tree();
        let owners = self.owners();
        let min_shift = self.segment.layout().min_block_shift;
        self.cache.drain(|order, r| {
            if tree.free_parked(r, tag).is_ok() {
                owners.account(tag, -(1i64 << (order + min_shift)));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_are_taken_once() {
        let c = LocalCache::<2>::new(3, 4);
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
