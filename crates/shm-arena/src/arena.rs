//! [`Arena`]: a segment, its buddy tree, its owner table and this process's block cache.
//!
//! Invariants:
//! 1. Each `Arena` value holds at most one owner slot of its segment, taken by the process
//!    using it on its first allocation (`registration`: lazily, so a process that only maps,
//!    reads and frees holds none). A forked child notices (through
//!    [`crate::process::fork_generation`]) before its first operation, forgets the parent's
//!    cache and takes a slot of its own when it needs one: parent and child never act under
//!    one tag.
//! 2. Blocks this arena allocates carry its tag until freed, [`Arena::disown`]ed, or recovered;
//!    when the arena is dropped (or its process dies) every block still tagged with it is freed.
//!    A block meant to outlive its allocator must be disowned (or adopted by another arena).
//! 3. The fast paths (allocate, free, validate, pointer) make no syscall and take no lock; the
//!    slow paths (exhaustion, re-registration after a fork, recovery) may.

// `registration` is a process-local atomic (never in shared memory, never loom-modelled).
#![allow(clippy::disallowed_types)]

use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::Mutex;

use core::sync::atomic::Ordering::Relaxed;

use crate::block::Block;
use crate::cache::LocalCache;
use crate::error::{AllocError, BlockError, OpenError, RegisterError};
use crate::memory::Admit;
use crate::options::OpenOptions;
use crate::owners::{OwnerInfo, OwnerSlot, OwnerTable};
use crate::process::{fork_generation, ProcessIdentity};
use crate::registration::Registration;
use crate::segment::{Segment, SegmentName};
use crate::sync::local::AtomicU64;
use crate::sync::{SharedU32, SharedU64};
use crate::tree::node::SHARED_OWNER;
use crate::tree::{BuddyTree, NodeRef, TreeReport, TreeViolation};

const CACHE_SHARDS: usize = 8;
pub(crate) const CACHE_SLOTS: usize = 8;

/// A shared-memory arena as seen by this process.
///
/// `Arena` is `Send + Sync`: threads share one value (and its cache shards). See the module
/// invariants for ownership of blocks.
///
/// # Examples
///
/// The whole lifecycle: create, allocate, write, free, unlink.
///
/// ```
/// use shm_arena::ArenaOptions;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let arena = ArenaOptions::new(1 << 20).create()?;
/// let block = arena.alloc(1000)?;
/// assert_eq!(block.size(), 1024);
/// let ptr = arena.as_ptr(block)?;
/// // SAFETY: the block is ours alone until freed, and 1024 bytes long.
/// unsafe { ptr.as_ptr().write_bytes(0xAB, 1024) };
/// arena.free(block)?;
/// arena.unlink()?;
/// # Ok(())
/// # }
/// ```
pub struct Arena {
    pub(crate) segment: Segment,
    /// `fork_generation << 16 | tag` of the current registration; 0 when none
    /// (`registration` invariant 2).
    pub(crate) registration: AtomicU64,
    pub(crate) identity: Mutex<Registration>,
    pub(crate) cache: LocalCache,
    /// The segment's trim epoch as this handle last saw it.
    pub(crate) seen_trim: crate::sync::local::AtomicU32,
}

pub(crate) fn tree_of(segment: &Segment) -> BuddyTree<'_, [SharedU32]> {
    let l = segment.layout();
    // SAFETY: the layout was computed (create) or recomputed and validated (open) for this
    // segment, so both regions lie inside the mapping, 4-byte aligned (page / 128 aligned),
    // and every process accesses them only atomically (module invariant 1 of `sync::words`).
    let nodes = unsafe { segment.atomics::<SharedU32>(l.tree_offset, BuddyTree::<[SharedU32]>::node_words(l.depth)) };
    // SAFETY: as above, for the search region.
    let search =
        unsafe { segment.atomics::<SharedU32>(l.search_offset, BuddyTree::<[SharedU32]>::search_words(l.depth)) };
    BuddyTree::new(nodes, search, l.depth).expect("layout sized the stores for this depth")
}

pub(crate) fn owners_of(segment: &Segment) -> OwnerTable<'_> {
    let l = segment.layout();
    // SAFETY: the owner region lies inside the validated layout, 128-byte aligned, and
    // `OwnerSlot` is a repr(C) struct of atomics accessed only atomically.
    OwnerTable::new(unsafe { segment.atomics::<OwnerSlot>(l.owners_offset, l.owner_slots as usize) })
}

