//! [`ShmArray<T>`]: typed access to a whole shared array, with Rust's borrow rules enforced
//! within the process.
//!
//! Invariants:
//! 1. Within one process, the data of an array is borrowed either by any number of shared
//!    borrows or by one exclusive borrow, counted in the process-local state of the array
//!    (shared by every clone, view and attach of it in this process), so safe slices never
//!    alias mutably here.
//! 2. Other processes are outside Rust's model: their writes are theirs to order with ours
//!    (a lock, an event, or the hand-over of a handle). Reading while another process writes
//!    may see torn values; it never reads outside the array.

use core::marker::PhantomData;
use core::sync::atomic::Ordering;

use crate::error::{ArrayError, HandleError};
use crate::pool::{Pool, SharedArray};
use crate::{DType, Element, Handle};

const EXCLUSIVE: u64 = u64::MAX;

/// A whole array of `T` in a pool.
///
/// # Examples
///
/// ```
/// use shm_ndarray::{Pool, PoolOptions, ShmArray};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::create(&PoolOptions::new().segment_capacity(1 << 20))?;
/// let a = ShmArray::<i32>::from_slice(&pool, &[2, 2], &[1, 2, 3, 4])?;
/// assert_eq!(a.to_vec(), vec![1, 2, 3, 4]);
/// let reading = a.as_slice().unwrap();
/// assert!(a.clone().as_slice_mut().is_none(), "no mutable borrow while one reads");
/// drop(reading);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ShmArray<T: Element> {
    array: SharedArray,
    _element: PhantomData<T>,
}

impl<T: Element> core::fmt::Debug for ShmArray<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ShmArray").field("shape", &self.array.shape()).finish()
    }
}

/// Why a shared array is not a `ShmArray<T>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypedError {
    /// The element type differs.
    #[error("the array holds {found}, not {expected}")]
    DType {
        /// The array's description.
        found: String,
        /// `T`'s.
        expected: &'static str,
    },
    /// Not a whole, C-contiguous array.
    #[error("typed access needs a whole C-contiguous array")]
    NotContiguous,
    /// The handle could not be attached.
    #[error(transparent)]
    Handle(#[from] HandleError),
}

impl<T: Element> ShmArray<T> {
    /// A new array of `shape`, all bytes zero.
    ///
    /// # Errors
    ///
    /// [`ArrayError`].
    pub fn zeros(pool: &Pool, shape: &[u64]) -> Result<Self, ArrayError> {
        let a = pool.empty(&DType::of::<T>(), shape, false)?;
        // SAFETY: a new array nobody else has seen; `base_len` bytes at `base_ptr`.
        unsafe { core::ptr::write_bytes(a.base_ptr().as_ptr(), 0, a.base_len() as usize) };
        Ok(Self { array: a, _element: PhantomData })
    }

    /// A new array of `shape` holding a copy of `data` (row-major).
    ///
    /// # Errors
    ///
    /// [`ArrayError::Shape`] when `data` has not exactly as many elements as `shape`.
    pub fn from_slice(pool: &Pool, shape: &[u64], data: &[T]) -> Result<Self, ArrayError> {
        let n: u64 = shape.iter().product();
        if n != data.len() as u64 {
            return Err(ArrayError::Shape {
                shape: shape.to_vec(),
                why: "does not match the number of elements given",
            });
        }
        let a = pool.empty(&DType::of::<T>(), shape, false)?;
        // SAFETY: a new array of exactly `data.len()` elements of `T`, aligned to at least 64.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), a.base_ptr().as_ptr().cast::<T>(), data.len()) };
        Ok(Self { array: a, _element: PhantomData })
    }

    /// Attaches a handle to an array of `T`.
    ///
    /// # Errors
    ///
    /// [`TypedError`].
    pub fn attach(pool: &Pool, handle: &Handle) -> Result<Self, TypedError> {
        Self::try_from(pool.attach(handle)?)
    }

    /// A handle to send (see [`SharedArray::handle`]).
    ///
    /// # Errors
    ///
    /// [`HandleError`].
    pub fn handle(&self) -> Result<Handle, HandleError> {
        self.array.handle()
    }

    /// The shape.
    pub fn shape(&self) -> &[u64] {
        self.array.shape()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.array.shape().iter().product::<u64>() as usize
    }

    /// Whether it has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The untyped array.
    pub fn as_shared(&self) -> &SharedArray {
        &self.array
    }

