//! The array header: a block of its own in a metadata segment of the pool.
//!
//! # Invariants
//!
//! 1. Every block of a metadata segment starts with a kind magic ([`ARRAY_MAGIC`] for headers,
//!    the pool directory's own magic for the directory, `pool::overflow`'s for holder overflow
//!    blocks), and user data lives there only inside a header's own block, after the header (a
//!    small array's data, "inline"): a sweep that finds a block there can trust what its magic
//!    says, and no handle can name the inline data as a block (the arena only resolves
//!    allocated blocks, and the data is part of one).
//! 2. A header is written completely by its creator before any handle to it exists; after
//!    that only its [`RefCount`] changes (under its lock) until the array dies. Readers that
//!    have pinned the array (they hold it, or claimed a token) and found its refcount's target
//!    equal to their nonce therefore read stable fields.
//! 3. The nonce is 64 random-ish bits (odd) chosen at creation and also the refcount's token
//!    target: a handle, a token or a named entry whose nonce differs names another array,
//!    even if it has the same place.
//! 4. A small array's header may be renewed rather than freed: its one holder turns the
//!    refcount to a new target (shm-sync's refcount invariant 5), sets the nonce word to
//!    [`RENEWED`] and later writes the next array over it ([`ArrayHeader::renew`]), magic and
//!    refcount untouched. A reader that pinned it by the old nonce sees a different target
//!    (invariant 2's check) and lets go; sweeps see a header with its magic, held, which
//!    `collect` frees like any other if its holder dies.
//!
//! ```text
//! 0    magic            "PYSHMARR"
//! 8    nonce
//! 16   refcount         RefCount<HolderList>: lock, state (dead and its freer, holders,
//!                        tokens), target (= nonce), 12 inline holder slots, the overflow
//!                        block's id (`pool::overflow`)
//! 80   data segment     u32, then u32: how far the array's freer got (`FREEING_DATA`,
//!                        `DATA_FREED`; 0 while it lives)
//! 88   data block       Block::to_bits
//! 96   data length      bytes
//! 104  itemsize
//! 112  meta             ndim (8 bits) | kind (8) | descr length (16) | flags (32)
//! 120  inline offset    bytes from the header's start to its inline data; 0 when the data
//!                        is a block of its own
//! 128  shape            u64 x ndim
//!      strides          i64 x ndim (bytes)
//!      descr            descr length bytes (numpy's description)
//! ```

use shm_sync::holders::HolderList;
use shm_sync::RefCount;

use crate::dtype::{DType, DTypeKind};
use crate::sync::SharedU64;

/// A pointer to field `$f` of the `$T` that raw pointer `$p` points to: no dereference, so no
/// `unsafe` (writing through it is).
macro_rules! field_of {
    ($p:expr, $T:ty, $f:ident) => {
        $crate::header::field_ptr::<$T, _>($p.cast::<u8>().wrapping_add(core::mem::offset_of!($T, $f)), |v: &$T| &v.$f)
    };
}
pub(crate) use field_of;

/// `p` as a pointer to the type `_field` returns (`_field` is never called: it names the type
/// for [`field_of`]).
pub(crate) fn field_ptr<T, F>(p: *mut u8, _field: fn(&T) -> &F) -> *mut F {
    p.cast()
}

/// Magic of an array header.
pub(crate) const ARRAY_MAGIC: u64 = u64::from_le_bytes(*b"PYSHMARR");
/// The refcount of an array: twelve holders inline, the rest in an overflow block of the
/// pool's metadata (`pool::overflow`), so up to `MAX_PROCESSES` processes and the directory.
pub(crate) type ArrayRefCount = RefCount<HolderList>;
/// Largest number of dimensions (numpy 2's `NPY_MAXDIMS`).
pub const MAX_DIMS: usize = 64;
/// Bytes of the fixed part.
pub(crate) const FIXED: usize = 128;

/// The nonce word of a renewed header (invariant 4): no array. Real nonces are odd.
pub(crate) const RENEWED: u64 = 0;

/// The data-segment word's upper half while a dead array's data block is being freed: set just
/// before the arena gives it back (release invariant 5).
pub(crate) const FREEING_DATA: u64 = 1 << 32;
/// The data-segment word's upper half once a dead array's data block is given back.
pub(crate) const DATA_FREED: u64 = 2 << 32;

/// Flag: the base array is Fortran-ordered.
pub(crate) const FLAG_FORTRAN: u32 = 1;

