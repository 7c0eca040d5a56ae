//! A non-blocking buddy tree of the NBBS family, written once over [`AtomicWords`].
//!
//! # Invariants
//!
//! 1. Every state change of a node is one atomic read-modify-write of its word; no lock is
//!    taken and no syscall is made on any path of this module.
//! 2. A node becomes a block only by a compare-and-exchange from a vacant word (no block at or
//!    below it), and the allocation is complete only when the climb has marked every ancestor
//!    without meeting one that is itself a block. Two blocks therefore never overlap.
//! 3. Every block word carries its owner tag, so whoever finds a block of a dead owner can finish
//!    or undo what that owner was doing (see `recover`). The tree never needs to know what a
//!    process was doing to repair it.
//! 4. A free marks its way up (`COAL_*`) before it releases the block and unmarks (`OCC_*`)
//!    only where its mark is still in place; an allocation that climbs through clears the mark.
//!    A free therefore never unmarks an ancestor that a newer allocation relies on.
//! 5. Search hints (cursors and hint slots) are advice: a stale or corrupt hint costs time,
//!    never correctness, and every search ends with a full scan before it reports exhaustion.
//!
//! # The protocol
//!
//! The tree is an implicit binary heap: node 1 is the root, node `n` has children `2n` and
//! `2n + 1`, and level `l` holds the `2^l` nodes `[2^l, 2^(l+1))`. The leaves (level
//! `depth`) are the minimum blocks. A node at level `l` covers `2^(depth - l)` leaves.
//!
//! *Allocation* of a node `n` (NBBS `alloc2`): claim `n` with a CAS from vacant to a block word
//! (invariant 2), then climb: at each ancestor, fail if it is a block (`OCC`), otherwise set the
//! `OCC_*` bit of the side we come from and clear that side's `COAL_*` bit. The step is skipped
//! when the word already reads that way. A failed climb is undone by a free bounded to the
//! levels the climb had marked.
//!
//! *Free* of a block `n`: mark the word `FREEING` (so a second free is refused, and a survivor
//! can finish the job if we die), then phase 1 sets `COAL_*` on the way up, stopping below an
//! ancestor whose other side is occupied and not itself coalescing; release `n`; then phase 2
//! clears `OCC_* | COAL_*` of our side on the way up while our `COAL_*` mark is still there,
//! stopping where the other side is occupied (invariant 4).
//!
//! All node-word accesses are `SeqCst`. The NBBS argument relies on Dekker-style pairs on two
//! different words (a free ORs a mark into an ancestor and then reads or releases a lower word,
//! while an allocation writes the lower word and then reads the ancestor to decide whether it
//! may skip its write); acquire/release alone would let both sides read the old values. On
//! x86-64 and AArch64, `SeqCst` loads and read-modify-writes cost the same as acquire ones.
//!
//! # Layout
//!
//! `nodes[0]` is unused; `nodes[1..2^(depth+1)]` are the node words. The search area holds one
//! summary word (bit `l`: level `l` may have hints), one cursor per level and
//! [`HINT_SLOTS`] hint slots per level (see `search`).

mod check;
mod climb;
pub mod node;
mod recover;
mod search;
#[cfg(all(shm_loom, feature = "loom"))]
pub mod trace;

/// Records a tree event for loom models; nothing otherwise.
macro_rules! trace_event {
    ($($arg:tt)*) => {
        #[cfg(all(shm_loom, feature = "loom"))]
        $crate::tree::trace::record(format!($($arg)*));
    };
}
pub(crate) use trace_event;

use crate::sync::AtomicWords;
pub use check::{TreeReport, TreeViolation};
pub use node::NodeWord;
#[cfg(feature = "internals")] // used outside the crate only
pub use recover::RecoveryReport;
#[cfg(feature = "internals")] // used outside the crate only
pub use search::HINT_SLOTS;

/// Largest supported depth: `2^30` leaves, node indices below `2^31`.
pub const MAX_DEPTH: u32 = 30;

/// A block of the tree: its node and the generation it was allocated with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeRef {
    /// Heap index of the node.
    pub index: usize,
    /// Generation recorded in the node word when this block was allocated.
    pub generation: u32,
}

/// Why the tree refused an operation on a block reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockStateError {
    /// The node index is not a node of this tree.
    #[error("node {index} is outside the tree")]
    OutOfRange {
        /// The node index given.
        index: usize,
    },
    /// The node is not a block (never allocated, or already freed).
    #[error("node {index} is not an allocated block (already freed, or never allocated)")]
    NotAllocated {
        /// The node index given.
        index: usize,
    },
    /// The node is a block of another generation: the reference is stale.
    #[error("node {index} holds generation {found}, the reference has {expected}: stale reference")]
    StaleGeneration {
        /// The node index given.
        index: usize,
        /// Generation in the reference.
        expected: u32,
        /// Generation in the tree.
        found: u32,
    },
    /// The block is already being freed (a concurrent or repeated free).
    #[error("node {index} is already being freed")]
    BeingFreed {
        /// The node index given.
        index: usize,
    },
    /// The block is parked in a cache: it was freed already.
    #[error("node {index} was already freed (it sits in a cache)")]
    Cached {
        /// The node index given.
        index: usize,
    },
    /// The block is in use, not parked in a cache as the caller said.
    #[error("node {index} is not parked in a cache")]
    NotParked {
        /// The node index given.
        index: usize,
    },
    /// The block is owned by someone else than the caller said.
    #[error("node {index} is owned by {found}, not {expected}")]
    WrongOwner {
        /// The node index given.
        index: usize,
        /// The owner the caller expected.
        expected: u16,
        /// The owner in the tree.
        found: u16,
    },
}

