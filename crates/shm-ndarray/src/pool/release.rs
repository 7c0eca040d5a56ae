//! Letting go of an array: releasing this process's hold, freeing a dead array, and renewing a
//! small array's block for this process's next one.
//!
//! # Invariants
//!
//! 1. Only the one process that learned an array died (`Released::Last`, or `Orphaned` from a
//!    repair) frees it: its holder overflow block (if linked: `overflow` invariant 3), its data
//!    block (unless inline), its magic cleared, then its header block (pool invariant 3).
//! 2. While anyone waits on `freed`, frees bypass this process's caches (its arenas' and its
//!    renewed blocks) so the memory reaches the shared tree at once, and `freed` is notified.
//! 3. A block is renewed only under the slot this process holds now, for a small array whose
//!    one reference is ours (header invariant 4, recycle invariant 1); a renewed block that
//!    does not fit the cache is released after all.
//! 4. A hold is released once: `holder` turns `NOT_HELD` under the entry's lock before the
//!    release (local_array invariant 3).
//! 5. A free can be finished by another process: the freer's slot is named by the dead refcount
//!    (shm-sync refcount invariant 7), and every step of `free_array` leaves a mark the
//!    finisher (`finish_free`, run by the rescuer of the dead freer's slot) reads. The data
//!    block: `FREEING_DATA` in the header before the arena takes it back, `DATA_FREED` after;
//!    the finisher frees it only if it can adopt it (still allocated, disowned, same
//!    generation: nobody freed it), so after `DATA_FREED` it never tries, and in the few
//!    instructions between `FREEING_DATA` and the arena's commit the adopt decides. The header
//!    block: the freer adopts it (our owner tag) before it clears the magic, so a death after
//!    that leaves it to the arena's recovery of dead owners, which `collect` runs before it
//!    sweeps; a header whose magic a sweep still sees is disowned, or was never touched.
//!    The live-data count (a hint: reserve invariant 3) may end one array low when a freer dies
//!    inside `free_data` after taking the count off and before the arena took the block: the
//!    finisher adopts it and takes the count off again (found in review, session 7).
//!    A process that cannot adopt because it has no owner slot in the segment and none is free
//!    (more than about 1,014 processes allocate there: segments invariant 5) goes on when the
//!    block is still the disowned one (`take_for_free`), without the ownership that would hand
//!    it to recovery if it died in the next steps: a death there can leak that block, never
//!    free it twice (the arena refuses a free of a block not allocated with its generation).
//!
//! Protocol: the last `LocalRef` of an array calls `release_local`; `leave` calls
//! `release_hold` for every array still held; renewed blocks go back (`give_back_renewed`)
//! when this process leaves, when one of its allocations finds no room, and when anyone waits.

use std::ptr::NonNull;
use std::sync::OnceLock;

use crate::sync::fork_generation;
use shm_arena::Block;
use shm_sync::{RefError, Released};

use super::local_array::{held_slot, LocalArray, NOT_HELD};
use super::{PoolShared, ORD};
use crate::header::{ArrayHeader, DATA_FREED, FREEING_DATA, RENEWED};
use crate::kill_points::{self, KillPoint};
use crate::recycle::Renewed;

impl PoolShared {
    /// Frees a dead array's data block (if it has one of its own), then its header block
    /// (pool invariant 3), marking each step for a finisher (invariant 5).
    pub(super) fn free_array(&self, meta_seg: u16, header_block: Block, h: &ArrayHeader) {
        self.free_steps(meta_seg, header_block, h, false);
    }

    /// Finishes the free of a dead array whose freer died before it was done (invariant 5): the
    /// caller is the rescuer of the freer's slot (`Released::FreerDied`).
    pub(super) fn finish_free(&self, meta_seg: u16, header_block: Block, h: &ArrayHeader) {
        self.free_steps(meta_seg, header_block, h, true);
    }

    fn free_steps(&self, meta_seg: u16, header_block: Block, h: &ArrayHeader, finishing: bool) {
        kill_points::reached(KillPoint::FreeStart);
        // Someone waits for memory: free straight to the shared tree, not into this process's
        // cache, where a waiter in another process could not reach it (found in review).
        let waiting = self.dir().header().freed.has_listeners();
        // First: the record is dead, nobody reads its holders; a death after this leaves the
        // header without an overflow, never an overflow without a header (`overflow`, 3).
        self.free_overflow(h);
        let mut parked = None;
        if h.inline_offset.load(ORD) == 0 {
            let word = h.data_segment.load(ORD);
            let data_seg = word as u16;
            let data_block = Block::from_bits(h.data_block.load(ORD));
            // A finisher frees the data only if nobody did: the block is still disowned, with
            // its generation (invariant 5).
            let ours = |a: &shm_arena::Arena| !finishing || (word & DATA_FREED == 0 && take_for_free(a, data_block));
            if let Some(a) = self.segment(data_seg).ok().filter(|a| ours(a)) {
                h.data_segment.store(word | FREEING_DATA, ORD);
                kill_points::reached(KillPoint::FreeDataMarked);
                parked = self.free_data(a, data_block, h.data_len.load(ORD)).map(|p| (a, p));
                h.data_segment.store(word | DATA_FREED, ORD);
                kill_points::reached(KillPoint::FreeDataFreed);
                if waiting {
                    a.trim();
                }
            }
        }
        if let Ok(a) = self.segment(meta_seg) {
            // Ours before the magic goes: a death from here on leaves the block to the arena's
            // recovery (invariant 5). A finisher that cannot adopt it finds it owned by the dead
            // freer already: recovery frees it. (The freer itself goes on either way, as it
            // always did: it is the array's one freer.)
            if take_for_free(a, header_block) || !finishing {
                kill_points::reached(KillPoint::FreeHeaderAdopted);
                h.magic.store(0, ORD);
                let _ = a.free(header_block);
            }
            if waiting {
                a.trim();
            }
        }
        // The slow part last: the header is freed, the data block parked under our tag (a
        // death now leaves it to the arena's recovery, pages still reserved).
        if let Some((a, p)) = parked {
            a.release_parked(p);
        }
        self.dir().header().freed.notify_if_waiting();
    }

