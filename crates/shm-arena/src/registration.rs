//! A process's owner slot in an arena: taken on its first allocation, not when it maps the
//! segment, and a free by a process that has none.
//!
//! Invariants:
//! 1. An arena handle holds an owner slot only from its first allocation, adoption or trim on
//!    (lazy registration): a process that only maps the segment, reads, writes and frees blocks
//!    holds none, so the owner table (at most [`OWNER_SLOTS_MAX`](crate::layout::OWNER_SLOTS_MAX)
//!    slots, the width of the tag in a node word) bounds the processes that *allocate* in one
//!    segment at a time, not the processes that use it.
//! 2. The registration word is `fork_generation << 16 | tag`, 0 for none; it is written by this
//!    process only, under `identity`'s lock. A value from another fork generation is the
//!    parent's: the child forgets the parent's cache and holds no slot (`owners` invariant 1 of
//!    the arena: parent and child never act under one tag).
//! 3. A process with no slot frees through a transient slot (`owners` invariant 4): taken for
//!    the one free and given back after it, so a death in the middle of the free leaves the
//!    block `FREEING` under a slot naming the dead process, finished by whoever recovers it,
//!    exactly as for a registered owner. The free goes straight to the tree (the cache is a
//!    registered owner's). A process with no slot in a segment owns nothing there.
//!
//! Cost: the warm paths (a registered owner's allocation and free) read the registration word
//! as before; only a free by a process without a slot pays two more CASes (take and give back
//! a transient slot) and a climb of the tree instead of the cache.

// `registration` is a process-local atomic (never in shared memory, never loom-modelled).
#![allow(clippy::disallowed_types)]

use std::time::Duration;

use core::sync::atomic::Ordering::Relaxed;

use crate::arena::{register_in, Arena};
use crate::error::{BlockError, RegisterError};
use crate::owners::OwnerTable;
use crate::process::{fork_generation, IdentityError, ProcessIdentity};
use crate::tree::NodeRef;

/// This process's identity and the fork generation it was read in (read once per process:
/// reading it costs a syscall and a parse of `/proc/self/stat`).
pub(crate) struct Registration {
    pub(crate) identity: Option<ProcessIdentity>,
    pub(crate) generation: u64,
}

impl Registration {
    pub(crate) fn new() -> Self {
        Self { identity: None, generation: 0 }
    }

    fn identity(&mut self) -> Result<ProcessIdentity, IdentityError> {
        let generation = fork_generation();
        match self.identity {
            Some(i) if self.generation == generation => Ok(i),
            _ => {
                let i = ProcessIdentity::current()?;
                (self.identity, self.generation) = (Some(i), generation);
                Ok(i)
            }
        }
    }
}

/// A transient owner slot held for one free or one trim (invariant 3), given back on drop.
pub(crate) struct TransientOwner<'a> {
    owners: OwnerTable<'a>,
    pub(crate) tag: u16,
    me: ProcessIdentity,
}

impl Drop for TransientOwner<'_> {
    fn drop(&mut self) {
        self.owners.unregister(self.tag, self.me);
    }
}

/// The tag an operation acts under: this handle's own, or a transient one.
pub(crate) enum ActingOwner<'a> {
    Registered(u16),
    Transient(TransientOwner<'a>),
}

impl ActingOwner<'_> {
    pub(crate) fn tag(&self) -> u16 {
        match self {
            Self::Registered(t) => *t,
            Self::Transient(t) => t.tag,
        }
    }
}

impl Arena {
    /// This arena's owner tag, taking a slot first if this process holds none here (invariant
    /// 1; after a fork, invariant 2).
    #[inline]
    pub(crate) fn tag(&self) -> Result<u16, RegisterError> {
        // Relaxed: written by this process only (invariant 2), read by its threads; a stale
        // read only sends us to the locked slow path, which reads again.
        let r = self.registration.load(Relaxed);
        if r >> 16 == fork_generation() && r != 0 {
            return Ok((r & 0xFFFF) as u16);
        }
        self.register()
    }

    /// This arena's owner tag if this process holds a slot here, without taking one.
    #[inline]
    pub(crate) fn registered_tag(&self) -> Option<u16> {
        // Relaxed: as in `tag`.
        let r = self.registration.load(Relaxed);
        if r >> 16 == fork_generation() && r != 0 {
            return Some((r & 0xFFFF) as u16);
        }
        if r != 0 {
            self.forget_parent();
        }
        None
    }

    /// A forked child drops the parent's registration and cache (invariant 2).
    #[cold]
    fn forget_parent(&self) {
        let _reg = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.registration.load(Relaxed);
        if r != 0 && r >> 16 != fork_generation() {
            self.cache.forget_all();
            self.registration.store(0, Relaxed);
        }
    }

