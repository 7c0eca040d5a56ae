//! [`SharedArray`]: an array, or a view of one, as this process holds it.
//!
//! # Invariants
//!
//! 1. A `SharedArray` holds a `LocalRef`, so its array stays mapped and, unless this process
//!    let go of it, held (local_array invariants 1 and 5).
//! 2. A view lies inside its array's data (`view_fits`, checked at every view and attach).
//! 3. Before its header or data is used to make a handle or a name, or to lend its bytes, an
//!    array this process let go of is held again through every check of a first pin, or the
//!    use fails `Stale` (`ensure_held`; pin invariant 4).
//!
//! Protocol: a whole array keeps its geometry in its `LocalArray`; a view that is not the
//! whole array keeps its own offset, shape and strides in an `Arc<View>`.

use std::ptr::NonNull;
use std::sync::Arc;

use super::local_array::{held_slot, LocalArray, LocalRef};
use super::pin::Pin;
use super::{Pool, ORD};
use crate::error::HandleError;
use crate::handle::Handle;
use crate::header::{view_fits, MAX_DIMS};
use crate::DType;

/// An array (or a view of one) in a pool, as this process holds it.
#[derive(Clone)]
pub struct SharedArray {
    pub(crate) local: LocalRef,
    /// `None` for the whole array (its geometry is the header's, kept in `local`).
    view: Option<Arc<View>>,
}

/// The geometry of a view that is not the whole array.
struct View {
    offset: u64,
    shape: Vec<u64>,
    strides: Vec<i64>,
}

impl core::fmt::Debug for SharedArray {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedArray")
            .field("dtype", &self.local.meta.dtype.descr())
            .field("shape", &self.shape())
            .field("strides", &self.strides())
            .field("offset", &self.offset())
            .finish()
    }
}

impl SharedArray {
    #[inline]
    pub(super) fn whole(local: LocalRef) -> Self {
        Self { local, view: None }
    }

    #[inline]
    pub(super) fn from_view(local: LocalRef, offset: u64, shape: Vec<u64>, strides: Vec<i64>) -> Self {
        if offset == 0 && *shape == *local.meta.shape && *strides == *local.meta.strides {
            return Self::whole(local);
        }
        Self { local, view: Some(Arc::new(View { offset, shape, strides })) }
    }

    /// The element type.
    pub fn dtype(&self) -> &DType {
        &self.local.meta.dtype
    }

    /// The shape of this view.
    pub fn shape(&self) -> &[u64] {
        self.view.as_ref().map_or(&self.local.meta.shape, |v| &v.shape)
    }

    /// Strides of this view, in bytes.
    pub fn strides(&self) -> &[i64] {
        self.view.as_ref().map_or(&self.local.meta.strides, |v| &v.strides)
    }

    /// Byte offset of this view from the start of the array's data.
    pub fn offset(&self) -> u64 {
        self.view.as_ref().map_or(0, |v| v.offset)
    }

    /// Whether the whole array is Fortran-ordered.
    pub fn base_is_fortran(&self) -> bool {
        self.local.meta.fortran
    }

    /// Bytes of the whole array's data.
    pub fn base_len(&self) -> u64 {
        self.local.data_len
    }

    /// Pointer to the first byte of the whole array's data. Writes from other processes are
    /// theirs to order with yours; within this process, the usual aliasing rules apply to any
    /// slice you make from it.
    pub fn base_ptr(&self) -> NonNull<u8> {
        self.local.data
    }

    /// Pointer to this view's first element.
    pub fn as_ptr(&self) -> *mut u8 {
        self.local.data.as_ptr().wrapping_add(self.offset() as usize)
    }

    /// A view of the same array: `offset` bytes from the data start, with its own shape and
    /// byte strides.
    ///
    /// # Errors
    ///
    /// [`HandleError::Invalid`] when the view would reach outside the array.
    pub fn view(&self, offset: u64, shape: &[u64], strides: &[i64]) -> Result<SharedArray, HandleError> {
        if shape.len() > MAX_DIMS || !view_fits(offset, shape, strides, self.dtype().itemsize(), self.local.data_len) {
            return Err(HandleError::Invalid("the view lies outside its array"));
        }
        Ok(SharedArray::from_view(self.local.clone(), offset, shape.to_vec(), strides.to_vec()))
    }

    pub(crate) fn local(&self) -> &LocalArray {
        &self.local
    }

    /// Makes sure this process holds the array before its header or data is used: if it let
    /// go of it (`Pool::leave`, or inherited across a fork and not re-acquired), pins it again
    /// through every check of a first pin (found in review, session 4: a handle, a name or a
    /// borrow of such an array wrote into, or lent, whatever had replaced it).
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if it is gone; what a pin can fail with otherwise.
    pub(crate) fn ensure_held(&self) -> Result<(), HandleError> {
        let l = &self.local;
        if held_slot(l.holder.load(ORD)).is_some() {
            return Ok(());
        }
        let again = l.pool.pin(l.meta_segment, l.header_block, l.nonce, Pin::Acquire)?;
        // The entry names this `LocalArray` while it lives (no other can replace it but a new
        // array at the same place, and then this one is gone): the pin held it again.
        if again.ptr() == l.ptr() {
            Ok(())
        } else {
            Err(HandleError::Stale)
        }
    }

    /// Whether this view covers its whole array, contiguous in memory order.
    pub fn is_whole(&self) -> bool {
        self.view.is_none()
    }

    /// Whether two arrays (or views) share one allocation.
    pub fn same_array(&self, other: &SharedArray) -> bool {
        self.local.ptr() == other.local.ptr()
    }

    /// A handle to send to another process of the pool: the array stays alive until the
    /// receiver attaches it (or the token is reclaimed), even if this process lets go first.
    ///
    /// # Errors
    ///
    /// [`HandleError::TokensFull`] if every transfer token slot of the pool is taken, and
    /// [`HandleError::SenderQuota`] if this process has half of them in flight (nothing was
    /// taken then); [`HandleError::Stale`] if this process let go of the array
    /// (`Pool::leave`, or inherited across a fork) and it is gone.
    pub fn handle(&self) -> Result<Handle, HandleError> {
        self.ensure_held()?;
        let token = self.local.header().refcount.send(&self.local.pool.tokens(), &self.local.pool.group()).map_err(
            |e| match e {
                shm_sync::RefError::Token(shm_sync::TokenError::Full { slots }) => HandleError::TokensFull { slots },
                shm_sync::RefError::Token(shm_sync::TokenError::SenderQuota { quota, slots }) => {
                    HandleError::SenderQuota { quota, slots }
                }
                _ => super::ref_to_handle(e),
            },
        )?;
        Ok(self.handle_with(Some(token)))
    }

    /// A handle without a transfer token: the receiver can attach it only while some process
    /// still holds the array (for handles stored in files or sent to unrelated programs that
    /// must not pin the array).
    pub fn untracked_handle(&self) -> Handle {
        self.handle_with(None)
    }

    fn handle_with(&self, token: Option<shm_sync::Token>) -> Handle {
        Handle {
            pool: self.local.pool.id,
            meta_segment: self.local.meta_segment,
            header: self.local.header_block,
            nonce: self.local.nonce,
            token,
            offset: self.offset(),
            shape: self.shape().to_vec(),
            strides: self.strides().to_vec(),
        }
    }

    /// The pool the array lives in.
    pub fn pool(&self) -> Pool {
        Pool { shared: self.local.pool.clone() }
    }
}
