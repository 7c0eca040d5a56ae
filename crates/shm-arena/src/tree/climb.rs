//! Claim, climb, free and the block-word transitions (module invariants 1, 2 and 4).
//!
//! Every function here touches node words only through single atomic read-modify-writes, all
//! `SeqCst` (see the module doc of `tree` for why acquire/release is not enough).

use core::sync::atomic::Ordering::SeqCst;

use super::node::{buddy, coal_bit_for, occ_bit_for, NodeWord, CACHED, FREEING, GEN_MAX, OCC, RESERVED_OWNER};
use super::{trace_event, BlockStateError, BuddyTree, Freed, NodeRef};
use crate::sync::{dekker_fence, AtomicWords};

/// Where a failed claim or climb stopped: the node the caller's scan should skip past.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocked {
    /// The node that was in the way (the target itself, or an ancestor that is a block).
    pub(crate) at: usize,
}

impl<N: ?Sized + AtomicWords, S: ?Sized + AtomicWords> BuddyTree<'_, N, S> {
    /// Tries to make `node` a block owned by `owner` (NBBS `alloc2`).
    ///
    /// On failure the node is left as it was found (a failed climb is undone) and the node in
    /// the way is returned.
    pub(crate) fn try_claim(&self, node: usize, owner: u16) -> Result<NodeRef, Blocked> {
        let w = self.word(node);
        if !w.is_vacant() {
            return Err(Blocked { at: node });
        }
        let generation = (w.generation() + 1) & GEN_MAX;
        let claimed = NodeWord::block(owner, generation);
        // Invariant 2: the claim is a CAS from a vacant word.
        if self.nodes.compare_exchange(node, w.0, claimed.0, SeqCst, SeqCst).is_err() {
            trace_event!("claim {node} lost");
            return Err(Blocked { at: node });
        }
        trace_event!("claim {node} ok");
        match self.climb(node) {
            Ok(()) => Ok(NodeRef { index: node, generation }),
            Err(blocked) => {
                // Undo exactly the levels the climb marked: up to the child of the blocker.
                // (`node` itself when the blocker is its parent: nothing was marked.)
                self.release(node, child_towards(blocked.at, node));
                Err(blocked)
            }
        }
    }

    /// Marks every ancestor of a claimed `node` (the climb of invariant 2).
    pub(crate) fn climb(&self, node: usize) -> Result<(), Blocked> {
        let mut child = node;
        while child > 1 {
            let parent = child >> 1;
            let occ = occ_bit_for(child);
            let coal = coal_bit_for(child);
            // Dekker pair with the repair pass and with frees: our last write (the claim, or
            // the mark one level down) against their mark here and their read of that level.
            dekker_fence();
            let mut v = self.nodes.load(parent, SeqCst);
            loop {
                if v & OCC != 0 {
                    trace_event!("climb {node}: {parent} is a block {:?}", NodeWord(v));
                    return Err(Blocked { at: parent });
                }
                let nv = (v & !coal) | occ;
                if nv == v {
                    trace_event!("climb {node}: skip {parent} {:?}", NodeWord(v));
                    break;
                }
                match self.nodes.compare_exchange(parent, v, nv, SeqCst, SeqCst) {
                    Ok(_) => {
                        trace_event!("climb {node}: mark {parent} {:?} -> {:?}", NodeWord(v), NodeWord(nv));
                        break;
                    }
                    Err(now) => v = now,
                }
            }
            child = parent;
        }
        Ok(())
    }

    /// Returns a claimed block `node` to the tree: phase 1, release, phase 2, bounded by `top`.
    ///
    /// `top` is the highest node whose bits this block's allocation set: the root for a
    /// complete allocation, or the last node a failed climb marked (`node` itself when it
    /// marked nothing). Returns the largest node known vacant afterwards, for the hints.
    pub(crate) fn release(&self, node: usize, top: usize) -> Option<usize> {
        // Phase 1: announce the coalescing on the way up (invariant 4).
        let mut runner = node;
        while runner != top {
            let parent = runner >> 1;
            let old = self.nodes.fetch_or(parent, coal_bit_for(runner), SeqCst);
            trace_event!("free {node} p1: or {parent} old {:?}", NodeWord(old));
            let other = buddy(runner);
            if old & occ_bit_for(other) != 0 && old & coal_bit_for(other) == 0 {
                break;
            }
            runner = parent;
        }
        // Release: the block word goes back to vacant, keeping its generation.
        let generation = self.word(node).generation();
        self.nodes.store(node, NodeWord::empty(generation).0, SeqCst);
        trace_event!("free {node}: released");
        if node == top {
            return Some(node);
        }
        // Phase 2: unmark our side while our mark is still there.
        let mut runner = node;
        loop {
            let parent = runner >> 1;
            let occ = occ_bit_for(runner);
            let coal = coal_bit_for(runner);
            let mut v = self.nodes.load(parent, SeqCst);
            let nv = loop {
                if v & coal == 0 {
                    // Someone allocated below since our mark: they own these bits now.
                    trace_event!("free {node} p2: {parent} mark gone {:?}", NodeWord(v));
                    return None;
                }
                let nv = v & !(coal | occ);
                match self.nodes.compare_exchange(parent, v, nv, SeqCst, SeqCst) {
                    Ok(_) => {
                        trace_event!("free {node} p2: {parent} {:?} -> {:?}", NodeWord(v), NodeWord(nv));
                        break nv;
                    }
                    Err(now) => v = now,
                }
            };
            if nv & occ_bit_for(buddy(runner)) != 0 {
                // The other side is occupied: `runner` is the largest vacant node we made.
                return Some(runner);
            }
            if parent == top {
                return Some(parent);
            }
            runner = parent;
        }
    }

    /// Frees a block in use (or parked in a cache, when `from_cache`) on behalf of `freer`.
    ///
    /// # Errors
    ///
    /// [`BlockStateError`] when `block` is not a block in use of that generation; nothing is
    /// changed then (a double free or a stale reference is detected, never acted on).
    pub fn free(&self, block: NodeRef, freer: u16) -> Result<Freed, BlockStateError> {
        self.free_inner(block, freer, false)
    }

    /// Frees `block` (in use, or parked by `freer` when `from_cache`) and leaves a hint for
    /// the largest node the free made vacant.
    fn free_inner(&self, block: NodeRef, freer: u16, from_cache: bool) -> Result<Freed, BlockStateError> {
        let w = self.begin_free(block, freer, from_cache)?;
        if let Some(vacant) = self.release(block.index, 1) {
            self.push_hint(vacant);
        }
        // The block itself, first in line at its level: the next allocation of its size gets
        // it back while its pages are warm in this CPU's caches.
        self.push_hint_first(block.index);
        Ok(Freed { previous_owner: w.owner(), was_cached: w.is_cached() })
    }

    /// Marks `block` `FREEING` under `freer` (the point of no return of a free).
    fn begin_free(&self, block: NodeRef, freer: u16, from_cache: bool) -> Result<NodeWord, BlockStateError> {
        if !self.contains(block.index) {
            return Err(BlockStateError::OutOfRange { index: block.index });
        }
        let mut w = self.word(block.index);
        loop {
            if from_cache {
                Self::classify_parked(block, w, freer)?;
            } else {
                Self::classify(block, w)?;
            }
            let freeing = w.without_flags(CACHED).with_flags(FREEING).with_owner(freer);
            match self.nodes.compare_exchange(block.index, w.0, freeing.0, SeqCst, SeqCst) {
                Ok(_) => return Ok(w),
                // The owner changed under us (adopt/disown): look again.
                Err(now) => w = NodeWord(now),
            }
        }
    }

    /// Explains why `w` is not `block` parked in `owner`'s cache.
    fn classify_parked(block: NodeRef, w: NodeWord, owner: u16) -> Result<(), BlockStateError> {
        Self::classify(block, w.without_flags(CACHED))?;
        if !w.is_cached() {
            return Err(BlockStateError::NotParked { index: block.index });
        }
        if w.owner() != owner {
            return Err(BlockStateError::WrongOwner { index: block.index, expected: owner, found: w.owner() });
        }
        Ok(())
    }

    /// Parks a block in use in `cache_owner`'s cache: it stays a block of the tree.
    ///
    /// # Errors
    ///
    /// As for [`BuddyTree::free`].
    pub fn park(&self, block: NodeRef, cache_owner: u16) -> Result<Freed, BlockStateError> {
        if !self.contains(block.index) {
            return Err(BlockStateError::OutOfRange { index: block.index });
        }
        let mut w = self.word(block.index);
        loop {
            Self::classify(block, w)?;
            let parked = w.with_flags(CACHED).with_owner(cache_owner);
            match self.nodes.compare_exchange(block.index, w.0, parked.0, SeqCst, SeqCst) {
                Ok(_) => return Ok(Freed { previous_owner: w.owner(), was_cached: false }),
                Err(now) => w = NodeWord(now),
            }
        }
    }

    /// Takes a parked block out of `cache_owner`'s cache for use, with a new generation.
    ///
    /// # Errors
    ///
    /// [`BlockStateError::WrongOwner`] or another state error when the node is not parked by
    /// `cache_owner` (only a recovery pass run by someone else could have taken it).
    pub fn unpark(&self, block: NodeRef, cache_owner: u16) -> Result<NodeRef, BlockStateError> {
        if !self.contains(block.index) {
            return Err(BlockStateError::OutOfRange { index: block.index });
        }
        let w = self.word(block.index);
        Self::classify_parked(block, w, cache_owner)?;
        let generation = (w.generation() + 1) & GEN_MAX;
        let fresh = NodeWord::block(cache_owner, generation);
        match self.nodes.compare_exchange(block.index, w.0, fresh.0, SeqCst, SeqCst) {
            Ok(_) => Ok(NodeRef { index: block.index, generation }),
            Err(now) => Err(Self::classify_parked(block, NodeWord(now), cache_owner)
                .err()
                .unwrap_or(BlockStateError::NotParked { index: block.index })),
        }
    }

    /// Frees a block parked in `cache_owner`'s cache back into the tree.
    ///
    /// # Errors
    ///
    /// As for [`BuddyTree::unpark`].
    pub fn free_parked(&self, block: NodeRef, cache_owner: u16) -> Result<(), BlockStateError> {
        self.free_inner(block, cache_owner, true).map(|_| ())
    }

    /// Changes the owner tag of a block in use from `from` to `to` (adopt / disown).
    ///
    /// # Errors
    ///
    /// A state error when the block is not in use with that generation, or
    /// [`BlockStateError::WrongOwner`] when its owner is not `from`.
    pub fn change_owner(&self, block: NodeRef, from: u16, to: u16) -> Result<(), BlockStateError> {
        if !self.contains(block.index) {
            return Err(BlockStateError::OutOfRange { index: block.index });
        }
        let w = self.word(block.index);
        Self::classify(block, w)?;
        if w.owner() != from {
            return Err(BlockStateError::WrongOwner { index: block.index, expected: from, found: w.owner() });
        }
        self.nodes.compare_exchange(block.index, w.0, w.with_owner(to).0, SeqCst, SeqCst).map(|_| ()).map_err(|now| {
            let now = NodeWord(now);
            Self::classify(block, now).err().unwrap_or(BlockStateError::WrongOwner {
                index: block.index,
                expected: from,
                found: now.owner(),
            })
        })
    }

    /// Marks the part of the tree beyond `capacity_leaves` as permanently allocated.
    ///
    /// Runs once, single-threaded, on zeroed stores, before the tree is shared: it writes
    /// the words directly. Returns the number of leaves reserved.
    pub fn reserve_tail(&self, capacity_leaves: u64) -> u64 {
        let mut reserved = 0;
        if capacity_leaves >= self.leaves() {
            return 0;
        }
        // Walk the maximal aligned nodes covering [capacity_leaves, leaves).
        let mut leaf = capacity_leaves;
        while leaf < self.leaves() {
            let order = leaf.trailing_zeros().min(self.depth).min(63 - (self.leaves() - leaf).leading_zeros());
            let level = self.depth - order;
            let node = self.node_at(level, leaf).expect("aligned by construction");
            self.nodes.store(node, NodeWord::block(RESERVED_OWNER, 0).0, SeqCst);
            let mut child = node;
            while child > 1 {
                self.nodes.fetch_or(child >> 1, occ_bit_for(child), SeqCst);
                child >>= 1;
            }
            reserved += 1u64 << order;
            leaf += 1u64 << order;
        }
        reserved
    }
}

/// The child of `ancestor` on the path down to `node`.
pub(crate) fn child_towards(ancestor: usize, node: usize) -> usize {
    let gap = super::node::level_of(node) - super::node::level_of(ancestor);
    node >> (gap - 1)
}
