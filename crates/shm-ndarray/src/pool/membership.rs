//! Membership: this process's slot in the pool, a forked child's re-acquisition of what it
//! inherited, leaving, and tearing the pool down.
//!
//! # Invariants
//!
//! 1. `fast_slot` is `fork_generation << 16 | slot + 1` while this process (this side of any
//!    fork) holds `slot`, and 0 otherwise: a matching generation proves the slot is ours
//!    (pool invariant 2).
//! 2. A forked child registers before its first operation, forgets its parent's renewed
//!    blocks, and re-acquires each inherited array through every check of a first pin
//!    (`pin_header`); one that fails the checks stays unheld (pool invariant 2).
//! 3. `leave` releases every hold under the slot that is still its own, marking each
//!    `LocalArray` `NOT_HELD`, before it gives the slot up (local_array invariant 3).
//! 4. The last process out tears a non-persistent pool down under the directory lock, which
//!    `publish` and `unpublish` also take (pool invariant 5). A leaving process collects, takes
//!    the lock, decides, and unregisters under it: it holds the pool's locks only while
//!    registered (pool invariant 7), and two processes leaving at once cannot both see the
//!    other still there.
//!
//! Protocol: `slot` is the fast path of every operation; `register_slow` registers (collecting
//! once if the table is full); `leave` runs at `Pool::leave` and at the last drop of the pool
//! in this process.

use crate::sync::fork_generation;
use shm_sync::Registration;

use super::local_array::{held_slot, holder_word, NOT_HELD};
use super::names::has_names;
use super::open::registry;
use super::pin::Pin;
use super::{PoolShared, ORD};
use crate::directory::{FLAG_PERSISTENT, FLAG_PERSIST_NAMED, FLAG_TORN_DOWN, MAX_SEGMENTS};
use crate::error::PoolError;

/// A leave collects (pool invariant 4) when at most this many process slots are occupied, or
/// when no other member is alive: the cost of a leave stays bounded by this many liveness
/// checks and one sweep in a big pool.
const LEAVE_COLLECTS_UP_TO: usize = 64;

/// What this process knows of its membership.
pub(super) struct Membership {
    pub(super) registration: Option<Registration>,
    pub(super) fork_generation: u64,
}

impl PoolShared {
    /// This process's slot, registering first (and re-acquiring inherited arrays) after a fork.
    #[inline]
    pub(super) fn slot(&self) -> Result<u32, PoolError> {
        match self.current_slot() {
            Some(slot) => Ok(slot),
            None => self.register_slow(),
        }
    }

    /// This process's slot if it is registered on this side of every fork (`fast_slot`).
    #[inline]
    fn current_slot(&self) -> Option<u32> {
        let fast = self.fast_slot.load(ORD);
        (fast != 0 && fast >> 16 == fork_generation()).then(|| (fast & 0xFFFF) as u32 - 1)
    }

    /// This process's slot, registering first as every operation does (`NO_FREER` only if it
    /// cannot register): the freer a refcount names when an operation without a holder (a
    /// cancel, an unpublish) kills it (shm-sync refcount invariant 7). A forked child's first
    /// operation must not name nobody: its death in the free would leak the array (found in
    /// review, session 7). Call it before taking a pool lock (registering may collect).
    pub(super) fn freer_slot(&self) -> u32 {
        self.slot().unwrap_or(shm_sync::NO_FREER)
    }

    /// This process's slot if it is registered on this side of every fork, else `NO_FREER`,
    /// without registering: the freer for a free that runs under a pool lock (a name table
    /// repair), where registering (which may collect) must not happen.
    pub(super) fn registered_slot(&self) -> u32 {
        self.current_slot().unwrap_or(shm_sync::NO_FREER)
    }

    #[cold]
    fn register_slow(&self) -> Result<u32, PoolError> {
        let mut m = self.membership.lock().unwrap_or_else(|p| p.into_inner());
        let generation = fork_generation();
        if let Some(reg) = m.registration {
            if m.fork_generation == generation {
                return Ok(reg.index);
            }
        }
        let inherited = m.registration.is_some();
        // Directory invariant 5: only processes of the creator's pid namespace join; checked at
        // every registration, so also in a child forked into a new namespace.
        let pool_namespace = self.dir().header().pid_namespace.load(ORD);
        let ours = shm_arena::process::pid_namespace().unwrap_or(0);
        if pool_namespace != ours {
            return Err(PoolError::OtherNamespace { name: self.name.clone(), pool_namespace, ours });
        }
        let table = self.processes();
        let reg = match table.register() {
            Ok(r) => r,
            Err(_) => {
                drop(m);
                self.collect();
                m = self.membership.lock().unwrap_or_else(|p| p.into_inner());
                table.register().map_err(|e| PoolError::Full { name: self.name.clone(), slots: e.slots as u32 })?
            }
        };
        m.registration = Some(reg);
        m.fork_generation = generation;
        if inherited {
            // The parent's renewed blocks are held by the parent's slot (recycle invariant 3).
            // (Its nonce generator reseeds by itself: `next_nonce`.)
            self.renewed.forget_all();
        }
        self.fast_slot.store(generation << 16 | u64::from(reg.index + 1), ORD);
        drop(m);
        if inherited {
            self.reacquire_inherited(reg.index);
        }
        Ok(reg.index)
    }

