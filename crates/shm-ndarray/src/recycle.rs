//! Renewed headers: the blocks of this process's freed small arrays, kept for its next ones.
//!
//! A small array is one block of a metadata segment (its header, then its data). When this
//! process drops such an array and was its only reference, the refcount is renewed instead
//! of released ([`shm_sync::RefCount::release_or_renew`]): the process keeps holding the block
//! under a new target, and its next small array of the same block size reuses it. That skips
//! the arena's free, allocation and ownership transfer, the header's refcount set-up, and their
//! atomic operations on shared words: the hot path of creating and dropping small arrays.
//!
//! # Invariants
//!
//! 1. An entry names a header block of a metadata segment whose refcount this process holds
//!    alone, under its slot at the time of the push, renewed: its nonce word is
//!    [`RENEWED`](crate::header::RENEWED), its refcount's target is the nonce the next array
//!    made in it will have, its data is inline. To everyone else it is a held block that no
//!    handle can attach (a handle's nonce never equals a target nobody was told).
//! 2. Each entry is taken at most once, and the taker sees every write the pusher made to the
//!    header before pushing (shm-arena's [`LocalSlots`], its invariants 1 and 2).
//! 3. Nothing here is shared between processes: the cache lives in this process's heap. A
//!    forked child must forget its copy ([`Renewed::forget_all`]): those blocks are held by the
//!    parent's slot.
//! 4. The entries go back to the pool (their refcounts released, so they are freed) when this
//!    process leaves the pool, when one of its allocations finds no room, and when anyone waits
//!    for memory. If the process dies, `collect` drops its holds like those of any array it
//!    held, which frees them. Like the arena's own caches, an idle process keeps its entries
//!    until one of those happens: another process that runs short without waiting grows the
//!    pool instead, and one that waits gets them at this process's next release. The cache
//!    holds at most `SHARDS * SLOTS * (128 + 256 + ... + 4096)` bytes (about 250 KiB).

use core::mem::MaybeUninit;
use core::ptr::NonNull;

use shm_arena::local_slots::LocalSlots;
use shm_arena::Block;

/// Smallest block size cached (the metadata segments' minimum block), as log2.
const MIN_LOG2: u32 = 7;
/// Block sizes cached: 128 bytes to 4 KiB (small arrays' blocks, `INLINE_MAX` in `pool::create`).
const ORDERS: usize = 6;
const SLOTS: usize = 4;
const SHARDS: usize = 8;

/// The cache: entries by block size, in per-thread shards.
pub(crate) struct Renewed {
    slots: LocalSlots<SLOTS>,
}

/// An entry: the block's bits with the segment in bits 48..56. A block's bits are never 0
/// (its size is at least 128), so an entry never is.
fn encode(segment: u16, block: Block) -> Option<u64> {
    let bits = block.to_bits();
    (segment < 256 && bits >> 48 == 0).then_some(bits | u64::from(segment) << 48)
}

fn decode(v: u64) -> (u16, Block) {
    ((v >> 48) as u16, Block::from_bits(v & ((1 << 48) - 1)))
}

fn order_of(block: Block) -> Option<usize> {
    let o = block.size_log2().checked_sub(MIN_LOG2)? as usize;
    (o < ORDERS).then_some(o)
}

impl Renewed {
    pub(crate) fn new() -> Self {
        Self { slots: LocalSlots::new(ORDERS, SHARDS) }
    }

    /// Whether a block of this size and place can be cached at all.
    pub(crate) fn caches(segment: u16, block: Block) -> bool {
        order_of(block).is_some() && encode(segment, block).is_some()
    }

    /// Takes a renewed block of `2^size_log2` bytes from the calling thread's shard.
    #[inline]
    pub(crate) fn pop(&self, size_log2: u32) -> Option<(u16, Block)> {
        let o = size_log2.checked_sub(MIN_LOG2)? as usize;
        if o >= ORDERS {
            return None;
        }
        self.slots.take(o).map(decode)
    }

    /// Puts a renewed block into the calling thread's shard; false when it is full or the
    /// block is not one [`Renewed::caches`].
    #[inline]
    pub(crate) fn push(&self, segment: u16, block: Block) -> bool {
        let (Some(o), Some(v)) = (order_of(block), encode(segment, block)) else {
            return false;
        };
        self.slots.put(o, v)
    }

    /// Takes every entry out, handing each to `f`.
    pub(crate) fn drain(&self, mut f: impl FnMut(u16, Block)) {
        self.slots.drain(|_, v| {
            let (segment, block) = decode(v);
            f(segment, block);
        });
    }

    /// Whether any entry is cached (a snapshot).
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Forgets every entry (invariant 3: after a fork).
    pub(crate) fn forget_all(&self) {
        self.drain(|_, _| {});
    }
}

