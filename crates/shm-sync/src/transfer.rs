//! Transfer tokens: references in flight between a sender and a receiver.
//!
//! # Invariants
//!
//! 1. A token is a slot of a [`TokenTable`] in shared memory; a handle names it by index and
//!    generation ([`Token`]). The generation changes every time the slot is released, so a
//!    handle whose token was claimed or cancelled (and its slot perhaps reused) never matches:
//!    it is refused as stale.
//! 2. A token slot changes between `Pending` and `Free` only under the lock of the
//!    [`RefCount`](crate::RefCount) it points at, together with that record's token count.
//!    The slots are therefore the truth the count is recomputed from when a lock holder dies
//!    in the middle (see `refcount`).
//! 3. Reserving a slot (`Free -> Reserved`) names the reserving process, so a slot reserved by
//!    a process that died before publishing it is found and freed.
//! 4. One process never holds more than half the slots (reserved or pending, named by its
//!    identity in `sender`): one program that sends and never has its handles attached cannot
//!    take the table from every other process of the pool. Each process keeps a local upper
//!    bound of its tokens per table (raised by every reservation, never lowered by claims it
//!    does not see, nor by a count of another table); only when the bound reaches the quota
//!    does it count its slots, and it refuses
//!    ([`TokenError::SenderQuota`]) if the count does too. The check costs one local add per
//!    reservation and a scan of the table once per `quota - count` reservations.
//!
//! | state | word | next |
//! |---|---|---|
//! | `Free(g)` | `g << 2` | `Reserved` (reserve) |
//! | `Reserved(g)` | `g << 2 \| 1`, reserver in `sender` | `Pending` (publish, under the record's lock), `Free(g+1)` (reserver dead) |
//! | `Pending(g)` | `g << 2 \| 2`, target, time, sender | `Free(g+1)` (claim or cancel, under the record's lock) |
//!
//! Slot words are `AcqRel`/`Acquire`; the record's lock orders the publish, claim and cancel.

use crate::sync::{self, AtomicU64, Ordering};

const FREE: u64 = 0;
const RESERVED: u64 = 1;
const PENDING: u64 = 2;
const KIND_MASK: u64 = 3;

/// One token slot (32 bytes).
#[repr(C)]
pub struct TokenSlot {
    state: AtomicU64,
    target: AtomicU64,
    created_ns: AtomicU64,
    sender: AtomicU64,
}

#[cfg(not(all(shm_loom, feature = "loom")))]
const _: () = assert!(core::mem::size_of::<TokenSlot>() == 32);

impl TokenSlot {
    /// A free slot (all zero).
    pub fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            target: AtomicU64::new(0),
            created_ns: AtomicU64::new(0),
            sender: AtomicU64::new(0),
        }
    }
}

impl Default for TokenSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// A token as a handle carries it: slot index and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token {
    /// Slot index.
    pub index: u32,
    /// Slot generation when the token was made.
    pub generation: u64,
}

/// A token that has not been claimed yet, as [`TokenTable::pending`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingToken {
    /// The token.
    pub token: Token,
    /// What it keeps alive (the caller's opaque reference to a [`RefCount`](crate::RefCount)).
    pub target: u64,
    /// Nanoseconds since it was sent (`CLOCK_MONOTONIC`).
    pub age_ns: u64,
    /// Identity bits of the sender.
    pub sender: u64,
}

/// Why a token operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No free slot in the table.
    #[error("all {slots} transfer token slots are in use; reclaim old tokens or enlarge the table")]
    Full {
        /// Number of slots.
        slots: usize,
    },
    /// This process already has its share of the slots in flight (invariant 4).
    #[error("this process has {quota} handles in flight, its share of the {slots} transfer token slots; send the data instead, or reclaim old tokens")]
    SenderQuota {
        /// Slots one process may hold.
        quota: usize,
        /// Number of slots.
        slots: usize,
    },
    /// The token was claimed or cancelled already (or never existed).
    #[error("token {index} (generation {generation}) is stale: it was claimed or cancelled already")]
    Stale {
        /// Slot index given.
        index: u32,
        /// Generation given.
        generation: u64,
    },
}

