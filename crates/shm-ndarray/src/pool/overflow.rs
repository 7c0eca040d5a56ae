//! Holder overflow blocks: where an array's refcount keeps the holders beyond its twelve inline
//! lanes (shm-sync's `holders` module, `HolderList`), so a pool can have up to
//! [`MAX_PROCESSES`](super::MAX_PROCESSES) processes while a header stays 128 bytes.
//!
//! # Invariants
//!
//! 1. An overflow block is a block of a metadata segment starting with [`OVERFLOW_MAGIC`]
//!    (header invariant 1: sweeps trust the magic), written completely (back-reference,
//!    allocator, zeroed bitmap) before the magic, and disowned (owned by nobody in the arena)
//!    before the record links it: the arena's recovery of a dead allocator never frees a
//!    linked block.
//! 2. The record's link (one store under its lock: shm-sync holders invariant 4) is the commit
//!    point. A block the link refused (another was linked first, or the record died) is freed
//!    by its allocator at once. A block whose allocator died between the disown and the link is
//!    an orphan: no record links it and its allocator is dead; `collect`'s sweep frees it
//!    (`sweep_overflows`), after adopting it in the arena (only a disowned block can be
//!    adopted, and only once). A block whose allocator is alive is never an orphan: it may be
//!    about to link it. The sweep looks for the link again after it learned that the allocator
//!    is dead: a dead allocator links nothing more.
//! 3. A linked block lives as long as its array: `free_array` frees it, before the header,
//!    once the refcount is dead and nobody reads the holder set any more. It adopts the block
//!    first, so a freer killed half-way leaves it either disowned (the rescuer finishing the
//!    free adopts and frees it) or its own (the arena's recovery frees it), never both.
//! 4. The id a record links is `(segment + 1) << 48 | block bits`; ids are resolved only through
//!    the arena of that metadata segment and only to a block with the magic and room for the
//!    bitmap ([`PoolGroup`]), so a corrupt id resolves to nothing rather than to foreign memory.
//! 5. An overflow is allocated in its header's metadata segment when that has room. With the
//!    memfd backend a segment lives while a member has it mapped, and every holder of the array
//!    has the header's mapped: an overflow in a segment that only its allocator had mapped was
//!    gone with it, the dead holder's bit unreadable, and the array held forever (found in
//!    review). When the header's segment is full it goes elsewhere, and that case remains.
//!
//! ```text
//! 0    magic            "PYSHMHOV"
//! 8    header segment   the metadata segment of the header that asked for it
//! 16   header block     Block::to_bits
//! 24   allocator        the allocating process's identity bits (ProcessIdentity)
//! 32   reserved (4 words)
//! 64   bitmap           OVERFLOW_WORDS x u64: bit s = process slot s (and the directory's)
//! ```

use core::ptr::NonNull;

use shm_arena::process::{Liveness, ProcessIdentity};
use shm_arena::Block;
use shm_sync::holders::Change;
use shm_sync::{Holder, Members, ProcessTable, RefError, Standing};

use super::segments::MetaSegment;
use super::{PoolShared, DIRECTORY_HOLDER, ORD};
use crate::directory::KIND_META;
use crate::error::PoolError;
use crate::header::{ArrayHeader, ARRAY_MAGIC};
use crate::sync::SharedU64;

/// Magic of a holder overflow block.
pub(crate) const OVERFLOW_MAGIC: u64 = u64::from_le_bytes(*b"PYSHMHOV");
/// Words of an overflow bitmap: every process slot and the directory's holder.
pub(crate) const OVERFLOW_WORDS: usize = (DIRECTORY_HOLDER as usize + 1).div_ceil(64);
/// Bytes of the block's fields before the bitmap.
const PREFIX: usize = 64;
/// Bytes an overflow block needs.
pub(crate) const OVERFLOW_BYTES: u64 = (PREFIX + OVERFLOW_WORDS * 8) as u64;
/// Block bits must leave the top 16 bits of an id for the segment (invariant 4).
const BITS_MASK: u64 = (1 << 48) - 1;

