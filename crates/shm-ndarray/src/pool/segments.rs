//! Segments: mapping them, allocating in them, growing the pool, and running out of memory.
//!
//! # Invariants
//!
//! 1. A segment's kind (metadata or data) is fixed when it is added and read from the
//!    directory; an allocation for headers goes to a metadata segment, one for data to a data
//!    segment (pool invariant 1).
//! 2. Segments are added only under the directory lock, each entry written before
//!    `segment_count` publishes it (`Release`), and never under a torn-down pool's name.
//! 3. A segment, once mapped by this process, stays mapped while the pool lives (`segments` is
//!    a set of `OnceLock`s): references into it live as long as `&PoolShared`.
//! 4. `max_size` bounds the bytes held from the system by every segment after segment 0
//!    (`Arena::held_bytes`: metadata plus reserved pages; segment 0, the directory, is the
//!    pool's fixed floor). Every path that adds held bytes checks it first: growth (a segment is
//!    added only if their held bytes, the new segment's metadata and the request fit, whatever
//!    its size, so also an oversized array's own segment), and reserving pages inside an
//!    existing segment (`Arena::alloc_admitting` asks `admits` with the bytes it would reserve;
//!    the warm path reserves nothing and asks nothing). The check reads counts and reserves
//!    nothing: processes reserving at the same moment may each pass it, so the bound can be
//!    exceeded by what they reserve at once, never by more.
//! 5. A process takes an owner slot in a segment's arena on its first allocation there, not
//!    when it maps it (shm-arena's `registration`), and an arena has at most 1,022 slots. An
//!    allocation that finds a segment's owner table full (`AllocError::Register`) goes on to the
//!    next segment of its kind, and growth counts a segment as room only if this process could
//!    allocate in it (`Arena::has_owner_room`): with more processes allocating than one table
//!    holds, the pool grows another segment of the kind. Everything else (attach, read, write,
//!    free, collect, recovery, the name table's reads) needs no slot.
//! 6. A memfd segment that no live member could give us (backend.rs: gone with its last
//!    holder) is looked for again at most once a second (`LOOK_AGAIN`, the map under
//!    `open_lock`): the paths that read every segment's count (each data free, each cold
//!    reservation) never walk the members' `/proc` on every call. It counts as holding nothing.
//!
//! Protocol: `alloc_in` tries the segment that served the last allocation of the kind; the
//! slow path tries every segment of the kind, gives back this process's renewed blocks and
//! collects (once), grows, and finally waits on `freed` (registered before its last look, so
//! no free is missed) until the pool's `wait` runs out.

use std::ptr::NonNull;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use shm_arena::{AllocError, Arena, ArenaOptions, Block, OpenOptions};
use shm_sync::{LockError, Locked};

use super::{root_segment_name, CollectReport, PoolShared, ORD};
use crate::directory::{FLAG_TORN_DOWN, KIND_META, MAX_SEGMENTS};
use crate::error::{ArrayError, HandleError, PoolError};
use crate::header::{ArrayHeader, FIXED};

/// How long a memfd segment that no live member could give us is taken as gone before the
/// members are asked again.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// A metadata segment of the pool, its kind checked against the directory (invariant 1): the
/// start of every block in it is the directory or an array header (pool invariant 1), so
/// [`MetaSegment::header`] can view any block it resolves as a header without `unsafe` at the
/// call site.
#[derive(Clone, Copy)]
pub(super) struct MetaSegment<'a> {
    /// Its index in the directory's segment list.
    pub(super) index: u16,
    /// Its arena, mapped while the pool lives (invariant 3).
    pub(super) arena: &'a Arena,
}

impl<'a> MetaSegment<'a> {
    /// Segment `index` of [`PoolShared::open_segments`], if its `kind` is metadata.
    pub(super) fn of(index: u16, arena: &'a Arena, kind: u64) -> Option<Self> {
        (kind == KIND_META).then_some(MetaSegment { index, arena })
    }

    /// The array header at the start of `block` and its address, if the arena resolves the
    /// block (in bounds, allocated, of its current generation) and it is large enough for a
    /// header. Nothing the header says is checked: until the array is pinned, read its atomics
    /// only (magic, nonce, refcount).
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if the arena does not resolve the block; [`HandleError::Invalid`]
    /// if it is smaller than a header.
    #[inline]
    pub(super) fn header(self, block: Block) -> Result<(NonNull<u8>, &'a ArrayHeader), HandleError> {
        let ptr = self.arena.as_ptr(block).map_err(|_| HandleError::Stale)?;
        if block.size() < FIXED as u64 {
            return Err(HandleError::Invalid("header block too small"));
        }
        // SAFETY: a block of at least FIXED bytes that the arena of a metadata segment (checked
        // by `of` or `PoolShared::meta_segment`) resolved, mapped while that arena lives ('a).
        Ok((ptr, unsafe { ArrayHeader::at(ptr) }))
    }
}

