//! Creating an array: its blocks, its header, and this process's `LocalArray` of it.
//!
//! # Invariants
//!
//! 1. A new array's blocks carry this process's arena tag until its header is written; then
//!    the header block is disowned, then the data block, and the refcount governs their
//!    lifetime: a death in between is recovered by one of the two (header invariant 2, pool
//!    invariant 4).
//! 2. A small array (header and data at most `INLINE_MAX` bytes) is one block of a metadata
//!    segment, its data after its header (header invariant 1), taken from this process's
//!    renewed blocks when one of its size is cached (pool invariant 3).
//! 3. Nonces are odd and never repeat across a fork (header invariant 3).
//! 4. Nobody can pin a new array before a handle of it exists, so its `locals` entry is empty
//!    or names a `LocalArray` this process no longer holds (local_array invariant 3).
//!
//! Protocol: `create_array` checks the shape, writes the array's description in place in a
//! spare `LocalArray`, has `place_array` find blocks and write the header, then writes the
//! remaining fields and records the `LocalArray` in `locals`.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::sync::fork_generation;
use shm_arena::Block;

use super::local_array::{held_slot, holder_word, LocalArray, LocalRef};
use super::{PoolShared, SharedArray, ORD};
use crate::directory::KIND_DATA;
use crate::error::ArrayError;
use crate::header::{field_of, header_size, ArrayMeta, MAX_DIMS};
use crate::DType;

/// Arrays whose header and data take at most this many bytes are one block in a metadata
/// segment (header invariant 1): one allocation, one ownership transfer and one free instead
/// of two of each.
const INLINE_MAX: u64 = 4096;