/// Spare allocations of a `T`, kept for reuse by this process (its `LocalArray`s: a malloc and
/// a free were about a tenth of a small array's create + drop), in per-thread shards like
/// [`Renewed`]; an entry is the address of a `Box<MaybeUninit<T>>` whose `T` was dropped.
pub(crate) struct Spares<T> {
    slots: LocalSlots<SPARE_SLOTS>,
    _boxes: core::marker::PhantomData<Box<MaybeUninit<T>>>,
}

const SPARE_SLOTS: usize = 8;

impl<T> Spares<T> {
    pub(crate) fn new() -> Self {
        Self { slots: LocalSlots::new(1, SHARDS), _boxes: core::marker::PhantomData }
    }

    /// An allocation for a `T` (uninitialised): a spare, or a new one.
    #[inline]
    pub(crate) fn take(&self) -> NonNull<MaybeUninit<T>> {
        match self.slots.take(0).and_then(|v| NonNull::new(v as *mut MaybeUninit<T>)) {
            // `LocalSlots` invariant 2: the giver's last writes to the memory happen before ours.
            Some(p) => p,
            None => NonNull::from(Box::leak(Box::new(MaybeUninit::uninit()))),
        }
    }

    /// Keeps an allocation [`Spares::take`] gave, or frees it when the shard is full.
    ///
    /// # Safety
    ///
    /// `p` came from `take` of this `Spares`, nothing refers to it any more, and the `T` in it
    /// (if any) was dropped or moved out.
    #[inline]
    pub(crate) unsafe fn give(&self, p: NonNull<MaybeUninit<T>>) {
        if !self.slots.put(0, p.as_ptr() as u64) {
            // SAFETY: a `Box` leaked by `take`, unused now (the caller's guarantee).
            drop(unsafe { Box::from_raw(p.as_ptr()) });
        }
    }
}

impl<T> Drop for Spares<T> {
    fn drop(&mut self) {
        self.slots.drain_mut(|v| {
            // SAFETY: a spare `Box` given back (`give`'s contract), owned by us alone.
            drop(unsafe { Box::from_raw(v as *mut MaybeUninit<T>) });
        });
    }
}

// SAFETY: the spares are unused allocations (no `T` in them), owned through atomics.
unsafe impl<T> Send for Spares<T> {}
// SAFETY: as for `Send`.
unsafe impl<T> Sync for Spares<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_by_size_and_are_taken_once() {
        let c = Renewed::new();
        let a = Block::from_parts(16 << 20, 1024, 0x3FFF);
        let b = Block::from_parts(4096, 1024, 1);
        assert!(c.push(255, a) && c.push(0, b));
        assert_eq!(c.pop(11), None, "another size");
        assert_eq!(c.pop(10), Some((0, b)));
        assert_eq!(c.pop(10), Some((255, a)));
        assert_eq!(c.pop(10), None);
        for i in 0..SLOTS as u64 {
            assert!(c.push(1, Block::from_parts(i * 128, 128, 0)));
        }
        assert!(!c.push(1, Block::from_parts(4096, 128, 0)), "{SLOTS} slots per size");
        assert!(!c.is_empty());
        let mut seen = Vec::new();
        c.drain(|s, b| seen.push((s, b.offset())));
        assert_eq!(seen, vec![(1, 0), (1, 128), (1, 256), (1, 384)]);
        assert!(c.is_empty() && c.pop(7).is_none());
    }

    #[test]
    fn spares_are_reused_and_freed_when_full_or_dropped() {
        let spares = Spares::<[u64; 4]>::new();
        let a = spares.take();
        // SAFETY: `a` came from `take` and holds no value.
        unsafe { spares.give(a) };
        assert_eq!(spares.take(), a, "the spare comes back");
        let many: Vec<_> = (0..SPARE_SLOTS + 2).map(|_| spares.take()).collect();
        for p in many {
            // SAFETY: as above; the two beyond the slots are freed.
            unsafe { spares.give(p) };
        }
        // SAFETY: as above.
        unsafe { spares.give(a) };
        drop(spares); // frees the kept ones (Miri or a leak checker would see otherwise)
    }

    #[test]
    fn blocks_it_cannot_name_are_refused() {
        let c = Renewed::new();
        assert!(!Renewed::caches(0, Block::from_parts(0, 8192, 0)), "larger than small arrays");
        assert!(!Renewed::caches(0, Block::from_parts(0, 64, 0)), "below the metadata minimum");
        assert!(!Renewed::caches(256, Block::from_parts(0, 256, 0)), "segment beyond 8 bits");
        assert!(!Renewed::caches(0, Block::from_parts(1 << 40, 256, 0)), "offset beyond the encoding");
        assert!(!c.push(0, Block::from_parts(0, 8192, 0)));
        assert!(c.is_empty());
    }
}
