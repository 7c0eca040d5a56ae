//! What an [`Arena`] holds from the system, and giving it back: reserving a block's pages when
//! it is handed out, and punching them when it is freed or trimmed (the memory model of
//! docs/architecture.md; the bitmap's invariants are in `crate::pages`).
//!
//! Invariants:
//! 1. A block handed out by `alloc` has the pages of its first `max(size, min block)` bytes
//!    (rounded up to a page; for a block smaller than a page, the page holding it) reserved:
//!    writing them never raises `SIGBUS`. The rest of a power-of-two block (its tail beyond
//!    the request) is address space only: it costs nothing and must not be written.
//! 2. The warm path makes no syscall: the bits of a reused block are already set.
//! 3. When reserving fails, the block goes back to the tree before the error is returned.
//! 4. Pages are given back only by a holder of a block covering them, between claiming the
//!    block and freeing it (`pages` invariant 3): no other process can be using them.
//! 5. Pages are reserved only with the caller's consent: the allocation asks its `admit`
//!    ([`Admit`]) with the bytes it would reserve, and a refusal gives the block back
//!    ([`AllocError::OverLimit`]). The pool bounds its held bytes this way (`max_size`).
//! 6. Warm blocks first: an allocation whose block needs pages reserved first looks for a
//!    vacant block of the same size whose pages are reserved (the bitmap, a bounded number of
//!    candidates) and takes it instead. The warm path (the block's bits already set) is
//!    unchanged: the search runs only where a syscall would.

use crate::arena::Arena;
use crate::block::Block;
use crate::error::{AllocError, BlockError};
use crate::layout::PAGE;
use crate::pages::PageBits;
use crate::sync::SharedU32;
use crate::sys;
use crate::tree::{BlockStateError, NodeRef};
use core::sync::atomic::Ordering::Relaxed;
use std::os::fd::AsFd;

/// Asked before an allocation reserves pages it does not have yet, with the bytes it would
/// reserve; `false` refuses them (invariant 5).
pub type Admit<'a> = &'a dyn Fn(u64) -> bool;

/// Candidates [`Arena::swap_for_warm`] tries before it settles for the cold block: each is a
/// load of a node word and maybe a claim, so a cold allocation (which makes a syscall anyway)
/// pays at most a few microseconds for the search.
const WARM_LOOKS: u32 = 64;

/// A block parked by [`Arena::park_to_release`], to be given back by [`Arena::release_parked`]
/// (if dropped instead, it stays parked until this process's blocks are recovered).
#[must_use = "release it with Arena::release_parked"]
#[derive(Debug)]
pub struct ParkedBlock {
    block: Block,
    node: NodeRef,
    tag: u16,
}

