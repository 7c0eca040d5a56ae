//! The owner table: who may own blocks of this arena, and who is dead.
//!
//! Invariants:
//! 1. A slot's state word holds its state and the full identity of the process it names in one
//!    `u64` (2 bits of state, 62 of [`ProcessIdentity`]), so claiming a slot records who claimed
//!    it atomically: there is no moment when a slot is taken by nobody we could name.
//! 2. Owner tag `t` is slot `t - 1`. A tag is used in block words only by the process holding
//!    the slot `Live`, or by the rescuer holding it `Recovering`.
//! 3. A slot goes `Live -> Recovering -> Free` only through a rescuer that found the named
//!    process dead, and `Recovering(r) -> Recovering(s)` only when `r` is dead too: exactly one
//!    live rescuer works on a slot, and a rescuer's death hands the job on. A slot becomes
//!    `Free` only after every block tagged with it was freed, so a new process taking the slot
//!    never inherits blocks.
//! 4. The last [`transient_band`] slots are never taken by [`OwnerTable::register`]: a process
//!    with no slot of its own frees through one of them ([`OwnerTable::register_transient`],
//!    given back right after the free), so a free never waits on a slot that only a process's
//!    exit gives back. A transient slot owns no block once its free is done; one held by a dead
//!    process is recovered like any other (its free is finished).
//!
//! | state        | word                           | next states |
//! |--------------|--------------------------------|-------------|
//! | `Free`       | 0                              | `Live` (register) |
//! | `Live(p)`    | `1 << 62 \| p`                 | `Free` (p unregisters), `Recovering` (p dead) |
//! | `Recovering(r)` | `2 << 62 \| r`              | `Free` (r done), `Recovering(s)` (r dead) |
//!
//! State words use `AcqRel` CASes and `Acquire` loads: a slot's protocol decides on that one
//! word only (no Dekker pair with another word), and the blocks a rescuer frees synchronise
//! through their own node words.

use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};

use crate::process::{Liveness, ProcessIdentity};
use crate::sync::SharedU64;

/// One slot, 128 bytes so that two slots never share a cache line (nor its adjacent-line
/// prefetch pair).
#[repr(C, align(128))]
pub(crate) struct OwnerSlot {
    state: SharedU64,
    /// Bytes of blocks tagged with this slot (in use or cached); wrapping arithmetic.
    owned_bytes: SharedU64,
    /// Times this slot was registered (diagnostics).
    registrations: SharedU64,
    _pad: [SharedU64; 13],
}

const _: () = assert!(core::mem::size_of::<OwnerSlot>() == crate::layout::OWNER_SLOT_SIZE as usize);

const KIND_SHIFT: u32 = 62;
const IDENTITY_MASK: u64 = (1 << KIND_SHIFT) - 1;
const LIVE: u64 = 1;
const RECOVERING: u64 = 2;

/// The state of an owner slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Nobody holds it.
    Free,
    /// Held by a running (or not yet found dead) process.
    Live(ProcessIdentity),
    /// A rescuer is freeing what a dead owner held.
    Recovering(ProcessIdentity),
    /// The word holds something no version of this library writes.
    Corrupt(u64),
}

impl SlotState {
    fn decode(word: u64) -> Self {
        if word == 0 {
            return Self::Free;
        }
        let identity = ProcessIdentity::from_bits(word & IDENTITY_MASK);
        match (word >> KIND_SHIFT, identity) {
            (LIVE, Some(p)) => Self::Live(p),
            (RECOVERING, Some(p)) => Self::Recovering(p),
            _ => Self::Corrupt(word),
        }
    }
}

fn encode(kind: u64, who: ProcessIdentity) -> u64 {
    (kind << KIND_SHIFT) | (who.to_bits() & IDENTITY_MASK)
}

/// Slots of a table of `len` kept for transient frees (invariant 4): an eighth, at most 8
/// (none in a table of fewer than 8 slots, whose transient frees take any free slot).
pub(crate) const fn transient_band(len: usize) -> usize {
    let band = len / 8;
    if band > 8 {
        8
    } else {
        band
    }
}

/// A slot described for [`crate::Arena::owner_slots`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerInfo {
    /// Owner tag (slot index + 1).
    pub tag: u16,
    /// State of the slot.
    pub state: SlotState,
    /// Bytes of blocks tagged with the slot.
    pub owned_bytes: u64,
}

/// Operations on the table, a slice of slots in the segment.
pub(crate) struct OwnerTable<'a> {
    slots: &'a [OwnerSlot],
}

impl<'a> OwnerTable<'a> {
    pub(crate) fn new(slots: &'a [OwnerSlot]) -> Self {
        Self { slots }
    }