    #[inline]
    pub(super) fn release_local(&self, local: &LocalArray) {
        // Take the hold: `leave` may be releasing it at the same time.
        // Under the entry's lock (see `LocalArray::holder`): a load and a store suffice.
        let Some(slot) = held_slot(local.holder.load(ORD)) else {
            return; // inherited across a fork and never re-acquired here, or released by `leave`
        };
        local.holder.store(NOT_HELD, ORD);
        self.release_hold(local, slot);
    }

    #[inline]
    pub(super) fn release_hold(&self, local: &LocalArray, slot: u32) {
        let h = local.header();
        let tokens = self.tokens();
        // A small array's block is renewed for our next one (header invariant 4) unless someone
        // waits for memory: then it, and every block renewed before, goes back to the pool.
        let waiting = self.dir().header().freed.has_listeners();
        if waiting && !self.renewed.is_empty() {
            self.give_back_renewed(slot);
        }
        // Renew only under the slot this process holds now: a block parked under a slot it has
        // given up would be held by nobody it knows of (found in review, session 4).
        let renewable = h.inline_offset.load(ORD) != 0
            && Renewed::caches(local.meta_segment, local.header_block)
            && self.fast_slot.load(ORD) == fork_generation() << 16 | u64::from(slot + 1);
        let result = if renewable && !waiting {
            h.refcount.release_or_renew(slot, &tokens, self.next_nonce(), &self.group())
        } else {
            h.refcount.release(slot, &tokens, &self.group())
        };
        match result {
            Ok(Released::Renewed) => {
                // Only a marker for sweeps and a first filter for attaches: the target, changed
                // under the lock, is what stops a stale attach (header invariant 2).
                h.nonce.store(RENEWED, ORD);
                if !self.renewed.push(local.meta_segment, local.header_block) {
                    // Full: release it after all.
                    self.release_renewed(slot, local.meta_segment, local.header_block, h);
                }
            }
            Ok(Released::Last) | Err(RefError::Orphaned) => self.free_array(local.meta_segment, local.header_block, h),
            _ => {}
        }
    }

    /// A renewed block of `size` bytes of this process, if one is cached (recycle invariant 1):
    /// (segment, block, address, its header).
    #[inline]
    pub(super) fn take_renewed(&self, size: u64) -> Option<(u16, Block, NonNull<u8>, &ArrayHeader)> {
        let (seg, block) = self.renewed.pop(size.max(1).trailing_zeros().max(7))?;
        let (ptr, h) = self.renewed_header(seg, block)?;
        Some((seg, block, ptr, h))
    }

    /// Where a renewed block of this process is, and its header. Always found: we pushed a
    /// block of a segment this process had open, and segments stay open while the pool lives.
    #[inline]
    fn renewed_header(&self, seg: u16, block: Block) -> Option<(NonNull<u8>, &ArrayHeader)> {
        let ptr = self.segments.get(seg as usize).and_then(OnceLock::get)?.held_ptr(block).ok()?;
        // SAFETY: a header block (128 bytes or more, `Renewed::caches`) of a metadata segment
        // that our slot holds (recycle invariant 1), mapped while the pool lives.
        Some((ptr, unsafe { ArrayHeader::at(ptr) }))
    }

    /// Releases our hold on a renewed block (it is freed: we were its one reference).
    fn release_renewed(&self, slot: u32, seg: u16, block: Block, h: &ArrayHeader) {
        match h.refcount.release(slot, &self.tokens(), &self.group()) {
            Ok(Released::Last) | Err(RefError::Orphaned) => self.free_array(seg, block, h),
            _ => {}
        }
    }

    /// Gives every renewed block back to the pool (recycle invariant 4). `slot` is the slot
    /// that holds them: ours, before we leave.
    pub(super) fn give_back_renewed(&self, slot: u32) {
        self.renewed.drain(|seg, block| {
            if let Some((_, h)) = self.renewed_header(seg, block) {
                self.release_renewed(slot, seg, block, h);
            }
        });
    }
}

/// Adopts `block` before freeing it (invariant 5), or, with no owner slot for this process in
/// the segment, checks that it is still the disowned block the adoption would have taken.
pub(super) fn take_for_free(arena: &shm_arena::Arena, block: Block) -> bool {
    match arena.adopt(block) {
        Ok(()) => true,
        Err(shm_arena::BlockError::NoOwnerSlot { .. }) => arena.is_disowned(block),
        Err(_) => false,
    }
}
