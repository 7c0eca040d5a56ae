//! A counting semaphore in shared memory: permits taken and given back across processes.
//!
//! Invariants:
//! 1. The count word is the futex word: an acquirer that finds no permit sleeps on the exact
//!    value 0 it saw, so a release that raises the count in between makes the kernel refuse
//!    the sleep; a release wakes as many sleepers as permits it adds, when any may sleep.
//! 2. Waiters register before they read the count and a releaser adds before it reads the
//!    waiter count (a Dekker pair, `SeqCst`), so a sleeper is never left asleep while permits
//!    are available.
//! 3. Permits are not tied to processes: a process that dies holding permits does not give
//!    them back. Use it where a survivor can recount (for instance, free slots of a queue whose
//!    entries it can inspect), or where losing a permit only costs capacity. For exclusion
//!    that survives death, use [`RobustMutex`](crate::RobustMutex); for "wait until someone frees
//!    something", use [`Event`](crate::Event).

use std::time::{Duration, Instant};

use crate::sync::{self, AtomicU32, Ordering};

/// A counting semaphore (zeroed memory: no permits).
///
/// # Examples
///
/// ```
/// use shm_sync::Semaphore;
/// use std::time::Duration;
///
/// let s = Semaphore::with_permits(1);
/// assert!(s.try_acquire());
/// assert!(!s.acquire_timeout(Duration::from_millis(1)));
/// s.release(1);
/// assert!(s.acquire_timeout(Duration::from_millis(1)));
/// ```
#[repr(C)]
pub struct Semaphore {
    count: AtomicU32,
    waiters: AtomicU32,
}

#[cfg(not(all(shm_loom, feature = "loom")))]
const _: () = assert!(core::mem::size_of::<Semaphore>() == 8);

impl Semaphore {
    /// A semaphore holding `permits`.
    pub fn with_permits(permits: u32) -> Self {
        Self { count: AtomicU32::new(permits), waiters: AtomicU32::new(0) }
    }

    /// Permits available now (a snapshot).
    pub fn available(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// Takes a permit if one is available.
    pub fn try_acquire(&self) -> bool {
        let mut c = self.count.load(Ordering::Relaxed);
        while c > 0 {
            // Acquire: pairs with the releaser's SeqCst add; what it did before is visible.
            match self.count.compare_exchange_weak(c, c - 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
        false
    }

    /// Takes a permit, waiting as long as it takes.
    pub fn acquire(&self) {
        while !self.acquire_until(None) {}
    }

    /// Takes a permit, waiting at most `timeout`; returns whether it got one.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.acquire_until(Some(Instant::now() + timeout))
    }

    fn acquire_until(&self, deadline: Option<Instant>) -> bool {
        if self.try_acquire() {
            return true;
        }
        // SeqCst: the waiter side of invariant 2.
        self.waiters.fetch_add(1, Ordering::SeqCst);
        sync::dekker_fence();
        let got = loop {
            if self.try_acquire() {
                break true;
            }
            let sleep = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break false,
                },
                None => Duration::from_secs(3600),
            };
            sync::futex_wait(&self.count, 0, sleep);
        };
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        got
    }

    /// Gives back `permits` permits.
    pub fn release(&self, permits: u32) {
        // SeqCst: the releaser side of invariant 2.
        self.count.fetch_add(permits, Ordering::SeqCst);
        sync::dekker_fence();
        if self.waiters.load(Ordering::SeqCst) != 0 {
            sync::futex_wake(&self.count, permits);
        }
    }
}

impl Default for Semaphore {
    fn default() -> Self {
        Self::with_permits(0)
    }
}

impl core::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Semaphore")
            .field("available", &self.count.load(Ordering::Relaxed))
            .field("waiters", &self.waiters.load(Ordering::Relaxed))
            .finish()
    }
}