    /// After a fork: hold, under our own slot, every array this process inherited (pool invariant 2).
    fn reacquire_inherited(&self, slot: u32) {
        // Each under its entry's lock, which keeps its `LocalArray` alive (locals invariant 2)
        // whatever its count; no reference is taken, so none is dropped under a lock.
        self.locals.for_each(|p| {
            // SAFETY: the entry is locked and names it (locals invariant 2).
            let local = unsafe { p.as_ref() };
            // Released by the parent's `leave` before the fork: not inherited as held.
            if local.holder.load(ORD) == NOT_HELD {
                return;
            }
            // The parent may have let go of it since the fork (the documented window): check it
            // as a first pin does, so a freed, reused or renewed place is never taken for it
            // (found in review, session 4). On failure it stays unheld here.
            let Ok(meta) = self.meta_segment(local.meta_segment) else { return };
            if self.pin_header(meta, local.header_block, local.nonce, Pin::Acquire, slot).is_ok() {
                local.holder.store(holder_word(slot), ORD);
            }
        });
    }

    /// Releases this process's holds, unregisters, and lets the last process out tear a pool
    /// down unless it persists (pool invariant 5).
    pub(super) fn leave(&self) {
        let mut m = self.membership.lock().unwrap_or_else(|p| p.into_inner());
        let Some(reg) = m.registration else { return };
        if m.fork_generation != fork_generation() {
            return;
        }
        // Release every hold first, under the slot that is still ours. Arrays dropped after
        // this find `NOT_HELD` and do nothing (the slot may belong to another process by then).
        // Each under its entry's lock, which keeps its `LocalArray` alive (locals invariant 2)
        // even if its last reference just went and its owner waits for the lock: that one then
        // finds `NOT_HELD` (skipping it would let it release under a slot we give up; found in
        // review, session 4).
        self.locals.for_each(|p| {
            // SAFETY: the entry is locked and names it (locals invariant 2).
            let local = unsafe { p.as_ref() };
            if held_slot(local.holder.load(ORD)).is_some() {
                local.holder.store(NOT_HELD, ORD);
                self.release_hold(local, reg.index);
            }
        });
        self.give_back_renewed(reg.index);
        m.registration = None;
        self.fast_slot.store(0, ORD);
        // Before anything that may take `membership` again (another thread registering anew
        // is fine: it takes a slot of its own, and then we are not the last).
        drop(m);
        let dir = self.dir();
        let h = dir.header();
        // Dead members do not count: recycle their slots first (pool invariant 4), and give
        // back what they held. In a big pool only when no other member is alive (then they
        // could keep it from its teardown): a collect checks every member's liveness and
        // sweeps every segment, and 4,095 leaves of a full 4,096-slot pool took minutes when
        // each collected; a live member is found in one liveness check or a few. Still
        // registered, as anyone who takes the pool's locks must be (pool invariant 7).
        let table = self.processes();
        if table.occupied() <= LEAVE_COLLECTS_UP_TO || !table.another_live() {
            self.collect();
        }
        // Invariant 4: the decision and our unregistration happen under the directory lock, so
        // of two processes leaving at once the second sees the first gone. A stranger holding
        // the lock (pool invariant 7) leaves the pool in place for `clean`.
        let guard = self.name_lock();
        let last = self.processes().occupied() == 1;
        let flags = h.flags.load(ORD);
        let persists = flags & FLAG_PERSISTENT != 0 || (flags & FLAG_PERSIST_NAMED != 0 && has_names(&dir));
        if guard.is_ok() && last && !persists {
            self.teardown();
        }
        // Last, just before the lock is released: only members hold the pool's locks, and a
        // waiter needs the same word on two rechecks to call us a stranger (mutex invariant 5).
        self.processes().unregister(reg);
        drop(guard);
    }

    /// Marks the pool torn down and unlinks every segment (pool invariant 5).
    pub(super) fn teardown(&self) {
        let dir = self.dir();
        dir.header().flags.fetch_or(FLAG_TORN_DOWN, ORD);
        let count = dir.header().segment_count.load(core::sync::atomic::Ordering::Acquire) as usize;
        for i in 0..count.min(MAX_SEGMENTS) {
            // A memfd segment has no name to remove (backend invariant 2).
            if dir.segments()[i].memfd_ino.load(ORD) == 0 {
                let _ = shm_arena::Arena::open(&self.segment_file_name(i)).map(|a| a.unlink());
            }
            if let Some(a) = self.segments[i].get() {
                let _ = a.unlink();
            }
        }
    }
}

impl Drop for PoolShared {
    fn drop(&mut self) {
        self.leave();
        // Only our own entry: a pool torn down and made anew under the same name has replaced
        // it (found in review).
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        if reg.get(&self.name).is_some_and(|w| core::ptr::eq(w.as_ptr(), self)) {
            reg.remove(&self.name);
        }
    }
}
