//! Holder-tracked reference counts that survive a holder's death.
//!
//! # Why not one shared integer
//!
//! A single shared count cannot be repaired after a holder dies: nobody knows how much of it
//! was the dead process's. Here every process that holds a block is named in the record's
//! holder set by its [`ProcessTable`](crate::ProcessTable) slot (a bit of a bitmap, or a lane
//! or overflow bit of a [`HolderList`]: the `holders` module), and references in flight are
//! tokens in a [`TokenTable`]. Counting within a process stays in that process; the shared
//! record changes only when a process starts or stops holding the block, or a token is sent,
//! claimed or cancelled.
//!
//! # Invariants
//!
//! 1. Every change happens under the record's [`RobustMutex`], so the bitmap, the token count,
//!    the `DEAD` flag and the record's token slots move together.
//! 2. The holder set (`holders`) and the token table are the truth; the holder count and the
//!    token count in the state word are derived. Whoever takes the lock over from a holder that
//!    died mid-change ([`Locked::OwnerDied`]) recomputes both from the set and the table and
//!    marks the state consistent, so the lock is never left poisoned. Because the holder count
//!    is kept, no operation scans the set to learn whether the record is still held.
//! 3. A record is `DEAD` exactly when it has no holder and no pending token, and it never
//!    comes back: acquire, send and claim refuse a dead record, so nobody can revive a block
//!    that is being freed. Exactly one caller learns that the record died ([`Released::Last`],
//!    or [`RefError::Orphaned`] for the one whose repair found it dead), and that caller frees
//!    the block.
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
//! 7. The dead record names its freer: the process slot of the caller that learned of the
//!    death (the `holder` of the operation, the dead slot for [`RefCount::drop_holder`], the
//!    `freer` given to [`RefCount::cancel`] and [`RefCount::release_as`]), written with `DEAD`
//!    in the same store. If the freer dies before it is done, [`RefCount::drop_holder`] for its
//!    slot returns [`Released::FreerDied`] (every time, until the block is gone): the one
//!    process recovering that slot finishes the free. Without this a freer killed between its
//!    `Last` and the end of its free left the block to nobody (found by a kill test, session 6).
//!
//! Fields under the lock are `Relaxed`: the lock's Acquire/Release orders them. Readers outside
//! the lock ([`RefCount::is_dead`], [`RefCount::holders`]) get a racy snapshot.

use crate::holders::{Change, HolderBitmap, HolderList, Holders, NoRoom};
use crate::mutex::AnyProcess;
use crate::mutex::{LockError, Locked, Members, RobustMutex};
use crate::sync::{AtomicU64, Ordering};
use crate::transfer::{Token, TokenError, TokenTable};

const DEAD: u64 = 1 << 63;
const TOKENS: u64 = u32::MAX as u64;
/// The holder count's lowest bit in the state word.
const HOLDERS_SHIFT: u32 = 32;
/// One holder, as counted in the state word.
const ONE_HOLDER: u64 = 1 << HOLDERS_SHIFT;
/// The holder count's bits (16: room for 65,535 holders).
const HOLDERS: u64 = 0xFFFF << HOLDERS_SHIFT;
/// Bits 48..63 of a dead record's state: its freer's slot + 1 (invariant 7); 0 = no slot.
const FREER_SHIFT: u32 = 48;
const FREER_MASK: u64 = 0x7FFF << FREER_SHIFT;

/// The freer of a record that dies in an operation whose caller has no process slot to name
/// (a process that cannot join its pool): if it dies before it is done, the block leaks
/// (invariant 7 covers every other caller).
pub const NO_FREER: u32 = u32::MAX;

