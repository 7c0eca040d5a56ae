//! Holder-tracked reference counts that survive a holder's death.
//!
//! # Why not one shared integer
//!
//! A single shared count cannot be repaired after a holder dies: nobody knows how much of it
//! was the dead process's. Here every process that holds a block has one bit in the record's
//! holder bitmap (its [`ProcessTable`](crate::ProcessTable) slot), and references in flight are
//! tokens in a [`TokenTable`]. Counting within a process stays in that process; the shared
//! record changes only when a process starts or stops holding the block, or a token is sent,
//! claimed or cancelled.
//!
//! # Invariants
//!
//! 1. Every change happens under the record's [`RobustMutex`], so the bitmap, the token count,
//!    the `DEAD` flag and the record's token slots move together.
//! 2. The bitmap and the token table are the truth; the token count is derived. Whoever takes
//!    the lock over from a holder that died mid-change ([`Locked::OwnerDied`]) recomputes the
//!    count from the table and marks the state consistent, so the lock is never left poisoned.
//! 3. A record is `DEAD` exactly when it has no holder and no pending token, and it never
//!    comes back: acquire, send and claim refuse a dead record, so nobody can revive a block
//!    that is being freed. Exactly one caller learns that the record died ([`Released::Last`],
//!    or [`RefError::Orphaned`] for the one whose repair found it dead), and that caller frees
//!    the block.
//! 7. The dead record names its freer: the process slot of the caller that learned of the
//!    death (the `holder` of the operation, the dead slot for [`RefCount::drop_holder`], the
//!    `freer` given to [`RefCount::cancel`]), written with `DEAD` in the same store. If the freer
//!    dies before it is done, [`RefCount::drop_holder`] for its slot returns
//!    [`Released::FreerDied`] (every time, until the block is gone): the one process recovering
//!    that slot finishes the free. Without this a freer killed between its `Last` and the end
//!    of its free left the block to nobody (found by a kill test, session 6).
//! 4. A dead process's references are dropped by [`RefCount::drop_holder`] for its slot; its
//!    tokens stay pending until claimed or reclaimed, because a receiver may still claim them.
//! 5. The target changes only under the lock, and only while its one reference is the holder
//!    changing it ([`RefCount::release_or_renew`]): no token names the old target then, and a
//!    process that acquires the record afterwards sees the new target. A reader that acquired
//!    a record by an id of its own therefore checks [`RefCount::target`] afterwards: if the
//!    target is still its id, the record was not renewed under it.
//! 6. The record belongs to the group its holder slots number (a pool's
//!    [`ProcessTable`](crate::ProcessTable)), passed to every operation as `members`: a waiter
//!    refuses a live holder outside it with [`RefError::Stranger`] instead of waiting forever
//!    (mutex invariant 5). [`AnyProcess`](crate::AnyProcess) waits for any live holder.
//!
//! Fields under the lock are `Relaxed`: the lock's Acquire/Release orders them. Readers outside
//! the lock ([`RefCount::is_dead`], [`RefCount::holders`]) get a racy snapshot.

use crate::mutex::{LockError, Locked, Members, RobustMutex};
use crate::sync::{AtomicU64, Ordering};
use crate::transfer::{Token, TokenError, TokenTable};

const DEAD: u64 = 1 << 63;
const TOKENS: u64 = u32::MAX as u64;
/// Bits 48..63 of a dead record's state: its freer's slot + 1 (invariant 7); 0 = no slot.
const FREER_SHIFT: u32 = 48;
const FREER_MASK: u64 = 0x7FFF << FREER_SHIFT;

/// The freer of a record that dies in an operation whose caller has no process slot to name
/// (a pending token's cancel by a process outside the pool): if it dies before it is done,
/// the block leaks (invariant 7 covers every other caller).
pub const NO_FREER: u32 = u32::MAX;