    #[cold]
    fn register(&self) -> Result<u16, RegisterError> {
        let mut reg = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.registration.load(Relaxed);
        if r >> 16 == fork_generation() && r != 0 {
            return Ok((r & 0xFFFF) as u16);
        }
        if r != 0 {
            // A forked child: the cache entries and the tag are the parent's.
            self.cache.forget_all();
            self.registration.store(0, Relaxed);
        }
        let tag = register_in(&self.segment, reg.identity()?)?;
        self.registration.store((fork_generation() << 16) | u64::from(tag), Relaxed);
        Ok(tag)
    }

    /// This process's identity (read once per fork generation).
    pub(crate) fn me(&self) -> Result<ProcessIdentity, IdentityError> {
        self.identity.lock().unwrap_or_else(|p| p.into_inner()).identity()
    }

    /// Whether an allocation here could take an owner slot: this process holds one, or one is
    /// free (a look, for a caller choosing among segments; a slot may go the next moment).
    pub fn has_owner_room(&self) -> bool {
        self.registered_tag().is_some() || self.owners().has_free_slot()
    }

    /// Whether this process holds an owner slot in this arena (invariant 1).
    pub fn is_registered(&self) -> bool {
        self.registered_tag().is_some()
    }

    /// Our own tag, or a transient slot for one operation (invariant 3). Waits while every
    /// slot is held (at most a free's time per holder of the transient band), recovering dead
    /// holders; fails only if this process cannot be identified.
    pub(crate) fn acting_owner(&self) -> Result<ActingOwner<'_>, IdentityError> {
        if let Some(tag) = self.registered_tag() {
            return Ok(ActingOwner::Registered(tag));
        }
        let me = self.me()?;
        let owners = self.owners();
        // Processes spread over the band by pid.
        let start = std::process::id() as usize;
        let mut nap = Duration::from_micros(20);
        loop {
            if let Some(tag) = owners.register_transient(me, start) {
                return Ok(ActingOwner::Transient(TransientOwner { owners, tag, me }));
            }
            // Every slot is held: a dead holder's slot comes back through recovery; live
            // holders of transient slots give theirs back after one free.
            if crate::arena::recover_in(&self.segment, me, None).owners == 0 {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(5));
            }
        }
    }

    /// Frees `r` (block `size` bytes) for a process that holds no slot here (invariant 3).
    #[cold]
    pub(crate) fn free_unregistered(&self, r: NodeRef, size: u64) -> Result<(), BlockError> {
        // Refuse a bad reference before taking a slot for it.
        self.tree().validate(r)?;
        let acting = self.acting_owner().map_err(|_| BlockError::NoOwnerSlot { slots: self.owners().len() as u32 })?;
        let freed = self.tree().free(r, acting.tag())?;
        self.owners().account(freed.previous_owner, -(size as i64));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Arena, ArenaOptions, OpenOptions};

    /// The identity of a process that has exited (a forked child, reaped).
    fn dead_identity() -> crate::process::ProcessIdentity {
        let pid = shm_testkit::fork(|| 0);
        assert_eq!(shm_testkit::wait(pid), 0);
        // Its pid (bits 0..22) with our start time: `kill` finds no such process.
        let me = crate::process::ProcessIdentity::current().unwrap().to_bits();
        crate::process::ProcessIdentity::from_bits((me & !((1 << 22) - 1)) | pid as u64).unwrap()
    }

    #[test]
    fn a_transient_slot_whose_holder_died_mid_free_is_recovered_and_reused() {
        // 16 slots: 14 lasting, 2 transient.
        let a = ArenaOptions::new(1 << 20).owner_slots(16).cache_max_block(0).create_anonymous().unwrap();
        let open = || Arena::open_fd(a.fd().try_clone().unwrap(), &OpenOptions::new()).unwrap();
        let mut blocks = vec![a.alloc(256).unwrap()];
        let holders: Vec<Arena> = (0..13).map(|_| open()).collect();
        for h in &holders {
            blocks.push(h.alloc(256).unwrap());
        }
        // Both transient slots taken by a process that died holding them, `blocks[0]` tagged
        // with the first (a free it began: the tree's own tests cover each state a death can
        // leave a block in; here, that the slot is found and its blocks recovered).
        let dead = dead_identity();
        let owners = a.owners();
        let t1 = owners.register_transient(dead, 0).unwrap();
        let t2 = owners.register_transient(dead, 0).unwrap();
        assert!(t1 > 14 && t2 > 14 && owners.register_transient(dead, 0).is_none(), "the table is full");
        let r = a.node_of(blocks[0]).unwrap();
        a.tree().change_owner(r, a.registered_tag().unwrap(), t1).unwrap();
        owners.account(a.registered_tag().unwrap(), -256);
        owners.account(t1, 256);
        // A handle with no slot frees another block: it waits for a transient slot, recovers
        // the dead holder's (finishing its free), and frees through it.
        let reader = open();
        reader.free(blocks[1]).unwrap();
        assert!(!reader.is_registered());
        assert!(a.validate(blocks[0]).is_err() && a.validate(blocks[1]).is_err());
        for b in &blocks[2..] {
            reader.free(*b).unwrap();
        }
        drop(holders);
        a.check().unwrap();
        assert_eq!(a.stats().in_use_bytes, 0);
    }
}