/// A table of token slots in shared memory.
pub struct TokenTable<'a> {
    slots: &'a [TokenSlot],
    /// Names the table to this process's bound on its tokens in flight (invariant 4).
    key: u64,
}

impl<'a> TokenTable<'a> {
    /// A table over `slots` (zeroed slots are free), known to this process's bound on its
    /// tokens in flight (invariant 4) by the address of the slots. A table that may be mapped
    /// at more than one address, or unmapped and another mapped in its place, needs
    /// [`TokenTable::with_key`].
    pub fn new(slots: &'a [TokenSlot]) -> Self {
        Self { slots, key: slots.as_ptr() as u64 }
    }

    /// A table over `slots` known by `key`, the same for the table wherever and however often
    /// it is mapped, and different from every other table's (a pool's unique id).
    pub fn with_key(slots: &'a [TokenSlot], key: u64) -> Self {
        Self { slots, key }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the table has no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Reserves a free slot for a token about to be sent (invariant 3).
    ///
    /// The scan starts where this process's previous reservation ended, so sending many
    /// handles costs O(1) per handle instead of a scan over the pending ones.
    pub(crate) fn reserve(&self) -> Result<u32, TokenError> {
        let me = sync::current_identity();
        let n = self.slots.len();
        let quota = Self::quota(n);
        if sync::note_reservation(self.key) >= quota {
            // Invariant 4: the bound says we may be at our share; count for real.
            let mine = self.count_sent_by(me);
            sync::set_sent_bound(self.key, mine + 1);
            if mine >= quota {
                return Err(TokenError::SenderQuota { quota, slots: n });
            }
        }
        let start = sync::next_token_hint() % n.max(1);
        for k in 0..n {
            let i = (start + k) % n;
            let slot = &self.slots[i];
            let w = slot.state.load(Ordering::Relaxed);
            if w & KIND_MASK == FREE
                && slot.state.compare_exchange(w, w | RESERVED, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                slot.sender.store(me, Ordering::Relaxed);
                sync::set_token_hint(i + 1);
                return Ok(i as u32);
            }
        }
        Err(TokenError::Full { slots: self.slots.len() })
    }

    /// Slots one process may hold in a table of `slots` (invariant 4): half, at least one.
    pub fn quota(slots: usize) -> usize {
        (slots / 2).max(1)
    }

    /// Slots reserved or pending whose sender is `identity` (invariant 4).
    fn count_sent_by(&self, identity: u64) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.state.load(Ordering::Acquire) & KIND_MASK != FREE && s.sender.load(Ordering::Relaxed) == identity
            })
            .count()
    }

    /// Gives back a reserved slot that was not published.
    pub(crate) fn unreserve(&self, index: u32) {
        if let Some(slot) = self.slots.get(index as usize) {
            let w = slot.state.load(Ordering::Relaxed);
            if w & KIND_MASK == RESERVED {
                free_slot(slot, w);
            }
        }
    }

    /// Publishes reserved slot `index` as a pending token for `target` (under the record's lock).
    /// `None` when the reservation was lost meanwhile (a collector judged it abandoned): the
    /// caller reserves again.
    pub(crate) fn publish(&self, index: u32, target: u64) -> Option<Token> {
        let slot = &self.slots[index as usize];
        let w = slot.state.load(Ordering::Acquire);
        if w & KIND_MASK != RESERVED || slot.sender.load(Ordering::Relaxed) != sync::current_identity() {
            return None;
        }
        slot.target.store(target, Ordering::Relaxed);
        slot.created_ns.store(sync::now_ns(), Ordering::Relaxed);
        let pending = (w & !KIND_MASK) | PENDING;
        // Release: a claimer's Acquire load of the state sees target and time. A CAS from the
        // exact reserved word, so a reservation that was freed and taken again is not
        // published twice (found in review).
        slot.state.compare_exchange(w, pending, Ordering::AcqRel, Ordering::Relaxed).ok()?;
        Some(Token { index, generation: w >> 2 })
    }

    /// Whether `token` is pending for `target` right now.
    pub(crate) fn is_pending_for(&self, token: Token, target: u64) -> bool {
        self.slots.get(token.index as usize).is_some_and(|slot| {
            slot.state.load(Ordering::Acquire) == (token.generation << 2 | PENDING)
                && slot.target.load(Ordering::Relaxed) == target
        })
    }

    /// Retires a pending token (claimed or cancelled; under the record's lock).
    pub(crate) fn retire(&self, token: Token) -> Result<(), TokenError> {
        let stale = TokenError::Stale { index: token.index, generation: token.generation };
        let slot = self.slots.get(token.index as usize).ok_or(stale)?;
        let w = token.generation << 2 | PENDING;
        if slot.state.load(Ordering::Acquire) != w {
            return Err(stale);
        }
        if free_slot(slot, w) {
            Ok(())
        } else {
            Err(stale)
        }
    }

    /// Number of pending tokens for `target` (the truth a record's count is rebuilt from).
    pub(crate) fn count_pending(&self, target: u64) -> u64 {
        self.slots
            .iter()
            .filter(|s| {
                s.state.load(Ordering::Acquire) & KIND_MASK == PENDING && s.target.load(Ordering::Relaxed) == target
            })
            .count() as u64
    }

    /// The target a pending `token` keeps alive, if it is pending.
    pub fn target_of(&self, token: Token) -> Option<u64> {
        let slot = self.slots.get(token.index as usize)?;
        let target = slot.target.load(Ordering::Relaxed);
        (slot.state.load(Ordering::Acquire) == (token.generation << 2 | PENDING)).then_some(target)
    }

    /// Every pending token with its age, oldest first.
    pub fn pending(&self) -> Vec<PendingToken> {
        let now = sync::now_ns();
        let mut out: Vec<_> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let w = s.state.load(Ordering::Acquire);
                (w & KIND_MASK == PENDING).then(|| PendingToken {
                    token: Token { index: i as u32, generation: w >> 2 },
                    target: s.target.load(Ordering::Relaxed),
                    age_ns: now.saturating_sub(s.created_ns.load(Ordering::Relaxed)),
                    sender: s.sender.load(Ordering::Relaxed),
                })
            })
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.age_ns));
        out
    }

    /// Frees slots reserved by processes that died before publishing them. Returns how many.
    pub fn free_dead_reservations(&self) -> usize {
        let mut freed = 0;
        for slot in self.slots {
            let w = slot.state.load(Ordering::Acquire);
            if w & KIND_MASK == RESERVED && sync::is_dead(slot.sender.load(Ordering::Relaxed)) && free_slot(slot, w) {
                freed += 1;
            }
        }
        freed
    }
}

