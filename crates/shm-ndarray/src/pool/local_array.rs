//! This process's hold of an array: one `LocalArray` per array, reached through counted
//! `LocalRef`s (an `Arc` with a count of our own).
//!
//! # Invariants
//!
//! 1. A process holds an array once: one holder bit, one `LocalArray`, however many
//!    `LocalRef`s, views and clones (pool invariant 2); `locals` maps the header block's place
//!    to it.
//! 2. `refs` counts the `LocalRef`s. A new reference comes from a live one (`Clone`) or from
//!    the array's `locals` entry, under its lock, only while the count is above zero
//!    (`from_entry`, the `kref_get_unless_zero` pattern; locals invariant 2).
//! 3. `holder` changes only under the array's `locals` entry lock, so a load and a store make
//!    a transition: `holder_word(slot)` while this process holds the array under `slot`,
//!    `NOT_HELD` once that hold is released (by `leave` or by the last reference).
//! 4. The last reference releases the hold only if the entry still names its `LocalArray` (an
//!    attach may have pinned the array anew and taken the hold over), clears the entry, and
//!    only then takes the `LocalArray` apart (locals invariants 2 and 3).
//! 5. The pointers in a `LocalArray` point into mappings of its `pool`, which it keeps alive.
//!
//! Protocol: `LocalRef::new` (a pin) or in-place construction (`create_array`, then
//! `from_new`) make the first reference; `Drop` of the last runs `last_reference_gone`, which
//! gives the allocation back to the pool's spares.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::sync::fork_generation;
use shm_arena::Block;

use super::{PoolShared, ORD};
use crate::header::{field_of, ArrayHeader, ArrayMeta};

/// One array as this process holds it: one shared reference, however many views and clones.
/// Reached through [`LocalRef`]s only.
pub(crate) struct LocalArray {
    /// [`LocalRef`]s to it.
    pub(super) refs: crate::sync::SharedU64,
    pub(super) pool: Arc<PoolShared>,
    pub(super) meta_segment: u16,
    pub(super) header_block: Block,
    pub(super) header_ptr: NonNull<u8>,
    pub(super) nonce: u64,
    pub(super) data: NonNull<u8>,
    pub(super) data_len: u64,
    pub(super) meta: ArrayMeta,
    /// `slot << 32 | fork generation` under which this process holds the array. Changed only
    /// under the array's entry lock in `locals` (drop, leave, re-acquisition, a pin that takes
    /// a hold again), so a load and a store make a transition.
    pub(super) holder: crate::sync::SharedU64,
    /// Borrows of the data in this process: the number of shared borrows, or `EXCLUSIVE`.
    pub(crate) borrows: crate::sync::SharedU64,
}

/// [`LocalArray::holder`] for a hold under `slot` by this process (this side of any fork).
#[inline]
pub(super) fn holder_word(slot: u32) -> u64 {
    u64::from(slot) << 32 | fork_generation() & 0xFFFF_FFFF
}

/// [`LocalArray::holder`] once the hold is released (by `Pool::leave`).
pub(super) const NOT_HELD: u64 = u64::MAX;

/// The slot a [`holder_word`] names, if it was made in this process (not inherited by a fork)
/// and not released yet.
#[inline]
pub(super) fn held_slot(word: u64) -> Option<u32> {
    (word != NOT_HELD && word & 0xFFFF_FFFF == fork_generation() & 0xFFFF_FFFF).then_some((word >> 32) as u32)
}

// SAFETY: the pointers point into mappings owned by `pool` (its arenas), which live as long as
// the `Arc<PoolShared>` held here; the memory is shared memory that any thread may access; all
// other fields are plain data or atomics.
unsafe impl Send for LocalArray {}
// SAFETY: as for `Send`; `&LocalArray` only reads immutable fields and atomics.
unsafe impl Sync for LocalArray {}

impl LocalArray {
    #[inline]
    pub(super) fn header(&self) -> &ArrayHeader {
        // SAFETY: the start of a header block of a metadata segment (made by `create_array` or a
        // pin), pinned by our hold and mapped while `pool` lives.
        unsafe { ArrayHeader::at(self.header_ptr) }
    }
}

impl LocalArray {
    /// Never called: it names every field, so adding one fails to compile here until whoever
    /// adds it checks `last_reference_gone`, which drops only `pool` and `meta`.
    #[allow(dead_code)]
    fn fields_needing_drop(self) {
        let LocalArray {
            refs: _,
            pool: _,         // dropped by `last_reference_gone`
            meta_segment: _, // Copy
            header_block: _, // Copy
            header_ptr: _,   // Copy
            nonce: _,        // Copy
            data: _,         // Copy
            data_len: _,     // Copy
            meta: _,         // dropped by `last_reference_gone`
            holder: _,       // an atomic
            borrows: _,      // an atomic
        } = self;
    }

