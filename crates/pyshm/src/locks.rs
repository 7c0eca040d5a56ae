//! `pyshm.Lock` and `pyshm.Event`: shm-sync's [`RobustMutex`] and [`Flag`] in a pooled block.
//!
//! Invariants:
//! 1. A lock's or event's state is a pooled array of four `uint64` (32 bytes, 8-aligned,
//!    C-contiguous, writeable): bytes 0..16 are a [`RobustMutex`], bytes 16..32 a [`Flag`].
//!    Zeroed memory is a free mutex and a clear flag. Every function here checks that shape on
//!    the array it is given before it touches the memory ([`state_of`]), and the array (so its
//!    block and mapping) stays alive for the whole call: the caller holds it as an argument.
//! 2. A lock is held by a process (its pid is in the lock word), across calls: `acquire`
//!    forgets the guard and `release` unlocks with [`RobustMutex::unlock_held`], which refuses
//!    a process that does not hold it.
//! 3. A lock taken over from a dead holder is marked consistent at once and reported to the
//!    caller ([`ACQUIRED_OWNER_DIED`]); the Python class surfaces it as `owner_died`.
//! 4. Waits release the GIL, in slices of at most [`SLICE`], between which signals are checked,
//!    so Ctrl-C interrupts a wait.

use std::time::{Duration, Instant};

use numpy::npyffi::{NPY_ARRAY_C_CONTIGUOUS, NPY_ARRAY_WRITEABLE};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use shm_sync::{Flag, LockError, Locked, RobustMutex};

use crate::gil;
use crate::ndarray::{geometry, owner_of};

/// The longest a wait holds off signal checks.
const SLICE: Duration = Duration::from_millis(50);

/// `lock_acquire`: not acquired (timed out, or held and not blocking).
const NOT_ACQUIRED: u8 = 0;
/// `lock_acquire`: acquired.
const ACQUIRED: u8 = 1;
/// `lock_acquire`: acquired from a holder that died holding it (invariant 3).
const ACQUIRED_OWNER_DIED: u8 = 2;

/// The address of the state block of `state` (invariant 1).
fn state_of(state: &Bound<'_, PyAny>) -> PyResult<usize> {
    let bad = || PyTypeError::new_err("not a pyshm lock state (a pooled, writeable uint64 array of 4)");
    let g = geometry(state).ok_or_else(bad)?;
    let flags = NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_WRITEABLE;
    if g.shape != [4] || g.strides != [8] || g.flags & flags != flags || g.data % 8 != 0 {
        return Err(bad());
    }
    if owner_of(state, &g).is_none() {
        return Err(bad());
    }
    Ok(g.data)
}

/// The mutex at `addr`.
fn mutex<'a>(addr: usize) -> &'a RobustMutex {
    // SAFETY: `addr` came from `state_of`: 32 writeable, 8-aligned bytes of a pooled block that
    // the caller keeps alive for this call (invariant 1); a `RobustMutex` is 16 bytes of atomics,
    // valid for any bit pattern, and other processes access it only atomically.
    unsafe { &*(addr as *const RobustMutex) }
}

/// The flag at `addr`.
fn flag<'a>(addr: usize) -> &'a Flag {
    // SAFETY: as in `mutex`, for the 16 bytes at offset 16 (4-aligned atomics).
    unsafe { &*((addr + 16) as *const Flag) }
}

/// Runs `wait(slice)` until it returns `Some` or `timeout` (`None`: never) has passed, without
/// the GIL, checking signals between slices (invariant 4). `wait` gets the slice to wait.
fn wait_in_slices<T: Send>(
    py: Python<'_>,
    timeout: Option<f64>,
    wait: impl Fn(Duration) -> Option<T> + Send + Sync,
) -> PyResult<Option<T>> {
    let deadline = match timeout {
        Some(t) if t.is_finite() => Some(Instant::now() + Duration::from_secs_f64(t.max(0.0))),
        _ => None,
    };
    loop {
        let slice = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
            None => SLICE,
        };
        if let Some(r) = gil::detach(py, || wait(slice)) {
            return Ok(Some(r));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        py.check_signals()?;
    }
}

fn took(locked: Locked<'_>) -> u8 {
    let died = matches!(locked, Locked::OwnerDied(_));
    let mut guard = locked.into_guard();
    guard.mark_consistent();
    // Invariant 2: held until `lock_release`.
    std::mem::forget(guard);
    if died {
        ACQUIRED_OWNER_DIED
    } else {
        ACQUIRED
    }
}

fn lock_err(e: LockError) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

/// Takes the lock in `state`: 0 not acquired, 1 acquired, 2 acquired from a dead holder.
/// `timeout` in seconds (`None`: wait as long as a live process holds it).
#[pyfunction]
#[pyo3(signature = (state, blocking, timeout))]
pub(crate) fn lock_acquire(
    py: Python<'_>,
    state: &Bound<'_, PyAny>,
    blocking: bool,
    timeout: Option<f64>,
) -> PyResult<u8> {
    let addr = state_of(state)?;
    match mutex(addr).try_lock() {
        Ok(l) => return Ok(took(l)),
        Err(LockError::WouldBlock { .. }) if blocking => {}
        Err(LockError::WouldBlock { .. }) => return Ok(NOT_ACQUIRED),
        Err(e) => return Err(lock_err(e)),
    }
    let got = wait_in_slices(py, timeout, |slice| match mutex(addr).lock_timeout(slice) {
        Ok(l) => Some(Ok(took(l))),
        Err(LockError::TimedOut { .. }) => None,
        Err(e) => Some(Err(e)),
    })?;
    match got {
        Some(r) => r.map_err(lock_err),
        None => Ok(NOT_ACQUIRED),
    }
}

/// Releases the lock in `state`, held by this process (`RuntimeError` otherwise).
#[pyfunction]
pub(crate) fn lock_release(state: &Bound<'_, PyAny>) -> PyResult<()> {
    let addr = state_of(state)?;
    mutex(addr).unlock_held().map_err(|e| PyRuntimeError::new_err(format!("release unlocked lock: {e}")))
}

/// Pid of the process holding the lock in `state`, or `None`.
#[pyfunction]
pub(crate) fn lock_holder(state: &Bound<'_, PyAny>) -> PyResult<Option<u32>> {
    Ok(mutex(state_of(state)?).holder())
}

/// Sets the event in `state` and wakes its waiters.
#[pyfunction]
pub(crate) fn event_set(state: &Bound<'_, PyAny>) -> PyResult<()> {
    flag(state_of(state)?).set();
    Ok(())
}

/// Clears the event in `state`.
#[pyfunction]
pub(crate) fn event_clear(state: &Bound<'_, PyAny>) -> PyResult<()> {
    flag(state_of(state)?).clear();
    Ok(())
}

/// Whether the event in `state` is set.
#[pyfunction]
pub(crate) fn event_is_set(state: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(flag(state_of(state)?).is_set())
}

/// Waits for the event in `state` to be set, at most `timeout` seconds (`None`: forever);
/// whether it is set.
#[pyfunction]
#[pyo3(signature = (state, timeout))]
pub(crate) fn event_wait(py: Python<'_>, state: &Bound<'_, PyAny>, timeout: Option<f64>) -> PyResult<bool> {
    let addr = state_of(state)?;
    let got = wait_in_slices(py, timeout, |slice| flag(addr).wait(Some(slice)).then_some(()))?;
    Ok(got.is_some())
}