/// A reference-count record with room for `64 * W` holder processes.
///
/// Lives in shared memory beside the data it counts (zeroed memory is a record with no holder
/// that is not dead; [`RefCount::init`] makes the creator its first holder).
///
/// # Examples
///
/// ```
/// use shm_sync::{AnyProcess, Released, RefCount, TokenSlot, TokenTable};
///
/// let slots: Vec<TokenSlot> = (0..8).map(|_| TokenSlot::new()).collect();
/// let tokens = TokenTable::new(&slots);
/// let rc: RefCount = RefCount::new();
/// rc.init(42, 0); // target id 42, holder: process slot 0
/// let token = rc.send(&tokens, &AnyProcess).unwrap(); // a handle in flight
/// assert_eq!(rc.release(0, &tokens, &AnyProcess).unwrap(), Released::Remaining); // the token keeps it alive
/// rc.claim(token, 1, &tokens, &AnyProcess).unwrap(); // process slot 1 received it
/// assert_eq!(rc.release(1, &tokens, &AnyProcess).unwrap(), Released::Last); // free the block now
/// assert!(rc.is_dead());
/// ```
#[repr(C)]
pub struct RefCount<const W: usize = 2> {
    lock: RobustMutex,
    /// Bit 63: `DEAD`; bits 48..63: the freer's slot + 1 once dead (invariant 7); bits
    /// 0..32: pending tokens.
    state: AtomicU64,
    /// The caller's id for this record, as stored in its tokens.
    target: AtomicU64,
    holders: [AtomicU64; W],
}

/// What [`RefCount::acquire`] or [`RefCount::claim`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// This process now holds the record.
    First,
    /// It held it already (a claim then just consumed the token).
    Already,
}

/// What a release did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// That was the last reference: the record is dead, free what it counts.
    Last,
    /// Others still hold it, or tokens are in flight.
    Remaining,
    /// The process did not hold it (for [`RefCount::drop_holder`] during recovery).
    NotHeld,
    /// That would have been the last reference: the caller still holds the record, now under
    /// a new target, and may reuse what it counts ([`RefCount::release_or_renew`]).
    Renewed,
    /// From [`RefCount::drop_holder`]: the record is dead and the dead slot was its freer,
    /// which died before it finished freeing what the record counts: the caller (recovering
    /// that slot) finishes the free (invariant 7).
    FreerDied,
}

/// Why a reference operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// The record is dead: the block is freed or being freed.
    #[error("the reference count is dead: its block was freed")]
    Dead,
    /// The caller's repair of a holder's half-done change found the record without holder or
    /// token: it is dead now and the caller must free the block.
    #[error("a holder died mid-change and left the block unreferenced: the caller must free it")]
    Orphaned,
    /// The process releasing does not hold the record.
    #[error("process slot {holder} does not hold this reference")]
    NotHolder {
        /// The slot given.
        holder: u32,
    },
    /// The slot number does not fit the bitmap.
    #[error("process slot {holder} is beyond this record's {capacity} holders")]
    HolderOutOfRange {
        /// The slot given.
        holder: u32,
        /// Holders the record can name.
        capacity: u32,
    },
    /// A token problem (stale, table full).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A live process that is not a member of the group (a process of the pool) holds the
    /// record's lock: the shared memory was written outside the protocol (invariant 6).
    #[error("the reference count's lock is held by live pid {holder}, which is not a process of its group")]
    Stranger {
        /// Pid in the lock word.
        holder: u32,
    },
    /// The token belongs to another record.
    #[error("the token does not belong to this reference")]
    ForeignToken,
}

