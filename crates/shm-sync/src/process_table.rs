//! A table of process slots in shared memory.
//!
//! # Invariants
//!
//! 1. A slot's state word holds its state and the full identity of the process it names in one
//!    `u64` (2 bits of state, 62 of identity: pid and start time), so claiming a slot records
//!    who claimed it atomically and nobody can hold a slot anonymously.
//! 2. A slot's epoch increments every time the slot is registered. A [`Registration`] carries
//!    the epoch, so a stale registration (of a process that died and whose slot was recycled)
//!    never matches the new holder.
//! 3. A slot goes `Live(p) -> Recovering(r)` only when `p` is provably dead, and
//!    `Recovering(r) -> Recovering(s)` only when `r` is dead too: one live rescuer at a time
//!    cleans up after a dead process, and a rescuer's death hands the job on. The slot becomes
//!    `Free` only when the rescuer says it is done ([`ProcessTable::release_dead`]), after it
//!    dropped everything the dead process held, so a new process never inherits anything.
//!
//! | state | word | next |
//! |---|---|---|
//! | `Free` | 0 | `Live` (register) |
//! | `Live(p)` | `1 << 62 \| p` | `Free` (unregister), `Recovering(r)` (p dead) |
//! | `Recovering(r)` | `2 << 62 \| r` | `Free` (release_dead), `Recovering(s)` (r dead) |
//!
//! 4. A process is named by the table (as `Live` or `Recovering`) from before it takes any
//!    mutex of the group the table stands for until after it released them all: the table is
//!    the group's [`Members`](crate::Members), and a waiter refuses a live holder it does not
//!    name ([`RobustMutex::lock_among`](crate::RobustMutex::lock_among), mutex invariant 5).
//!    `register` and `claim_dead` end with a fence, so a waiter's `Acquire` load of a lock word
//!    the process writes afterwards (with any ordering) also sees the slot naming it.
//!
//! Orderings: `AcqRel` CAS and `Acquire` loads; a slot's protocol decides on its own word
//! only. The epoch is incremented just after the claim, by the new holder only; a reader that
//! sees `Live(p)` may see the previous epoch for an instant, which only makes the fresh
//! registration look stale to it (safe: nothing is acted on for a stale registration).

use crate::mutex::{Holder, Members, Standing};
use crate::sync::{self, pid_of, AtomicU64, IdentityBits, Ordering};

const KIND_SHIFT: u32 = 62;
const IDENTITY_MASK: u64 = (1 << KIND_SHIFT) - 1;
const LIVE: u64 = 1;
const RECOVERING: u64 = 2;

/// One slot: 64 bytes, its own cache line. `user` words are free for the layer above
/// (for instance per-process counters); they are zeroed when the slot is registered.
#[repr(C, align(64))]
pub struct ProcessSlot {
    state: AtomicU64,
    epoch: AtomicU64,
    /// Words for the layer above, zeroed at registration.
    pub user: [AtomicU64; 6],
}

#[cfg(not(all(shm_loom, feature = "loom")))]
const _: () = assert!(core::mem::size_of::<ProcessSlot>() == 64);

impl ProcessSlot {
    /// A free slot.
    pub fn new() -> Self {
        Self { state: AtomicU64::new(0), epoch: AtomicU64::new(0), user: core::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl Default for ProcessSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// The state of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Nobody holds it.
    Free,
    /// Held by a process not known to be dead (identity bits).
    Live(u64),
    /// A rescuer (identity bits) cleans up after a dead holder.
    Recovering(u64),
    /// A value no version of this library writes.
    Corrupt(u64),
}

impl SlotState {
    fn decode(word: u64) -> Self {
        match (word >> KIND_SHIFT, word & IDENTITY_MASK) {
            (0, 0) => Self::Free,
            (LIVE, id) if id != 0 => Self::Live(id),
            (RECOVERING, id) if id != 0 => Self::Recovering(id),
            _ => Self::Corrupt(word),
        }
    }
}

/// A process's hold on a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Registration {
    /// Slot index.
    pub index: u32,
    /// Slot epoch at registration.
    pub epoch: u64,
    /// Identity bits of the process.
    pub identity: u64,
}

/// A dead process whose slot the caller now recovers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadProcess {
    /// Slot index.
    pub index: u32,
    /// The dead process (identity bits).
    pub identity: u64,
    /// The slot's epoch while it held it.
    pub epoch: u64,
    rescuer: IdentityBits,
}

/// Every slot is held by a process not known to be dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("all {slots} process slots are held by live processes")]
pub struct TableFull {
    /// Number of slots.
    pub slots: usize,
}

/// Operations on a slice of slots in shared memory.
///
/// # Examples
///
/// ```
/// use shm_sync::{ProcessSlot, ProcessTable};
///
/// let slots: Vec<ProcessSlot> = (0..4).map(|_| ProcessSlot::new()).collect();
/// let table = ProcessTable::new(&slots);
/// let me = table.register().unwrap();
/// assert!(table.is_current(me));
/// assert!(table.find_dead().is_empty());
/// table.unregister(me);
/// assert!(!table.is_current(me));
/// ```
pub struct ProcessTable<'a> {
    slots: &'a [ProcessSlot],
}

