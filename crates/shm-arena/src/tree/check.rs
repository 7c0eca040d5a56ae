//! Walking the tree: the invariant check and the usage summary.
//!
//! `check` holds only when no operation is in flight (a quiescent tree) and every dead owner
//! has been recovered; `summarize` may run at any time and gives a racy but bounded snapshot.
//!
//! Invariants checked, per node reached from the root through nodes that are not blocks:
//! 1. Bit 7 is clear everywhere; `FREEING` and `CACHED` appear only on blocks, never together,
//!    and never at all in a quiescent tree for `FREEING`.
//! 2. A node that is not a block has owner 0, and a leaf has no subtree bits.
//! 3. An inner node that is not a block marks a side `OCC_*` whenever that child is a block or
//!    marks a side itself (a missing mark would let a larger block be claimed over a live one).
//! 4. Below a block and below a vacant node, no word has `OCC` or `OCC_*` bits (no block inside
//!    a block, no block hidden under a vacant node).
//! 5. Accounting: blocks in use, cached, reserved and free leaves add up to all leaves.
//!
//! Two leftovers of NBBS are allowed and counted, because they are conservative (they can only
//! make the tree look fuller than it is, never emptier):
//! - `COAL_*` bits left by a phase 2 that stopped early (the next allocation through clears them);
//! - `OCC_*` marks above an empty child. They arise when a free's phase 2 meets a coalescing
//!   mark that a newer free of the same place set after a reallocation (an ABA on the mark; the
//!   loom model `three_threads_allocate_and_free_mixed_sizes` shows one), and stops one level
//!   too early. Such a mark only hides the larger block above it; the next allocation and free
//!   below it, or [`BuddyTree::repair`], clears it. The arena runs the repair before it reports
//!   exhaustion.

use std::collections::BTreeMap;

use super::node::{level_of, NodeWord, COAL_LEFT, COAL_RIGHT, OCC, OCC_LEFT, OCC_RIGHT, RESERVED_OWNER, SPARE};
use super::{BuddyTree, NodeRef};
use crate::sync::AtomicWords;

/// Usage of a tree, by walking it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeReport {
    /// Blocks in use.
    pub blocks_in_use: u64,
    /// Leaves covered by blocks in use.
    pub leaves_in_use: u64,
    /// Blocks parked in caches.
    pub blocks_cached: u64,
    /// Leaves covered by cached blocks.
    pub leaves_cached: u64,
    /// Blocks being freed (none in a quiescent tree).
    pub blocks_freeing: u64,
    /// Leaves beyond the arena's capacity.
    pub leaves_reserved: u64,
    /// Leaves in vacant nodes.
    pub leaves_free: u64,
    /// Count of maximal vacant nodes, by order (`log2` of their size in leaves).
    pub free_by_order: Vec<u64>,
    /// Order of the largest vacant node.
    pub largest_free_order: Option<u32>,
    /// Leaves of blocks (in use, cached or being freed) by owner tag.
    pub leaves_by_owner: BTreeMap<u16, u64>,
    /// `COAL_*` bits found (harmless leftovers).
    pub stale_marks: u64,
    /// `OCC_*` side marks above an empty child (conservative leftovers; see the module doc).
    pub stale_occupancy_marks: u64,
}

/// A broken invariant found by `BuddyTree::check` (through [`Arena::check`](crate::Arena::check)).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TreeViolation {
    /// A word has a bit or field set that its state forbids (invariants 1-2).
    #[error("node {index}: {what} in {word:?}")]
    BadWord {
        /// Heap index.
        index: usize,
        /// The word.
        word: NodeWord,
        /// What is wrong.
        what: &'static str,
    },
    /// A side is not marked although the child holds a block (invariant 3).
    #[error("node {index}: {side} mark is {marked} but child {child} is {child_word:?}")]
    MarkMismatch {
        /// Heap index of the parent.
        index: usize,
        /// "left" or "right".
        side: &'static str,
        /// Whether the side is marked.
        marked: bool,
        /// Heap index of the child.
        child: usize,
        /// The child's word.
        child_word: NodeWord,
    },
    /// A block or mark sits below a block or below a vacant node (invariant 4).
    #[error("node {index} ({word:?}) lies below {above}, which is {what}")]
    HiddenBelow {
        /// Heap index of the offending descendant.
        index: usize,
        /// Its word.
        word: NodeWord,
        /// Heap index of the block or vacant node above.
        above: usize,
        /// "a block" or "vacant".
        what: &'static str,
    },
    /// The leaves do not add up (invariant 5).
    #[error("accounting: {counted} leaves counted, tree has {total}")]
    Accounting {
        /// Leaves counted in all states.
        counted: u64,
        /// Leaves in the tree.
        total: u64,
    },
}

