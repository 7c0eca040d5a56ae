//! Finding a vacant node: hint slots, then a cursor scan (module invariant 5).
//!
//! Invariants:
//! 1. Hints are advice. A hint names a node that was the largest vacant node a free produced;
//!    by the time it is used it may be allocated, split or corrupt. Every hint is validated
//!    (range) and then tried with the ordinary claim, which alone decides.
//! 2. A search that finds no usable hint scans every node of the level, starting at the
//!    level's cursor and wrapping around once, so exhaustion is reported only when no vacant
//!    node was seen (modulo concurrent frees, which a retry will find).
//! 3. Hint and cursor words are `Relaxed`: they carry no data between processes; the claim's
//!    `SeqCst` CAS on the node word provides all synchronisation for the block itself.
//!
//! Layout of the search store for a tree of depth `d` (`u32` words):
//! `[0]` summary, bit `l` set when level `l` may hold hints; `[1 + l]` cursor of level `l`
//! (index within the level of the next node to try); `[2 + d + l * HINT_SLOTS + k]` hint slot
//! `k` of level `l`, holding `index within level + 1`, or 0 when empty.
//!
//! Warm reuse: a free leaves a hint for the largest node it made vacant, and puts the freed
//! block itself in the first hint slot of its level; an allocation takes hints before
//! scanning, first slot first, preferring its own level and then the smallest larger node
//! (which it splits, leaving the halves it did not take as hints). The block freed last is
//! therefore the next one handed out at its size (its pages are warm in the CPU's caches), and
//! any freed block is handed out again before the cursor reaches memory nobody has touched.

use core::sync::atomic::Ordering::Relaxed;

use super::node::level_of;
use super::{BuddyTree, NodeRef};
use crate::sync::AtomicWords;

/// Hint slots per level.
#[cfg(not(shm_loom))]
pub const HINT_SLOTS: usize = 8;
/// Hint slots per level (fewer under loom, so models explore fewer states; the logic is the same).
#[cfg(shm_loom)]
pub const HINT_SLOTS: usize = 1;

const SUMMARY: usize = 0;

/// Search words needed for a tree of `depth`.
pub(crate) const fn search_words(depth: u32) -> usize {
    let levels = depth as usize + 1;
    1 + levels + levels * HINT_SLOTS
}

const fn cursor_word(level: u32) -> usize {
    1 + level as usize
}