impl PoolShared {
    /// Segment `index`, mapping it first if this process has not yet (invariant 3).
    #[inline]
    pub(super) fn segment(&self, index: u16) -> Result<&Arena, PoolError> {
        match self.segments.get(index as usize).and_then(OnceLock::get) {
            Some(a) => Ok(a),
            None => self.open_segment(index),
        }
    }

    /// Maps segment `index` if the directory counts it (the slow path of [`Self::segment`]).
    #[cold]
    fn open_segment(&self, index: u16) -> Result<&Arena, PoolError> {
        let i = index as usize;
        if i >= MAX_SEGMENTS
            || i as u64 >= self.dir().header().segment_count.load(core::sync::atomic::Ordering::Acquire)
        {
            return Err(PoolError::NotFound { name: format!("segment {i} of pool {}", self.name) });
        }
        let mut lost = self.open_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = self.segments[i].get() {
            return Ok(a);
        }
        // A memfd segment no live member held a moment ago is almost surely gone for good
        // (backend.rs): asking every member's /proc again on each call would put a directory
        // walk into every free (the warm reserve's count) and every cold allocation
        // (`admits`), so look again at most once a second.
        if let Some(when) = lost.get(&index) {
            if when.elapsed() < LOOK_AGAIN {
                return Err(PoolError::SegmentUnreachable {
                    pool: self.name.clone(),
                    index: i,
                    why: "no live process of the pool held its memfd at the last look".into(),
                });
            }
        }
        // Pool invariant 1: by the name its entry records (published by the count read above).
        // Backend invariant 2: by name, or a memfd through a live member.
        let arena = if i == 0 {
            Arena::open_with(&self.segment_file_name(i), &OpenOptions::new())?
        } else {
            match self.open_growth_segment(i) {
                Ok(a) => a,
                Err(e @ PoolError::SegmentUnreachable { .. }) => {
                    lost.insert(index, Instant::now());
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        };
        lost.remove(&index);
        let _ = self.segments[i].set(arena);
        Ok(self.segments[i].get().expect("just set"))
    }

    /// Segment `index`, mapped, if the directory says it holds metadata.
    ///
    /// # Errors
    ///
    /// [`HandleError::Segment`] if it cannot be opened; [`HandleError::Invalid`] if it is a
    /// data segment.
    #[inline]
    pub(super) fn meta_segment(&self, index: u16) -> Result<MetaSegment<'_>, HandleError> {
        let arena = self.segment(index).map_err(|e| HandleError::Segment(e.to_string()))?;
        // Pool invariant 1: headers live only in metadata segments; a handle naming a data
        // segment would make user data pass for a header.
        if self.dir().segments()[index as usize].kind.load(ORD) != KIND_META {
            return Err(HandleError::Invalid("the handle names a data segment as its header's"));
        }
        Ok(MetaSegment { index, arena })
    }

    pub(super) fn open_segments(&self) -> Vec<(u16, &Arena, u64)> {
        let dir = self.dir();
        let count = dir.header().segment_count.load(core::sync::atomic::Ordering::Acquire).min(MAX_SEGMENTS as u64);
        (0..count as u16)
            .filter_map(|i| self.segment(i).ok().map(|a| (i, a, dir.segments()[i as usize].kind.load(ORD))))
            .collect()
    }

    /// Allocates `size` bytes in a segment of `kind`, collecting, growing and waiting as needed.
    #[inline]
    pub(super) fn alloc_in(&self, kind: u64, size: u64) -> Result<(u16, Block, NonNull<u8>), ArrayError> {
        // The common case: the segment that served the last allocation of this kind.
        let hint = self.last_segment[kind as usize].load(ORD) as u16;
        if let Some(arena) = self.segments.get(hint as usize).and_then(OnceLock::get) {
            // Invariant 5: a segment whose owner table is full for us is passed over before the
            // arena tries to register (which would look at the liveness of every holder).
            if self.dir().segments()[hint as usize].kind.load(ORD) == kind
                && arena.max_block() >= size
                && (arena.is_registered() || arena.has_owner_room())
            {
                if let Ok((b, p)) = arena.alloc_admitting(size, &|bytes| self.admits(hint, bytes)) {
                    return Ok((hint, b, p));
                }
            }
        }
        self.alloc_in_slow(kind, size)
    }

    /// Allocates `size` bytes in metadata segment `index` if it has room now (no collect, no
    /// grow, no wait): `None` otherwise.
    pub(super) fn alloc_in_meta(&self, index: u16, size: u64) -> Option<(Block, NonNull<u8>)> {
        let meta = self.meta_segment(index).ok()?;
        if meta.arena.max_block() < size {
            return None;
        }
        meta.arena.alloc_admitting(size, &|bytes| self.admits(index, bytes)).ok()
    }

    /// Allocates a block of `size` bytes (a header's size or more) in a metadata segment for a
    /// new array's header: (segment, block, address, the header at its start, for the caller
    /// to initialise before anyone else can see it).
    #[inline]
    pub(super) fn alloc_header(&self, size: u64) -> Result<(u16, Block, NonNull<u8>, &ArrayHeader), ArrayError> {
        debug_assert!(size >= FIXED as u64);
        let (seg, block, ptr) = self.alloc_in(KIND_META, size)?;
        // SAFETY: a block of a metadata segment that we just allocated and hold alone, of at
        // least `size` >= FIXED bytes, mapped while the pool lives (invariant 3).
        Ok((seg, block, ptr, unsafe { ArrayHeader::at(ptr) }))
    }

    #[cold]
    fn alloc_in_slow(&self, kind: u64, size: u64) -> Result<(u16, Block, NonNull<u8>), ArrayError> {
        let deadline = self.wait().map(|w| Instant::now() + w);
        let mut collected = false;
        // A grow that reports progress without any must not spin forever.
        let mut grows = 0;
        loop {
            // /dev/shm itself is full: a new segment would not help, only freed memory would.
            let mut no_space = None;
            let mut over_limit = false;
            for (i, arena, k) in self.open_segments() {
                if k == kind && arena.max_block() >= size && arena.has_owner_room() {
                    match arena.alloc_admitting(size, &|bytes| self.admits(i, bytes)) {
                        Ok((b, p)) => {
                            self.last_segment[kind as usize].store(u64::from(i), ORD);
                            return Ok((i, b, p));
                        }
                        // Over `max_size` (invariant 4): growing would not help either (`grow`
                        // checks the same bound), only a free or a trim.
                        Err(AllocError::OverLimit { .. }) => over_limit = true,
                        // Invariant 5: no owner slot for us here; another segment may have one.
                        Err(AllocError::Exhausted { .. } | AllocError::TooLarge { .. } | AllocError::Register(_)) => {}
                        Err(AllocError::NoSpace { reserving, available, .. }) => {
                            no_space = Some((reserving, available.unwrap_or(0)));
                        }
                        Err(e) => return Err(ArrayError::Grow(e.into())),
                    }
                }
            }
            if !collected {
                collected = true;
                // Our own renewed blocks first (recycle invariant 4), then what the dead held.
                let gave_back = kind == KIND_META && !self.renewed.is_empty();
                if gave_back {
                    if let Ok(slot) = self.slot() {
                        self.give_back_renewed(slot);
                    }
                }
                if self.collect() != CollectReport::default() || gave_back {
                    continue;
                }
            }
            if let Some((reserving, shm_free)) = no_space {
                return Err(ArrayError::NoSpace { pool: self.name.clone(), requested: size, reserving, shm_free });
            }
            if grows < 8 {
                match self.grow(kind, size) {
                    Ok(true) => {
                        grows += 1;
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => return Err(ArrayError::Grow(e)),
                }
            }
            // Full and cannot grow: wait for a free, if allowed.
            let dir = self.dir();
            let listener = dir.header().freed.listen();
            let seen = listener.sequence();
            let left = deadline.and_then(|d| d.checked_duration_since(Instant::now()));
            match left {
                Some(left) if !left.is_zero() => {
                    // Look once more after registering (the Event's invariant 2), then sleep.
                    // Over `max_size`, free blocks are there but their pages may not be
                    // reserved: only a free of a warm block helps, so look again often instead.
                    if !over_limit
                        && self
                            .open_segments()
                            .iter()
                            .any(|(_, a, k)| *k == kind && a.has_owner_room() && a.stats().largest_free_block >= size)
                    {
                        continue;
                    }
                    let nap = if over_limit { left.min(std::time::Duration::from_millis(10)) } else { left };
                    listener.wait(seen, Some(nap));
                    collected = false;
                    grows = 0;
                }
                _ => return Err(self.out_of_memory(size)),
            }
        }
    }

    /// Bytes held from the system by the segments after segment 0 (invariant 4), by their
    /// counts (one load each for the segments this process has mapped). A named segment that
    /// cannot be opened counts its whole capacity; a memfd segment no live member holds counts
    /// nothing (the kernel freed it with its last holder).
    fn held_after_root(&self) -> u64 {
        let dir = self.dir();
        let count = (dir.header().segment_count.load(core::sync::atomic::Ordering::Acquire) as usize).min(MAX_SEGMENTS);
        (1..count)
            .map(|i| match self.segment(i as u16) {
                Ok(a) => a.held_bytes(),
                Err(PoolError::SegmentUnreachable { .. }) => 0,
                Err(_) => dir.segments()[i].capacity.load(ORD),
            })
            .sum()
    }

    /// Whether reserving `bytes` more pages in segment `index` keeps the pool within
    /// `max_size` (invariant 4). Asked only when an allocation needs pages it does not have.
    #[cold]
    fn admits(&self, index: u16, bytes: u64) -> bool {
        index == 0 || self.held_after_root() + bytes <= self.dir().header().max_size.load(ORD)
    }

    fn out_of_memory(&self, requested: u64) -> ArrayError {
        let s = self.stats();
        let shm_free = shm_arena::shm_free_bytes().unwrap_or(0);
        ArrayError::OutOfMemory {
            pool: self.name.clone(),
            requested,
            free: s.free,
            largest_free: s.largest_free,
            shm_free,
        }
    }

    /// Adds a segment of `kind` able to hold `size` bytes, if the limits allow (pool invariant 1).
    /// Returns false when the pool may not grow.
    fn grow(&self, kind: u64, size: u64) -> Result<bool, PoolError> {
        let dir = self.dir();
        let h = dir.header();
        // Pool invariant 7: wait for processes of the pool only.
        let guard = match h.lock.lock_among(&self.processes()) {
            Ok(Locked::Acquired(g)) => g,
            Ok(Locked::OwnerDied(mut g)) => {
                // The directory's protected state is append-only: an entry past the count is
                // ignored, so there is nothing to repair.
                g.mark_consistent();
                g
            }
            Err(LockError::Stranger { .. }) => {
                return Err(PoolError::NotAPool {
                    name: root_segment_name(&self.name),
                    why: "its directory lock is held by a live process that is not registered in the pool",
                })
            }
            Err(_) => {
                h.lock.reset_poison();
                return Ok(true);
            }
        };
        // A torn-down pool's name may already belong to a new pool: never create (or remove) a
        // segment under it (found in review).
        if h.flags.load(ORD) & FLAG_TORN_DOWN != 0 {
            return Ok(false);
        }
        let count = (h.segment_count.load(ORD) as usize).min(MAX_SEGMENTS);
        // Someone else may have grown the pool while we waited for the lock.
        for i in 0..count {
            let e = &dir.segments()[i];
            if e.kind.load(ORD) == kind {
                if let Ok(a) = self.segment(i as u16) {
                    // Invariant 5: room only if we could take an owner slot there.
                    if a.has_owner_room() && a.stats().largest_free_block >= size {
                        return Ok(true);
                    }
                }
            }
        }
        if count >= MAX_SEGMENTS {
            return Ok(false);
        }
        let (capacity, min_block) = if kind == KIND_META {
            (16 << 20, 128)
        } else {
            let standard = h.data_segment_capacity.load(ORD);
            // Data blocks are at least a page: an array whose header and data exceed
            // INLINE_MAX (4 KiB) has its data here, so a smaller minimum block only costs tree
            // metadata (8 bytes per leaf: 2 MiB for 64 MiB at 256 bytes, 128 KiB at a page).
            let min_block = h.data_min_block.load(ORD).max(4096);
            if size.next_power_of_two() > standard {
                // A segment of its own for a large array: its address space is a power of two
                // (free: the segment is sparse), its tree coarse (about 1024 leaves, so a few KiB
                // of metadata), and only the array's pages are reserved.
                let capacity = size.next_power_of_two();
                // 1 MiB: the largest minimum block an arena takes.
                (capacity, (capacity >> 10).clamp(min_block, 1 << 20))
            } else {
                (standard, min_block)
            }
        };
        // `max_size` bounds what the segments after segment 0 hold from the system (invariant
        // 4; small arrays live in metadata segments, so those count too): their held bytes
        // and the request, not their address space.
        let used = self.held_after_root();
        // An owner slot per process slot, up to the arena's limit (invariant 5: beyond it, the
        // pool grows another segment for the processes that allocate).
        let owner_slots = super::open::owner_slots(h.process_slots.load(ORD) as u32);
        let options = ArenaOptions::new(capacity).min_block(min_block).owner_slots(owner_slots);
        let metadata = options.held_at_creation().unwrap_or(capacity);
        if used + metadata + size > h.max_size.load(ORD) {
            return Ok(false);
        }
        // Pool invariant 1 (a fresh random name, never an existing one), or a memfd.
        let Some(new) = self.create_segment(&options)? else { return Ok(false) };
        let (arena, suffix) = (new.arena, new.suffix);
        let entry = &dir.segments()[count];
        entry.kind.store(kind, ORD);
        entry.capacity.store(arena.capacity(), ORD);
        entry.suffix.store(suffix, ORD);
        entry.memfd_ino.store(new.memfd_ino, ORD);
        let _guard = self.open_lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.segments[count].set(arena);
        // Release: directory invariant 3 (and invariant 2 here), the entry before the count.
        h.segment_count.store(count as u64 + 1, core::sync::atomic::Ordering::Release);
        drop(guard);
        Ok(true)
    }
}
