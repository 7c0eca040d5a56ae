//! Recovery after an owner died (module invariant 3).
//!
//! Invariants:
//! 1. Only blocks tagged with the dead owner are touched, and each is first taken over by a
//!    CAS to the rescuer's tag, so two rescuers never act on the same block and a rescuer that
//!    dies in turn leaves blocks tagged with its own tag, recoverable the same way.
//! 2. What the dead owner was doing is read from the word, not from a log:
//!    a `FREEING` block had begun phase 1, and the free is finished (phase 1 is idempotent);
//!    any other block of the dead owner (in use, cached, or claimed with its climb cut short) is
//!    climbed again: if the climb completes, the block is a whole block and is freed; if it meets
//!    a block above, it is undone exactly as a failed allocation is.
//! 3. A phase 2 cut short leaves `OCC_*` marks above a vacant subtree. The repair pass clears
//!    such marks with the same handshake a free uses (set `COAL_*`, look at the child again,
//!    clear only if the mark survived), so it never clears a mark a live allocation relies on.
//!
//! The caller guarantees that `dead` really is dead and that only one rescuer works on it at
//! a time (the arena's owner table does both).

use core::sync::atomic::Ordering::SeqCst;

use super::climb::child_towards;
use super::node::{coal_bit_for, occ_bit_for, NodeWord, CACHED, FREEING, OCC, RESERVED_OWNER};
use super::BuddyTree;
use crate::sync::{dekker_fence, AtomicWords};

/// What a recovery pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Blocks of the dead owner that were in use or cached, now free.
    pub blocks_freed: u64,
    /// Leaves (minimum blocks) those blocks covered.
    pub leaves_freed: u64,
    /// Frees the dead owner had begun, now finished.
    pub frees_finished: u64,
    /// Claims whose climb had met a block above, now undone.
    pub claims_undone: u64,
}

impl<N: ?Sized + AtomicWords, S: ?Sized + AtomicWords> BuddyTree<'_, N, S> {
    /// Frees or undoes everything tagged with `dead`, acting as `rescuer`.
    ///
    /// Walks every node word once: cost is linear in the size of the tree, and no lock is
    /// taken, so other processes go on allocating and freeing meanwhile. Run [`BuddyTree::repair`]
    /// afterwards (once, after any number of owners) to clear marks a cut phase 2 left.
    /// `dead == rescuer` frees every block of `rescuer` itself (a clean exit).
    pub fn recover_owner(&self, dead: u16, rescuer: u16) -> RecoveryReport {
        self.recover_owners(&|owner| owner == dead, Some(rescuer))
    }

    /// Frees or undoes everything tagged with an owner for which `is_dead` holds, in one walk
    /// of the tree whatever their number, acting as `rescuer`, or, with `None`, as each block's
    /// dead owner itself (a rescuer with no tag of its own: its slot `Recovering` names it,
    /// so if it dies too, the next rescuer takes the same blocks over). The caller guarantees
    /// the same as for [`BuddyTree::recover_owner`], for every owner `is_dead` accepts.
    pub fn recover_owners(&self, is_dead: &dyn Fn(u16) -> bool, rescuer: Option<u16>) -> RecoveryReport {
        let mut report = RecoveryReport::default();
        for index in 1..Self::node_words(self.depth) {
            let mut w = self.word(index);
            // Invariant 1: take the block over before acting on it.
            let taken = loop {
                if !w.is_block() || w.owner() == RESERVED_OWNER || !is_dead(w.owner()) {
                    break None;
                }
                let to = rescuer.unwrap_or(w.owner());
                match self.nodes.compare_exchange(index, w.0, w.with_owner(to).0, SeqCst, SeqCst) {
                    Ok(_) => break Some(w),
                    Err(now) => w = NodeWord(now),
                }
            };
            let Some(w) = taken else { continue };
            let w = w.with_owner(rescuer.unwrap_or(w.owner()));
            let leaves = 1u64 << self.order_of(index);
            if w.is_freeing() {
                self.finish_free(index);
                report.frees_finished += 1;
                report.leaves_freed += leaves;
                continue;
            }
            match self.climb(index) {
                Ok(()) => {
                    let mine = w;
                    let freeing = mine.without_flags(CACHED).with_flags(FREEING);
                    if self.nodes.compare_exchange(index, mine.0, freeing.0, SeqCst, SeqCst).is_ok() {
                        self.finish_free(index);
                        report.blocks_freed += 1;
                        report.leaves_freed += leaves;
                    }
                }
                Err(blocked) => {
                    self.release(index, child_towards(blocked.at, index));
                    report.claims_undone += 1;
                }
            }
        }
        report
    }

    fn finish_free(&self, index: usize) {
        if let Some(vacant) = self.release(index, 1) {
            self.push_hint(vacant);
        }
    }

    /// Clears `OCC_*` marks that stand above a vacant child (invariant 3), whether a dead
    /// process's phase 2 or an NBBS mark ABA (see `check`) left them.
    ///
    /// Returns the number of marks cleared. Safe to run at any time, concurrently with
    /// allocations and frees. Linear in the number of inner nodes.
    pub fn repair(&self) -> u64 {
        let mut repaired = 0;
        let inner = 1usize << self.depth;
        for parent in (1..inner).rev() {
            for child in [2 * parent, 2 * parent + 1] {
                let occ = occ_bit_for(child);
                let coal = coal_bit_for(child);
                let w = self.nodes.load(parent, SeqCst);
                if w & OCC != 0 || w & occ == 0 || self.word(child).status() != 0 {
                    continue;
                }
                // The handshake of a free: mark, look at the child again, clear if still marked.
                self.nodes.fetch_or(parent, coal, SeqCst);
                // Dekker pair with the climb: our mark against its write one level down.
                dekker_fence();
                if self.word(child).status() != 0 {
                    continue;
                }
                let mut v = self.nodes.load(parent, SeqCst);
                while v & coal != 0 && v & OCC == 0 {
                    match self.nodes.compare_exchange(parent, v, v & !(coal | occ), SeqCst, SeqCst) {
                        Ok(_) => {
                            repaired += 1;
                            break;
                        }
                        Err(now) => v = now,
                    }
                }
            }
        }
        repaired
    }
}
