//! Pinning an array: attaching a handle, looking up a name, re-holding an array this process
//! let go of, and cancelling a handle's token.
//!
//! # Invariants
//!
//! 1. Every pin goes through the same checks, in order (`pin_header`, the handle steps of
//!    docs/architecture.md): the header block against the arena in a metadata segment (pool
//!    invariant 1), its magic and nonce, the pin under the refcount lock, then the refcount's
//!    target against the nonce (header invariants 2 and 3).
//! 2. A pin that fails after taking a hold undoes exactly the hold it took (`unpin`): with
//!    `Acquired::Already`, the bit belongs to another `LocalArray` of this process.
//! 3. Whoever learns from a pin that the array is orphaned frees it (pool invariant 3).
//! 4. A process holds an array once: a pin of an array it already holds returns the same
//!    `LocalArray` (consuming the token, if any), and one of an array it let go of holds it
//!    again through every check above (local_array invariants 1 and 3).
//! 5. A header's description of its data is checked against its block (inline data) or its
//!    data segment's arena before the data is used (`data_of`), and a view against the data
//!    length (`view_fits`).
//!
//! Protocol: `attach` pins by token (or by nonce for an untracked handle or a token already
//! claimed); `cancel` gives a token back without mapping the array for this process.

use std::ptr::NonNull;
use std::sync::Arc;

use shm_arena::Block;
use shm_sync::{RefError, Released};

use super::local_array::{held_slot, holder_word, LocalArray, LocalRef};
use super::overflow::LinkError;
use super::segments::MetaSegment;
use super::{hex, ref_to_handle, PoolShared, SharedArray, ORD};
use crate::directory::KIND_DATA;
use crate::error::{HandleError, PoolError};
use crate::handle::Handle;
use crate::header::{view_fits, ArrayHeader, ARRAY_MAGIC};

/// Handle steps 2 and 3 (invariant 1): the header at the start of `block`, resolved by the
/// metadata segment's arena, if its magic and nonce word say it is the array of `nonce`. Only
/// atomics are read: the array is not pinned yet.
#[inline]
fn first_look(meta: MetaSegment<'_>, block: Block, nonce: u64) -> Result<(NonNull<u8>, &ArrayHeader), HandleError> {
    let (ptr, h) = meta.header(block)?;
    if h.magic.load(core::sync::atomic::Ordering::Acquire) != ARRAY_MAGIC || h.nonce.load(ORD) != nonce {
        return Err(HandleError::Stale);
    }
    Ok((ptr, h))
}

/// How a pin takes its hold.
#[derive(Clone, Copy)]
pub(super) enum Pin {
    /// Claim this transfer token (a handle's first attach).
    Token(shm_sync::Token),
    /// Take a hold without a token (an untracked handle, a name, a re-hold).
    Acquire,
}