/// The fixed fields of an overflow block.
#[repr(C)]
struct OverflowBlock {
    magic: SharedU64,
    header_segment: SharedU64,
    header_block: SharedU64,
    allocator: SharedU64,
    reserved: [SharedU64; 4],
}

const _: () = assert!(core::mem::size_of::<OverflowBlock>() == PREFIX);

impl OverflowBlock {
    /// The block at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` starts a block of at least [`OVERFLOW_BYTES`] bytes of a metadata segment, mapped
    /// for `'a`, whose words are accessed only atomically (header invariant 1).
    unsafe fn at<'a>(ptr: NonNull<u8>) -> &'a Self {
        // SAFETY: the caller's guarantees; metadata blocks are 128-byte aligned at least.
        unsafe { &*ptr.as_ptr().cast::<Self>() }
    }

    /// Its bitmap.
    fn bitmap(&self) -> &[SharedU64] {
        let start = (self as *const Self).cast::<u8>().wrapping_add(PREFIX).cast::<SharedU64>();
        // SAFETY: `at`'s contract: the block holds OVERFLOW_BYTES, the bitmap's words follow the
        // prefix, 8-byte aligned, atomics only.
        unsafe { core::slice::from_raw_parts(start, OVERFLOW_WORDS) }
    }
}

/// The group of an array's refcount: the pool's process table (who may hold its lock), and
/// the resolver of its overflow ids (invariant 4).
pub(crate) struct PoolGroup<'a> {
    pub(super) table: ProcessTable<'a>,
    pub(super) pool: &'a PoolShared,
}

impl Members for PoolGroup<'_> {
    fn standing(&self, holder: Holder) -> Standing {
        self.table.standing(holder)
    }

    fn holder_overflow(&self, id: u64) -> Option<&[SharedU64]> {
        let (seg, block) = split_id(id)?;
        let meta = self.pool.meta_segment(seg).ok()?;
        let ptr = meta.arena.as_ptr(block).ok()?;
        if block.size() < OVERFLOW_BYTES {
            return None;
        }
        // SAFETY: a block of at least OVERFLOW_BYTES that the arena of a metadata segment
        // resolved, mapped while the pool lives (`'a` outlives `&self`).
        let o = unsafe { OverflowBlock::at(ptr) };
        // Acquire: pairs with the Release that published the block's fields (invariant 1).
        (o.magic.load(core::sync::atomic::Ordering::Acquire) == OVERFLOW_MAGIC).then(|| o.bitmap())
    }
}

/// Clears the magic of overflow block `block` of `arena` (nobody may take the freed block for
/// an overflow), then frees it; whether the free succeeded.
fn free_overflow_block(arena: &shm_arena::Arena, block: Block) -> bool {
    if let Ok(ptr) = arena.as_ptr(block) {
        // SAFETY: an overflow block of a metadata segment (the callers checked its size and
        // magic, or wrote it), mapped while `arena` lives.
        unsafe { OverflowBlock::at(ptr) }.magic.store(0, ORD);
    }
    arena.free(block).is_ok()
}

fn make_id(seg: u16, block: Block) -> Option<u64> {
    let bits = block.to_bits();
    (bits & !BITS_MASK == 0).then(|| (u64::from(seg) + 1) << 48 | bits)
}

fn split_id(id: u64) -> Option<(u16, Block)> {
    let seg = (id >> 48).checked_sub(1)?;
    Some((seg as u16, Block::from_bits(id & BITS_MASK)))
}

/// Why an overflow could not be linked.
#[derive(Debug)]
pub(crate) enum LinkError {
    /// The refcount refused (dead, a stranger holds its lock...).
    Ref(RefError),
    /// No metadata block could be had for it.
    NoMemory,
}