/// Takes a slot for `identity`, recovering dead owners if the table is full.
pub(crate) fn register_in(segment: &Segment, identity: ProcessIdentity) -> Result<u16, RegisterError> {
    let owners = owners_of(segment);
    if let Some(tag) = owners.register(identity) {
        return Ok(tag);
    }
    recover_in(segment, identity, None);
    owners.register(identity).ok_or(RegisterError::Full { slots: owners.len() as u32 })
}

/// Recovers every dead owner of `segment`, acting as `me` (with `rescuer_tag` when we have one).
pub(crate) fn recover_in(segment: &Segment, me: ProcessIdentity, rescuer_tag: Option<u16>) -> Recovery {
    let owners = owners_of(segment);
    let tree = tree_of(segment);
    let mut out = Recovery::default();
    // Every dead owner claimed first, then one walk of the tree for all of them (a walk per
    // owner made a pool's collect after a thousand deaths cost a thousand walks).
    let mut claimed = vec![false; owners.len() + 1];
    for tag in 1..=owners.len() as u16 {
        if let Some(dead) = owners.claim_dead(tag, me) {
            claimed[usize::from(tag)] = true;
            out.owners += 1;
            out.dead.push(dead);
        }
    }
    if out.owners > 0 {
        // Without a tag of our own, act under each dead tag itself (its slot now names us).
        let r = tree.recover_owners(&|owner| claimed.get(usize::from(owner)).copied().unwrap_or(false), rescuer_tag);
        out.blocks_freed += r.blocks_freed;
        out.frees_finished += r.frees_finished;
        out.claims_undone += r.claims_undone;
        out.bytes_freed += r.leaves_freed << segment.layout().min_block_shift;
        for tag in 1..=owners.len() as u16 {
            if claimed[usize::from(tag)] {
                owners.finish_recovery(tag, me);
            }
        }
        out.marks_repaired = tree.repair();
    }
    out
}