/// A reference-count record whose holder processes are kept in `H` (the `holders` module):
/// [`HolderBitmap<W>`] names `64 * W` slots; [`HolderList`] names twelve in the same 32 bytes
/// as a 256-slot bitmap, and up to 65,535 with an overflow bitmap its group resolves
/// ([`RefCount::link_overflow`]).
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
pub struct RefCount<H: Holders = HolderBitmap<2>> {
    lock: RobustMutex,
    /// Changed only under the lock (invariant 1).
    ///
    /// | bits | meaning |
    /// |---|---|
    /// | 63 | `DEAD` (invariant 3): set once, never cleared |
    /// | 48..63 | zero while alive; once dead, the freer's slot + 1 (invariant 7) |
    /// | 32..48 | holders: how many slots `holders` names (derived, invariant 2) |
    /// | 0..32 | pending tokens of this record in the table (derived, invariant 2) |
    ///
    /// Unreferenced (no holder, no token) exactly when the low 48 bits are zero.
    state: AtomicU64,
    /// The caller's id for this record, as stored in its tokens.
    target: AtomicU64,
    /// Which process slots hold the record (`holders` module).
    holders: H,
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
    /// The record's inline holders are full and it links no overflow ([`HolderList`]):
    /// allocate a zeroed bitmap the group resolves, link it with
    /// [`RefCount::link_overflow`], and try again. Nothing was changed.
    #[error("the reference count's inline holders are full: link an overflow bitmap and try again")]
    NeedsOverflow,
    /// The record links an overflow its group does not resolve.
    #[error("the reference count links holder overflow {id}, which its group does not know")]
    OverflowUnavailable {
        /// The id the record links.
        id: u64,
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

impl<H: Holders> RefCount<H> {
    /// Holders the record could ever name: slots `0..CAPACITY` (a [`HolderList`] names those
    /// beyond its lanes only within its overflow's bits).
    pub const CAPACITY: u32 = H::LIMIT;
    // The holder count's 16 bits hold every holder.
    const FITS: () = assert!(H::LIMIT as u64 <= HOLDERS >> HOLDERS_SHIFT);

    /// A record with no holder.
    pub fn new() -> Self {
        let () = Self::FITS;
        Self { lock: RobustMutex::new(), state: AtomicU64::new(0), target: AtomicU64::new(0), holders: H::empty() }
    }

    /// Makes a fresh record (not yet visible to others) held by `holder`, known to tokens as
    /// `target`. Every word is written, the lock's too: the memory may hold anything, such as
    /// the data of an array that had the block before (a garbage lock word made the first
    /// `send` spin forever; found by the Python front-ends' tests).
    ///
    /// # Panics
    ///
    /// If `holder` does not fit the storage without an overflow (a caller bug: slots come
    /// from a table the caller sized).
    pub fn init(&self, target: u64, holder: u32) {
        self.lock.reset();
        self.target.store(target, Ordering::Relaxed);
        self.state.store(ONE_HOLDER, Ordering::Relaxed);
        self.holders.reset(holder);
    }

    /// Starts holding the record for process slot `holder`.
    ///
    /// # Errors
    ///
    /// [`RefError::Dead`], [`RefError::Orphaned`], [`RefError::HolderOutOfRange`].
    /// Also [`RefError::Stranger`] when a live non-member holds the lock (invariant 6).
    pub fn acquire(&self, holder: u32, tokens: &TokenTable<'_>, members: &impl Members) -> Result<Acquired, RefError> {
        let slot = self.bit(holder)?;
        self.locked(tokens, members, holder, |s| {
            if s.state.load(Ordering::Relaxed) & DEAD != 0 {
                return Err(RefError::Dead);
            }
            s.add_holder(slot, members)
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
        let slot = self.bit(holder)?;
        self.locked(tokens, members, freer, |s| {
            if s.state.load(Ordering::Relaxed) & DEAD != 0 {
                return Err(RefError::Dead);
            }
            if s.remove_holder(slot, members) == Change::Unchanged {
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
        let slot = self.bit(holder)?;
        self.locked(tokens, members, holder, |s| {
            let state = s.state.load(Ordering::Relaxed);
            if state & DEAD != 0 {
                return Err(RefError::Dead);
            }
            if !s.holders.contains(slot, members) {
                return Err(RefError::NotHolder { holder });
            }
            // We hold it: alone when we are the one holder and no token is pending.
            if state & (HOLDERS | TOKENS) == ONE_HOLDER {
                s.target.store(new_target, Ordering::Relaxed);
                return Ok(Released::Renewed);
            }
            s.remove_holder(slot, members);
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
        let slot = self.bit(holder)?;
        self.locked(tokens, members, holder, |s| {
            let state = s.state.load(Ordering::Relaxed);
            if state & DEAD != 0 {
                return Ok(if freer_of(state) == Some(holder) { Released::FreerDied } else { Released::NotHeld });
            }
            if s.remove_holder(slot, members) == Change::Unchanged {
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
        let slot = self.bit(holder)?;
        self.locked(tokens, members, holder, |s| {
            // Room first: a claim refused for want of room keeps its token (the caller links
            // an overflow and claims again).
            s.holders.room_for(slot, members).map_err(|e| no_room(holder, e))?;
            s.take_token(token, tokens)?;
            s.add_holder(slot, members)
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

    /// Process slots holding the record (a snapshot). A [`HolderList`] record's overflow
    /// holders are listed only by [`RefCount::holders_among`], which can resolve it.
    pub fn holders(&self) -> Vec<u32> {
        self.holders.collect(&AnyProcess)
    }

    /// Process slots holding the record, its overflow resolved by `group` (a snapshot).
    pub fn holders_among(&self, group: &impl Members) -> Vec<u32> {
        self.holders.collect(group)
    }

    /// How many process slots hold the record (a snapshot of the derived count, invariant 2).
    pub fn holder_count(&self) -> u32 {
        ((self.state.load(Ordering::Acquire) & HOLDERS) >> HOLDERS_SHIFT) as u32
    }

    /// Whether slot `holder` holds the record (a snapshot).
    pub fn is_held_by(&self, holder: u32) -> bool {
        self.holders.contains_snapshot(holder, &AnyProcess)
    }

    /// Whether slot `holder` holds the record, its overflow resolved by `group` (a snapshot).
    pub fn is_held_by_among(&self, holder: u32, group: &impl Members) -> bool {
        self.holders.contains_snapshot(holder, group)
    }

    fn bit(&self, holder: u32) -> Result<u32, RefError> {
        if holder < H::LIMIT {
            Ok(holder)
        } else {
            Err(RefError::HolderOutOfRange { holder, capacity: Self::CAPACITY })
        }
    }

    /// Under the lock: `slot` holds the record; the count follows the set (invariant 2: a
    /// death between the two is repaired from the set).
    #[inline]
    fn add_holder(&self, slot: u32, members: &impl Members) -> Result<Acquired, RefError> {
        match self.holders.insert(slot, members).map_err(|e| no_room(slot, e))? {
            Change::Changed => {
                self.state.fetch_add(ONE_HOLDER, Ordering::Relaxed);
                Ok(Acquired::First)
            }
            Change::Unchanged => Ok(Acquired::Already),
        }
    }

    /// Under the lock: `slot` no longer holds the record; the count follows (as `add_holder`).
    #[inline]
    fn remove_holder(&self, slot: u32, members: &impl Members) -> Change {
        let change = self.holders.remove(slot, members);
        if change == Change::Changed {
            self.state.fetch_sub(ONE_HOLDER, Ordering::Relaxed);
        }
        change
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

    /// Under the lock: if nothing references the record any more, it dies (invariant 3),
    /// naming `freer` (invariant 7). The counts decide, without a scan of the holder set
    /// (invariant 2).
    #[inline]
    fn die_if_unreferenced(&self, freer: u32) -> Released {
        if self.state.load(Ordering::Relaxed) & (HOLDERS | TOKENS) == 0 {
            // Nothing counted: the state was 0, and becomes DEAD with its freer.
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
                    let orphaned = self.repair(tokens, members, freer);
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

    /// Rebuilds both counts from the truth, the holder set and the token table (invariant 2);
    /// returns whether the record died of it.
    #[cold]
    fn repair(&self, tokens: &TokenTable<'_>, members: &impl Members, freer: u32) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        if state & DEAD != 0 {
            return false;
        }
        let pending = tokens.count_pending(self.target.load(Ordering::Relaxed));
        let held = u64::from(self.holders.count(members)) << HOLDERS_SHIFT;
        self.state.store(held | pending.min(TOKENS), Ordering::Relaxed);
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

/// The refcount error for a slot the holder set has no room for.
fn no_room(holder: u32, e: NoRoom) -> RefError {
    match e {
        NoRoom::OutOfRange { capacity } => RefError::HolderOutOfRange { holder, capacity },
        NoRoom::NeedsOverflow => RefError::NeedsOverflow,
        NoRoom::OverflowUnavailable { id } => RefError::OverflowUnavailable { id },
    }
}

impl RefCount<HolderList> {
    /// Links overflow bitmap `id` (which `members` resolves to zeroed words) for holders
    /// beyond the twelve inline ones, after [`RefError::NeedsOverflow`]. The link is one store
    /// under the lock, never undone (holders invariant 4): [`Change::Unchanged`] when another
    /// process linked one first, and then `id` is still the caller's to free. `freer` is the
    /// caller's process slot: the freer the record names if the repair of a holder's
    /// half-done release finds it dead here (invariant 7; [`RefError::Orphaned`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_sync::holders::{Change, HolderList};
    /// use shm_sync::{AtomicU64, Holder, Members, RefCount, RefError, Standing, TokenSlot, TokenTable};
    ///
    /// struct Pool(Vec<AtomicU64>); // resolves overflow id 1 to 4,096 bits
    /// impl Members for Pool {
    ///     fn standing(&self, _: Holder) -> Standing { Standing::Member }
    ///     fn holder_overflow(&self, id: u64) -> Option<&[AtomicU64]> { (id == 1).then_some(&self.0[..]) }
    /// }
    /// let pool = Pool((0..64).map(|_| AtomicU64::new(0)).collect());
    /// let slots: Vec<TokenSlot> = (0..8).map(|_| TokenSlot::new()).collect();
    /// let tokens = TokenTable::new(&slots);
    /// let rc: RefCount<HolderList> = RefCount::new();
    /// rc.init(42, 0);
    /// for slot in 1..12 {
    ///     rc.acquire(slot, &tokens, &pool).unwrap();
    /// }
    /// assert_eq!(rc.acquire(4000, &tokens, &pool), Err(RefError::NeedsOverflow));
    /// assert_eq!(rc.link_overflow(1, 0, &tokens, &pool).unwrap(), Change::Changed);
    /// rc.acquire(4000, &tokens, &pool).unwrap();
    /// assert_eq!((rc.holder_count(), rc.is_held_by_among(4000, &pool)), (13, true));
    /// ```
    ///
    /// # Errors
    ///
    /// [`RefError::Dead`] (the caller frees `id`), [`RefError::Orphaned`] (the caller frees
    /// `id` and what the record counts), [`RefError::Stranger`].
    pub fn link_overflow(
        &self,
        id: u64,
        freer: u32,
        tokens: &TokenTable<'_>,
        members: &impl Members,
    ) -> Result<Change, RefError> {
        assert_ne!(id, 0, "overflow id 0 means none");
        // Not `NO_FREER`: a repair here can find the record dead, and then the caller frees it
        // (found in review: a linker killed in that free leaked the array).
        self.locked(tokens, members, freer, |s| {
            if s.state.load(Ordering::Relaxed) & DEAD != 0 {
                return Err(RefError::Dead);
            }
            Ok(s.holders.link(id))
        })
    }

    /// The linked overflow's id, 0 when none (a snapshot; once linked it stays, so the one
    /// that frees what the record counts frees it too).
    pub fn overflow_id(&self) -> u64 {
        self.holders.overflow_id()
    }
}

#[cfg(all(shm_loom, feature = "loom"))]
impl RefCount<HolderList> {
    /// Model support: take the lock, link overflow `id`, and die there, lock held.
    #[doc(hidden)]
    pub fn link_overflow_and_abandon(&self, id: u64) {
        let guard = self.lock.lock().map(Locked::into_guard);
        self.holders.link(id);
        std::mem::forget(guard);
    }
}

#[cfg(all(shm_loom, feature = "loom"))]
impl<H: Holders> RefCount<H> {
    /// Model support: take the record's lock and never release it, as a process killed inside
    /// a change would.
    #[doc(hidden)]
    pub fn lock_and_abandon(&self) {
        std::mem::forget(self.lock.lock().map(Locked::into_guard));
    }

    /// Model support: take the lock, add `holder` to the holder set but not to the count, and
    /// die there, lock held (a process killed between the two steps of `add_holder`).
    #[doc(hidden)]
    pub fn insert_holder_and_abandon(&self, holder: u32, members: &impl Members) {
        let guard = self.lock.lock().map(Locked::into_guard);
        let _ = self.holders.insert(holder, members);
        std::mem::forget(guard);
    }

    /// Model support: as [`RefCount::insert_holder_and_abandon`], removing `holder` from the
    /// set but not from the count (killed inside `remove_holder`).
    #[doc(hidden)]
    pub fn remove_holder_and_abandon(&self, holder: u32, members: &impl Members) {
        let guard = self.lock.lock().map(Locked::into_guard);
        self.holders.remove(holder, members);
        std::mem::forget(guard);
    }
}

impl<H: Holders> Default for RefCount<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: Holders> core::fmt::Debug for RefCount<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RefCount")
            .field("holders", &self.holders())
            .field("tokens", &self.pending_tokens())
            .field("dead", &self.is_dead())
            .finish()
    }
}