impl<const W: usize> RefCount<W> {
    /// A record with no holder.
    pub fn new() -> Self {
        Self {
            lock: RobustMutex::new(),
            state: AtomicU64::new(0),
            target: AtomicU64::new(0),
            holders: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Makes a fresh record (not yet visible to others) held by `holder`, known to tokens as
    /// `target`. Every word is written, the lock's too: the memory may hold anything, such as
    /// the data of an array that had the block before (a garbage lock word made the first
    /// `send` spin forever; found by the Python front-ends' tests).
    ///
    /// # Panics
    ///
    /// If `holder >= 64 * W` (a caller bug: slots come from a table the caller sized).
    pub fn init(&self, target: u64, holder: u32) {
        assert!((holder as usize) < 64 * W, "holder slot {holder} beyond {} holders", 64 * W);
        self.lock.reset();
        self.target.store(target, Ordering::Relaxed);
        self.state.store(0, Ordering::Relaxed);
        for (i, w) in self.holders.iter().enumerate() {
            w.store(if i == holder as usize / 64 { 1 << (holder % 64) } else { 0 }, Ordering::Relaxed);
        }
    }

    /// Starts holding the record for process slot `holder`.
    ///
    /// # Errors
    ///
    /// [`RefError::Dead`], [`RefError::Orphaned`], [`RefError::HolderOutOfRange`].
    /// Also [`RefError::Stranger`] when a live non-member holds the lock (invariant 6).
    pub fn acquire(&self, holder: u32, tokens: &TokenTable<'_>, members: &impl Members) -> Result<Acquired, RefError> {
        let (word, bit) = self.bit(holder)?;
        self.locked(tokens, members, holder, |s| {
            if s.state.load(Ordering::Relaxed) & DEAD != 0 {
                return Err(RefError::Dead);
            }
            let before = s.holders[word].fetch_or(bit, Ordering::Relaxed);
            Ok(if before & bit == 0 { Acquired::First } else { Acquired::Already })
        })
    }

    /// Stops holding the record for process slot `holder`.
    ///
    /// # Errors
    ///
    /// [`RefError::NotHolder`], [`RefError::Dead`], [`RefError::Orphaned`],
    /// [`RefError::HolderOutOfRange`].
    /// Also [`RefError::Stranger`] when a live non-member holds the lock (invariant 6).
    pub fn release(&self, holder: u32, tokens: &TokenTable<'_>, members: &impl Members) -> Result<Released, RefError> {
        self.release_as(holder, holder, tokens, members)
    }

    /// Stops holding the record for `holder`, a slot that is not a process (such as a name
    /// directory's), on behalf of process slot `freer`: the freer the record names if this
    /// kills it (invariant 7).
    ///
    /// # Errors
    ///
    /// As for [`RefCount::release`].
    pub fn release_as(
        &self,
        holder: u32,
        freer: u32,
        tokens: &TokenTable<'_>,
        members: &impl Members,
    ) -> Result<Released, RefError> {
        let (word, bit) = self.bit(holder)?;
        self.locked(tokens, members, freer, |s| {
            if s.state.load(Ordering::Relaxed) & DEAD != 0 {
                return Err(RefError::Dead);
            }
            if s.holders[word].fetch_and(!bit, Ordering::Relaxed) & bit == 0 {
                return Err(RefError::NotHolder { holder });
            }
            Ok(s.die_if_unreferenced(freer))
        })
    }

    /// Stops holding the record for process slot `holder`, like [`RefCount::release`], unless
    /// this is its last reference: then the record stays alive and held by `holder`, its target
    /// becomes `new_target`, and the result is [`Released::Renewed`] (invariant 5). The caller
    /// can then reuse what the record counts for something new without freeing it: whoever
    /// acquired the record by the old target finds, once it holds it, that [`RefCount::target`]
    /// is no longer its id, and whoever still holds it (another holder, a pending token) makes
    /// this an ordinary release.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_sync::{AnyProcess, Released, RefCount, TokenSlot, TokenTable};
    ///
    /// let slots: Vec<TokenSlot> = (0..8).map(|_| TokenSlot::new()).collect();
    /// let tokens = TokenTable::new(&slots);
    /// let rc: RefCount = RefCount::new();
    /// rc.init(42, 0);
    /// assert_eq!(rc.release_or_renew(0, &tokens, 43, &AnyProcess).unwrap(), Released::Renewed);
    /// assert_eq!((rc.target(), rc.holders()), (43, vec![0])); // still ours, a new identity
    /// let token = rc.send(&tokens, &AnyProcess).unwrap(); // a handle in flight keeps it alive
    /// assert_eq!(rc.release_or_renew(0, &tokens, 44, &AnyProcess).unwrap(), Released::Remaining);
    /// rc.claim(token, 1, &tokens, &AnyProcess).unwrap();
    /// assert_eq!(rc.release_or_renew(1, &tokens, 45, &AnyProcess).unwrap(), Released::Renewed);
    /// assert_eq!(rc.release(1, &tokens, &AnyProcess).unwrap(), Released::Last);
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`RefCount::release`].
    pub fn release_or_renew(
        &self,
        holder: u32,
        tokens: &TokenTable<'_>,
        new_target: u64,
        members: &impl Members,
    ) -> Result<Released, RefError> {
        let (word, bit) = self.bit(holder)?;
        self.locked(tokens, members, holder, |s| {
            if s.state.load(Ordering::Relaxed) & DEAD != 0 {
                return Err(RefError::Dead);
            }
            let mine = s.holders[word].load(Ordering::Relaxed);
            if mine & bit == 0 {
                return Err(RefError::NotHolder { holder });
            }
            let alone = mine == bit
                && s.holders.iter().enumerate().all(|(i, w)| i == word || w.load(Ordering::Relaxed) == 0)
                && s.state.load(Ordering::Relaxed) & TOKENS == 0;
            if alone {
                s.target.store(new_target, Ordering::Relaxed);
                return Ok(Released::Renewed);
            }
            s.holders[word].fetch_and(!bit, Ordering::Relaxed);
            Ok(s.die_if_unreferenced(holder))
        })
    }

    /// The caller's id for this record, as stored in its tokens (invariant 5 says when a
    /// reader can trust it).
    pub fn target(&self) -> u64 {
        // Relaxed: changed only under the lock; a reader that needs it current has taken and
        // released the lock since (acquire, claim), which orders it.
        self.target.load(Ordering::Relaxed)
    }

    /// Drops the reference a dead process in slot `holder` held (recovery, invariant 4). The
    /// caller is that slot's one rescuer: if this drop kills the record, the dead record names
    /// `holder` as its freer (invariant 7), so a rescuer that dies while freeing is followed by
    /// the next rescuer of the same slot.
    ///
    /// Returns [`Released::FreerDied`] for a dead record whose freer is `holder` (invariant 7):
    /// the caller must finish freeing what it counts.
    ///
    /// # Errors
    ///
    /// [`RefError::Orphaned`], [`RefError::HolderOutOfRange`]; a dead record that `holder`
    /// was not freeing gives `Ok(Released::NotHeld)`.
    /// Also [`RefError::Stranger`] when a live non-member holds the lock (invariant 6).
    pub fn drop_holder(
        &self,
        holder: u32,
        tokens: &TokenTable<'_>,
        members: &impl Members,
    ) -> Result<Released, RefError> {
        let (word, bit) = self.bit(holder)?;
        self.locked(tokens, members, holder, |s| {
            let state = s.state.load(Ordering::Relaxed);
            if state & DEAD != 0 {
                return Ok(if freer_of(state) == Some(holder) { Released::FreerDied } else { Released::NotHeld });
            }
            if s.holders[word].fetch_and(!bit, Ordering::Relaxed) & bit == 0 {
                return Ok(Released::NotHeld);
            }
            Ok(s.die_if_unreferenced(holder))
        })
    }

    /// Sends a reference: a pending token that keeps the record alive until claimed or
    /// cancelled, whatever happens to the sender. The sender holds the record, so a send never
    /// kills it (if a repair finds it dead all the same, it names no freer: invariant 7).
    ///
    /// # Errors
    ///
    /// [`RefError::Dead`], [`RefError::Orphaned`], [`TokenError::Full`].
    /// Also [`RefError::Stranger`] when a live non-member holds the lock (invariant 6).
    pub fn send(&self, tokens: &TokenTable<'_>, members: &impl Members) -> Result<Token, RefError> {
        loop {
            let index = tokens.reserve()?;
            let result = self.locked(tokens, members, NO_FREER, |s| {
                if s.state.load(Ordering::Relaxed) & DEAD != 0 {
                    return Err(RefError::Dead);
                }
                // Invariant 2: the slot and the count change together, under the lock.
                let Some(token) = tokens.publish(index, s.target.load(Ordering::Relaxed)) else {
                    return Ok(None); // the reservation was lost: reserve again
                };
                s.state.fetch_add(1, Ordering::Relaxed);
                Ok(Some(token))
            });
            match result {
                Ok(Some(token)) => return Ok(token),
                Ok(None) => continue,
                Err(e) => {
                    tokens.unreserve(index);
                    return Err(e);
                }
            }
        }
    }

    /// Claims a token for process slot `holder`, which then holds the record.
    ///
    /// # Errors
    ///
    /// [`TokenError::Stale`] for a token already claimed or cancelled (also after the block was
    /// freed), [`RefError::ForeignToken`], [`RefError::Orphaned`], [`RefError::HolderOutOfRange`].
    /// Also [`RefError::Stranger`] when a live non-member holds the lock (invariant 6).
    pub fn claim(
        &self,
        token: Token,
        holder: u32,
        tokens: &TokenTable<'_>,
        members: &impl Members,
    ) -> Result<Acquired, RefError> {
        let (word, bit) = self.bit(holder)?;
        self.locked(tokens, members, holder, |s| {
            s.take_token(token, tokens)?;
            let before = s.holders[word].fetch_or(bit, Ordering::Relaxed);
            Ok(if before & bit == 0 { Acquired::First } else { Acquired::Already })
        })
    }

    /// Cancels a token that will never be claimed (a lost message, or one older than the
    /// caller's limit). `freer` is the caller's process slot ([`NO_FREER`] if it has none): the
    /// freer the record names if this kills it (invariant 7).
    ///
    /// # Errors
    ///
    /// As for [`RefCount::claim`].
    pub fn cancel(
        &self,
        token: Token,
        freer: u32,
        tokens: &TokenTable<'_>,
        members: &impl Members,
    ) -> Result<Released, RefError> {
        self.locked(tokens, members, freer, |s| {
            s.take_token(token, tokens)?;
            Ok(s.die_if_unreferenced(freer))
        })
    }

    /// Whether the record is dead (a snapshot).
    pub fn is_dead(&self) -> bool {
        self.state.load(Ordering::Acquire) & DEAD != 0
    }

    /// Pending tokens (a snapshot).
    pub fn pending_tokens(&self) -> u64 {
        self.state.load(Ordering::Acquire) & TOKENS
    }

    /// The freer a dead record names (invariant 7; a snapshot): `None` while it lives, or when
    /// its freer had no slot.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_sync::{AnyProcess, Released, RefCount, TokenSlot, TokenTable};
    ///
    /// let slots: Vec<TokenSlot> = (0..8).map(|_| TokenSlot::new()).collect();
    /// let tokens = TokenTable::new(&slots);
    /// let rc: RefCount = RefCount::new();
    /// rc.init(42, 3);
    /// assert_eq!(rc.release(3, &tokens, &AnyProcess).unwrap(), Released::Last);
    /// assert_eq!(rc.freer(), Some(3)); // the process in slot 3 frees the block
    /// // If it dies before it is done, the rescuer of slot 3 hears so and finishes the free:
    /// assert_eq!(rc.drop_holder(3, &tokens, &AnyProcess).unwrap(), Released::FreerDied);
    /// assert_eq!(rc.drop_holder(4, &tokens, &AnyProcess).unwrap(), Released::NotHeld);
    /// ```
    pub fn freer(&self) -> Option<u32> {
        let state = self.state.load(Ordering::Acquire);
        if state & DEAD == 0 {
            return None;
        }
        freer_of(state)
    }

    /// Process slots holding the record (a snapshot).
    pub fn holders(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (i, w) in self.holders.iter().enumerate() {
            let mut bits = w.load(Ordering::Acquire);
            while bits != 0 {
                out.push(i as u32 * 64 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        out
    }

    /// Whether slot `holder` holds the record (a snapshot).
    pub fn is_held_by(&self, holder: u32) -> bool {
        self.bit(holder).is_ok_and(|(w, b)| self.holders[w].load(Ordering::Acquire) & b != 0)
    }

    fn bit(&self, holder: u32) -> Result<(usize, u64), RefError> {
        if holder as usize >= 64 * W {
            return Err(RefError::HolderOutOfRange { holder, capacity: 64 * W as u32 });
        }
        Ok((holder as usize / 64, 1 << (holder % 64)))
    }

    fn take_token(&self, token: Token, tokens: &TokenTable<'_>) -> Result<(), RefError> {
        if self.state.load(Ordering::Relaxed) & DEAD != 0 {
            return Err(TokenError::Stale { index: token.index, generation: token.generation }.into());
        }
        if !tokens.is_pending_for(token, self.target.load(Ordering::Relaxed)) {
            return Err(match tokens.target_of(token) {
                Some(_) => RefError::ForeignToken,
                None => TokenError::Stale { index: token.index, generation: token.generation }.into(),
            });
        }
        if self.state.load(Ordering::Relaxed) & TOKENS == 0 {
            // A pending token for our target while our count is zero: two records share a
            // target id (a caller bug, such as repeated nonces). Refuse rather than wrap the
            // count into `DEAD` (found in review).
            return Err(RefError::ForeignToken);
        }
        tokens.retire(token)?;
        self.state.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// Under the lock: if nothing references the record any more, it dies (invariant 3), naming
    /// `freer` (invariant 7).
    fn die_if_unreferenced(&self, freer: u32) -> Released {
        let unheld = self.holders.iter().all(|w| w.load(Ordering::Relaxed) == 0);
        if unheld && self.state.load(Ordering::Relaxed) & TOKENS == 0 {
            // No token is pending: the state was 0, and becomes DEAD with its freer.
            let named = if u64::from(freer) < FREER_MASK >> FREER_SHIFT { u64::from(freer) + 1 } else { 0 };
            self.state.store(DEAD | named << FREER_SHIFT, Ordering::Relaxed);
            Released::Last
        } else {
            Released::Remaining
        }
    }

    /// Runs `f` under the lock, repairing first if the previous holder died (invariant 2);
    /// `freer` is named if the repair finds the record dead (invariant 7).
    fn locked<R>(
        &self,
        tokens: &TokenTable<'_>,
        members: &impl Members,
        freer: u32,
        f: impl FnOnce(&Self) -> Result<R, RefError>,
    ) -> Result<R, RefError> {
        let guard = loop {
            // Invariant 6: wait for members only.
            match self.lock.lock_among(members) {
                Ok(Locked::Acquired(g)) => break g,
                Ok(Locked::OwnerDied(mut g)) => {
                    let orphaned = self.repair(tokens, freer);
                    g.mark_consistent();
                    if orphaned {
                        return Err(RefError::Orphaned);
                    }
                    break g;
                }
                // Only a holder outside this module could poison it; our repair rebuilds the
                // state from its truth, so clear the poison and take the lock again.
                Err(LockError::Poisoned) => {
                    self.lock.reset_poison();
                }
                Err(LockError::Stranger { holder }) => return Err(RefError::Stranger { holder }),
                Err(LockError::TimedOut { .. } | LockError::WouldBlock { .. }) => {
                    unreachable!("lock_among has no timeout and sleeps")
                }
            }
        };
        let result = f(self);
        drop(guard);
        result
    }

    /// Rebuilds the token count from the table; returns whether the record died of it.
    fn repair(&self, tokens: &TokenTable<'_>, freer: u32) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        if state & DEAD != 0 {
            return false;
        }
        let pending = tokens.count_pending(self.target.load(Ordering::Relaxed));
        self.state.store(pending.min(TOKENS), Ordering::Relaxed);
        self.die_if_unreferenced(freer) == Released::Last
    }
}

/// The freer named by a dead record's state word (invariant 7).
fn freer_of(state: u64) -> Option<u32> {
    match (state & FREER_MASK) >> FREER_SHIFT {
        0 => None,
        n => Some(n as u32 - 1),
    }
}

#[cfg(all(shm_loom, feature = "loom"))]
impl<const W: usize> RefCount<W> {
    /// Model support: take the record's lock and never release it, as a process killed inside
    /// a change would.
    #[doc(hidden)]
    pub fn lock_and_abandon(&self) {
        std::mem::forget(self.lock.lock().map(Locked::into_guard));
    }
}

impl<const W: usize> Default for RefCount<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const W: usize> core::fmt::Debug for RefCount<W> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RefCount")
            .field("holders", &self.holders())
            .field("tokens", &self.pending_tokens())
            .field("dead", &self.is_dead())
            .finish()
    }
}