#[repr(C)]
pub(crate) struct ArrayHeader {
    pub(crate) magic: SharedU64,
    pub(crate) nonce: SharedU64,
    pub(crate) refcount: ArrayRefCount,
    pub(crate) data_segment: SharedU64,
    pub(crate) data_block: SharedU64,
    pub(crate) data_len: SharedU64,
    pub(crate) itemsize: SharedU64,
    pub(crate) meta: SharedU64,
    pub(crate) inline_offset: SharedU64,
}

const _: () = assert!(core::mem::size_of::<ArrayHeader>() == FIXED);

impl ArrayHeader {
    /// The header at the start of the block at `ptr`: the one place a block's bytes are taken
    /// for a header. Before the array is pinned, read only its atomics (magic, nonce,
    /// refcount); its other fields are stable once it is pinned and its target checked
    /// (invariant 2).
    ///
    /// # Safety
    ///
    /// - `ptr` is the start of a block of at least [`FIXED`] bytes in a metadata segment that
    ///   the arena resolved or that the caller holds: by invariant 1 its first `FIXED` bytes
    ///   are a header or the pool directory, words read and written only as atomics;
    /// - that segment stays mapped for `'a` (the pool that maps it outlives the reference).
    #[inline]
    pub(crate) unsafe fn at<'a>(ptr: core::ptr::NonNull<u8>) -> &'a ArrayHeader {
        // SAFETY: the caller's guarantees; a metadata segment's blocks are 128-byte aligned at
        // least (its smallest block), beyond `ArrayHeader`'s alignment of 8.
        unsafe { &*ptr.as_ptr().cast::<ArrayHeader>() }
    }
}

/// The geometry and type of an array as its header records them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ArrayMeta {
    pub(crate) dtype: DType,
    pub(crate) shape: Dims<u64>,
    pub(crate) strides: Dims<i64>,
    pub(crate) fortran: bool,
}

/// Dimensions: up to four kept inline (no heap allocation for the common arrays), more on the
/// heap. Reads as a slice. A struct of plain words rather than an enum, so that it can be
/// written in place ([`Dims::write_in_place`]): a value built on the stack and then moved is
/// copied with wide loads just after narrow stores wrote it, which stalls the CPU (store
/// forwarding fails) and was a fifth of a small array's create + drop.
#[derive(Clone)]
pub(crate) struct Dims<T> {
    len: usize,
    heap: Option<Box<[T]>>,
    inline: [T; 4],
}

impl<T: Copy + Default> Dims<T> {
    /// Writes `n` dimensions into `dst`, filled by `fill`, without building them elsewhere.
    ///
    /// # Safety
    ///
    /// `dst` is valid for writes and aligned; what it held is overwritten without being dropped.
    pub(crate) unsafe fn write_in_place(dst: *mut Self, n: usize, fill: impl FnOnce(&mut [T])) {
        let len: *mut usize = field_of!(dst, Self, len);
        let inline: *mut [T; 4] = field_of!(dst, Self, inline);
        let heap: *mut Option<Box<[T]>> = field_of!(dst, Self, heap);
        // Three writes of fields of `*dst`, then the inline array filled through a reference
        // to it, in place.
        #[allow(clippy::multiple_unsafe_ops_per_block)]
        // SAFETY: the caller's guarantee: `dst` is valid for writes and aligned, so are its
        // fields; each is written once before it is read.
        unsafe {
            len.write(n);
            inline.write([T::default(); 4]);
            if n <= 4 {
                heap.write(None);
                fill(&mut (&mut *inline)[..n]);
            } else {
                let mut v = vec![T::default(); n].into_boxed_slice();
                fill(&mut v);
                heap.write(Some(v));
            }
        }
    }
}

impl<T: Copy + Default> From<&[T]> for Dims<T> {
    fn from(v: &[T]) -> Self {
        v.iter().copied().collect()
    }
}

impl<T: Copy + Default> FromIterator<T> for Dims<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut inline = [T::default(); 4];
        let mut n = 0;
        let mut it = iter.into_iter();
        for x in it.by_ref() {
            if n == 4 {
                let mut v = inline.to_vec();
                v.push(x);
                v.extend(it);
                return Dims { len: v.len(), heap: Some(v.into()), inline };
            }
            inline[n] = x;
            n += 1;
        }
        Dims { len: n, heap: None, inline }
    }
}

impl<T> core::ops::Deref for Dims<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.heap {
            Some(v) => v,
            None => &self.inline[..self.len],
        }
    }
}

impl<T> core::ops::DerefMut for Dims<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.heap {
            Some(v) => v,
            None => &mut self.inline[..self.len],
        }
    }
}

