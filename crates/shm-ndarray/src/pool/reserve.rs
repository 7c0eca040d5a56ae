//! The warm reserve: how much freed array data the pool keeps reserved for reuse, and giving
//! the rest back to the system as it is freed (pool invariant 8).
//!
//! # Invariants
//!
//! 1. Reusing reserved pages costs nothing (no syscall), giving pages back costs a punch
//!    (about 370 us per MiB) and their next use a `fallocate`: so memory is given back only
//!    beyond the warm reserve, never on a free that leaves the reserve within `keep`.
//! 2. The decision is made by the process that frees an array's data block, when it frees it:
//!    `warm` = the data segments' reserved pages (each arena's count, `Arena::held_bytes`)
//!    minus the pages live arrays use (the directory's `live_data`). If `warm` is above `keep`
//!    with the freed block's pages counted, the block is freed with `free_and_release` (its
//!    pages punched), else with a plain `free`. So once every array is freed, the data
//!    segments hold at most `keep` bytes plus the pages the policy cannot see (a process
//!    killed mid-count, the tails of reused blocks), which `Pool::trim` gives back.
//! 3. `live_data` is added to after an array's data block is allocated and taken off before it
//!    is freed, by the data length rounded up to a page, saturating at zero. Both counts are
//!    hints (a process killed between the two steps leaves them off): they decide when to
//!    punch, never whether memory is safe to use (that is the arena's bitmap).
//!
//! 4. `trim` gives back everything the counts cannot see: this process's renewed small-array
//!    blocks go back to their arenas, every arena's cache in this process is emptied (and every
//!    other process is asked to empty its own at its next operation, the arenas' trim epoch),
//!    then every segment, data and metadata, has its free pages punched (`Arena::release_free`,
//!    one chunk at a time, allocations meeting it wait instead of failing). A block a trim has
//!    claimed in a metadata segment is a block in use to a sweep for headers; its start reads as
//!    no header (a freed header's magic was cleared before its free, `release` invariant 1, and
//!    a punched page reads zeros), like a header block just allocated and not yet written.
//! 5. Caches count toward the warm reserve in `PoolStats::warm`: free, cached and renewed
//!    blocks' pages in metadata segments are warm there (the metadata segments' reserved pages
//!    minus the pages live headers and the directory use). The give-back policy of invariant 2
//!    reads data segments only (one load per segment on every free); metadata segments hold
//!    at most their capacity (16 MiB each) of such pages, and `trim` gives them back.
//!
//! Layout: the directory's `keep` word (`KEEP_SET | bytes`) and `live_data` word.

use core::sync::atomic::Ordering::Relaxed;

use shm_arena::{Arena, Block, ParkedBlock};

use super::options::default_keep;

/// The page size the arena reserves in (`shm_arena`'s memory model).
const PAGE: u64 = 4096;
use super::PoolShared;
use crate::directory::{KEEP_SET, KIND_DATA, MAX_SEGMENTS};

/// The distinct pages a set of blocks covers (a metadata segment's live headers share pages),
/// for `PoolStats::warm`.
#[derive(Default)]
pub(super) struct PageSet(std::collections::BTreeSet<u64>);

impl PageSet {
    /// Adds the pages the first `len` bytes at `offset` cover (for a block, the pages its
    /// holder reserved: `shm_arena`'s memory invariant 1).
    pub(super) fn add(&mut self, offset: u64, len: u64) {
        let first = offset / PAGE;
        let end = (offset + len.max(1)).div_ceil(PAGE);
        self.0.extend(first..end);
    }

    /// Bytes of the pages added.
    pub(super) fn bytes(&self) -> u64 {
        self.0.len() as u64 * PAGE
    }
}

/// `data_len` rounded up to a page: what an array's data block reserves.
fn pages_of(data_len: u64) -> u64 {
    data_len.max(1).div_ceil(PAGE) * PAGE
}

/// The bound a directory's `keep` word says (the default for a directory made without one).
pub(super) fn keep_of(word: u64) -> u64 {
    if word & KEEP_SET != 0 {
        word & !KEEP_SET
    } else {
        default_keep()
    }
}

impl PoolShared {
    /// The warm reserve's bound (`PoolOptions::keep`, written by the creator).
    pub(super) fn keep(&self) -> u64 {
        keep_of(self.dir().header().keep.load(Relaxed))
    }

    /// Counts a new array's data as live (invariant 3). Relaxed: a count for policy only.
    #[inline]
    pub(super) fn count_live_data(&self, data_len: u64) {
        self.dir().header().live_data.fetch_add(pages_of(data_len), Relaxed);
    }

    /// Bytes of data pages the data segments hold beyond what live arrays use (invariant 2).
    pub(super) fn warm_bytes(&self) -> u64 {
        let h = self.dir().header();
        let count = (h.segment_count.load(core::sync::atomic::Ordering::Acquire) as usize).min(MAX_SEGMENTS);
        let reserved: u64 = (1..count)
            .filter(|&i| self.dir().segments()[i].kind.load(Relaxed) == KIND_DATA)
            .filter_map(|i| self.segment(i as u16).ok())
            .map(|a| a.held_bytes().saturating_sub(a.metadata_bytes()))
            .sum();
        reserved.saturating_sub(h.live_data.load(Relaxed))
    }

    /// `Pool::trim` (invariant 4): this process's renewed blocks go back to their arenas, every
    /// arena's cache in this process is emptied (and the others' asked back), then every
    /// segment's free pages are given back.
    pub(super) fn trim(&self) -> u64 {
        if !self.renewed.is_empty() {
            if let Ok(slot) = self.slot() {
                self.give_back_renewed(slot);
            }
        }
        let segments = self.open_segments();
        for (_, arena, _) in &segments {
            arena.ask_caches_back();
        }
        segments.iter().map(|(_, arena, _)| arena.release_free()).sum()
    }

    /// Frees an array's data block of `data_len` bytes: kept warm, or, when the warm reserve
    /// would exceed `keep`, parked for giving back (invariants 1 and 2). The caller finishes a
    /// parked block with `Arena::release_parked` after it has freed the header, so that the
    /// punch (about 370 us per MiB) does not widen the window in which a death leaves a
    /// header unfreed (pool invariant 3).
    pub(super) fn free_data(&self, arena: &Arena, block: Block, data_len: u64) -> Option<ParkedBlock> {
        let live = &self.dir().header().live_data;
        let _ = live.fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(pages_of(data_len))));
        if block.size() >= PAGE && self.warm_bytes() > self.keep() {
            arena.park_to_release(block).ok().flatten()
        } else {
            let _ = arena.free(block);
            None
        }
    }
}
