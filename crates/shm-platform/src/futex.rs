//! The shared futex on a word in mapped memory, for the layers above (`shm-sync`).
//!
//! Invariants:
//! 1. Waits and wakes are always the *shared* futex (no `FUTEX_PRIVATE_FLAG`), keyed by the
//!    physical page, so a wake from any process mapping the word reaches every waiter on it
//!    (facts: `atomic-wait`'s private futex cannot do this).
//! 2. Every wait has a timeout: a waiter that depends on another process must be able to look
//!    again, for instance to notice that the process died.
//!
//! # Examples
//!
//! ```
//! use shm_platform::futex::{wait, wake, WaitOutcome};
//! use shm_platform::sync::SharedU32;
//! use std::time::Duration;
//!
//! let word = SharedU32::new(0);
//! // The word does not hold 1: the wait returns at once.
//! assert_eq!(wait(&word, 1, Duration::from_millis(10)), WaitOutcome::ValueChanged);
//! assert_eq!(wait(&word, 0, Duration::from_millis(1)), WaitOutcome::TimedOut);
//! assert_eq!(wake(&word, u32::MAX), 0, "nobody was waiting");
//! ```

use std::time::Duration;

use crate::sync::SharedU32;
use crate::sys::{self, FutexWaitOutcome};

/// How a [`wait`] ended. Each is normal: the caller reads the word again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaitOutcome {
    /// Woken by a [`wake`] (or spuriously).
    Woken,
    /// The word did not hold the expected value: no sleep.
    ValueChanged,
    /// The timeout elapsed.
    TimedOut,
    /// A signal handler ran.
    Interrupted,
}

/// `FUTEX_WAIT` (shared): sleeps while `word` holds `expected`, for at most `timeout`.
///
/// An unexpected errno (`EFAULT`, `ENOSYS`, `EINVAL`, none possible for a valid `&SharedU32`)
/// is reported as [`WaitOutcome::Interrupted`], which callers treat as "look again".
pub fn wait(word: &SharedU32, expected: u32, timeout: Duration) -> WaitOutcome {
    match sys::futex_wait(word, expected, timeout) {
        Ok(FutexWaitOutcome::Woken) => WaitOutcome::Woken,
        Ok(FutexWaitOutcome::ValueChanged) => WaitOutcome::ValueChanged,
        Ok(FutexWaitOutcome::TimedOut) => WaitOutcome::TimedOut,
        Ok(FutexWaitOutcome::Interrupted) | Err(_) => WaitOutcome::Interrupted,
    }
}

/// `FUTEX_WAKE` (shared): wakes up to `count` waiters on `word` (`u32::MAX`: all); returns
/// how many were woken.
pub fn wake(word: &SharedU32, count: u32) -> u32 {
    sys::futex_wake(word, count).unwrap_or(0)
}