impl PoolShared {
    /// The group of this pool's refcounts.
    #[inline]
    pub(super) fn group(&self) -> PoolGroup<'_> {
        PoolGroup { table: self.processes(), pool: self }
    }

    /// Runs `op` (an acquire or a claim of `h`'s refcount), linking an overflow first when the
    /// record needs one (invariant 2) and running it again.
    pub(super) fn with_holder_room<T>(
        &self,
        at: (u16, Block),
        h: &ArrayHeader,
        mut op: impl FnMut() -> Result<T, RefError>,
    ) -> Result<T, LinkError> {
        loop {
            match op() {
                Err(RefError::NeedsOverflow) => self.link_overflow(at, h)?,
                r => return r.map_err(LinkError::Ref),
            }
        }
    }

    /// Allocates, writes and disowns an overflow block for the header `h` at `at`, then links
    /// it (invariant 1 and 2). Done when some overflow is linked, ours or another's.
    #[cold]
    pub(super) fn link_overflow(&self, at: (u16, Block), h: &ArrayHeader) -> Result<(), LinkError> {
        let identity = ProcessIdentity::current().map_err(|_| LinkError::NoMemory)?;
        let (arena, block, id) = self.new_overflow(at, identity.to_bits()).ok_or(LinkError::NoMemory)?;
        // Our slot as the freer: a repair here may find the array dead, and we free it
        // (shm-sync refcount invariant 7). Every linker is registered: it is about to hold.
        match h.refcount.link_overflow(id, self.registered_slot(), &self.tokens(), &self.group()) {
            Ok(Change::Changed) => Ok(()),
            refused => {
                // Invariant 2: refused, still ours: free it (a disowned block any process may
                // free), its magic cleared first.
                free_overflow_block(arena, block);
                match refused {
                    Ok(_) => Ok(()), // another process linked one first
                    Err(e) => Err(LinkError::Ref(e)),
                }
            }
        }
    }

    /// An overflow block for the header at `at`, written and disowned, not linked (invariant
    /// 1), naming `allocator` as the process that allocated it: its arena, block and id.
    fn new_overflow(&self, at: (u16, Block), allocator: u64) -> Option<(&shm_arena::Arena, Block, u64)> {
        // Beside the header when its segment has room: every holder of the array has that
        // segment mapped, so with the memfd backend the overflow stays reachable as long as the
        // header (invariant 5). Elsewhere only when it is full.
        let (seg, block, ptr) = match self.alloc_in_meta(at.0, OVERFLOW_BYTES) {
            Some((block, ptr)) => (at.0, block, ptr),
            None => self.alloc_in(KIND_META, OVERFLOW_BYTES).ok()?,
        };
        let arena = self.segment(seg).ok()?;
        let Some(id) = make_id(seg, block) else {
            let _ = arena.free(block);
            return None;
        };
        // SAFETY: a block of at least OVERFLOW_BYTES of a metadata segment that we just
        // allocated and nobody else can see (not linked, magic not yet written).
        let o = unsafe { OverflowBlock::at(ptr) };
        // First: a block freed by arena recovery keeps its old magic (as header::init does).
        o.magic.store(0, ORD);
        o.header_segment.store(u64::from(at.0), ORD);
        o.header_block.store(at.1.to_bits(), ORD);
        o.allocator.store(allocator, ORD);
        for w in o.bitmap() {
            w.store(0, ORD);
        }
        // Release: a sweep or a resolver that loads the magic with Acquire sees the fields.
        o.magic.store(OVERFLOW_MAGIC, core::sync::atomic::Ordering::Release);
        // Invariant 1: owned by nobody before it is linked.
        if arena.disown(block).is_err() {
            free_overflow_block(arena, block);
            return None;
        }
        Some((arena, block, id))
    }

    /// Frees the overflow a dead array's refcount links, if any (invariant 3).
    pub(super) fn free_overflow(&self, h: &ArrayHeader) {
        let id = h.refcount.overflow_id();
        let Some((seg, block)) = split_id(id) else { return };
        let Ok(meta) = self.meta_segment(seg) else { return };
        let Ok(ptr) = meta.arena.as_ptr(block) else { return };
        if block.size() < OVERFLOW_BYTES {
            return;
        }
        // SAFETY: as in `PoolGroup::holder_overflow`.
        let o = unsafe { OverflowBlock::at(ptr) };
        // Adopted first (release invariant 5): a freer killed after this leaves the block to
        // the arena's recovery, and the rescuer that finishes its free finds it no longer
        // disowned and leaves it alone, so it is never freed twice. (Without an owner slot in
        // the segment, checked disowned instead: release invariant 5.)
        if o.magic.load(core::sync::atomic::Ordering::Acquire) == OVERFLOW_MAGIC
            && super::release::take_for_free(meta.arena, block)
        {
            free_overflow_block(meta.arena, block);
        }
    }

    /// Frees the orphans among the overflow blocks of metadata segment `meta` (invariant 2):
    /// no header links them and their allocator is dead. Returns how many.
    pub(super) fn sweep_overflows(&self, meta: MetaSegment<'_>) -> u64 {
        self.sweep_overflows_with(meta, &|allocator| {
            ProcessIdentity::from_bits(allocator).is_some_and(|p| p.liveness() != Liveness::Dead)
        })
    }

    /// [`Self::sweep_overflows`], asking `allocator_alive` whether the process of an identity
    /// is alive (a test stands in for a process that links its block as it dies).
    fn sweep_overflows_with(&self, meta: MetaSegment<'_>, allocator_alive: &dyn Fn(u64) -> bool) -> u64 {
        let mut freed = 0;
        for block in meta.arena.blocks_in_use() {
            if block.size() < OVERFLOW_BYTES || (meta.index == 0 && block == self.dir_block) {
                continue;
            }
            let Ok(ptr) = meta.arena.as_ptr(block) else { continue };
            // SAFETY: as in `PoolGroup::holder_overflow` (header invariant 1: the magic says
            // what the block is; nothing past it is read unless it is ours).
            let o = unsafe { OverflowBlock::at(ptr) };
            if o.magic.load(core::sync::atomic::Ordering::Acquire) != OVERFLOW_MAGIC {
                continue;
            }
            let Some(id) = make_id(meta.index, block) else { continue };
            let at = (o.header_segment.load(ORD) as u16, Block::from_bits(o.header_block.load(ORD)));
            let linked = || match self.segment(at.0) {
                Ok(_) => self.meta_segment(at.0).ok().and_then(|m| m.header(at.1).ok()).is_some_and(|(_, h)| {
                    h.magic.load(core::sync::atomic::Ordering::Acquire) == ARRAY_MAGIC && h.refcount.overflow_id() == id
                }),
                // Gone for good (a memfd segment nobody holds): nothing can link it any more.
                Err(PoolError::SegmentUnreachable { .. }) => false,
                // Not openable now (out of descriptors, say): it may be linked; keep it (found
                // in review, session 7).
                Err(_) => true,
            };
            // Linked (most blocks): no liveness check, which reads /proc. Otherwise the
            // allocator's death, then the link again: a dead allocator links nothing any more,
            // so a block it left unlinked stays unlinked. Without the second look, an allocator
            // that linked its block and died between the two reads made a linked block look like
            // an orphan, and the sweep freed it under a live array (found in review).
            if linked() || allocator_alive(o.allocator.load(ORD)) || linked() {
                continue;
            }
            // One sweeper frees it: the one whose adoption (the arena's CAS of the block's owner
            // from nobody to itself) succeeds. A block being written by a live process is owned
            // by it, not disowned, so a stale magic seen in a block just reallocated is never
            // taken; a sweeper that dies after adopting leaves it to the arena's recovery.
            if meta.arena.adopt(block).is_err() {
                continue;
            }
            if free_overflow_block(meta.arena, block) {
                freed += 1;
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Pool, PoolOptions, ShmArray};

    /// The identity bits of a process that has exited (a forked child, reaped).
    fn dead_identity() -> u64 {
        let (mut ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let pid = shm_testkit::fork(|| {
            use std::io::Write;
            let bits = ProcessIdentity::current().unwrap().to_bits();
            theirs.write_all(&bits.to_le_bytes()).unwrap();
            0
        });
        let mut buf = [0u8; 8];
        std::io::Read::read_exact(&mut ours, &mut buf).unwrap();
        assert_eq!(shm_testkit::wait(pid), 0);
        u64::from_le_bytes(buf)
    }

    #[test]
    fn orphans_of_dead_allocators_are_swept_and_nothing_else() {
        let pool = Pool::create(&PoolOptions::new().max_size(64 << 20)).unwrap();
        let shared = &pool.shared;
        // Data of its own (not a small array, which would be renewed rather than freed).
        let a = ShmArray::<u8>::zeros(&pool, &[8192]).unwrap();
        let local = &a.as_shared().local;
        let at = (local.meta_segment, local.header_block);
        let h = local.header();
        let blocks = |p: &PoolShared| -> usize {
            p.open_segments().iter().filter(|(_, _, k)| *k == KIND_META).map(|(_, a, _)| a.blocks_in_use().len()).sum()
        };
        let before = blocks(shared);
        // A linked overflow (ours), an orphan of a dead allocator, and one of a live allocator
        // (ours, as if we were about to link it).
        shared.link_overflow(at, h).unwrap();
        let linked = h.refcount.overflow_id();
        assert_ne!(linked, 0);
        let (_, _, orphan) = shared.new_overflow(at, dead_identity()).unwrap();
        let me = ProcessIdentity::current().unwrap().to_bits();
        let (arena, block, pending) = shared.new_overflow(at, me).unwrap();
        assert_eq!(blocks(shared), before + 3);
        assert!(shared.group().holder_overflow(orphan).is_some());
        let r = pool.collect();
        assert_eq!(r.blocks_recovered, 1, "only the dead allocator's unlinked block");
        assert!(shared.group().holder_overflow(orphan).is_none(), "swept");
        assert!(shared.group().holder_overflow(linked).is_some() && shared.group().holder_overflow(pending).is_some());
        assert!(free_overflow_block(arena, block));
        // The linked one goes with its array.
        drop(a);
        assert_eq!(blocks(shared), before - 1, "the array's header and its overflow are freed");
        pool.check().unwrap();
    }

    #[test]
    fn an_overflow_goes_beside_its_header_while_that_segment_has_room() {
        let mut options = PoolOptions::new().max_size(1 << 30);
        options.meta_capacity = 1; // the least the directory allows
        let pool = Pool::create(&options).unwrap();
        let shared = &pool.shared;
        let u8s = crate::DType::of::<u8>();
        // Arrays with data of their own (never renewed: their headers are freed with them).
        let array = || pool.empty(&u8s, &[8192], false).unwrap();
        let a = array();
        let at = (a.local.meta_segment, a.local.header_block);
        // Headers until the metadata go on in another segment, which then serves the next
        // allocations; then room again beside `a`'s header.
        let mut fill = vec![array()];
        while fill.last().is_some_and(|f| f.local.meta_segment == at.0) {
            fill.push(array());
        }
        fill.retain(|f| f.local.meta_segment != at.0);
        shared.link_overflow(at, a.local.header()).unwrap();
        let id = a.local.header().refcount.overflow_id();
        assert_eq!(split_id(id).map(|(seg, _)| seg), Some(at.0), "the overflow is in its header's segment");
        drop((a, fill));
        pool.check().unwrap();
    }

    #[test]
    fn a_block_linked_by_an_allocator_that_dies_during_the_sweep_is_not_freed() {
        let pool = Pool::create(&PoolOptions::new().max_size(64 << 20)).unwrap();
        let shared = &pool.shared;
        let a = ShmArray::<u8>::zeros(&pool, &[8192]).unwrap();
        let local = &a.as_shared().local;
        let at = (local.meta_segment, local.header_block);
        let h = local.header();
        let me = ProcessIdentity::current().unwrap().to_bits();
        let (_, _, id) = shared.new_overflow(at, me).unwrap();
        let overflow_meta = shared.meta_segment((id >> 48) as u16 - 1).unwrap();
        // The allocator links its block and dies while the sweeper looks at it: asked about
        // its liveness, it links first, then is dead.
        let freed = shared.sweep_overflows_with(overflow_meta, &|allocator| {
            if allocator == me && h.refcount.overflow_id() == 0 {
                let freer = shared.registered_slot();
                assert_eq!(h.refcount.link_overflow(id, freer, &shared.tokens(), &shared.group()), Ok(Change::Changed));
            }
            false
        });
        assert_eq!(freed, 0, "a linked block is not an orphan");
        assert_eq!(h.refcount.overflow_id(), id);
        assert!(shared.group().holder_overflow(id).is_some(), "the array's overflow is still there");
        drop(a);
        pool.check().unwrap();
    }
}
