//! Atomics, the futex and process identity for primitives that loom checks directly (the
//! `repr(C)` structs of `shm-sync`), swapped for loom's models as one (house style 6).
//!
//! Invariants:
//! 1. A primitive built on this module names no atomic type, calls no futex and asks nobody's
//!    liveness except through here, so one switch (`cfg(shm_loom)` with this crate's `loom`
//!    feature) runs every such primitive inside loom's model.
//! 2. In real builds the primitives are `repr(C)` structs of real atomics placed in shared
//!    memory; their futex is the shared one ([`crate::futex`]), and identities are
//!    [`ProcessIdentity`] values, which survive pid reuse.
//! 3. Under loom, the futex is modelled by one loom `Mutex` + `Condvar` for all words: a wait
//!    checks the word under the mutex and sleeps on the condvar; a wake notifies all, and waiters
//!    look again (futexes allow spurious wakeups). A timed wait sleeps like an untimed one unless
//!    the model asked for timeouts to fire (owner-death models), so a lost wakeup shows up as a
//!    loom deadlock. Identities are per loom thread, and a model declares a thread dead.
//!
//! [`ProcessIdentity`]: crate::process::ProcessIdentity

pub use imp::*;

/// A process as the primitives see it: pid (22 bits) and start time, packed as in
/// [`crate::process::ProcessIdentity::to_bits`]; 0 means nobody.
pub type IdentityBits = u64;

/// The pid in identity bits.
pub const fn pid_of(bits: IdentityBits) -> u32 {
    (bits & ((1 << crate::process::PID_BITS) - 1)) as u32
}

/// How a futex wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// Woken, spuriously or not, or the word changed first.
    Woken,
    /// The timeout elapsed.
    TimedOut,
}

#[cfg(not(all(shm_loom, feature = "loom")))]
mod imp {
    #![allow(clippy::disallowed_types)] // the facade itself

    use super::{IdentityBits, Waited};
    use crate::futex::{self, WaitOutcome};
    use crate::process::{fork_generation, Liveness, ProcessIdentity};
    use std::time::Duration;

    /// A 32-bit atomic (a real one: the primitives live in shared memory).
    pub type AtomicU32 = core::sync::atomic::AtomicU32;
    /// A 64-bit atomic (a real one: the primitives live in shared memory).
    pub type AtomicU64 = core::sync::atomic::AtomicU64;

    /// Sleeps while `word == expected`, at most `timeout`.
    pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> Waited {
        match futex::wait(word, expected, timeout) {
            WaitOutcome::TimedOut => Waited::TimedOut,
            _ => Waited::Woken,
        }
    }

    /// Wakes up to `count` waiters on `word`.
    pub fn futex_wake(word: &AtomicU32, count: u32) {
        futex::wake(word, count);
    }

    /// This process's identity, read from /proc once per process (and again after a fork).
    #[inline]
    pub fn current_identity() -> IdentityBits {
        // Process-local cache: (fork generation + 1, identity). Relaxed: each thread may read
        // /proc itself at worst; every reader derives the same value.
        static CACHE_GEN: AtomicU64 = AtomicU64::new(0);
        static CACHE_ID: AtomicU64 = AtomicU64::new(0);
        let generation = fork_generation() + 1;
        if CACHE_GEN.load(core::sync::atomic::Ordering::Acquire) == generation {
            return CACHE_ID.load(core::sync::atomic::Ordering::Relaxed);
        }
        let id =
            ProcessIdentity::current().map(ProcessIdentity::to_bits).unwrap_or_else(|_| u64::from(std::process::id()));
        CACHE_ID.store(id, core::sync::atomic::Ordering::Relaxed);
        // Release: pairs with the Acquire above, so a reader that sees the generation sees the id.
        CACHE_GEN.store(generation, core::sync::atomic::Ordering::Release);
        id
    }

    /// Whether the process is provably dead. With only a pid (`start` unknown), whether no such
    /// process exists (or it is a zombie).
    pub fn is_dead(bits: IdentityBits) -> bool {
        match ProcessIdentity::from_bits(bits) {
            Some(p) => p.liveness() == Liveness::Dead,
            None => false,
        }
    }

    /// Whether no process with `pid` exists (used when the start time is not known yet).
    pub fn pid_is_dead(pid: u32) -> bool {
        matches!(ProcessIdentity::of_pid(pid), Ok(None))
    }

    /// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of the machine.
    pub fn now_ns() -> u64 {
        crate::sys::monotonic_ns()
    }
}

#[cfg(all(shm_loom, feature = "loom"))]
mod imp {
    use super::{IdentityBits, Waited};
    use loom::sync::{Condvar, Mutex};
    use std::time::Duration;

    /// loom's 32-bit atomic.
    pub type AtomicU32 = loom::sync::atomic::AtomicU32;
    /// loom's 64-bit atomic.
    pub type AtomicU64 = loom::sync::atomic::AtomicU64;

    struct Model {
        lock: Mutex<()>,
        cond: Condvar,
        dead: Mutex<Vec<u32>>,
        timeouts_fire: AtomicU32,
        next_pid: AtomicU32,
    }

    loom::lazy_static! {
        static ref MODEL: Model = Model {
            lock: Mutex::new(()),
            cond: Condvar::new(),
            dead: Mutex::new(Vec::new()),
            timeouts_fire: AtomicU32::new(0),
            next_pid: AtomicU32::new(100),
        };
    }

    loom::thread_local! {
        static PID: u32 = MODEL.next_pid.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }

    /// The modelled futex wait (invariant 3): checks the word under the model's mutex, then
    /// sleeps on its condvar, or times out at once when the model asked for it.
    pub fn futex_wait(word: &AtomicU32, expected: u32, _timeout: Duration) -> Waited {
        let guard = MODEL.lock.lock().unwrap();
        if word.load(core::sync::atomic::Ordering::SeqCst) != expected {
            return Waited::Woken;
        }
        if MODEL.timeouts_fire.load(core::sync::atomic::Ordering::SeqCst) != 0 {
            drop(guard);
            loom::thread::yield_now();
            return Waited::TimedOut;
        }
        drop(MODEL.cond.wait(guard).unwrap());
        Waited::Woken
    }

    /// The modelled futex wake: notifies every waiter on any word; they look again.
    pub fn futex_wake(_word: &AtomicU32, _count: u32) {
        let _guard = MODEL.lock.lock().unwrap();
        MODEL.cond.notify_all();
    }

    /// A per-loom-thread fake identity: pid only, start time 1.
    pub fn current_identity() -> IdentityBits {
        let pid = PID.with(|p| *p);
        u64::from(pid) | (1 << crate::process::PID_BITS)
    }

    /// Whether the model declared this identity's thread dead.
    pub fn is_dead(bits: IdentityBits) -> bool {
        pid_is_dead(super::pid_of(bits))
    }

    /// Whether the model declared the thread with this fake pid dead.
    pub fn pid_is_dead(pid: u32) -> bool {
        MODEL.dead.lock().unwrap().contains(&pid)
    }

    /// Model time: always 1 s (ages are exercised by the real tests).
    pub fn now_ns() -> u64 {
        1_000_000_000
    }

    /// Model support: the calling loom thread's "process" is now dead.
    pub fn die() {
        let pid = PID.with(|p| *p);
        MODEL.dead.lock().unwrap().push(pid);
    }

    /// Model support: timed futex waits return `TimedOut` at once (after a yield).
    pub fn set_timeouts_fire(on: bool) {
        MODEL.timeouts_fire.store(u32::from(on), core::sync::atomic::Ordering::SeqCst);
    }
}