/// Frees `slot` from state `w`: the sender is cleared first, so a new reservation never shows
/// the previous sender (a dead one would get it freed under its new reserver; found in review).
fn free_slot(slot: &TokenSlot, w: u64) -> bool {
    slot.sender.store(0, Ordering::Relaxed);
    slot.state.compare_exchange(w, next_free(w), Ordering::AcqRel, Ordering::Relaxed).is_ok()
}

/// The free state after `w`, with the next generation (invariant 1).
fn next_free(w: u64) -> u64 {
    ((w >> 2).wrapping_add(1) << 2) | FREE
}

#[cfg(all(test, not(all(shm_loom, feature = "loom"))))]
mod tests {
    use super::*;

    fn dead_identity() -> u64 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        u64::from(pid) | (1 << shm_platform::process::PID_BITS) // some start time; the pid is gone
    }

    #[test]
    fn reservations_of_dead_senders_are_freed_and_generations_move_on() {
        let slots: Vec<TokenSlot> = (0..2).map(|_| TokenSlot::new()).collect();
        let t = TokenTable::new(&slots);
        let a = t.reserve().unwrap();
        let b = slots.iter().position(|s| s.state.load(Ordering::Relaxed) == 0).unwrap() as u32;
        // Slot b as another live process would reserve it (this process's share is 1 of 2).
        slots[b as usize].state.fetch_or(RESERVED, Ordering::Relaxed);
        assert_eq!(t.reserve(), Err(TokenError::SenderQuota { quota: 1, slots: 2 }), "our share is taken");
        slots[a as usize].sender.store(dead_identity(), Ordering::Relaxed);
        assert_eq!(t.free_dead_reservations(), 1, "only the dead sender's reservation");
        slots[b as usize].sender.store(sync::current_identity(), Ordering::Relaxed); // ours now
        let token = t.publish(b, 9).unwrap();
        assert!(t.is_pending_for(token, 9) && !t.is_pending_for(token, 8));
        assert_eq!(t.count_pending(9), 1);
        t.retire(token).unwrap();
        assert_eq!(t.retire(token), Err(TokenError::Stale { index: b, generation: token.generation }));
        let again = t.reserve().unwrap();
        let token2 = t.publish(again, 9).unwrap();
        assert_ne!((token2.index, token2.generation), (token.index, token.generation), "a new generation");
    }

    #[test]
    fn one_process_holds_at_most_half_the_slots_and_gets_them_back_when_claimed() {
        let slots: Vec<TokenSlot> = (0..8).map(|_| TokenSlot::new()).collect();
        let t = TokenTable::new(&slots);
        let mine: Vec<Token> = (0..4).map(|_| t.publish(t.reserve().unwrap(), 1).unwrap()).collect();
        assert_eq!(t.reserve(), Err(TokenError::SenderQuota { quota: 4, slots: 8 }));
        assert_eq!(t.count_pending(1), 4, "the refusal took nothing");
        t.retire(mine[0]).unwrap(); // claimed by a receiver
        let again = t.reserve().unwrap();
        t.unreserve(again);
        // Slots other processes hold do not count against this one.
        let other = dead_identity();
        for s in slots.iter().filter(|s| s.state.load(Ordering::Relaxed) & KIND_MASK == FREE).take(4) {
            s.state.fetch_or(RESERVED, Ordering::Relaxed);
            s.sender.store(other, Ordering::Relaxed);
        }
        // 3 of ours and 4 of another's: one slot left, and ours to take (3 < our share of 4).
        assert!(t.reserve().is_ok(), "3 of ours in flight: below our share");
        assert_eq!(t.reserve(), Err(TokenError::SenderQuota { quota: 4, slots: 8 }), "4 of ours again");
    }

    #[test]
    fn sending_through_another_pool_does_not_lift_this_pools_share() {
        // Two pools' tables in one process: the local bound of one must not be lowered by a
        // count of the other (found in review: the bound was one per process).
        let a_slots: Vec<TokenSlot> = (0..8).map(|_| TokenSlot::new()).collect();
        let b_slots: Vec<TokenSlot> = (0..8).map(|_| TokenSlot::new()).collect();
        let (a, b) = (TokenTable::new(&a_slots), TokenTable::new(&b_slots));
        let mut mine = Vec::new();
        while let Ok(i) = a.reserve() {
            mine.push(i);
        }
        assert_eq!(mine.len(), 4, "our share of a");
        a.unreserve(mine.pop().unwrap()); // one claimed: 3 in flight in a
        b.unreserve(b.reserve().unwrap()); // a send through the other pool
        let more = (0..4).filter(|_| a.reserve().is_ok()).count();
        assert_eq!(a.count_sent_by(sync::current_identity()), 4, "{more} more taken in a: beyond the share of 4");
        // More tables than the process keeps bounds for: they take turns, and still a holds 4.
        a.unreserve(
            a_slots.iter().position(|s| s.state.load(Ordering::Relaxed) & KIND_MASK == RESERVED).unwrap() as u32
        );
        let others: Vec<Vec<TokenSlot>> = (0..40).map(|_| (0..2).map(|_| TokenSlot::new()).collect()).collect();
        for slots in &others {
            TokenTable::new(slots).reserve().unwrap();
        }
        let more = (0..4).filter(|_| a.reserve().is_ok()).count();
        assert_eq!((more, a.count_sent_by(sync::current_identity())), (1, 4));
    }
}
