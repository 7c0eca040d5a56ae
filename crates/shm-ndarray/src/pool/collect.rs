//! What happens when a process dies holding an array: `collect` drops what dead processes held
//! and frees what nobody holds any more; lost handles' tokens are reclaimed by age.
//!
//! # Invariants
//!
//! 1. A dead process's slot is claimed by one collector, which drops its holder bit from every
//!    header of every metadata segment (a sweep: pool invariant 1 lets it trust each block's
//!    magic), and runs every arena's recovery of blocks it allocated and never published (pool
//!    invariant 4).
//! 2. A collector frees an array only if its own drop of a dead holder killed the refcount
//!    (`Released::Last` or `Orphaned`), or finishes its free if the dead slot was its freer
//!    (`Released::FreerDied`: shm-sync refcount invariant 7, release invariant 5); any other
//!    header found dead is left to its freer, alive inside `free_array` (pool invariant 3).
//!    (Before session 7 a freer killed between its `Last` and the end of `free_array` leaked
//!    the array: the memory test's give-back kill hit it about 1 run in 50.)
//! 3. Dead slots are recycled only after every segment was swept: a new process must never
//!    inherit a dead one's holder bits.
//! 4. A renewed block is a held array to a sweep: a dead renewer's blocks are freed like any
//!    array it held (header invariant 4).
//! 5. A sweep looks only at disowned header blocks. A block owned by a process is one it is
//!    making (its creator disowns it after writing the header) or freeing (a freer adopts the
//!    header block before it clears the magic, release invariant 5), or one a dead process
//!    left, which the arena's recovery frees. Such a block may still carry the magic and the
//!    dead refcount of the header freed there before (recovery frees without clearing), and
//!    acting on that could free the new array: found in review, session 7. Once a block is
//!    found disowned (a `SeqCst` load after the disowner's CAS), its header is the published
//!    one, and it cannot be freed and reused under the sweep while a dead slot it acts for
//!    holds it or is its freer.
//! 6. Holder overflow blocks that no header links and whose allocator is dead (it died between
//!    allocating and linking) are freed by the same sweep (`overflow` invariant 2); a dead
//!    process's holds in a linked overflow are dropped like its inline ones, at any slot.
//!
//! Protocol: `collect` runs when a process joins or leaves (a leave of a pool of more than 64
//! processes only if no other member lives: pool invariant 4), when an allocation would
//! otherwise fail, and on request; pending tokens
//! of dead senders stay claimable (the handle may still sit in a pipe or a file some live
//! process will read) until `reclaim_tokens` cancels them: those older than an age, or those of
//! dead senders that a caller knows nobody will read (an executor's workers killed when its
//! pool broke: their unread results are discarded).

use shm_arena::Block;
use shm_sync::{PendingToken, RefError, Released};

use super::segments::MetaSegment;
use super::{PoolShared, ORD};
use crate::directory::MAX_SEGMENTS;
use crate::header::{ArrayHeader, ARRAY_MAGIC};

/// What [`Pool::collect`](super::Pool::collect) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectReport {
    /// Dead processes whose slots were recycled.
    pub dead_processes: usize,
    /// Arrays freed because their last holder was dead (or a holder died mid-change).
    pub arrays_freed: usize,
    /// Arena blocks freed because their allocating process died before publishing them.
    pub blocks_recovered: u64,
}

impl PoolShared {
    /// The array headers in use in metadata segment `meta` (pool invariant 1: every block there
    /// but the directory starts with a header's magic or is skipped; nothing is read past the
    /// magic of one that does not). Only disowned blocks (invariant 5): a block a process is
    /// making (or has taken back to free) is not a published header, and may still hold the
    /// stale magic and dead refcount of the header freed there before.
    pub(super) fn headers<'a>(&self, meta: MetaSegment<'a>) -> Vec<(Block, &'a ArrayHeader)> {
        meta.arena
            .blocks_in_use()
            .into_iter()
            .filter(|b| !(meta.index == 0 && *b == self.dir_block))
            .filter(|b| meta.arena.is_disowned(*b))
            .filter_map(|b| {
                let (_, h) = meta.header(b).ok()?;
                (h.magic.load(core::sync::atomic::Ordering::Acquire) == ARRAY_MAGIC).then_some((b, h))
            })
            .collect()
    }

    pub(super) fn collect(&self) -> CollectReport {
        let mut report = CollectReport::default();
        let table = self.processes();
        let group = self.group();
        let tokens = self.tokens();
        let segments = self.open_segments();
        let dead: Vec<_> = table.find_dead().into_iter().filter_map(|i| table.claim_dead(i)).collect();
        for (i, arena, kind) in &segments {
            report.blocks_recovered += arena.recover_dead_owners().blocks_freed;
            let Some(meta) = MetaSegment::of(*i, arena, *kind) else { continue };
            report.blocks_recovered += self.sweep_overflows(meta);
            for (block, h) in self.headers(meta) {
                let (mut freed, mut finish) = (false, false);
                for d in &dead {
                    match h.refcount.drop_holder(d.index, &tokens, &group) {
                        Ok(Released::Last) | Err(RefError::Orphaned) => freed = true,
                        Ok(Released::FreerDied) => finish = true,
                        _ => {}
                    }
                }
                // A header that is DEAD but not freed, whose freer is not among our dead, is
                // left alone: its freer is alive and inside `free_array`, and freeing it here
                // could free a reused header's data (found in review). Only the one caller that
                // learned of the death frees, or the rescuer of its slot finishes.
                if freed {
                    self.free_array(*i, block, h);
                    report.arrays_freed += 1;
                } else if finish {
                    self.finish_free(*i, block, h);
                    report.arrays_freed += 1;
                }
            }
        }
        tokens.free_dead_reservations();
        // Recycle the slots only if every segment was swept: a new process must not inherit a
        // dead one's holder bits in a segment we could not open (found in review).
        let count =
            self.dir().header().segment_count.load(core::sync::atomic::Ordering::Acquire).min(MAX_SEGMENTS as u64);
        // A memfd segment that no live process holds is gone for good (backend invariant 4):
        // nobody can see a header in it again.
        if segments.len() as u64 + self.lost_segments(&segments) == count {
            for d in dead {
                table.release_dead(d);
                report.dead_processes += 1;
            }
        }
        report
    }

    /// Cancels every pending token `chosen` picks (protocol above); returns how many.
    pub(super) fn reclaim_tokens(&self, chosen: impl Fn(&PendingToken) -> bool) -> usize {
        let tokens = self.tokens();
        let freer = self.freer_slot();
        let mut cancelled = 0;
        'token: for p in tokens.pending() {
            if !chosen(&p) {
                continue;
            }
            // Find the header the token keeps alive: a sweep of the metadata segments. Stop at
            // the first cancel: a token is cancelled once.
            for (i, arena, kind) in self.open_segments() {
                let Some(meta) = MetaSegment::of(i, arena, kind) else { continue };
                for (block, h) in self.headers(meta) {
                    if h.nonce.load(ORD) == p.target {
                        match h.refcount.cancel(p.token, freer, &tokens, &self.group()) {
                            Ok(Released::Last) | Err(RefError::Orphaned) => {
                                cancelled += 1;
                                self.free_array(i, block, h);
                                continue 'token;
                            }
                            Ok(_) => {
                                cancelled += 1;
                                continue 'token;
                            }
                            Err(_) => {}
                        }
                    }
                }
            }
        }
        cancelled
    }
}