impl PoolShared {
    #[inline]
    pub(super) fn next_nonce(&self) -> u64 {
        // splitmix64 over a per-thread counter seeded from getrandom: no shared write and no
        // atomic. Reseeded in a forked child, which would otherwise repeat its parent's nonces
        // (found in review), and so one array's token could cancel another's.
        std::thread_local! {
            /// (counter, the fork generation it was seeded in).
            static STATE: core::cell::Cell<(u64, u64)> = const { core::cell::Cell::new((0, u64::MAX)) };
        }
        let generation = fork_generation();
        let mut z = STATE.with(|state| {
            let (mut counter, seeded_in) = state.get();
            if seeded_in != generation {
                let mut seed = [0u8; 8];
                let _ = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty());
                // The cell's address tells threads apart should getrandom fail.
                counter = u64::from_le_bytes(seed) ^ (state as *const _ as u64);
            }
            counter = counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set((counter, generation));
            counter
        });
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) | 1
    }

    pub(super) fn create_array(
        self: &Arc<Self>,
        dtype: &DType,
        shape: &[u64],
        fortran: bool,
    ) -> Result<SharedArray, ArrayError> {
        if shape.len() > MAX_DIMS {
            return Err(ArrayError::Shape { shape: shape.to_vec(), why: "more than 64 dimensions" });
        }
        let elements = shape.iter().try_fold(1u64, |acc, n| acc.checked_mul(*n));
        let data_len = elements
            .and_then(|n| n.checked_mul(dtype.itemsize()))
            .filter(|n| *n <= 1 << 46)
            .ok_or_else(|| ArrayError::Shape { shape: shape.to_vec(), why: "size overflows" })?;
        let slot = self.slot().map_err(ArrayError::Grow)?;
        // The `LocalArray` is written in place in its allocation, its description first (see
        // `Dims` for why not build it and move it there).
        let spare = self.spares.take();
        let p: *mut LocalArray = spare.as_ptr().cast();
        // SAFETY: memory for a `LocalArray`, ours alone until `LocalRef::from_new` below.
        let meta = unsafe { ArrayMeta::write_contiguous(field_of!(p, LocalArray, meta), dtype, shape, fortran) };
        let placed = self.place_array(slot, meta, data_len);
        let Placed { meta_seg, header_block, header_ptr, data, nonce } = match placed {
            Ok(placed) => placed,
            Err(e) => {
                // SAFETY: the description written above, dropped once.
                unsafe { core::ptr::drop_in_place::<ArrayMeta>(field_of!(p, LocalArray, meta)) };
                // SAFETY: from `take`, its value dropped just above.
                unsafe { self.spares.give(spare) };
                return Err(e);
            }
        };
        // Ten writes, one per remaining field.
        #[allow(clippy::multiple_unsafe_ops_per_block)]
        // SAFETY: as above: fields of memory we own alone, each written once.
        unsafe {
            field_of!(p, LocalArray, refs).write(crate::sync::SharedU64::new(1));
            field_of!(p, LocalArray, pool).write(self.clone());
            field_of!(p, LocalArray, meta_segment).write(meta_seg);
            field_of!(p, LocalArray, header_block).write(header_block);
            field_of!(p, LocalArray, header_ptr).write(header_ptr);
            field_of!(p, LocalArray, nonce).write(nonce);
            field_of!(p, LocalArray, data).write(data);
            field_of!(p, LocalArray, data_len).write(data_len);
            field_of!(p, LocalArray, holder).write(crate::sync::SharedU64::new(holder_word(slot)));
            field_of!(p, LocalArray, borrows).write(crate::sync::SharedU64::new(0));
        }
        // SAFETY: every field written (`meta` by `write_contiguous`, the rest just above:
        // `fields_needing_drop` lists them all), count 1, from `spares`.
        let local = unsafe { LocalRef::from_new(spare.cast()) };
        let capacity = || self.segment(meta_seg).map_or(0, |a| a.capacity());
        let mut entry = self.locals.lock(meta_seg, header_block.offset(), capacity).expect("a header block's place");
        // Empty, or naming a `LocalArray` this process does not hold (let go by `leave`, or
        // inherited and not re-acquired): a held one removes its entry before its hold goes
        // (locals invariant 2), and nobody can pin this array before a handle of it exists.
        let before = entry.replace(Some(local.ptr()));
        // SAFETY: `before` was named by the entry we hold locked (locals invariant 2).
        debug_assert!(before.is_none_or(|b| held_slot(unsafe { b.as_ref() }.holder.load(ORD)).is_none()));
        drop(entry);
        Ok(SharedArray::whole(local))
    }

    /// Finds a place for a new array described by `meta` (`data_len` bytes of data) and writes
    /// its header there, held by `slot`: a renewed block of this process, or new blocks.
    fn place_array(&self, slot: u32, meta: &ArrayMeta, data_len: u64) -> Result<Placed, ArrayError> {
        let header_len = header_size(meta.shape.len(), meta.dtype.descr().len());
        let placed = if header_len + data_len <= INLINE_MAX {
            // A small array: one block in a metadata segment, its data after its header.
            let data_at =
                |p: NonNull<u8>| NonNull::new(p.as_ptr().wrapping_add(header_len as usize)).expect("in a block");
            let size = (header_len + data_len).next_power_of_two();
            if let Some((meta_seg, header_block, header_ptr, header)) = self.take_renewed(size) {
                // SAFETY: a renewed block of this process, `size` bytes (at least header_len +
                // data_len), aligned to 128; we hold it alone under a target nobody was told
                // (recycle invariant 1), so nobody else reads what we write.
                let nonce = unsafe { header.renew((meta_seg, header_block.to_bits(), data_len), header_len, meta) };
                (meta_seg, header_block, header_ptr, data_at(header_ptr), nonce)
            } else {
                let nonce = self.next_nonce();
                let (meta_seg, header_block, header_ptr, header) = self.alloc_header(header_len + data_len)?;
                let meta_arena = self.segment(meta_seg).map_err(ArrayError::Grow)?;
                // SAFETY: a block we just allocated and have not published, of at least
                // header_len + data_len bytes, aligned to 128: nobody else sees it until a handle
                // exists.
                unsafe { header.init(nonce, slot, (meta_seg, header_block.to_bits(), data_len), header_len, meta) };
                meta_arena.disown(header_block).expect("our block");
                (meta_seg, header_block, header_ptr, data_at(header_ptr), nonce)
            }
        } else {
            let nonce = self.next_nonce();
            let (data_seg, data_block, data) = self.alloc_in(KIND_DATA, data_len.max(1))?;
            let (meta_seg, header_block, header_ptr, header) = match self.alloc_header(header_len) {
                Ok(x) => x,
                Err(e) => {
                    let _ = self.segment(data_seg).map(|a| a.free(data_block));
                    return Err(e);
                }
            };
            let meta_arena = self.segment(meta_seg).map_err(ArrayError::Grow)?;
            let data_arena = self.segment(data_seg).map_err(ArrayError::Grow)?;
            // SAFETY: a block we just allocated and have not published, of at least header_len
            // bytes (the header's own size), aligned to 128: nobody else sees it until a handle
            // exists.
            unsafe { header.init(nonce, slot, (data_seg, data_block.to_bits(), data_len), 0, meta) };
            // Reserve invariant 3: counted before anyone can free it.
            self.count_live_data(data_len);
            // Ownership passes from the arena (our tag) to the refcount (header invariant 2):
            // header first, so a death in between is recovered by one of the two mechanisms.
            meta_arena.disown(header_block).expect("our block");
            data_arena.disown(data_block).expect("our block");
            (meta_seg, header_block, header_ptr, data, nonce)
        };
        let (meta_seg, header_block, header_ptr, data, nonce) = placed;
        Ok(Placed { meta_seg, header_block, header_ptr, data, nonce })
    }
}

/// Where `place_array` put a new array's header.
struct Placed {
    meta_seg: u16,
    header_block: Block,
    header_ptr: NonNull<u8>,
    data: NonNull<u8>,
    nonce: u64,
}