impl Arena {
    /// Opens the named arena `name` with default [`OpenOptions`].
    ///
    /// # Errors
    ///
    /// [`OpenError`]: not found, not a pyshm segment, other version, truncated, corrupt, not
    /// initialised in time, no free owner slot, syscalls.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::open_with(name, &OpenOptions::default())
    }

    /// Opens the named arena `name`.
    ///
    /// # Errors
    ///
    /// As for [`Arena::open`].
    pub fn open_with(name: &str, options: &OpenOptions) -> Result<Self, OpenError> {
        let segment = Segment::open(name, options.populate, options.wait)?;
        Self::from_segment(segment, options.cache_max_block).map_err(|(_, e)| e.into())
    }

    /// Opens an arena from a descriptor of its segment (for instance a memfd received from
    /// another process).
    ///
    /// # Errors
    ///
    /// As for [`Arena::open`].
    pub fn open_fd(fd: OwnedFd, options: &OpenOptions) -> Result<Self, OpenError> {
        let segment = Segment::open_fd(fd, SegmentName::Anonymous, options.populate, options.wait)?;
        Self::from_segment(segment, options.cache_max_block).map_err(|(_, e)| e.into())
    }

    #[allow(clippy::result_large_err)] // cold path; the segment is handed back for cleanup
    pub(crate) fn from_segment(
        segment: Segment,
        cache_max_block: Option<u64>,
    ) -> Result<Self, (Segment, RegisterError)> {
        let layout = *segment.layout();
        let max = cache_max_block.unwrap_or_else(|| 4096.min(layout.capacity >> 12));
        let orders = if max < layout.min_block() { 0 } else { (63 - max.leading_zeros()) - layout.min_block_shift + 1 };
        // Invariant 1: no owner slot until the first allocation.
        Ok(Arena {
            segment,
            registration: AtomicU64::new(0),
            identity: Mutex::new(Registration::new()),
            cache: LocalCache::new(orders.min(layout.depth + 1), CACHE_SHARDS),
            seen_trim: crate::sync::local::AtomicU32::new(0),
        })
    }

    pub(crate) fn tree(&self) -> BuddyTree<'_, [SharedU32]> {
        tree_of(&self.segment)
    }

    pub(crate) fn owners(&self) -> OwnerTable<'_> {
        owners_of(&self.segment)
    }

    /// The owner tag this arena allocates under (1-based slot number), taking a slot first if
    /// this process holds none here yet (module invariant 1).
    ///
    /// # Errors
    ///
    /// [`RegisterError`] if no slot could be taken (every one is held by a live process).
    pub fn owner_tag(&self) -> Result<u16, RegisterError> {
        self.tag()
    }

    /// Usable bytes.
    pub fn capacity(&self) -> u64 {
        self.segment.layout().capacity
    }

    /// Minimum block size (and the alignment every block has at least).
    pub fn min_block(&self) -> u64 {
        self.segment.layout().min_block()
    }

    /// Largest block an allocation can get.
    pub fn max_block(&self) -> u64 {
        self.segment.layout().max_block()
    }

    /// Bytes the segment occupies in /dev/shm (capacity plus metadata).
    pub fn segment_size(&self) -> u64 {
        self.segment.layout().segment_size
    }

    /// The segment's name, `None` for an anonymous one.
    pub fn name(&self) -> Option<&str> {
        match self.segment.name() {
            SegmentName::Named(n) => Some(n),
            SegmentName::Anonymous => None,
        }
    }

    /// The segment's descriptor (to pass an anonymous arena to another process).
    pub fn fd(&self) -> &OwnedFd {
        self.segment.fd()
    }

    /// 128 random bits chosen at creation; the same in every process.
    pub fn segment_id(&self) -> [u8; 16] {
        self.segment.segment_id()
    }

    /// The process that created the segment.
    pub fn creator(&self) -> Option<ProcessIdentity> {
        self.segment.creator()
    }

    /// A 64-bit word in the header for the layer above (zero in a new arena), for instance to
    /// publish the [`Block::to_bits`] of its own directory.
    pub fn root_word(&self) -> &SharedU64 {
        self.segment.root_word()
    }

    /// Removes the segment's name from /dev/shm. Processes that have it mapped keep using it;
    /// the memory goes back to the system when the last one unmaps it.
    ///
    /// # Errors
    ///
    /// [`OpenError::NotFound`] if already unlinked; [`OpenError::Sys`] otherwise. An anonymous
    /// arena has no name: `Ok(())`.
    pub fn unlink(&self) -> Result<(), OpenError> {
        match self.segment.name() {
            SegmentName::Named(n) => crate::segment::unlink(n),
            SegmentName::Anonymous => Ok(()),
        }
    }

    pub(crate) fn block_of(&self, r: NodeRef) -> Block {
        let tree = self.tree();
        let l = self.segment.layout();
        Block::from_raw(
            tree.first_leaf(r.index) << l.min_block_shift,
            tree.order_of(r.index) + l.min_block_shift,
            r.generation,
        )
    }

    pub(crate) fn node_of(&self, block: Block) -> Result<NodeRef, BlockError> {
        let l = self.segment.layout();
        let (offset, size) = (block.offset(), block.size());
        if offset.checked_add(size).is_none_or(|end| end > l.capacity) {
            return Err(BlockError::OutOfBounds { offset, size, capacity: l.capacity });
        }
        let shift = block.size_log2();
        if shift < l.min_block_shift || shift > l.min_block_shift + l.depth || offset & (size - 1) != 0 {
            return Err(BlockError::Misaligned { offset, size });
        }
        let level = l.depth - (shift - l.min_block_shift);
        let index =
            self.tree().node_at(level, offset >> l.min_block_shift).ok_or(BlockError::Misaligned { offset, size })?;
        Ok(NodeRef { index, generation: u32::from(block.generation()) })
    }

    /// Allocates a block of at least `size` bytes (a power of two, at least the minimum block,
    /// aligned to its size within the arena).
    ///
    /// # Errors
    ///
    /// [`AllocError::TooLarge`] beyond the largest block; [`AllocError::Exhausted`] when no
    /// block is free even after emptying this process's cache and recovering dead owners.
    pub fn alloc(&self, size: u64) -> Result<Block, AllocError> {
        self.alloc_aligned(size, 1)
    }

    /// Allocates a block of at least `size` bytes whose offset is a multiple of `align`.
    ///
    /// In memory, blocks are aligned to `min(block size, page size)` (mappings are page aligned).
    ///
    /// # Errors
    ///
    /// As for [`Arena::alloc`], plus [`AllocError::BadAlignment`].
    pub fn alloc_aligned(&self, size: u64, align: u64) -> Result<Block, AllocError> {
        self.alloc_within(size, align, &|_| true)
    }

    /// Allocates like [`Arena::alloc_with_ptr`], asking `admit` before reserving pages the
    /// block does not have yet (with the bytes it would reserve; never on the warm path, where
    /// they are all reserved). A caller bounds what the arena holds this way.
    ///
    /// # Errors
    ///
    /// As for [`Arena::alloc`], plus [`AllocError::OverLimit`] when `admit` refuses (the block
    /// was given back).
    pub fn alloc_admitting(&self, size: u64, admit: Admit<'_>) -> Result<(Block, NonNull<u8>), AllocError> {
        let block = self.alloc_within(size, 1, admit)?;
        let offset = self.segment.layout().data_offset + block.offset();
        // SAFETY: a block the tree just handed out lies inside the capacity, and the data region
        // of `capacity` bytes starts at `data_offset` inside the mapping (layout invariant 1).
        Ok((block, unsafe { self.segment.base().add(offset as usize) }))
    }

    #[inline]
    fn alloc_within(&self, size: u64, align: u64, admit: Admit<'_>) -> Result<Block, AllocError> {
        if !align.is_power_of_two() {
            return Err(AllocError::BadAlignment(align));
        }
        let l = self.segment.layout();
        let want = size.max(align).max(l.min_block());
        let block_size = want.checked_next_power_of_two().unwrap_or(u64::MAX);
        if block_size > l.max_block() {
            return Err(AllocError::TooLarge { requested: size, max_block: l.max_block() });
        }
        let order = block_size.trailing_zeros() - l.min_block_shift;
        let tag = self.tag().map_err(|e| AllocError::Register(e.into()))?;
        self.trim_if_asked(tag);
        let tree = self.tree();
        if self.cache.caches(order) {
            while let Some(parked) = self.cache.pop(order) {
                if let Ok(r) = tree.unpark(parked, tag) {
                    let block = self.block_of(r);
                    // A cached block of at most a page had its whole page reserved when it
                    // was last handed out, and a parked block's page cannot be given back
                    // (`pages` invariant 3): no check needed. Larger ones may need more pages.
                    if block.size() <= crate::layout::PAGE {
                        return Ok(block);
                    }
                    return self.reserve_pages(block, want, tag, admit);
                }
            }
        }
        if let Some(r) = tree.alloc(l.depth - order, tag) {
            self.owners().account(tag, block_size as i64);
            return self.reserve_pages(self.block_of(r), want, tag, admit);
        }
        let block = self.alloc_slow(size, order, tag)?;
        self.reserve_pages(block, want, tag, admit)
    }

    #[cold]
    fn alloc_slow(&self, requested: u64, order: u32, tag: u16) -> Result<Block, AllocError> {
        let l = *self.segment.layout();
        let tree = self.tree();
        let retry = || {
            let r = tree.alloc(l.depth - order, tag)?;
            self.owners().account(tag, 1i64 << (order + l.min_block_shift));
            Some(self.block_of(r))
        };
        // Each step gives memory back in its own way: our cached blocks, conservative marks
        // left by NBBS (tree::check explains them), then the blocks of dead owners.
        self.flush_cache(tag);
        if let Some(b) = retry() {
            return Ok(b);
        }
        if tree.repair() > 0 {
            if let Some(b) = retry() {
                return Ok(b);
            }
        }
        if self.recover_dead_owners().owners > 0 {
            if let Some(b) = retry() {
                return Ok(b);
            }
        }
        // A trim may hold the block we need for a moment (`trim` invariant 3): wait it out.
        if let Some(b) = self.wait_out_trim(retry) {
            return Ok(b);
        }
        // Other handles may have memory parked in their caches: ask them to give it back at
        // their next operation (a caller that can wait will find it then).
        self.segment.trim_word().fetch_add(1, Relaxed);
        let s = tree.summarize();
        Err(AllocError::Exhausted {
            requested,
            block: 1 << (order + l.min_block_shift),
            free: s.leaves_free << l.min_block_shift,
            largest_free: s.largest_free_order.map_or(0, |o| 1u64 << (o + l.min_block_shift)),
            cached: s.leaves_cached << l.min_block_shift,
        })
    }

    /// Frees `block`. Any process may free any block it has a valid reference to, whether or
    /// not it holds an owner slot here (one that holds none frees through a transient slot,
    /// straight to the tree: `registration` invariant 3).
    ///
    /// # Errors
    ///
    /// [`BlockError`] when `block` is out of bounds, misaligned, not allocated, stale, or freed
    /// already; nothing is changed then.
    pub fn free(&self, block: Block) -> Result<(), BlockError> {
        let r = self.node_of(block)?;
        let Some(tag) = self.registered_tag() else { return self.free_unregistered(r, block.size()) };
        self.trim_if_asked(tag);
        let tree = self.tree();
        let order = block.size_log2() - self.segment.layout().min_block_shift;
        let owners = self.owners();
        if self.cache.caches(order) {
            let freed = tree.park(r, tag)?;
            if freed.previous_owner != tag {
                owners.account(freed.previous_owner, -(block.size() as i64));
                owners.account(tag, block.size() as i64);
            }
            if !self.cache.push(order, r) {
                tree.free_parked(r, tag)?;
                owners.account(tag, -(block.size() as i64));
            }
            return Ok(());
        }
        let freed = tree.free(r, tag)?;
        owners.account(freed.previous_owner, -(block.size() as i64));
        Ok(())
    }

    /// Checks that `block` is, right now, an allocated block of this arena with its generation.
    ///
    /// # Errors
    ///
    /// The [`BlockError`] that says what is wrong.
    pub fn validate(&self, block: Block) -> Result<(), BlockError> {
        let r = self.node_of(block)?;
        self.tree().validate(r)?;
        Ok(())
    }

    /// Whether `block` is, right now, an allocated block of this arena with its generation and
    /// no owner ([`Arena::disown`]): published to everyone, neither being made by a process
    /// nor taken back by one. The load is `SeqCst`, so a caller that finds the block disowned
    /// sees everything its disowner wrote before [`Arena::disown`].
    pub fn is_disowned(&self, block: Block) -> bool {
        self.node_of(block).is_ok_and(|r| self.tree().validate(r).is_ok_and(|w| w.owner() == SHARED_OWNER))
    }

    /// Allocates like [`Arena::alloc`] and also returns the block's address, without the
    /// validation [`Arena::as_ptr`] does (the block was just allocated by this call).
    ///
    /// # Errors
    ///
    /// As for [`Arena::alloc`].
    pub fn alloc_with_ptr(&self, size: u64) -> Result<(Block, NonNull<u8>), AllocError> {
        self.alloc_admitting(size, &|_| true)
    }

    /// Pointer to the first byte of a validated `block` in this process's mapping.
    ///
    /// The pointer stays valid while `self` lives; what it points to is the block's until the
    /// block is freed (by anyone). Aligned to `min(block size, page size)`.
    ///
    /// # Errors
    ///
    /// As for [`Arena::validate`].
    pub fn as_ptr(&self, block: Block) -> Result<NonNull<u8>, BlockError> {
        self.validate(block)?;
        let offset = self.segment.layout().data_offset + block.offset();
        // SAFETY: `validate` checked offset + size <= capacity, and the data region of
        // `capacity` bytes starts at `data_offset` inside the mapping (layout invariant 1).
        Ok(unsafe { self.segment.base().add(offset as usize) })
    }

    /// Pointer to the first byte of a block the caller holds, checking only that it lies
    /// inside the arena: for a hot path that knows the block is allocated (it holds a
    /// reference that keeps it so), where [`Arena::as_ptr`]'s look at the tree would be wasted.
    ///
    /// # Errors
    ///
    /// [`BlockError::OutOfBounds`].
    #[inline]
    pub fn held_ptr(&self, block: Block) -> Result<NonNull<u8>, BlockError> {
        let l = self.segment.layout();
        let (offset, size) = (block.offset(), block.size());
        if offset.checked_add(size).is_none_or(|end| end > l.capacity) {
            return Err(BlockError::OutOfBounds { offset, size, capacity: l.capacity });
        }
        // SAFETY: offset + size <= capacity, checked above, and the data region of `capacity`
        // bytes starts at `data_offset` inside the mapping (layout invariant 1).
        Ok(unsafe { self.segment.base().add((l.data_offset + offset) as usize) })
    }

    /// The block's bytes.
    ///
    /// # Safety
    ///
    /// For the lifetime of the slice, no process may write the block and it must not be freed.
    ///
    /// # Errors
    ///
    /// As for [`Arena::validate`].
    pub unsafe fn bytes(&self, block: Block) -> Result<&[u8], BlockError> {
        let p = self.as_ptr(block)?;
        // SAFETY: `as_ptr` validated `size` bytes inside the mapping; the caller guarantees
        // no writer and no free while the slice lives.
        Ok(unsafe { std::slice::from_raw_parts(p.as_ptr(), block.size() as usize) })
    }

    /// The block's bytes, writable.
    ///
    /// # Safety
    ///
    /// For the lifetime of the slice, no other reference to the block's bytes exists in any
    /// process and the block is not freed.
    ///
    /// # Errors
    ///
    /// As for [`Arena::validate`].
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, block: Block) -> Result<&mut [u8], BlockError> {
        let p = self.as_ptr(block)?;
        // SAFETY: as in `bytes`, with exclusivity guaranteed by the caller.
        Ok(unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), block.size() as usize) })
    }

    /// Gives up ownership of `block`: it stays allocated until someone frees it, whatever
    /// happens to this process.
    ///
    /// # Errors
    ///
    /// [`BlockError`]; `WrongOwner` inside it if this arena does not own the block (also when
    /// this process holds no owner slot here).
    pub fn disown(&self, block: Block) -> Result<(), BlockError> {
        let r = self.node_of(block)?;
        let tag = self.registered_tag().unwrap_or(SHARED_OWNER);
        if tag == SHARED_OWNER {
            let found = self.tree().validate(r)?.owner();
            return Err(crate::tree::BlockStateError::WrongOwner { index: r.index, expected: tag, found }.into());
        }
        self.tree().change_owner(r, tag, SHARED_OWNER)?;
        self.owners().account(tag, -(block.size() as i64));
        Ok(())
    }

    /// Takes ownership of a disowned `block`: it is freed if this arena goes away. Takes an
    /// owner slot first if this process holds none here.
    ///
    /// # Errors
    ///
    /// [`BlockError`]; `WrongOwner` inside it if the block has an owner already,
    /// [`BlockError::NoOwnerSlot`] if this process holds no slot and none is free.
    pub fn adopt(&self, block: Block) -> Result<(), BlockError> {
        let r = self.node_of(block)?;
        let tag = self.tag().map_err(|_| BlockError::NoOwnerSlot { slots: self.owners().len() as u32 })?;
        self.tree().change_owner(r, SHARED_OWNER, tag)?;
        self.owners().account(tag, block.size() as i64);
        Ok(())
    }

    /// Frees everything held by owners whose processes are dead, then repairs the tree.
    ///
    /// Runs by itself when an allocation would otherwise fail and when the owner table is
    /// full. Linear in the size of the tree per dead owner found.
    pub fn recover_dead_owners(&self) -> Recovery {
        let Ok(me) = self.me() else { return Recovery::default() };
        recover_in(&self.segment, me, self.registered_tag())
    }

    /// Usage of the arena (a walk of the tree; safe while others allocate, then approximate).
    pub fn stats(&self) -> ArenaStats {
        let l = self.segment.layout();
        let s = self.tree().summarize();
        let shift = l.min_block_shift;
        ArenaStats {
            capacity: l.capacity,
            segment_size: l.segment_size,
            reserved_data_bytes: self.reserved_data_bytes(),
            metadata_bytes: l.metadata_bytes(),
            in_use_bytes: s.leaves_in_use << shift,
            cached_bytes: s.leaves_cached << shift,
            free_bytes: s.leaves_free << shift,
            largest_free_block: s.largest_free_order.map_or(0, |o| 1u64 << (o + shift)),
            free_blocks: s
                .free_by_order
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(o, n)| (1u64 << (o as u32 + shift), *n))
                .collect(),
            blocks_in_use: s.blocks_in_use,
            live_owners: self
                .owners()
                .info()
                .iter()
                .filter(|o| matches!(o.state, crate::owners::SlotState::Live(_)))
                .count(),
        }
    }

    /// Checks every invariant of the tree and that each owner's byte count matches the tree.
    /// Meaningful when no operation is in flight in any process.
    ///
    /// # Errors
    ///
    /// [`CheckError`] listing every violation.
    pub fn check(&self) -> Result<TreeReport, CheckError> {
        let report = self.tree().check().map_err(|violations| CheckError {
            violations,
            owner_mismatches: vec![],
            unreserved_blocks: vec![],
        })?;
        // Memory invariant 1: every block in use has (at least) its first page reserved.
        let unreserved_blocks: Vec<Block> = if self.segment.whole_reserved() {
            vec![]
        } else {
            let bits = self.page_bits();
            self.blocks_in_use().into_iter().filter(|b| !bits.all_set(b.offset() / crate::layout::PAGE, 1)).collect()
        };
        let shift = self.segment.layout().min_block_shift;
        let mut owner_mismatches = Vec::new();
        for info in self.owners().info() {
            let counted = report.leaves_by_owner.get(&info.tag).copied().unwrap_or(0) << shift;
            if counted != info.owned_bytes && !matches!(info.state, crate::owners::SlotState::Free) {
                owner_mismatches.push((info.tag, info.owned_bytes, counted));
            }
        }
        if owner_mismatches.is_empty() && unreserved_blocks.is_empty() {
            Ok(report)
        } else {
            Err(CheckError { violations: vec![], owner_mismatches, unreserved_blocks })
        }
    }

    /// Every block in use, in address order (a walk of the tree; blocks allocated or freed
    /// during the walk may or may not appear). For sweeps by the layer above, such as finding
    /// the blocks of dead owners' arrays.
    pub fn blocks_in_use(&self) -> Vec<Block> {
        let mut out = Vec::new();
        self.tree().for_each_block_in_use(|r| out.push(self.block_of(r)));
        out
    }

    /// Every owner slot and its state.
    pub fn owner_slots(&self) -> Vec<OwnerInfo> {
        self.owners().info()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        let r = self.registration.load(Relaxed);
        if r == 0 || r >> 16 != fork_generation() {
            return; // a forked child that never used the arena: nothing here is ours
        }
        let tag = (r & 0xFFFF) as u16;
        self.flush_cache(tag);
        let owners = self.owners();
        if owners.owned_bytes(tag) != 0 {
            // Invariant 2: what we still own dies with us.
            self.tree().recover_owner(tag, tag);
        }
        if let Ok(me) = self.me() {
            owners.unregister(tag, me);
        }
    }
}

