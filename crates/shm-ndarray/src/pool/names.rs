//! Named arrays: the directory's name table, whose entries hold a reference each.
//!
//! # Invariants
//!
//! 1. A name holds one reference, under the directory's holder bit (`DIRECTORY_HOLDER`, never
//!    a process slot), so an array has at most one name (pool invariant 3 counts names).
//! 2. Name entries change only under the directory lock, an entry written before it is marked
//!    used (`Release`); a dead lock holder leaves nothing to repair.
//! 3. A name is resolved by pinning its (segment, header, nonce) through every check of a
//!    first pin: a stale name fails `Stale`, never attaches another array.
//!
//! Protocol: `publish` holds the array again if this process let go of it, then takes the
//! directory's reference and fills an entry; `unpublish` clears the entry and releases that
//! reference (freeing the array if it was the last).

use std::sync::Arc;

use shm_arena::Block;
use shm_sync::{LockError, Locked, RefError, Released};

use super::overflow::LinkError;
use super::pin::Pin;
use super::{ref_to_handle, PoolShared, SharedArray, DIRECTORY_HOLDER, ORD};
use crate::directory::{load_name, store_name, Directory, MAX_NAME_LEN};
use crate::error::HandleError;

/// Why a named-array operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// The name is empty, too long or has '/'.
    #[error("invalid array name {0:?}: 1 to 88 bytes, no '/'")]
    Invalid(String),
    /// No array has that name.
    #[error("no array named {0:?} in this pool")]
    NotFound(String),
    /// The name is taken.
    #[error("an array named {0:?} exists already")]
    Exists(String),
    /// The name table is full.
    #[error("the pool's name table is full")]
    Full,
    /// The array has a name already (an array has at most one).
    #[error("the array has a name already; an array can have one name")]
    AlreadyNamed,
    /// The named array is unusable.
    #[error(transparent)]
    Handle(#[from] HandleError),
}

/// Whether any name is registered in the directory.
pub(super) fn has_names(dir: &Directory<'_>) -> bool {
    dir.names().iter().any(|e| e.state.load(core::sync::atomic::Ordering::Acquire) == 1)
}

impl PoolShared {
    /// The directory lock, for the name table and teardown. Waits only for processes of the
    /// pool (pool invariant 7): a live stranger holding it makes this
    /// [`HandleError::Stranger`] instead of a wait that never ends.
    pub(super) fn name_lock(&self) -> Result<shm_sync::MutexGuard<'_>, HandleError> {
        let h = self.dir().header();
        loop {
            match h.lock.lock_among(&self.processes()) {
                Ok(Locked::Acquired(g)) => return Ok(g),
                Ok(Locked::OwnerDied(mut g)) => {
                    // Name entries are written before they are marked used: nothing to repair.
                    g.mark_consistent();
                    return Ok(g);
                }
                Err(LockError::Stranger { holder }) => {
                    return Err(HandleError::Stranger { pid: holder, lock: "the pool directory's" })
                }
                Err(_) => {
                    h.lock.reset_poison();
                }
            }
        }
    }

    pub(super) fn publish(self: &Arc<Self>, name: &str, array: &SharedArray) -> Result<(), NameError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('/') {
            return Err(NameError::Invalid(name.to_owned()));
        }
        // Before the name lock: this may pin the array again, which takes other locks.
        array.ensure_held()?;
        let local = &array.local;
        let (_guard, entry) = loop {
            let guard = self.name_lock()?;
            let dir = self.dir();
            if dir.names().iter().any(|e| e.state.load(ORD) == 1 && load_name(e) == name) {
                return Err(NameError::Exists(name.to_owned()));
            }
            let entry = dir.names().iter().find(|e| e.state.load(ORD) == 0).ok_or(NameError::Full)?;
            match local.header().refcount.acquire(DIRECTORY_HOLDER, &self.tokens(), &self.group()) {
                Ok(shm_sync::Acquired::First) => break (guard, entry),
                // One name per array: the directory holds one reference (found in review).
                Ok(shm_sync::Acquired::Already) => return Err(NameError::AlreadyNamed),
                // More than twelve holders and no overflow yet: link one outside the name lock
                // (the allocation may grow the pool, which takes the same lock), then again.
                Err(RefError::NeedsOverflow) => {
                    drop(guard);
                    let at = (local.meta_segment, local.header_block);
                    self.link_overflow(at, local.header()).map_err(|e| {
                        NameError::Handle(match e {
                            LinkError::Ref(e) => ref_to_handle(e),
                            LinkError::NoMemory => HandleError::NoHolderRoom { pool: self.name.clone() },
                        })
                    })?;
                }
                Err(e) => return Err(NameError::Handle(ref_to_handle(e))),
            }
        };
        store_name(entry, name);
        entry.meta_segment.store(u64::from(local.meta_segment), ORD);
        entry.header.store(local.header_block.to_bits(), ORD);
        entry.nonce.store(local.nonce, ORD);
        entry.state.store(1, core::sync::atomic::Ordering::Release);
        Ok(())
    }

    pub(super) fn lookup(self: &Arc<Self>, name: &str) -> Result<SharedArray, NameError> {
        let (seg, header, nonce) = {
            let _guard = self.name_lock()?;
            let dir = self.dir();
            let e = dir
                .names()
                .iter()
                .find(|e| e.state.load(core::sync::atomic::Ordering::Acquire) == 1 && load_name(e) == name)
                .ok_or_else(|| NameError::NotFound(name.to_owned()))?;
            (e.meta_segment.load(ORD) as u16, Block::from_bits(e.header.load(ORD)), e.nonce.load(ORD))
        };
        let local = self.pin(seg, header, nonce, Pin::Acquire)?;
        Ok(SharedArray::whole(local))
    }

    pub(super) fn unpublish(&self, name: &str) -> Result<(), NameError> {
        let _guard = self.name_lock()?;
        let dir = self.dir();
        let e = dir
            .names()
            .iter()
            .find(|e| e.state.load(ORD) == 1 && load_name(e) == name)
            .ok_or_else(|| NameError::NotFound(name.to_owned()))?;
        let seg = e.meta_segment.load(ORD) as u16;
        let header = Block::from_bits(e.header.load(ORD));
        let nonce = e.nonce.load(ORD);
        e.state.store(0, core::sync::atomic::Ordering::Release);
        // The name held a reference, so the header block is live and a header.
        if let Ok((_, h)) = self.meta_segment(seg).and_then(|meta| meta.header(header)) {
            if h.nonce.load(ORD) == nonce {
                if let Ok(Released::Last) | Err(RefError::Orphaned) =
                    h.refcount.release(DIRECTORY_HOLDER, &self.tokens(), &self.group())
                {
                    self.free_array(seg, header, h);
                }
            }
        }
        Ok(())
    }

    pub(super) fn names(&self) -> Vec<String> {
        self.dir()
            .names()
            .iter()
            .filter(|e| e.state.load(core::sync::atomic::Ordering::Acquire) == 1)
            .map(load_name)
            .collect()
    }
}
