//! Named arrays: names in the pool's name index, each holding a reference to its array.
//!
//! # Invariants
//!
//! 1. A name holds one reference, under the directory's holder bit (`DIRECTORY_HOLDER`, never
//!    a process slot), so an array has at most one name (pool invariant 3 counts names).
//! 2. Names change, and are read, only under the directory lock; the name index
//!    (`name_index`, its invariants 1-6) records each change's intent first, so a holder killed
//!    at any point leaves an operation the next taker of the lock finishes or undoes
//!    ([`PoolShared::name_lock`] repairs before anything else).
//! 3. A name is resolved by pinning its (segment, header, nonce) through every check of a
//!    first pin: a stale name fails `Stale`, never attaches another array.
//! 4. Names are 1 to 88 bytes without '/'; names starting with a NUL byte are the hidden names
//!    of pyshm's locks and events (listed like the others: the Python layer leaves them out).
//!
//! Protocol: `publish` holds the array again if this process let go of it, writes the name's
//! entry block and makes room in the index (both outside the lock: allocating may grow the
//! pool, which takes the directory lock), then under the lock checks the name and the array,
//! takes the directory's reference and inserts the entry; `unpublish` removes the entry and
//! releases that reference (freeing the array if it was the last), then shrinks the index if
//! it became too empty.

use std::sync::Arc;

use shm_arena::Block;
use shm_sync::{LockError, Locked, RefError};

use super::name_index::{root_has_names, Place, MAX_NAMES};
use super::overflow::LinkError;
use super::pin::Pin;
use super::{ref_to_handle, PoolShared, SharedArray, DIRECTORY_HOLDER, ORD};
use crate::directory::{Directory, MAX_NAME_LEN};
use crate::error::{ArrayError, HandleError};

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
    /// The pool has as many names as it can hold ([`MAX_NAMES`]).
    #[error("the pool's name table is full ({MAX_NAMES} names)")]
    Full,
    /// The array has a name already (an array has at most one).
    #[error("the array has a name already; an array can have one name")]
    AlreadyNamed,
    /// The named array is unusable.
    #[error(transparent)]
    Handle(#[from] HandleError),
    /// No memory for the name's entry or a larger index.
    #[error("no memory for the name table: {0}")]
    Memory(#[from] ArrayError),
}

/// Whether any name is registered in the directory.
pub(super) fn has_names(dir: &Directory<'_>) -> bool {
    root_has_names(dir.names())
}

fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('/') {
        return Err(NameError::Invalid(name.to_owned()));
    }
    Ok(())
}