    /// The elements, borrowed shared; `None` while this process borrows them exclusively, or
    /// if this process let go of the array (`Pool::leave`, a fork) and it is gone.
    pub fn as_slice(&self) -> Option<SliceRef<'_, T>> {
        // A borrow needs a hold: without one, the bytes may be another array's by now.
        self.array.ensure_held().ok()?;
        let b = &self.array.local().borrows;
        let mut n = b.load(Ordering::Relaxed);
        loop {
            if n == EXCLUSIVE || n == EXCLUSIVE - 1 {
                return None;
            }
            // Acquire: pairs with the Release that ended the exclusive borrow.
            match b.compare_exchange_weak(n, n + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        // SAFETY: a whole C-contiguous array of `len` elements of `T` (checked at
        // construction); shared borrow registered (invariant 1).
        let slice = unsafe { core::slice::from_raw_parts(self.array.as_ptr().cast::<T>(), self.len()) };
        Some(SliceRef { slice, array: self })
    }

    /// The elements, borrowed exclusively; `None` while this process borrows them otherwise,
    /// or if this process let go of the array (`Pool::leave`, a fork) and it is gone.
    pub fn as_slice_mut(&mut self) -> Option<SliceMut<'_, T>> {
        // A borrow needs a hold: without one, the bytes may be another array's by now.
        self.array.ensure_held().ok()?;
        let b = &self.array.local().borrows;
        // Acquire: pairs with the Release that ended the previous borrows.
        b.compare_exchange(0, EXCLUSIVE, Ordering::Acquire, Ordering::Relaxed).ok()?;
        // SAFETY: as in `as_slice`, with the exclusive borrow registered (invariant 1).
        let slice = unsafe { core::slice::from_raw_parts_mut(self.array.as_ptr().cast::<T>(), self.len()) };
        Some(SliceMut { slice, array: &self.array })
    }

    /// A copy of the elements.
    ///
    /// # Panics
    ///
    /// If this process holds an exclusive borrow of the array, or let go of it and it is gone.
    pub fn to_vec(&self) -> Vec<T> {
        self.as_slice().expect("the array is borrowed mutably, or gone after this process let go of it").to_vec()
    }

    /// Runs `f` on an `ndarray` view of the elements, borrowed shared; `None` while this
    /// process borrows them exclusively.
    #[cfg(feature = "ndarray")]
    pub fn with_view<R>(&self, f: impl FnOnce(ndarray::ArrayViewD<'_, T>) -> R) -> Option<R> {
        let shape: Vec<usize> = self.shape().iter().map(|n| *n as usize).collect();
        let slice = self.as_slice()?;
        let view = ndarray::ArrayViewD::from_shape(shape, &slice[..]).expect("a whole C-contiguous array");
        Some(f(view))
    }

    /// Runs `f` on a mutable `ndarray` view of the elements, borrowed exclusively; `None`
    /// while this process borrows them otherwise.
    #[cfg(feature = "ndarray")]
    pub fn with_view_mut<R>(&mut self, f: impl FnOnce(ndarray::ArrayViewMutD<'_, T>) -> R) -> Option<R> {
        let shape: Vec<usize> = self.shape().iter().map(|n| *n as usize).collect();
        let mut slice = self.as_slice_mut()?;
        let view = ndarray::ArrayViewMutD::from_shape(shape, &mut slice[..]).expect("a whole C-contiguous array");
        Some(f(view))
    }
}

impl<T: Element> TryFrom<SharedArray> for ShmArray<T> {
    type Error = TypedError;

    fn try_from(array: SharedArray) -> Result<Self, TypedError> {
        if !array.dtype().is::<T>() {
            return Err(TypedError::DType { found: array.dtype().descr().to_owned(), expected: T::DESCR });
        }
        if !array.is_whole() || array.base_is_fortran() && array.shape().iter().filter(|n| **n > 1).count() > 1 {
            return Err(TypedError::NotContiguous);
        }
        Ok(Self { array, _element: PhantomData })
    }
}

/// A shared borrow of an array's elements.
pub struct SliceRef<'a, T: Element> {
    slice: &'a [T],
    array: &'a ShmArray<T>,
}

impl<T: Element> core::ops::Deref for SliceRef<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.slice
    }
}

impl<T: Element> Drop for SliceRef<'_, T> {
    fn drop(&mut self) {
        // Release: pairs with the Acquire of the next exclusive borrow.
        self.array.array.local().borrows.fetch_sub(1, Ordering::Release);
    }
}

/// An exclusive borrow of an array's elements.
pub struct SliceMut<'a, T: Element> {
    slice: &'a mut [T],
    array: &'a SharedArray,
}

impl<T: Element> core::ops::Deref for SliceMut<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.slice
    }
}

impl<T: Element> core::ops::DerefMut for SliceMut<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.slice
    }
}

impl<T: Element> Drop for SliceMut<'_, T> {
    fn drop(&mut self) {
        // Release: publishes our writes to the next borrower in this process.
        self.array.local().borrows.store(0, Ordering::Release);
    }
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;
    use crate::PoolOptions;

    #[test]
    fn ndarray_views_see_and_change_the_shared_elements() {
        let pool = Pool::create(&PoolOptions::new().segment_capacity(1 << 20)).unwrap();
        let mut a = ShmArray::<f64>::from_slice(&pool, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(a.with_view(|v| v.sum()), Some(21.0));
        a.with_view_mut(|mut v| v[[1, 2]] = 60.0).unwrap();
        let b = ShmArray::<f64>::attach(&pool, &a.handle().unwrap()).unwrap();
        assert_eq!(b.with_view(|v| v[[1, 2]]), Some(60.0));
        let reading = b.as_slice().unwrap();
        assert!(a.with_view_mut(|_| ()).is_none(), "no mutable view while the same array is read");
        drop(reading);
    }
}