    /// The last [`LocalRef`] to `p` went: release the hold unless it was handed over, then
    /// give the allocation back.
    ///
    /// # Safety
    ///
    /// `p` is a `LocalArray` made by [`LocalRef::new`] whose count just reached zero: no
    /// reference to it exists and none can be taken but through its `locals` entry.
    unsafe fn last_reference_gone(p: NonNull<LocalArray>) {
        // SAFETY: alive until given back below (the caller's guarantee).
        let this = unsafe { p.as_ref() };
        let pool = &this.pool;
        // The table exists: this array's entry was made in it (capacity 0: never made here).
        match pool.locals.lock(this.meta_segment, this.header_block.offset(), || 0) {
            Some(mut entry) => {
                // Between our count reaching zero and this lock, an attach in this process may
                // have pinned the same array anew: it found our holder bit set
                // (`Acquired::Already`) and replaced our entry, so the hold is its now (locals
                // invariant 2). Release only our own.
                if entry.is(p.as_ptr()) {
                    pool.release_local(this);
                    entry.replace(None);
                }
            }
            None => pool.release_local(this),
        }
        // No entry names it now, so nobody can reach it (locals invariant 2): take it apart.
        // Only `pool` and `meta` need dropping (see `fields_needing_drop`); field by
        // field, not by reading the whole value out (a copy of 224 bytes).
        // SAFETY: initialised by `LocalRef`'s constructors; each field read or dropped once,
        // and the memory is given back below without being read again.
        let pool = unsafe { field_of!(p.as_ptr(), LocalArray, pool).read() };
        // SAFETY: as above.
        unsafe { core::ptr::drop_in_place::<ArrayMeta>(field_of!(p.as_ptr(), LocalArray, meta)) };
        // SAFETY: from `pool.spares.take()` (`LocalRef::new`), its value moved out just above.
        unsafe { pool.spares.give(p.cast()) };
        // Last: this may be the pool's last reference, whose drop frees the spares.
        drop(pool);
    }
}

/// A counted reference to this process's `LocalArray` of an array: what an `Arc` would be,
/// with a count of our own, so that `locals` can take a reference unless the count already
/// reached zero (under the entry's lock), and so that the allocation is reused (`Spares`).
pub(crate) struct LocalRef(NonNull<LocalArray>);

// SAFETY: a reference to a `LocalArray`, which is Send + Sync; the count is atomic.
unsafe impl Send for LocalRef {}
// SAFETY: as for `Send`.
unsafe impl Sync for LocalRef {}

impl LocalRef {
    /// The first reference to a new `LocalArray` (whose `refs` is 1).
    #[inline]
    pub(super) fn new(local: LocalArray) -> Self {
        let p = local.pool.spares.take();
        // SAFETY: `take` gives memory for a `LocalArray`, unused.
        unsafe { p.as_ptr().write(core::mem::MaybeUninit::new(local)) };
        // SAFETY: initialised just above, count 1, from `spares`.
        unsafe { Self::from_new(p.cast()) }
    }

    /// The first reference to a `LocalArray` initialised in place.
    ///
    /// # Safety
    ///
    /// `p` came from its pool's `spares`, holds an initialised `LocalArray` whose `refs` is 1,
    /// and nothing else refers to it.
    #[inline]
    pub(super) unsafe fn from_new(p: NonNull<LocalArray>) -> Self {
        // SAFETY: the caller's guarantee.
        debug_assert_eq!(unsafe { p.as_ref() }.refs.load(ORD), 1);
        LocalRef(p)
    }

    /// A new reference to the `LocalArray` at `p`, unless its count already reached zero (it
    /// is being taken apart).
    ///
    /// # Safety
    ///
    /// `p` is alive: its `locals` entry is locked and names it (locals invariant 2).
    pub(super) unsafe fn from_entry(p: NonNull<LocalArray>) -> Option<Self> {
        // SAFETY: the caller's guarantee.
        let refs = unsafe { &p.as_ref().refs };
        let mut n = refs.load(ORD);
        loop {
            if n == 0 {
                return None;
            }
            // Relaxed: as `Arc`'s increment; the entry's lock orders what we then read.
            match refs.compare_exchange_weak(n, n + 1, ORD, ORD) {
                Ok(_) => return Some(LocalRef(p)),
                Err(now) => n = now,
            }
        }
    }

    #[inline]
    pub(super) fn ptr(&self) -> NonNull<LocalArray> {
        self.0
    }
}

impl core::ops::Deref for LocalRef {
    type Target = LocalArray;
    #[inline]
    fn deref(&self) -> &LocalArray {
        // SAFETY: our count keeps it alive.
        unsafe { self.0.as_ref() }
    }
}

impl Clone for LocalRef {
    #[inline]
    fn clone(&self) -> Self {
        // Relaxed: as `Arc::clone` (a reference exists, so the count cannot reach zero).
        if self.refs.fetch_add(1, ORD) > i64::MAX as u64 {
            std::process::abort(); // as `Arc`: a count this large means leaked references
        }
        LocalRef(self.0)
    }
}

impl Drop for LocalRef {
    #[inline]
    fn drop(&mut self) {
        // Release, then an Acquire fence on the last: as `Arc`, every use through another
        // reference happens before the teardown.
        if self.refs.fetch_sub(1, core::sync::atomic::Ordering::Release) != 1 {
            return;
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        // SAFETY: the count reached zero: no other reference exists, and a new one can only
        // come through the entry, which refuses a zero count.
        unsafe { LocalArray::last_reference_gone(self.0) };
    }
}