impl PoolShared {
    /// Pins the array at (segment, header block) and checks its nonce (header invariant 3).
    pub(super) fn pin(
        self: &Arc<Self>,
        meta_seg: u16,
        header: Block,
        nonce: u64,
        how: Pin,
    ) -> Result<LocalRef, HandleError> {
        let slot = self.slot().map_err(|e| match e {
            PoolError::Full { name, slots } => HandleError::PoolFull { pool: name, slots },
            PoolError::OtherNamespace { name, pool_namespace, ours } => {
                HandleError::OtherNamespace { pool: name, pool_namespace, ours }
            }
            e => HandleError::Segment(e.to_string()),
        })?;
        let meta_segment = self.meta_segment(meta_seg)?;
        // Declared before the guard, so dropped after it (locals invariant 3).
        let existing;
        // No place for a header block there: no array either.
        let mut entry =
            self.locals.lock(meta_seg, header.offset(), || meta_segment.arena.capacity()).ok_or(HandleError::Stale)?;
        // SAFETY: the entry is locked and names it (locals invariant 2).
        existing = entry.get().and_then(|p| unsafe { LocalRef::from_entry(p) });
        if let Some(existing) = &existing {
            if existing.nonce == nonce && existing.header_block == header {
                if held_slot(existing.holder.load(ORD)).is_none() {
                    // Released by `leave` (or inherited and never re-acquired): this attach
                    // takes a hold again, or the array could be freed under us (found in
                    // review) — through every check of a first pin, since the array may be
                    // gone and its place reused or renewed (found in review, session 4).
                    self.pin_header(meta_segment, header, nonce, how, slot)?;
                    // Under the entry's lock, as every change of `holder` is.
                    existing.holder.store(holder_word(slot), ORD);
                    return Ok(existing.clone());
                }
                if let Pin::Token(token) = how {
                    // We hold it already: the token is consumed, our hold stays single. A token
                    // that is no longer pending (the handle was attached before) changes
                    // nothing: our hold keeps the array alive.
                    let h = existing.header();
                    let at = (existing.meta_segment, existing.header_block);
                    let _ =
                        self.with_holder_room(at, h, || h.refcount.claim(token, slot, &self.tokens(), &self.group()));
                }
                return Ok(existing.clone());
            }
        }
        let (ptr, h, acquired) = self.pin_header(meta_segment, header, nonce, how, slot)?;
        let unpin = |h: &ArrayHeader| self.unpin(h, acquired, slot, meta_seg, header);
        // SAFETY: pinned (header invariant 2), block of header.size() bytes.
        let Some(meta) = (unsafe { h.read_meta(header.size()) }) else {
            unpin(h);
            return Err(HandleError::Invalid("corrupt array header"));
        };
        let data_len = h.data_len.load(ORD);
        let Some(data) = self.data_of(header, ptr, h, data_len) else {
            // A memfd segment that no live process holds any more (backend invariant 4) says so.
            let unreachable = self.unreachable_data_segment(h);
            unpin(h);
            return Err(unreachable.unwrap_or(HandleError::Invalid("the header names no valid data block")));
        };
        let local = LocalRef::new(LocalArray {
            refs: crate::sync::SharedU64::new(1),
            pool: self.clone(),
            meta_segment: meta_seg,
            header_block: header,
            header_ptr: ptr,
            nonce,
            data,
            data_len,
            meta,
            holder: crate::sync::SharedU64::new(holder_word(slot)),
            borrows: crate::sync::SharedU64::new(0),
        });
        // Replacing the entry of a `LocalArray` whose last reference went takes its hold over;
        // replacing one this process does not hold (after `leave`, or inherited) takes nothing
        // (locals invariant 2).
        entry.replace(Some(local.ptr()));
        drop(entry);
        Ok(local)
    }