impl<N: ?Sized + AtomicWords, S: ?Sized + AtomicWords> BuddyTree<'_, N, S> {
    fn hint_word(&self, level: u32, slot: usize) -> usize {
        2 + self.depth as usize + level as usize * HINT_SLOTS + slot
    }

    /// Allocates a node at `level` for `owner`: hints first, then a scan.
    ///
    /// Returns `None` when no vacant node of that level was found (or `level > depth`).
    pub fn alloc(&self, level: u32, owner: u16) -> Option<NodeRef> {
        if level > self.depth {
            return None;
        }
        let mut levels = self.search.load(SUMMARY, Relaxed) & low_bits(level + 1);
        while levels != 0 {
            // Deepest level first: an exact fit, then the smallest larger node.
            let hinted_level = 31 - levels.leading_zeros();
            if let Some(block) = self.alloc_from_hints(hinted_level, level, owner) {
                return Some(block);
            }
            levels &= !(1 << hinted_level);
        }
        self.alloc_by_scan(level, owner)
    }

    /// Tries the hint slots of `hinted_level` for a node at `level` (at or below it).
    fn alloc_from_hints(&self, hinted_level: u32, level: u32, owner: u16) -> Option<NodeRef> {
        let width = 1usize << hinted_level;
        for slot in 0..HINT_SLOTS {
            let word = self.hint_word(hinted_level, slot);
            if self.search.load(word, Relaxed) == 0 {
                continue;
            }
            let taken = self.search.swap(word, 0, Relaxed) as usize;
            // Invariant 1: a hint may be corrupt; only in-range values are tried.
            if taken == 0 || taken > width {
                continue;
            }
            let hinted = width + taken - 1;
            let target = hinted << (level - hinted_level);
            if let Ok(block) = self.try_claim(target, owner) {
                // Split: the right halves on the way down from `hinted` are vacant now.
                let mut node = target;
                while node > hinted {
                    self.push_hint(node | 1);
                    node >>= 1;
                }
                return Some(block);
            }
        }
        // The level looks empty: clear its summary bit, then look again so that a hint pushed
        // between our last look and the clear is not hidden.
        self.search.fetch_and(SUMMARY, !(1u32 << hinted_level), Relaxed);
        if (0..HINT_SLOTS).any(|slot| self.search.load(self.hint_word(hinted_level, slot), Relaxed) != 0) {
            self.search.fetch_or(SUMMARY, 1 << hinted_level, Relaxed);
        }
        None
    }

    /// Records `node` as the first hint of its level (slot 0, which allocations try first);
    /// the hint it displaces goes to another slot (best effort).
    ///
    /// Left out of the loom models (`shm_loom`): it is advice like every hint (invariant 1),
    /// and its extra atomic steps on every free multiplied the three-thread model's schedules
    /// past CI's time budget; `push_hint`, which it ends in, is modelled.
    pub(crate) fn push_hint_first(&self, node: usize) {
        if cfg!(shm_loom) {
            return;
        }
        let level = level_of(node);
        let value = (node - (1usize << level) + 1) as u32;
        let old = self.search.swap(self.hint_word(level, 0), value, Relaxed) as usize;
        if self.search.load(SUMMARY, Relaxed) & (1 << level) == 0 {
            self.search.fetch_or(SUMMARY, 1 << level, Relaxed);
        }
        // Invariant 1: a displaced hint may be corrupt; only in-range values are kept.
        if old != 0 && old != value as usize && old <= 1usize << level {
            self.push_hint((1usize << level) + old - 1);
        }
    }

    /// Records `node` as vacant for later allocations (best effort).
    pub(crate) fn push_hint(&self, node: usize) {
        let level = level_of(node);
        let value = (node - (1usize << level) + 1) as u32;
        for slot in 0..HINT_SLOTS {
            let word = self.hint_word(level, slot);
            if self.search.load(word, Relaxed) == 0
                && self.search.compare_exchange(word, 0, value, Relaxed, Relaxed).is_ok()
            {
                if self.search.load(SUMMARY, Relaxed) & (1 << level) == 0 {
                    self.search.fetch_or(SUMMARY, 1 << level, Relaxed);
                }
                return;
            }
        }
        // All slots full: bring the cursors back so the scan meets this memory before memory
        // nobody has touched yet.
        let within = node - (1usize << level);
        for lower in level..=self.depth {
            let start = (within << (lower - level)) as u32;
            if self.search.load(cursor_word(lower), Relaxed) > start {
                self.search.store(cursor_word(lower), start, Relaxed);
            }
        }
    }

    /// Scans `level` from its cursor, wrapping around once (invariant 2).
    fn alloc_by_scan(&self, level: u32, owner: u16) -> Option<NodeRef> {
        let width = 1usize << level;
        let start = self.search.load(cursor_word(level), Relaxed) as usize % width;
        let mut i = start;
        let mut wrapped = false;
        loop {
            if i >= width {
                if wrapped {
                    return None;
                }
                wrapped = true;
                i = 0;
            }
            if wrapped && i >= start {
                return None;
            }
            let node = width + i;
            if !self.word(node).is_vacant() {
                i += 1;
                continue;
            }
            if let Some(block_above) = self.block_above(node) {
                i = self.skip_past(block_above, level);
                continue;
            }
            match self.try_claim(node, owner) {
                Ok(block) => {
                    self.search.store(cursor_word(level), ((i + 1) % width) as u32, Relaxed);
                    return Some(block);
                }
                Err(blocked) if blocked.at == node => i += 1,
                Err(blocked) => i = self.skip_past(blocked.at, level),
            }
        }
    }

    /// The lowest ancestor of `node` that is a block, read without writing anything.
    fn block_above(&self, node: usize) -> Option<usize> {
        let mut ancestor = node >> 1;
        while ancestor >= 1 {
            if self.word(ancestor).is_block() {
                return Some(ancestor);
            }
            ancestor >>= 1;
        }
        None
    }

    /// Index within `level` of the first node after the subtree of `ancestor`.
    fn skip_past(&self, ancestor: usize, level: u32) -> usize {
        let ancestor_level = level_of(ancestor);
        (ancestor - (1usize << ancestor_level) + 1) << (level - ancestor_level)
    }
}

const fn low_bits(n: u32) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}