impl<T: PartialEq> PartialEq for Dims<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Eq> Eq for Dims<T> {}

impl<T: core::fmt::Debug> core::fmt::Debug for Dims<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (**self).fmt(f)
    }
}

impl ArrayMeta {
    /// Writes the description of a new contiguous array into `dst`, in place (see [`Dims`]),
    /// and returns it.
    ///
    /// # Safety
    ///
    /// `dst` is valid for writes and aligned, and stays so for `'a`; what it held is
    /// overwritten without being dropped.
    pub(crate) unsafe fn write_contiguous<'a>(
        dst: *mut ArrayMeta,
        dtype: &DType,
        shape: &[u64],
        fortran: bool,
    ) -> &'a ArrayMeta {
        let shape_at: *mut Dims<u64> = field_of!(dst, ArrayMeta, shape);
        let strides_at: *mut Dims<i64> = field_of!(dst, ArrayMeta, strides);
        // Four fields of `*dst`, each written once, then a reference to the whole.
        #[allow(clippy::multiple_unsafe_ops_per_block)]
        // SAFETY: the caller's guarantee: `dst` is valid for writes and aligned for `'a`, so
        // are its fields; every field is written before the reference is made.
        unsafe {
            field_of!(dst, ArrayMeta, dtype).write(dtype.clone());
            Dims::write_in_place(shape_at, shape.len(), |d| {
                for (d, s) in d.iter_mut().zip(shape) {
                    *d = *s;
                }
            });
            Dims::write_in_place(strides_at, shape.len(), |d| {
                fill_contiguous_strides(d, shape, dtype.itemsize(), fortran);
            });
            field_of!(dst, ArrayMeta, fortran).write(fortran);
            &*dst
        }
    }
}

/// Bytes a header with `ndim` dimensions and a description of `descr_len` bytes takes.
pub(crate) fn header_size(ndim: usize, descr_len: usize) -> u64 {
    (FIXED + ndim * 16 + descr_len).next_multiple_of(64) as u64
}

impl ArrayHeader {
    fn tail(&self) -> *mut u8 {
        (self as *const Self as *mut u8).wrapping_add(FIXED)
    }

    /// Writes a new header into a block that nobody else can see yet. `data` is (segment,
    /// block bits, length) of the data; `inline_offset` is nonzero when the data follows the
    /// header inside its own block.
    ///
    /// # Safety
    ///
    /// - `self` is the start of a block of at least `header_size(ndim, descr_len)` bytes that
    ///   this process allocated and has not published (invariant 2: no other reader or writer).
    pub(crate) unsafe fn init(
        &self,
        nonce: u64,
        holder: u32,
        data: (u16, u64, u64),
        inline_offset: u64,
        meta: &ArrayMeta,
    ) {
        // First: a block freed by arena recovery keeps the old magic; no sweep may take the
        // half-written header for a live one (found in review).
        self.magic.store(0, core::sync::atomic::Ordering::Release);
        self.nonce.store(nonce, core::sync::atomic::Ordering::Relaxed);
        self.refcount.init(nonce, holder);
        // SAFETY: the caller's guarantees are `write_fields`'.
        unsafe { self.write_fields(data, inline_offset, meta) };
        // Release: a reader that loads the magic with Acquire sees every field above. (Pinning
        // through the refcount's lock orders them as well; this covers sweeps.)
        self.magic.store(ARRAY_MAGIC, core::sync::atomic::Ordering::Release);
    }

    /// Writes the next array into a renewed header (invariant 4); its nonce becomes the
    /// refcount's target. Returns that nonce.
    ///
    /// # Safety
    ///
    /// - `self` is the start of a mapped block of at least `header_size(ndim, descr_len)` bytes;
    /// - this process holds its refcount alone, renewed, and has not published the new target:
    ///   nobody else reads these fields (readers by an old nonce stop at the target check).
    pub(crate) unsafe fn renew(&self, data: (u16, u64, u64), inline_offset: u64, meta: &ArrayMeta) -> u64 {
        // SAFETY: the caller's guarantees are `write_fields`'.
        unsafe { self.write_fields(data, inline_offset, meta) };
        let nonce = self.refcount.target();
        self.nonce.store(nonce, core::sync::atomic::Ordering::Relaxed);
        nonce
    }