impl Arena {
    pub(crate) fn page_bits(&self) -> PageBits<'_, [SharedU32]> {
        let l = self.segment.layout();
        // SAFETY: the bitmap region lies inside the validated layout (after the tree, before
        // the data), 128-byte aligned, and every process accesses it only atomically.
        PageBits::new(unsafe { self.segment.atomics::<SharedU32>(l.pages_offset, l.pages_words()) })
    }

    /// Pages `[first, first + count)` of the data region covering the first `want` bytes of
    /// `block` (invariant 1).
    fn pages_of(block: Block, want: u64) -> (u64, u64) {
        let first = block.offset() / PAGE;
        let end = block.offset() + want.min(block.size()).max(1);
        (first, end.div_ceil(PAGE) - first)
    }

    /// Makes sure the pages `block` needs for `want` bytes are reserved (invariants 1-3),
    /// asking `admit` first for any it must reserve (invariant 5): a block of ours, or a warm
    /// one in its place (invariant 6).
    #[inline]
    pub(crate) fn reserve_pages(
        &self,
        block: Block,
        want: u64,
        tag: u16,
        admit: Admit<'_>,
    ) -> Result<Block, AllocError> {
        if self.segment.whole_reserved() {
            return Ok(block);
        }
        let (first, count) = Self::pages_of(block, want);
        if self.page_bits().all_set(first, count) {
            return Ok(block);
        }
        self.reserve_slow(block, want, tag, admit)
    }

    #[cold]
    fn reserve_slow(&self, block: Block, want: u64, tag: u16, admit: Admit<'_>) -> Result<Block, AllocError> {
        // Invariant 6: a free block whose pages are still reserved serves as well, without
        // a syscall, and keeps the warm reserve from holding pages nobody uses.
        if let Some(warm) = self.swap_for_warm(block, want, tag) {
            return Ok(warm);
        }
        let (first, count) = Self::pages_of(block, want);
        let missing = count - self.page_bits().count_range(first, count);
        if !admit(missing * PAGE) {
            self.give_up(block, tag);
            return Err(AllocError::OverLimit { requested: want, reserving: missing * PAGE });
        }
        let offset = self.segment.layout().data_offset + first * PAGE;
        // A memfd is not in /dev/shm: nothing to reserve there (`FLAG_LAZY_PAGES`).
        let reserved = if self.segment.lazy_pages() {
            Ok(())
        } else {
            sys::reserve(self.segment.fd().as_fd(), offset, count * PAGE)
        };
        match reserved {
            Ok(()) => {
                let flipped = self.page_bits().set(first, count);
                // Relaxed: a count for policy (`pages` invariant 5), ordered by nothing.
                self.segment.reserved_pages_word().fetch_add(flipped, Relaxed);
                Ok(block)
            }
            Err(e) => {
                // Invariant 3: the block was ours alone; give it back before reporting.
                self.give_up(block, tag);
                Err(if e == rustix::io::Errno::NOSPC {
                    AllocError::NoSpace {
                        requested: want,
                        reserving: count * PAGE,
                        available: crate::segment::shm_free_bytes(),
                    }
                } else {
                    AllocError::Reserve { offset, bytes: count * PAGE, source: e }
                })
            }
        }
    }

    /// Frees a block we just claimed and cannot hand out.
    fn give_up(&self, block: Block, tag: u16) {
        if let Ok(r) = self.node_of(block) {
            if let Ok(freed) = self.tree().free(r, tag) {
                self.owners().account(freed.previous_owner, -(block.size() as i64));
            }
        }
    }

    /// A vacant block of `cold`'s size whose first `want` bytes' pages are all reserved,
    /// claimed for `tag` in place of `cold` (which is freed), if one is found among the first
    /// [`WARM_LOOKS`] candidates the bitmap shows (invariant 6). Only for blocks of a page or
    /// more: smaller blocks share their pages.
    fn swap_for_warm(&self, cold: Block, want: u64, tag: u16) -> Option<Block> {
        let size = cold.size();
        if size < PAGE || self.segment.layout().capacity < 2 * size {
            return None;
        }
        let l = *self.segment.layout();
        let tree = self.tree();
        let bits = self.page_bits();
        let block_pages = size / PAGE;
        let want_pages = want.min(size).div_ceil(PAGE);
        let level = l.depth - (size.trailing_zeros() - l.min_block_shift);
        let data_pages = l.capacity / PAGE;
        let mut looks = 0;
        let mut first = 0;
        while first + want_pages <= data_pages && looks < WARM_LOOKS {
            // A zero bitmap word: 32 pages nobody reserved, no candidate starts there.
            if block_pages < 32 && first % 32 == 0 && !bits.any_set(first, 32) {
                first += 32;
                continue;
            }
            if first != cold.offset() / PAGE && bits.all_set(first, want_pages) {
                looks += 1;
                let node = tree.node_at(level, (first * PAGE) >> l.min_block_shift);
                if let Some(r) = node.and_then(|n| tree.try_claim(n, tag).ok()) {
                    // Same size, same tag: the owner's byte count is unchanged.
                    if let Ok(c) = self.node_of(cold) {
                        let _ = tree.free(c, tag);
                    }
                    return Some(self.block_of(r));
                }
            }
            first += block_pages;
        }
        None
    }

    /// Clears the bits of a block we hold (of at least a page) and punches its pages.
    /// Returns the bytes given back: the pages whose bits were set (pages reserved with a
    /// clear bit, left by a death, are punched too but not counted).
    pub(crate) fn give_back(&self, block: Block) -> u64 {
        let (first, count) = Self::pages_of(block, block.size());
        // `pages` invariant 3: clear first, then punch; a crash in between costs a
        // re-reservation later, never a SIGBUS.
        let flipped = self.page_bits().clear(first, count);
        // Relaxed: as in `reserve_slow`. Saturating: a count left high by a dead process is
        // only a hint (`pages` invariant 5).
        let _ = self.segment.reserved_pages_word().fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(flipped)));
        let offset = self.segment.layout().data_offset + first * PAGE;
        // A failed punch leaves the pages held (bits clear: re-reserved idempotently later).
        match sys::punch(self.segment.fd().as_fd(), offset, count * PAGE) {
            Ok(()) => flipped * PAGE,
            Err(_) => 0,
        }
    }

    /// Frees `block` and gives its pages back to the system (`fallocate` punch), so that it
    /// stops counting against `/dev/shm`. A block smaller than a page shares its page with
    /// others: it is only freed (see [`Arena::release_free`]).
    ///
    /// Slower than [`Arena::free`] (a punch walks the pages, about 370 us per MiB) and the next
    /// allocation of that memory reserves it again: for memory beyond a warm reserve.
    ///
    /// # Errors
    ///
    /// As for [`Arena::free`]; nothing is changed then.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_arena::ArenaOptions;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let arena = ArenaOptions::new(4 << 20).create_anonymous()?;
    /// let block = arena.alloc(1 << 20)?;
    /// assert_eq!(arena.stats().reserved_data_bytes, 1 << 20);
    /// arena.free_and_release(block)?;
    /// assert_eq!(arena.stats().reserved_data_bytes, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn free_and_release(&self, block: Block) -> Result<(), BlockError> {
        if let Some(parked) = self.park_to_release(block)? {
            self.release_parked(parked);
        }
        Ok(())
    }

    /// The first half of [`Arena::free_and_release`]: takes `block` back from whoever owns it
    /// into this process's keeping (parked: allocatable by no one, and recovered with this
    /// process if it dies, like a cached block). Returns `None` when the block was simply freed
    /// (smaller than a page, or a wholly reserved arena: nothing to give back).
    ///
    /// Parking is one atomic step of the tree; the punch is the slow part, so a caller that
    /// must finish other work first (the pool clears the array's header) parks, does it, and
    /// then calls [`Arena::release_parked`].
    ///
    /// # Errors
    ///
    /// As for [`Arena::free`]; nothing is changed then.
    pub fn park_to_release(&self, block: Block) -> Result<Option<ParkedBlock>, BlockError> {
        if block.size() < PAGE || self.segment.whole_reserved() {
            return self.free(block).map(|()| None);
        }
        let r = self.node_of(block)?;
        let tag = self.tag().map_err(|_| BlockError::State(BlockStateError::NotAllocated { index: r.index }))?;
        // Claim it first (the tree's atomic step that refuses a double free): parked under our
        // tag it is allocatable by no one, and recovered with us if we die (invariant 4).
        let parked = self.tree().park(r, tag)?;
        if parked.previous_owner != tag {
            let owners = self.owners();
            owners.account(parked.previous_owner, -(block.size() as i64));
            owners.account(tag, block.size() as i64);
        }
        Ok(Some(ParkedBlock { block, node: r, tag }))
    }

    /// The second half of [`Arena::free_and_release`]: punches the parked block's pages and
    /// frees it. Returns the bytes given back.
    pub fn release_parked(&self, parked: ParkedBlock) -> u64 {
        let ParkedBlock { block, node, tag } = parked;
        let punched = self.give_back(block);
        if self.tree().free_parked(node, tag).is_ok() {
            self.owners().account(tag, -(block.size() as i64));
        }
        punched
    }

    /// Bytes this arena holds from the system by its count: metadata plus the reserved-page
    /// count kept beside the bitmap (one load, for policies on hot paths). Exact unless a
    /// process died between flipping bits and counting them; [`Arena::stats`] walks the
    /// bitmap instead.
    #[inline]
    pub fn held_bytes(&self) -> u64 {
        let l = self.segment.layout();
        if self.segment.whole_reserved() {
            return l.segment_size;
        }
        l.metadata_bytes() + self.segment.reserved_pages_word().load(Relaxed) * PAGE
    }

    /// Bytes of metadata (header to bitmap, rounded to a page), reserved at creation.
    pub fn metadata_bytes(&self) -> u64 {
        self.segment.layout().metadata_bytes()
    }

    /// Bytes of the data region marked reserved (a walk of the bitmap).
    pub(crate) fn reserved_data_bytes(&self) -> u64 {
        let l = self.segment.layout();
        if self.segment.whole_reserved() {
            return l.segment_size - l.metadata_bytes();
        }
        self.page_bits().count(l.data_pages()) * PAGE
    }
}