impl PoolShared {
    /// The directory lock, for the name table and teardown, with any operation a dead holder
    /// left repaired (invariant 2). Waits only for processes of the pool (pool invariant 7): a
    /// live stranger holding it makes this [`HandleError::Stranger`] instead of a wait that
    /// never ends.
    pub(super) fn name_lock(&self) -> Result<shm_sync::MutexGuard<'_>, HandleError> {
        let h = self.dir().header();
        loop {
            let guard = match h.lock.lock_among(&self.processes()) {
                Ok(Locked::Acquired(g)) => g,
                Ok(Locked::OwnerDied(mut g)) => {
                    // The repair below is driven by the intent record, not by this flag:
                    // another path may have taken the lock first (name_index invariant 2).
                    g.mark_consistent();
                    g
                }
                Err(LockError::Stranger { holder }) => {
                    return Err(HandleError::Stranger { pid: holder, lock: "the pool directory's" })
                }
                Err(_) => {
                    h.lock.reset_poison();
                    continue;
                }
            };
            if self.names_need_repair() {
                self.repair_names();
            }
            return Ok(guard);
        }
    }

    /// Makes the index fit `extra` more names (growing or shrinking it), allocating outside
    /// the lock: the index block is made before the lock is taken again and checked still to
    /// be the size wanted. Returns the lock, held, with the index fitting.
    fn fit_index(&self, extra: u64) -> Result<shm_sync::MutexGuard<'_>, NameError> {
        let mut spare: Option<(Place, u64)> = None;
        loop {
            let guard = self.name_lock()?;
            let want = self.index_refit(extra);
            match (want, spare.take()) {
                (None, unused) => {
                    if let Some((place, _)) = unused {
                        self.free_name_block(place);
                    }
                }
                (Some(want), Some((place, slots))) if slots == want => self.resize_index(Some(place)),
                (Some(want), unused) => {
                    if let Some((place, _)) = unused {
                        self.free_name_block(place);
                    }
                    if want == 0 {
                        self.resize_index(None);
                    } else {
                        drop(guard);
                        spare = Some((self.new_index(want)?.0, want));
                        continue;
                    }
                }
            }
            return Ok(guard);
        }
    }

    pub(super) fn publish(self: &Arc<Self>, name: &str, array: &SharedArray) -> Result<(), NameError> {
        check_name(name)?;
        // Before the name lock: this may pin the array again, which takes other locks.
        array.ensure_held()?;
        let local = &array.local;
        let place = (local.meta_segment, local.header_block, local.nonce);
        loop {
            let entry = self.new_entry(name, place)?;
            let guard = match self.fit_index(1) {
                Ok(g) => g,
                Err(e) => {
                    self.free_name_block(entry);
                    return Err(e);
                }
            };
            let refused = if self.find_name(name).is_some() {
                Some(NameError::Exists(name.to_owned()))
            } else if local.header().refcount.is_held_by_among(DIRECTORY_HOLDER, &self.group()) {
                // One name per array (found in review), checked before the intent (name_index
                // invariant 5): under the lock, only names set or clear this bit.
                Some(NameError::AlreadyNamed)
            } else if !self.names_fit(1) {
                Some(NameError::Full)
            } else {
                None
            };
            if let Some(e) = refused {
                self.free_name_block(entry);
                return Err(e);
            }
            let mut needs_overflow = false;
            let result = self.insert_name(name, entry, place, || {
                match local.header().refcount.acquire(DIRECTORY_HOLDER, &self.tokens(), &self.group()) {
                    Ok(shm_sync::Acquired::First) => Ok(()),
                    Ok(shm_sync::Acquired::Already) => Err(NameError::AlreadyNamed),
                    Err(RefError::NeedsOverflow) => {
                        needs_overflow = true;
                        Err(NameError::Handle(ref_to_handle(RefError::NeedsOverflow)))
                    }
                    Err(e) => Err(NameError::Handle(ref_to_handle(e))),
                }
            });
            drop(guard);
            if !needs_overflow {
                return result;
            }
            // More than twelve holders and no overflow yet: the publish was undone; link one
            // outside the name lock (the allocation may grow the pool, which takes the same
            // lock), then publish again.
            let at = (local.meta_segment, local.header_block);
            self.link_overflow(at, local.header()).map_err(|e| {
                NameError::Handle(match e {
                    LinkError::Ref(e) => ref_to_handle(e),
                    LinkError::NoMemory => HandleError::NoHolderRoom { pool: self.name.clone() },
                })
            })?;
        }
    }

    pub(super) fn lookup(self: &Arc<Self>, name: &str) -> Result<SharedArray, NameError> {
        // Registered before the lock (pool invariant 7: only members hold the pool's locks; a
        // waiter may call a non-member holding it a stranger: found by a flaky test, session 7).
        // A process that cannot register still looks, as before.
        let _ = self.slot();
        let (seg, header, nonce) = {
            let _guard = self.name_lock()?;
            let e = self.find_name(name).ok_or_else(|| NameError::NotFound(name.to_owned()))?.entry;
            (e.meta_segment.load(ORD) as u16, Block::from_bits(e.header.load(ORD)), e.nonce.load(ORD))
        };
        let local = self.pin(seg, header, nonce, Pin::Acquire)?;
        Ok(SharedArray::whole(local))
    }

    pub(super) fn unpublish(&self, name: &str) -> Result<(), NameError> {
        // Before the lock: it may register (a forked child's first operation).
        let freer = self.freer_slot();
        {
            let _guard = self.name_lock()?;
            let found = self.find_name(name).ok_or_else(|| NameError::NotFound(name.to_owned()))?;
            self.remove_name(found, freer);
        }
        // Shrink (or free) the index if it became too empty; a failure to allocate a smaller
        // one only leaves the larger, and is not tried again before the names halve: each try
        // runs the allocator's slow path (a collect, a grow), about 150 ms at 150,000 names,
        // which every delete paid once /dev/shm was full (found in review).
        let (refit, count) = {
            let _guard = self.name_lock()?;
            (self.index_refit(0), self.name_count())
        };
        let failed = self.name_shrink_failed.load(ORD);
        let retry = failed == 0 || count.saturating_mul(2) <= failed;
        match refit {
            Some(0) => drop(self.fit_index(0)),
            Some(_) if retry => {
                let fitted = self.fit_index(0).is_ok();
                self.name_shrink_failed.store(if fitted { 0 } else { count.max(1) }, ORD);
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn names(&self) -> Result<Vec<String>, NameError> {
        // Registered before the lock, as in `lookup`.
        let _ = self.slot();
        let _guard = self.name_lock()?;
        Ok(self.all_names())
    }
}