    fn slot(&self, tag: u16) -> Option<&'a OwnerSlot> {
        self.slots.get(usize::from(tag).checked_sub(1)?)
    }

    /// Claims a free slot for `me` (invariant 1), outside the transient band (invariant 4);
    /// `None` when every such slot is taken.
    pub(crate) fn register(&self, me: ProcessIdentity) -> Option<u16> {
        let lasting = self.slots.len() - transient_band(self.slots.len());
        (0..lasting).find_map(|i| self.try_take(i, me))
    }

    /// Claims a slot for one free by `me`, who has no slot of its own (invariant 4): the
    /// transient band first, from `start` on (so that processes spread over it), then any free
    /// slot. `None` when every slot is taken.
    pub(crate) fn register_transient(&self, me: ProcessIdentity, start: usize) -> Option<u16> {
        let len = self.slots.len();
        let band = transient_band(len);
        (0..band).map(|k| len - band + (start + k) % band).chain(0..len).find_map(|i| self.try_take(i, me))
    }

    fn try_take(&self, i: usize, me: ProcessIdentity) -> Option<u16> {
        let slot = &self.slots[i];
        // Invariant 1: one CAS from `Free` records who took the slot.
        if slot.state.load(Relaxed) == 0 && slot.state.compare_exchange(0, encode(LIVE, me), AcqRel, Relaxed).is_ok() {
            slot.owned_bytes.store(0, Relaxed);
            slot.registrations.fetch_add(1, Relaxed);
            return Some(i as u16 + 1);
        }
        None
    }

    /// Whether [`OwnerTable::register`] would find a free slot now: a look, for a caller
    /// choosing between segments.
    pub(crate) fn has_free_slot(&self) -> bool {
        let lasting = self.slots.len() - transient_band(self.slots.len());
        self.slots[..lasting].iter().any(|s| s.state.load(Relaxed) == 0)
    }

    /// Gives `tag` back; the caller has freed every block tagged with it.
    pub(crate) fn unregister(&self, tag: u16, me: ProcessIdentity) -> bool {
        self.slot(tag).is_some_and(|slot| slot.state.compare_exchange(encode(LIVE, me), 0, AcqRel, Relaxed).is_ok())
    }

    /// Adds `delta` (wrapping) to the bytes owned by `tag`; tag 0 and reserved tags are ignored.
    #[inline]
    pub(crate) fn account(&self, tag: u16, delta: i64) {
        if let Some(slot) = self.slot(tag) {
            // Relaxed: a statistic; nothing is decided on it but "is it zero" at unregister,
            // by the slot's own process, which made every change itself or saw it through the
            // node words of the blocks concerned.
            slot.owned_bytes.fetch_add(delta as u64, Relaxed);
        }
    }

    pub(crate) fn owned_bytes(&self, tag: u16) -> u64 {
        self.slot(tag).map_or(0, |s| s.owned_bytes.load(Relaxed))
    }

    /// Takes slot `tag` for recovery by `me` if the process it names is dead (invariant 3).
    /// Returns the dead identity.
    pub(crate) fn claim_dead(&self, tag: u16, me: ProcessIdentity) -> Option<ProcessIdentity> {
        let slot = self.slot(tag)?;
        let word = slot.state.load(Acquire);
        let dead = match SlotState::decode(word) {
            SlotState::Live(p) | SlotState::Recovering(p) if p != me && p.liveness() == Liveness::Dead => p,
            _ => return None,
        };
        slot.state.compare_exchange(word, encode(RECOVERING, me), AcqRel, Relaxed).ok().map(|_| dead)
    }

    /// Whether the process holding `tag` is gone: its slot is free, or names a dead process
    /// (a syscall or two: for slow paths that wait on another owner).
    pub(crate) fn is_gone(&self, tag: u16) -> bool {
        let Some(slot) = self.slot(tag) else { return true };
        match SlotState::decode(slot.state.load(Acquire)) {
            SlotState::Free | SlotState::Corrupt(_) => true,
            SlotState::Live(p) | SlotState::Recovering(p) => p.liveness() == Liveness::Dead,
        }
    }

    /// Ends the recovery of `tag` by `me`: the slot is free again.
    pub(crate) fn finish_recovery(&self, tag: u16, me: ProcessIdentity) {
        if let Some(slot) = self.slot(tag) {
            slot.owned_bytes.store(0, Relaxed);
            let _ = slot.state.compare_exchange(encode(RECOVERING, me), 0, AcqRel, Relaxed);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn info(&self) -> Vec<OwnerInfo> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, s)| OwnerInfo {
                tag: i as u16 + 1,
                state: SlotState::decode(s.state.load(Acquire)),
                owned_bytes: s.owned_bytes.load(Relaxed),
            })
            .collect()
    }
}