    /// Every field but the magic, the nonce and the refcount.
    ///
    /// # Safety
    ///
    /// As for [`ArrayHeader::renew`]: the block holds the tail and nobody else reads it.
    unsafe fn write_fields(&self, data: (u16, u64, u64), inline_offset: u64, meta: &ArrayMeta) {
        let descr = meta.dtype.descr().as_bytes();
        let ndim = meta.shape.len();
        self.data_segment.store(u64::from(data.0), core::sync::atomic::Ordering::Relaxed);
        self.data_block.store(data.1, core::sync::atomic::Ordering::Relaxed);
        self.data_len.store(data.2, core::sync::atomic::Ordering::Relaxed);
        self.itemsize.store(meta.dtype.itemsize(), core::sync::atomic::Ordering::Relaxed);
        let flags = if meta.fortran { FLAG_FORTRAN } else { 0 };
        let packed =
            ndim as u64 | (meta.dtype.kind() as u64) << 8 | (descr.len() as u64) << 16 | u64::from(flags) << 32;
        self.meta.store(packed, core::sync::atomic::Ordering::Relaxed);
        self.inline_offset.store(inline_offset, core::sync::atomic::Ordering::Relaxed);
        let tail = self.tail();
        for (i, (s, st)) in meta.shape.iter().zip(meta.strides.iter()).enumerate() {
            // SAFETY: the caller guarantees the block holds the tail (header_size), which has
            // room for ndim shapes, ndim strides and the description; unaligned writes because
            // the tail is only 8-byte aligned by construction (FIXED is a multiple of 8).
            unsafe {
                tail.wrapping_add(i * 8).cast::<u64>().write_unaligned(*s);
            }
            // SAFETY: as above, the strides follow the shapes.
            unsafe {
                tail.wrapping_add((ndim + i) * 8).cast::<i64>().write_unaligned(*st);
            }
        }
        let at = tail.wrapping_add(ndim * 16);
        if descr.len() <= 8 {
            // The common descriptions ("<f8"): byte by byte, not a call to memcpy.
            for (i, b) in descr.iter().enumerate() {
                // SAFETY: as above, the description follows the strides.
                unsafe { at.wrapping_add(i).write(*b) };
            }
        } else {
            // SAFETY: as above, the description follows the strides.
            unsafe { core::ptr::copy_nonoverlapping(descr.as_ptr(), at, descr.len()) };
        }
    }

    /// Reads the geometry and type of a pinned array whose block is `block_len` bytes long,
    /// validating everything against the block.
    ///
    /// # Safety
    ///
    /// - `self` is the start of a mapped block of `block_len` bytes;
    /// - the array is pinned (invariant 2), so no one writes these fields meanwhile.
    pub(crate) unsafe fn read_meta(&self, block_len: u64) -> Option<ArrayMeta> {
        let packed = self.meta.load(core::sync::atomic::Ordering::Relaxed);
        let ndim = (packed & 0xFF) as usize;
        let kind = DTypeKind::from_u8((packed >> 8) as u8)?;
        let descr_len = ((packed >> 16) & 0xFFFF) as usize;
        let flags = (packed >> 32) as u32;
        if ndim > MAX_DIMS || header_size(ndim, descr_len) > block_len {
            return None;
        }
        let tail = self.tail();
        // SAFETY: header_size(ndim, descr_len) <= block_len was checked just above.
        let shape = (0..ndim).map(|i| unsafe { tail.wrapping_add(i * 8).cast::<u64>().read_unaligned() }).collect();
        // SAFETY: as above.
        let strides =
            (0..ndim).map(|i| unsafe { tail.wrapping_add((ndim + i) * 8).cast::<i64>().read_unaligned() }).collect();
        let mut descr = vec![0u8; descr_len];
        // SAFETY: as above; `descr` has descr_len bytes.
        unsafe { core::ptr::copy_nonoverlapping(tail.wrapping_add(ndim * 16), descr.as_mut_ptr(), descr_len) };
        let dtype =
            DType::new(core::str::from_utf8(&descr).ok()?, self.itemsize.load(core::sync::atomic::Ordering::Relaxed))
                .ok()?;
        if dtype.kind() != kind {
            return None;
        }
        Some(ArrayMeta { dtype, shape, strides, fortran: flags & FLAG_FORTRAN != 0 })
    }
}

/// Strides (in bytes) of a contiguous array.
#[cfg(test)]
pub(crate) fn contiguous_strides(shape: &[u64], itemsize: u64, fortran: bool) -> Vec<i64> {
    let mut out = vec![0; shape.len()];
    fill_contiguous_strides(&mut out, shape, itemsize, fortran);
    out
}

