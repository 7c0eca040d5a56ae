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
//!    (`Released::Last` or `Orphaned`); a header found dead but not freed is left to its freer,
//!    who may be alive inside `free_array` (pool invariant 3).
//!    Known gap: a freer killed after its release returned `Last` and before `free_array`
//!    cleared the magic leaves the header (and, before `free_data`, the data block) to nobody:
//!    the record is `DEAD` with no holder bit, so no sweep learns its freer died. Rare (the
//!    memory test's give-back kill hits it about 1 run in 50); found in review, session 6.
//! 3. Dead slots are recycled only after every segment was swept: a new process must never
//!    inherit a dead one's holder bits.
//! 4. A renewed block is a held array to a sweep: a dead renewer's blocks are freed like any
//!    array it held (header invariant 4).
//! 5. Holder overflow blocks that no header links and whose allocator is dead (it died between
//!    allocating and linking) are freed by the same sweep (`overflow` invariant 2); a dead
//!    process's holds in a linked overflow are dropped like its inline ones, at any slot.
//!
//! Protocol: `collect` runs when a process joins or leaves, when an allocation would otherwise
//! fail, and on request; pending tokens of dead senders stay claimable until
//! `reclaim_tokens` cancels those older than an age.

use std::time::Duration;

use shm_arena::Block;
use shm_sync::{RefError, Released};

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
    /// magic of one that does not).
    pub(super) fn headers<'a>(&self, meta: MetaSegment<'a>) -> Vec<(Block, &'a ArrayHeader)> {
        meta.arena
            .blocks_in_use()
            .into_iter()
            .filter(|b| !(meta.index == 0 && *b == self.dir_block))
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
                let mut freed = false;
                for d in &dead {
                    match h.refcount.drop_holder(d.index, &tokens, &group) {
                        Ok(Released::Last) | Err(RefError::Orphaned) => freed = true,
                        _ => {}
                    }
                }
                // A header that is DEAD but not freed is left alone: its freer may be alive and
                // inside `free_array`, and freeing it here could free a reused header's data
                // (found in review). Only the one caller that learned of the death frees.
                if freed {
                    self.free_array(*i, block, h);
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

    pub(super) fn reclaim_tokens(&self, age: Duration) -> usize {
        let tokens = self.tokens();
        let mut cancelled = 0;
        'token: for p in tokens.pending() {
            if p.age_ns < age.as_nanos() as u64 {
                continue;
            }
            // Find the header the token keeps alive: a sweep of the metadata segments. Stop at
            // the first cancel: a token is cancelled once.
            for (i, arena, kind) in self.open_segments() {
                let Some(meta) = MetaSegment::of(i, arena, kind) else { continue };
                for (block, h) in self.headers(meta) {
                    if h.nonce.load(ORD) == p.target {
                        match h.refcount.cancel(p.token, &tokens, &self.group()) {
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