/// What a successful free did, for the caller's bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freed {
    /// Owner tag the block had before the free began.
    pub previous_owner: u16,
    /// Whether the block had been parked in a cache.
    pub was_cached: bool,
}

/// The buddy tree over a node store `N` and a search-hint store `S`.
///
/// `BuddyTree` holds only references and the depth; all state lives in the stores, so any
/// number of `BuddyTree` values, in any number of processes, may operate on the same stores.
pub struct BuddyTree<'a, N: ?Sized + AtomicWords, S: ?Sized + AtomicWords = N> {
    nodes: &'a N,
    search: &'a S,
    depth: u32,
}

impl<N: ?Sized + AtomicWords, S: ?Sized + AtomicWords> Clone for BuddyTree<'_, N, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<N: ?Sized + AtomicWords, S: ?Sized + AtomicWords> Copy for BuddyTree<'_, N, S> {}

/// The stores do not match the requested depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a tree of depth {depth} needs {nodes_needed} node words and {search_needed} search words; got {nodes_given} and {search_given}")]
pub struct TreeGeometryError {
    /// Requested depth.
    pub depth: u32,
    /// Node words required.
    pub nodes_needed: usize,
    /// Node words given.
    pub nodes_given: usize,
    /// Search words required.
    pub search_needed: usize,
    /// Search words given.
    pub search_given: usize,
}

impl<'a, N: ?Sized + AtomicWords, S: ?Sized + AtomicWords> BuddyTree<'a, N, S> {
    /// Number of node words a tree of `depth` needs (index 0 included, unused).
    pub const fn node_words(depth: u32) -> usize {
        2usize << depth
    }

    /// Number of search words a tree of `depth` needs.
    pub const fn search_words(depth: u32) -> usize {
        search::search_words(depth)
    }

    /// Views `nodes` and `search` as a tree of `depth` levels below the root.
    ///
    /// The stores must be zeroed for a new tree, then [`BuddyTree::reserve_tail`] run once
    /// before any other process sees them.
    ///
    /// # Errors
    ///
    /// [`TreeGeometryError`] when a store is too short or `depth > MAX_DEPTH`.
    pub fn new(nodes: &'a N, search: &'a S, depth: u32) -> Result<Self, TreeGeometryError> {
        let err = TreeGeometryError {
            depth,
            nodes_needed: Self::node_words(depth.min(MAX_DEPTH)),
            nodes_given: nodes.len(),
            search_needed: Self::search_words(depth.min(MAX_DEPTH)),
            search_given: search.len(),
        };
        if depth > MAX_DEPTH || nodes.len() < err.nodes_needed || search.len() < err.search_needed {
            return Err(err);
        }
        Ok(Self { nodes, search, depth })
    }

    /// Depth of the tree: the level of the leaves.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // for the benches and models
    pub const fn depth(&self) -> u32 {
        self.depth
    }

    /// Number of leaves.
    pub const fn leaves(&self) -> u64 {
        1u64 << self.depth
    }

    /// Level whose nodes cover `2^order` leaves, if the tree has such a level.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // for the benches and models
    pub const fn level_for_order(&self, order: u32) -> Option<u32> {
        if order > self.depth {
            None
        } else {
            Some(self.depth - order)
        }
    }

    /// Heap index of the node at `level` that starts at leaf `leaf`, if `leaf` is aligned to it.
    pub fn node_at(&self, level: u32, leaf: u64) -> Option<usize> {
        if level > self.depth {
            return None;
        }
        let shift = self.depth - level;
        if leaf >= self.leaves() || leaf & ((1u64 << shift) - 1) != 0 {
            return None;
        }
        Some((1usize << level) + (leaf >> shift) as usize)
    }

    /// First leaf covered by `node`.
    pub fn first_leaf(&self, node: usize) -> u64 {
        let level = node::level_of(node);
        ((node - (1usize << level)) as u64) << (self.depth - level)
    }

    /// `log2` of the number of leaves `node` covers.
    pub fn order_of(&self, node: usize) -> u32 {
        self.depth - node::level_of(node)
    }

    /// Whether `index` is a node of this tree.
    #[inline]
    pub fn contains(&self, index: usize) -> bool {
        index >= 1 && index < Self::node_words(self.depth)
    }

    /// Reads a node word.
    #[inline]
    pub fn word(&self, index: usize) -> NodeWord {
        NodeWord(self.nodes.load(index, core::sync::atomic::Ordering::SeqCst))
    }

    /// Checks that `block` is, right now, a block in use with its generation.
    ///
    /// # Errors
    ///
    /// The [`BlockStateError`] that describes what the node is instead.
    pub fn validate(&self, block: NodeRef) -> Result<NodeWord, BlockStateError> {
        if !self.contains(block.index) {
            return Err(BlockStateError::OutOfRange { index: block.index });
        }
        let w = self.word(block.index);
        Self::classify(block, w).map(|()| w)
    }

    /// Explains why word `w` is not the block in use that `block` names.
    fn classify(block: NodeRef, w: NodeWord) -> Result<(), BlockStateError> {
        let index = block.index;
        if !w.is_block() || w.owner() == node::RESERVED_OWNER {
            return Err(BlockStateError::NotAllocated { index });
        }
        if w.generation() != block.generation & node::GEN_MAX {
            return Err(BlockStateError::StaleGeneration { index, expected: block.generation, found: w.generation() });
        }
        if w.is_freeing() {
            return Err(BlockStateError::BeingFreed { index });
        }
        if w.is_cached() {
            return Err(BlockStateError::Cached { index });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