/// Writes the strides (in bytes) of a contiguous array of `shape` into `out` (as long).
fn fill_contiguous_strides(out: &mut [i64], shape: &[u64], itemsize: u64, fortran: bool) {
    let mut step = itemsize as i64;
    let mut put = |(o, n): (&mut i64, &u64)| {
        *o = step;
        step = step.saturating_mul((*n).max(1) as i64);
    };
    if fortran {
        out.iter_mut().zip(shape).for_each(&mut put);
    } else {
        out.iter_mut().zip(shape).rev().for_each(&mut put);
    }
}

/// Whether a view of `shape`/`strides` (byte strides) starting `offset` bytes into an array's
/// data stays inside its `len` bytes, with every element of `itemsize` bytes fully inside.
/// Overflow-safe for any values a crafted handle can carry. This is the one view check of the
/// workspace: handles, [`SharedArray::view`](crate::SharedArray::view) and bindings that
/// reinterpret an array with another item size all use it.
///
/// # Examples
///
/// ```
/// use shm_ndarray::view_fits;
/// assert!(view_fits(0, &[2, 3], &[24, 8], 8, 48));
/// assert!(view_fits(40, &[6], &[-8], 8, 48), "a reversed view");
/// assert!(!view_fits(8, &[2, 3], &[24, 8], 8, 48), "one element past the end");
/// ```
pub fn view_fits(offset: u64, shape: &[u64], strides: &[i64], itemsize: u64, len: u64) -> bool {
    if shape.len() != strides.len() {
        return false;
    }
    if shape.contains(&0) {
        return offset <= len;
    }
    // Every partial sum is checked: a crafted handle's shapes and strides can be any u64/i64
    // (each product fits i128, but their sum may not).
    let (mut lo, mut hi) = (i128::from(offset), i128::from(offset));
    for (&n, &s) in shape.iter().zip(strides) {
        let Some(span) = (i128::from(n) - 1).checked_mul(i128::from(s)) else { return false };
        let next = if span < 0 { lo.checked_add(span) } else { hi.checked_add(span) };
        let Some(next) = next else { return false };
        if span < 0 {
            lo = next;
        } else {
            hi = next;
        }
    }
    lo >= 0 && hi.checked_add(i128::from(itemsize)).is_some_and(|end| end <= i128::from(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_and_bounds() {
        assert_eq!(*contiguous_strides(&[2, 3, 4], 8, false), [96, 32, 8]);
        assert_eq!(*contiguous_strides(&[2, 3, 4], 8, true), [8, 16, 48]);
        assert_eq!(*contiguous_strides(&[], 8, false), []);
        let six = contiguous_strides(&[2, 2, 2, 2, 2, 3], 1, false);
        assert_eq!(*six, [48, 24, 12, 6, 3, 1]);
        for (shape, fortran) in [(&[2u64, 3, 4][..], false), (&[2, 2, 2, 2, 2, 3][..], true), (&[][..], false)] {
            let mut slot = core::mem::MaybeUninit::<ArrayMeta>::uninit();
            // SAFETY: a fresh, aligned slot; dropped below once written.
            let meta = unsafe { ArrayMeta::write_contiguous(slot.as_mut_ptr(), &DType::of::<f64>(), shape, fortran) };
            assert_eq!((&*meta.shape, &*meta.strides), (shape, &*contiguous_strides(shape, 8, fortran)));
            let copy = meta.clone();
            assert_eq!(&copy, meta, "more than four dimensions go to the heap, and compare as slices");
            // SAFETY: initialised by `write_contiguous`, dropped once.
            unsafe { slot.assume_init_drop() };
        }
        assert!(view_fits(0, &[2, 3], &[24, 8], 8, 48));
        assert!(!view_fits(8, &[2, 3], &[24, 8], 8, 48));
        assert!(view_fits(40, &[6], &[-8], 8, 48), "a reversed view");
        assert!(!view_fits(32, &[6], &[-8], 8, 48));
        assert!(view_fits(48, &[0, 3], &[24, 8], 8, 48), "empty views fit anywhere inside");
        assert!(!view_fits(0, &[u64::MAX], &[i64::MAX], 8, 48), "overflow is refused");
        assert!(view_fits(0, &[], &[], 8, 8), "0-d");
        assert!(!view_fits(0, &[2], &[8, 8], 8, 48), "mismatched lengths");
        // Found in review: each product fits i128 but their sum overflowed and wrapped.
        assert!(!view_fits(0, &[u64::MAX, u64::MAX], &[i64::MAX, i64::MAX], 8, 48));
        assert!(!view_fits(0, &[u64::MAX, u64::MAX], &[i64::MIN, i64::MIN], 8, 48));
    }
}