impl<'a> ProcessTable<'a> {
    /// A table over `slots` (zeroed slots are free).
    pub fn new(slots: &'a [ProcessSlot]) -> Self {
        Self { slots }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the table has no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Registers the calling process in a free slot, recycling no slot by itself: call
    /// [`ProcessTable::find_dead`] and recover first when it is full.
    ///
    /// # Errors
    ///
    /// [`TableFull`].
    pub fn register(&self) -> Result<Registration, TableFull> {
        let identity = sync::current_identity();
        let word = (LIVE << KIND_SHIFT) | (identity & IDENTITY_MASK);
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.state.load(Ordering::Relaxed) == 0
                && slot.state.compare_exchange(0, word, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                for u in &slot.user {
                    u.store(0, Ordering::Relaxed);
                }
                let epoch = slot.epoch.fetch_add(1, Ordering::AcqRel) + 1;
                // Invariant 4: a release fence (SeqCst, which loom models) before any lock word
                // this process writes from now on; a cold path, once per registration.
                sync::dekker_fence();
                return Ok(Registration { index: i as u32, epoch, identity });
            }
        }
        Err(TableFull { slots: self.slots.len() })
    }

    /// Gives the slot back (a clean exit). Returns false if the registration is stale.
    pub fn unregister(&self, reg: Registration) -> bool {
        let Some(slot) = self.slots.get(reg.index as usize) else { return false };
        if slot.epoch.load(Ordering::Acquire) != reg.epoch {
            return false;
        }
        let word = (LIVE << KIND_SHIFT) | (reg.identity & IDENTITY_MASK);
        slot.state.compare_exchange(word, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Whether `reg` still holds its slot.
    pub fn is_current(&self, reg: Registration) -> bool {
        self.slots.get(reg.index as usize).is_some_and(|slot| {
            slot.state.load(Ordering::Acquire) == (LIVE << KIND_SHIFT) | (reg.identity & IDENTITY_MASK)
                && slot.epoch.load(Ordering::Acquire) == reg.epoch
        })
    }

    /// The state of slot `index`.
    pub fn state(&self, index: u32) -> Option<SlotState> {
        self.slots.get(index as usize).map(|s| SlotState::decode(s.state.load(Ordering::Acquire)))
    }

    /// The slot's words for the layer above.
    pub fn user_words(&self, index: u32) -> Option<&'a [AtomicU64; 6]> {
        self.slots.get(index as usize).map(|s| &s.user)
    }

    /// Indices of slots whose process (or rescuer) is provably dead.
    pub fn find_dead(&self) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|i| match self.state(*i) {
                Some(SlotState::Live(p) | SlotState::Recovering(p)) => sync::is_dead(p),
                _ => false,
            })
            .collect()
    }

    /// Takes slot `index` for recovery if its process (or its previous rescuer) is dead
    /// (invariant 3). `None` when it is not dead, or another rescuer got it first.
    pub fn claim_dead(&self, index: u32) -> Option<DeadProcess> {
        let slot = self.slots.get(index as usize)?;
        let me = sync::current_identity();
        let word = slot.state.load(Ordering::Acquire);
        let dead = match SlotState::decode(word) {
            SlotState::Live(p) | SlotState::Recovering(p)
                if p & IDENTITY_MASK != me & IDENTITY_MASK && sync::is_dead(p) =>
            {
                p
            }
            _ => return None,
        };
        let epoch = slot.epoch.load(Ordering::Acquire);
        let claimed = slot
            .state
            .compare_exchange(
                word,
                (RECOVERING << KIND_SHIFT) | (me & IDENTITY_MASK),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok();
        // Invariant 4: the rescuer takes the dead process's locks next; fence as `register`.
        claimed.then(|| {
            sync::dekker_fence();
            DeadProcess { index, identity: dead, epoch, rescuer: me }
        })
    }

    /// Frees the slot of a recovered dead process (invariant 3: call it last).
    pub fn release_dead(&self, dead: DeadProcess) -> bool {
        let Some(slot) = self.slots.get(dead.index as usize) else { return false };
        let word = (RECOVERING << KIND_SHIFT) | (dead.rescuer & IDENTITY_MASK);
        slot.state.compare_exchange(word, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Whether a process other than this one is registered and not provably dead (`Live` or
    /// `Recovering`). Stops at the first such slot: liveness checks of the slots before it only.
    pub fn another_live(&self) -> bool {
        let me = sync::current_identity() & IDENTITY_MASK;
        self.slots.iter().any(|slot| match SlotState::decode(slot.state.load(Ordering::Acquire)) {
            SlotState::Live(p) | SlotState::Recovering(p) => p & IDENTITY_MASK != me && !sync::is_dead(p),
            _ => false,
        })
    }

    /// Slots in use (live or recovering).
    pub fn occupied(&self) -> usize {
        self.slots.iter().filter(|s| s.state.load(Ordering::Relaxed) != 0).count()
    }
}

/// The table as the group of processes that may hold its pool's mutexes (invariant 4): a live
/// holder is a member when a slot names it as `Live` or `Recovering`, by full identity when the
/// waiter knows it, by pid otherwise. A scan of the slots, run only by a waiter after a
/// [`RECHECK`](crate::RECHECK) timeout.
impl Members for ProcessTable<'_> {
    fn standing(&self, holder: Holder) -> Standing {
        let named = self.slots.iter().any(|slot| match SlotState::decode(slot.state.load(Ordering::Acquire)) {
            SlotState::Live(id) | SlotState::Recovering(id) => match holder.identity {
                Some(identity) => id == identity & IDENTITY_MASK,
                None => pid_of(id) == holder.pid,
            },
            _ => false,
        });
        if named {
            Standing::Member
        } else {
            Standing::Stranger
        }
    }
}