    /// Handle steps 2 to 5 (docs/architecture.md): the header block against the arena of a
    /// metadata segment, its magic and nonce word (`first_look`), the pin (claim or acquire for
    /// `slot`), then the refcount's target against `nonce`, undoing the pin if it differs.
    /// Returns the header's address, the header and how the pin went.
    pub(super) fn pin_header<'a>(
        &self,
        meta: MetaSegment<'a>,
        header: Block,
        nonce: u64,
        how: Pin,
        slot: u32,
    ) -> Result<(NonNull<u8>, &'a ArrayHeader, shm_sync::Acquired), HandleError> {
        let meta_seg = meta.index;
        let (ptr, h) = first_look(meta, header, nonce)?;
        let tokens = self.tokens();
        // More than twelve holders: an overflow block is linked first (`overflow`).
        let acquired = self.with_holder_room((meta_seg, header), h, || match how {
            Pin::Token(token) => h.refcount.claim(token, slot, &tokens, &self.group()),
            Pin::Acquire => h.refcount.acquire(slot, &tokens, &self.group()),
        });
        let acquired = match acquired {
            Ok(a) => a,
            Err(LinkError::Ref(RefError::Orphaned)) => {
                // Our repair found it unreferenced: we are the one to free it (pool invariant 3).
                self.free_array(meta_seg, header, h);
                return Err(HandleError::Stale);
            }
            Err(LinkError::Ref(e)) => return Err(ref_to_handle(e)),
            Err(LinkError::NoMemory) => return Err(HandleError::NoHolderRoom { pool: self.name.clone() }),
        };
        // Pinned: the fields are stable now if the refcount's target is our nonce (header
        // invariant 2): the place may have been freed and reused, or renewed for another array
        // of its holder (header invariant 4), between our first look and the pin.
        if h.refcount.target() != nonce {
            self.unpin(h, acquired, slot, meta_seg, header);
            return Err(HandleError::Stale);
        }
        Ok((ptr, h, acquired))
    }

    /// Undoes a pin that `pin_header` made: only a hold it took (with `Already`, the bit
    /// belongs to another `LocalArray` of this process; found in review).
    fn unpin(&self, h: &ArrayHeader, acquired: shm_sync::Acquired, slot: u32, meta_seg: u16, header: Block) {
        if acquired == shm_sync::Acquired::First
            && h.refcount.release(slot, &self.tokens(), &self.group()) == Ok(Released::Last)
        {
            self.free_array(meta_seg, header, h);
        }
    }

    pub(super) fn attach(self: &Arc<Self>, handle: &Handle) -> Result<SharedArray, HandleError> {
        if handle.pool != self.id {
            return Err(HandleError::WrongPool { handle_pool: hex(&handle.pool), this_pool: hex(&self.id) });
        }
        let how = match handle.token {
            Some(t) => Pin::Token(t),
            None => Pin::Acquire,
        };
        let local = match self.pin(handle.meta_segment, handle.header, handle.nonce, how) {
            // The token was claimed already (the handle is attached a second time): the array
            // may still be alive, held by someone. Pinning by nonce is as safe as by token: a
            // freed or reused header fails the nonce check.
            Err(HandleError::Stale) if handle.token.is_some() => {
                self.pin(handle.meta_segment, handle.header, handle.nonce, Pin::Acquire)?
            }
            r => r?,
        };
        let itemsize = local.meta.dtype.itemsize();
        if !view_fits(handle.offset, &handle.shape, &handle.strides, itemsize, local.data_len) {
            return Err(HandleError::Invalid("the view lies outside its array"));
        }
        Ok(SharedArray::from_view(local, handle.offset, handle.shape.clone(), handle.strides.clone()))
    }

    pub(super) fn cancel(&self, handle: &Handle) -> Result<(), HandleError> {
        if handle.pool != self.id {
            return Err(HandleError::WrongPool { handle_pool: hex(&handle.pool), this_pool: hex(&self.id) });
        }
        let Some(token) = handle.token else { return Ok(()) };
        // The same first checks as a pin's (invariant 1), without the pin.
        let (_, h) = first_look(self.meta_segment(handle.meta_segment)?, handle.header, handle.nonce)?;
        // A pending token keeps its record alive (refcount invariant), and `take_token` checks
        // that the token is this record's: a token of another array is refused.
        match h.refcount.cancel(token, self.freer_slot(), &self.tokens(), &self.group()) {
            Ok(Released::Last) => {
                self.free_array(handle.meta_segment, handle.header, h);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(RefError::Orphaned) => {
                self.free_array(handle.meta_segment, handle.header, h);
                Err(HandleError::Stale)
            }
            Err(e) => Err(ref_to_handle(e)),
        }
    }

    /// Where a pinned array's data is: inside its header block after the header (small
    /// arrays), or a block of its own in a data segment. `None` if the header's description of
    /// it does not fit its block (a corrupt header).
    fn data_of(&self, header: Block, header_ptr: NonNull<u8>, h: &ArrayHeader, data_len: u64) -> Option<NonNull<u8>> {
        let inline = h.inline_offset.load(ORD);
        if inline != 0 {
            let fits = inline >= crate::header::FIXED as u64
                && inline.checked_add(data_len).is_some_and(|end| end <= header.size());
            return fits.then(|| NonNull::new(header_ptr.as_ptr().wrapping_add(inline as usize)))?;
        }
        let data_seg = h.data_segment.load(ORD) as u16;
        let data_block = Block::from_bits(h.data_block.load(ORD));
        if self.dir().segments().get(data_seg as usize)?.kind.load(ORD) != KIND_DATA {
            return None;
        }
        let p = self.segment(data_seg).ok()?.as_ptr(data_block).ok()?;
        (data_len <= data_block.size()).then_some(p)
    }
}