/// What [`Arena::recover_dead_owners`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Dead owners recovered.
    pub owners: usize,
    /// Their identities.
    pub dead: Vec<ProcessIdentity>,
    /// Blocks freed (in use or cached by the dead).
    pub blocks_freed: u64,
    /// Frees the dead had begun, finished.
    pub frees_finished: u64,
    /// Allocations the dead had begun and that could not complete, undone.
    pub claims_undone: u64,
    /// Bytes returned.
    pub bytes_freed: u64,
    /// Stale marks cleared by the repair pass.
    pub marks_repaired: u64,
}

/// Usage figures from [`Arena::stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaStats {
    /// Usable bytes.
    pub capacity: u64,
    /// Bytes of the whole segment (address space; see `reserved_data_bytes` for memory).
    pub segment_size: u64,
    /// Bytes of data pages reserved from /dev/shm (the reserved-page bitmap; all of them for
    /// an arena created with [`ArenaOptions::reserve_whole`](crate::ArenaOptions::reserve_whole)).
    /// Held from the system = this plus `metadata_bytes`.
    pub reserved_data_bytes: u64,
    /// Bytes of metadata (header, owner table, tree, bitmap), reserved at creation.
    pub metadata_bytes: u64,
    /// Bytes in blocks in use.
    pub in_use_bytes: u64,
    /// Bytes in blocks parked in process caches (free for use, not yet coalesced).
    pub cached_bytes: u64,
    /// Bytes in free blocks of the tree.
    pub free_bytes: u64,
    /// Size of the largest free block.
    pub largest_free_block: u64,
    /// Free blocks: (size, count), ascending size.
    pub free_blocks: Vec<(u64, u64)>,
    /// Number of blocks in use.
    pub blocks_in_use: u64,
    /// Owner slots held by live (or not yet recovered) processes.
    pub live_owners: usize,
}

/// Violations found by [`Arena::check`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("arena check failed: {} tree violations ({:?}...), {} owner byte counts off, {} blocks in use without reserved pages", violations.len(), violations.first(), owner_mismatches.len(), unreserved_blocks.len())]
pub struct CheckError {
    /// Tree invariants broken.
    pub violations: Vec<TreeViolation>,
    /// (tag, bytes the slot says, bytes the tree holds for it).
    pub owner_mismatches: Vec<(u16, u64, u64)>,
    /// Blocks in use whose first page is not marked reserved.
    pub unreserved_blocks: Vec<Block>,
}
