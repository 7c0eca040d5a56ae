//! A flag that processes set, clear and wait for: `threading.Event` across processes.
//!
//! Invariants:
//! 1. [`Flag::set`] stores the flag before it notifies the [`Event`] beside it, and a waiter
//!    registers on the event before it reads the flag (the event's invariant 2), so a waiter
//!    either sees the flag set or is woken by the notification: a set is never missed.
//! 2. [`Flag::clear`] notifies nobody: waiters wait for the flag to be set, and a waiter that
//!    wakes re-reads the flag, so a set followed at once by a clear may be missed by a waiter
//!    (as with `threading.Event`, whose `wait` returns the flag's value when it wakes).
//! 3. Zeroed memory is a clear flag with nobody waiting.

use std::time::{Duration, Instant};

use crate::event::{Event, Wait};
use crate::sync::{AtomicU32, Ordering};

/// A set-or-clear flag in shared memory, with waits (zeroed memory is a clear flag).
///
/// # Examples
///
/// ```
/// use shm_sync::Flag;
/// use std::time::Duration;
///
/// let f = Flag::new();
/// std::thread::scope(|s| {
///     s.spawn(|| f.set());
///     assert!(f.wait(Some(Duration::from_secs(5))));
/// });
/// f.clear();
/// assert!(!f.is_set());
/// ```
#[repr(C)]
pub struct Flag {
    value: AtomicU32,
    reserved: AtomicU32,
    event: Event,
}

#[cfg(not(all(shm_loom, feature = "loom")))]
const _: () = assert!(core::mem::size_of::<Flag>() == 16 && core::mem::align_of::<Flag>() == 4);

impl Flag {
    /// A clear flag.
    #[cfg(not(all(shm_loom, feature = "loom")))]
    pub const fn new() -> Self {
        Self { value: AtomicU32::new(0), reserved: AtomicU32::new(0), event: Event::new() }
    }

    /// A clear flag.
    #[cfg(all(shm_loom, feature = "loom"))]
    pub fn new() -> Self {
        Self { value: AtomicU32::new(0), reserved: AtomicU32::new(0), event: Event::new() }
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        // SeqCst: the waiter's read in the event's Dekker pair (invariant 1); also an acquire
        // that pairs with the SeqCst store in `set`, publishing what the setter wrote before.
        self.value.load(Ordering::SeqCst) != 0
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        // SeqCst: the notifier's write in the event's Dekker pair (invariant 1).
        self.value.store(1, Ordering::SeqCst);
        self.event.notify_if_waiting();
    }

    /// Clears the flag (invariant 2).
    pub fn clear(&self) {
        // Relaxed: a clear publishes nothing; waiters only wait for a set.
        self.value.store(0, Ordering::Relaxed);
    }

    /// Waits until the flag is set, at most `timeout` (`None`: forever). Returns whether it is
    /// set when the wait ends.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            // Register before reading the flag (invariant 1).
            let listener = self.event.listen();
            let seen = listener.sequence();
            if self.is_set() {
                return true;
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return false,
                },
                None => None,
            };
            if listener.wait(seen, left) == Wait::TimedOut {
                return self.is_set();
            }
        }
    }
}

impl Default for Flag {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Flag {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Flag").field("set", &(self.value.load(Ordering::Relaxed) != 0)).finish()
    }
}

#[cfg(all(test, not(all(shm_loom, feature = "loom"))))]
mod tests {
    use super::*;

    #[test]
    fn a_wait_times_out_on_a_clear_flag_and_returns_at_once_on_a_set_one() {
        let f = Flag::new();
        assert!(!f.wait(Some(Duration::from_millis(10))));
        f.set();
        assert!(f.is_set() && f.wait(Some(Duration::ZERO)) && f.wait(None));
        f.clear();
        assert!(!f.is_set());
    }
}