impl<N: ?Sized + AtomicWords, S: ?Sized + AtomicWords> BuddyTree<'_, N, S> {
    /// Checks every invariant of a quiescent tree and reports its usage.
    ///
    /// Linear in the number of nodes.
    ///
    /// # Errors
    ///
    /// Every violation found (the walk goes on after the first).
    pub fn check(&self) -> Result<TreeReport, Vec<TreeViolation>> {
        let mut violations = Vec::new();
        let report = self.walk(Some(&mut violations));
        if violations.is_empty() {
            Ok(report)
        } else {
            Err(violations)
        }
    }

    /// Usage of the tree, by a walk that visits only blocks and the nodes above them.
    ///
    /// Safe to call while other processes allocate: the numbers are then a blend of moments.
    pub fn summarize(&self) -> TreeReport {
        self.walk(None)
    }

    /// Calls `f` for every block in use (not cached, not being freed, not the reserved tail),
    /// in address order. Safe while others allocate: blocks allocated or freed meanwhile may or
    /// may not be reported.
    pub fn for_each_block_in_use(&self, mut f: impl FnMut(NodeRef)) {
        let mut stack = vec![1usize];
        while let Some(index) = stack.pop() {
            let w = self.word(index);
            if w.is_block() {
                if w.is_block_in_use() && w.owner() != RESERVED_OWNER {
                    f(NodeRef { index, generation: w.generation() });
                }
                continue;
            }
            if w.0 & (OCC_LEFT | OCC_RIGHT) != 0 && self.order_of(index) > 0 {
                // Right first on the stack, so the left subtree (lower addresses) comes out first.
                stack.push(2 * index + 1);
                stack.push(2 * index);
            }
        }
    }

    fn walk(&self, mut violations: Option<&mut Vec<TreeViolation>>) -> TreeReport {
        let mut report = TreeReport { free_by_order: vec![0; self.depth as usize + 1], ..TreeReport::default() };
        let mut stack = vec![1usize];
        while let Some(index) = stack.pop() {
            let w = self.word(index);
            let order = self.order_of(index);
            let leaves = 1u64 << order;
            if w.0 & (COAL_LEFT | COAL_RIGHT) != 0 {
                report.stale_marks += 1;
            }
            if let Some(v) = violations.as_deref_mut() {
                self.check_word(index, w, v);
            }
            if w.is_block() {
                if w.owner() == RESERVED_OWNER {
                    report.leaves_reserved += leaves;
                } else {
                    *report.leaves_by_owner.entry(w.owner()).or_default() += leaves;
                    if w.is_freeing() {
                        report.blocks_freeing += 1;
                    } else if w.is_cached() {
                        report.blocks_cached += 1;
                        report.leaves_cached += leaves;
                    } else {
                        report.blocks_in_use += 1;
                        report.leaves_in_use += leaves;
                    }
                }
                if let Some(v) = violations.as_deref_mut() {
                    self.check_subtree_empty(index, "a block", v);
                }
                continue;
            }
            if w.0 & (OCC_LEFT | OCC_RIGHT) == 0 {
                report.leaves_free += leaves;
                report.free_by_order[order as usize] += 1;
                report.largest_free_order = report.largest_free_order.max(Some(order));
                if let Some(v) = violations.as_deref_mut() {
                    self.check_subtree_empty(index, "vacant", v);
                }
                continue;
            }
            if order == 0 {
                continue; // a leaf with subtree bits: reported by check_word
            }
            for (child, bit, side) in [(2 * index, OCC_LEFT, "left"), (2 * index + 1, OCC_RIGHT, "right")] {
                let child_word = self.word(child);
                let child_busy = child_word.0 & (OCC | OCC_LEFT | OCC_RIGHT) != 0;
                let marked = w.0 & bit != 0;
                if marked && !child_busy {
                    report.stale_occupancy_marks += 1;
                } else if !marked && child_busy {
                    if let Some(v) = violations.as_deref_mut() {
                        v.push(TreeViolation::MarkMismatch { index, side, marked, child, child_word });
                    }
                }
                stack.push(child);
            }
        }
        if let Some(v) = violations {
            // Blocks of every owner (in use, cached or being freed), the tail, and vacant nodes.
            let counted = report.leaves_by_owner.values().sum::<u64>() + report.leaves_reserved + report.leaves_free;
            if counted != self.leaves() {
                v.push(TreeViolation::Accounting { counted, total: self.leaves() });
            }
        }
        report
    }

    fn check_word(&self, index: usize, w: NodeWord, v: &mut Vec<TreeViolation>) {
        let mut bad = |what| v.push(TreeViolation::BadWord { index, word: w, what });
        if w.0 & SPARE != 0 {
            bad("spare bit set");
        }
        if w.is_block() {
            if w.status() & (OCC_LEFT | OCC_RIGHT) != OCC_LEFT | OCC_RIGHT {
                bad("block without both side marks");
            }
            if w.is_freeing() {
                bad(if w.is_cached() {
                    "block both cached and being freed"
                } else {
                    "block being freed in a quiescent tree"
                });
            }
        } else {
            if w.is_freeing() || w.is_cached() {
                bad("cache or free flag on a node that is not a block");
            }
            if w.owner() != 0 {
                bad("owner tag on a node that is not a block");
            }
            if level_of(index) == self.depth && w.status() != 0 {
                bad("subtree bits on a leaf");
            }
        }
    }

    fn check_subtree_empty(&self, top: usize, what: &'static str, v: &mut Vec<TreeViolation>) {
        let top_level = level_of(top);
        for level in top_level + 1..=self.depth {
            let shift = level - top_level;
            let first = top << shift;
            for index in first..first + (1usize << shift) {
                let word = self.word(index);
                if word.0 & (OCC | OCC_LEFT | OCC_RIGHT) != 0 {
                    v.push(TreeViolation::HiddenBelow { index, word, above: top, what });
                }
            }
        }
    }
}
