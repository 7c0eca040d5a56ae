//! An event: wait until a sequence word changes; notify one or all.
//!
//! Invariants:
//! 1. A notification increments the sequence word before it looks for waiters, and a waiter
//!    registers ([`Event::listen`]) before it reads the sequence word (a Dekker pair, `SeqCst`
//!    on both sides), so either the notifier sees the waiter and wakes it, or the waiter sees
//!    the new sequence and does not sleep. The kernel compares the word again before sleeping,
//!    which closes the remaining window.
//! 2. [`Event::notify_if_waiting`] skips the increment when nobody listens. It is correct for a
//!    waiter that registers *before* it checks its condition: the notifier changed the
//!    condition before it looked for listeners, so either it sees the listener, or the listener
//!    sees the changed condition (the same Dekker pair, spanning the condition).
//! 3. Waits are bounded by their timeout; a dead waiter only leaves the waiter count high,
//!    which costs a notifier a wasted wake syscall, never a lost wakeup.
//!
//! This is the cross-process "something changed, look again" primitive: a producer bumps it
//! after publishing, and an allocation that found a pool full waits on it until another
//! process frees memory ([`Event::notify_if_waiting`] keeps that free path to one load).

use std::time::{Duration, Instant};

use crate::sync::{self, AtomicU32, Ordering};

/// An event in shared memory (zeroed memory is a valid event).
///
/// # Examples
///
/// ```
/// use shm_sync::{Event, Wait};
/// use std::time::Duration;
///
/// let e = Event::new();
/// let seen = e.sequence();
/// std::thread::scope(|s| {
///     s.spawn(|| e.notify_all());
///     match e.wait_for_change(seen, Some(Duration::from_secs(5))) {
///         Wait::Changed(now) => assert_ne!(now, seen),
///         Wait::TimedOut => panic!("missed the notification"),
///     }
/// });
/// ```
#[repr(C)]
pub struct Event {
    sequence: AtomicU32,
    waiters: AtomicU32,
}

#[cfg(not(all(shm_loom, feature = "loom")))]
const _: () = assert!(core::mem::size_of::<Event>() == 8);

/// How [`Event::wait_for_change`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The sequence moved on; the new value.
    Changed(u32),
    /// The timeout elapsed first.
    TimedOut,
}

impl Event {
    /// A new event.
    #[cfg(not(all(shm_loom, feature = "loom")))]
    pub const fn new() -> Self {
        Self { sequence: AtomicU32::new(0), waiters: AtomicU32::new(0) }
    }

    /// A new event.
    #[cfg(all(shm_loom, feature = "loom"))]
    pub fn new() -> Self {
        Self { sequence: AtomicU32::new(0), waiters: AtomicU32::new(0) }
    }

    /// The current sequence value: pass it to [`Event::wait_for_change`] after checking the
    /// condition you wait for.
    pub fn sequence(&self) -> u32 {
        // Acquire: pairs with the notifier's SeqCst increment (a release), so what it published
        // before notifying is visible once we see the new value.
        self.sequence.load(Ordering::Acquire)
    }

    /// Waits until the sequence differs from `seen`, at most `timeout` (`None`: forever).
    pub fn wait_for_change(&self, seen: u32, timeout: Option<Duration>) -> Wait {
        self.listen().wait(seen, timeout)
    }

    /// Registers as a listener, to check a condition and then wait without losing a
    /// notification sent in between (invariant 2).
    ///
    /// ```
    /// use shm_sync::Event;
    /// use std::time::Duration;
    ///
    /// let e = Event::new();
    /// let ready = std::sync::atomic::AtomicBool::new(true);
    /// let listener = e.listen();
    /// let seen = listener.sequence();
    /// if !ready.load(std::sync::atomic::Ordering::SeqCst) {
    ///     listener.wait(seen, Some(Duration::from_secs(1)));
    /// }
    /// ```
    pub fn listen(&self) -> Listener<'_> {
        // SeqCst: the listener side of the Dekker pair (invariants 1 and 2).
        self.waiters.fetch_add(1, Ordering::SeqCst);
        sync::dekker_fence();
        Listener { event: self }
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.notify(u32::MAX);
    }

    /// Wakes one waiter (the others stay asleep until their timeout or a later notification).
    pub fn notify_one(&self) {
        self.notify(1);
    }

    /// Whether anyone listens right now (a snapshot).
    pub fn has_listeners(&self) -> bool {
        self.waiters.load(Ordering::SeqCst) != 0
    }

    /// Notifies all, but only if someone waits: one load when nobody does.
    #[inline]
    pub fn notify_if_waiting(&self) {
        // The notifier side of invariant 2: the caller changed the condition before this.
        sync::dekker_fence();
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.notify_all();
        }
    }

    fn notify(&self, count: u32) {
        // SeqCst: the notifier side of the Dekker pair (invariant 1).
        self.sequence.fetch_add(1, Ordering::SeqCst);
        sync::dekker_fence();
        if self.waiters.load(Ordering::SeqCst) != 0 {
            sync::futex_wake(&self.sequence, count);
        }
    }
}

/// A registration on an [`Event`]; unregisters on drop.
#[derive(Debug)]
pub struct Listener<'a> {
    event: &'a Event,
}

impl Listener<'_> {
    /// The current sequence (see [`Event::sequence`]).
    pub fn sequence(&self) -> u32 {
        self.event.sequence.load(Ordering::SeqCst)
    }

    /// Waits until the sequence differs from `seen`, at most `timeout` (`None`: forever).
    pub fn wait(&self, seen: u32, timeout: Option<Duration>) -> Wait {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let now = self.event.sequence.load(Ordering::SeqCst);
            if now != seen {
                return Wait::Changed(now);
            }
            let sleep = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Wait::TimedOut,
                },
                None => Duration::from_secs(3600),
            };
            sync::futex_wait(&self.event.sequence, seen, sleep);
        }
    }
}

impl Drop for Listener<'_> {
    fn drop(&mut self) {
        self.event.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Event {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Event {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Event")
            .field("sequence", &self.sequence.load(Ordering::Relaxed))
            .field("waiters", &self.waiters.load(Ordering::Relaxed))
            .finish()
    }
}
