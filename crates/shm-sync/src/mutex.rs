//! A robust mutex: a futex word and an owner identity, in shared memory.
//!
//! # Invariants
//!
//! 1. The lock word names its holder's pid, so a waiter can always ask whether the holder lives:
//!    there is no instant at which the mutex is held by nobody we could name.
//! 2. A holder's death never leaves the mutex stuck: a waiter sleeps at most [`RECHECK`] at a
//!    time, then checks the holder's liveness, and takes the mutex over with a CAS on the exact
//!    word it judged, so it never takes a mutex from a holder that came after the dead one.
//! 3. Whoever takes a mutex over from a dead holder learns it ([`Locked::OwnerDied`]) and must
//!    call [`MutexGuard::mark_consistent`] once the protected state is repaired; unlocking
//!    without it poisons the mutex, and every later lock fails with [`LockError::Poisoned`]
//!    until [`RobustMutex::reset_poison`].
//! 4. Uncontended lock and unlock are one CAS and one swap: no syscall.
//!
//! # The lock word
//!
//! | bits   | name         | meaning |
//! |--------|--------------|---------|
//! | 0..22  | pid          | pid of the holder; 0 when unlocked |
//! | 29     | `WAITERS`    | someone may sleep on the word: unlock must wake |
//! | 30     | `RECOVERING` | the holder took the mutex from a dead owner and has not marked it consistent |
//! | 31     | `POISONED`   | a recovering holder unlocked without marking it consistent (pid 0) |
//!
//! | word                      | state | next |
//! |---------------------------|-------|------|
//! | 0                         | free | held (lock) |
//! | `pid [\| WAITERS]`        | held by `pid` | free (unlock), recovering (pid dead, taken over) |
//! | `pid \| RECOVERING [\| WAITERS]` | held after a death | held (mark consistent), poisoned (unlock), recovering (pid dead too) |
//! | `POISONED`                | poisoned | free (reset) |
//!
//! The owner word beside it holds the holder's full identity (pid and start time), written
//! just after the lock is taken. A waiter uses it only when its pid matches the lock word's;
//! otherwise (not written yet, or left by an earlier holder) it judges by pid alone.
//!
//! # Who may hold it: members and strangers
//!
//! Invariant 2 waits as long as the holder lives. That is right when only processes following
//! the protocol write the word, but a buggy or hostile process that can write the memory can
//! set it to the pid of any live process (pid 1, say) and every waiter would wait forever. A
//! mutex that belongs to a group of processes (a pool's process table) therefore takes the
//! group as a parameter, [`Members`], and adds:
//!
//! 5. A waiter never waits forever on a live holder that is not a member: after a [`RECHECK`]
//!    timeout it asks [`Members::standing`] about a live holder, and a holder judged a
//!    [`Standing::Stranger`] for the same lock word on [`STRANGER_STRIKES`] consecutive
//!    rechecks makes the lock fail with [`LockError::Stranger`]. A stranger's word is never
//!    taken over: a waiter that took over a live holder could break mutual exclusion with a
//!    real member the judgement got wrong, so the worst a wrong judgement does is a typed error.
//!
//! The judgement is sound for a member that follows the group's rule: *a process enters the
//! group (with a release fence) before it takes any of the group's mutexes, and leaves only
//! after it released them all* ([`ProcessTable`](crate::ProcessTable) does the fence). A waiter's
//! `Acquire` load that reads the member's lock word then also sees its entry. A member that
//! leaves and re-enters between the waiter's load of the word and its scan could be misjudged
//! once; the strikes ask for the same word on consecutive rechecks, a [`RECHECK`] apart, so
//! that race would have to repeat. Uncontended lock and unlock never consult the group
//! (invariant 4 holds): only a waiter that already slept does.
//!
//! # Orderings
//!
//! Acquiring CASes are `Acquire` and the releasing swap is `Release`: they pair to hand the
//! protected state from holder to holder. The owner word is `Relaxed`: it is advice checked
//! against the lock word (invariant 2). Setting `WAITERS` and then sleeping on the exact word
//! cannot lose a wakeup, because the kernel compares the word before it sleeps.

use std::time::{Duration, Instant};

use crate::sync::{self, pid_of, AtomicU32, AtomicU64, IdentityBits, Ordering, Waited};

const PID_MASK: u32 = (1 << shm_platform::process::PID_BITS) - 1;
const WAITERS: u32 = 1 << 29;
const RECOVERING: u32 = 1 << 30;
const POISONED: u32 = 1 << 31;

/// How long a waiter sleeps before it checks whether the holder is still alive.
pub const RECHECK: Duration = Duration::from_millis(20);

/// How many consecutive rechecks must find the same lock word held by a live stranger before
/// a waiter gives up with [`LockError::Stranger`] (invariant 5).
pub const STRANGER_STRIKES: u32 = 2;

/// The holder of a mutex, as a waiter sees it after a [`RECHECK`] timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The pid in the lock word.
    pub pid: u32,
    /// The holder's full identity (pid and start time) when the owner word beside the lock
    /// word names the same pid; `None` when it does not (not written yet, or left over).
    pub identity: Option<u64>,
}

/// A waiter's judgement of a live holder (invariant 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The holder may hold the mutex: wait for it.
    Member,
    /// The holder is alive but not in the group the mutex belongs to: the word was written by
    /// something that does not follow the protocol.
    Stranger,
}

/// The group of processes that may hold a mutex (invariant 5).
///
/// Called only by a waiter after a [`RECHECK`] timeout, never on the uncontended path. An
/// implementation must not take the mutex it judges, and must answer [`Standing::Member`] for
/// every process that entered the group before locking and has not left it.
pub trait Members {
    /// Whether `holder`, alive, may hold the mutex.
    fn standing(&self, holder: Holder) -> Standing;

    /// The holder-overflow bitmap that a [`RefCount`](crate::RefCount) of this group links by
    /// `id` ([`HolderList`](crate::holders::HolderList)), or `None` when the group knows no
    /// such block. The group of a record is also where its overflow blocks live (a pool's
    /// metadata); a group without any (the default) resolves nothing, so its records hold at
    /// most their inline holders.
    fn holder_overflow(&self, id: u64) -> Option<&[AtomicU64]> {
        let _ = id;
        None
    }
}

/// Every live process may hold the mutex: waiters wait as long as the holder lives (what
/// [`RobustMutex::lock`] does).
#[derive(Clone, Copy, Debug, Default)]
pub struct AnyProcess;

impl Members for AnyProcess {
    fn standing(&self, _holder: Holder) -> Standing {
        Standing::Member
    }
}

/// A mutex that lives in shared memory and survives its holder's death.
///
/// Zeroed memory is a valid unlocked mutex, so a `RobustMutex` in a fresh segment needs no
/// initialisation. It protects no data itself (the data is elsewhere in shared memory);
/// the guard's lifetime is the critical section.
///
/// # Examples
///
/// ```
/// use shm_sync::{Locked, RobustMutex};
///
/// let m = RobustMutex::new();
/// match m.lock().unwrap() {
///     Locked::Acquired(guard) => drop(guard),
///     Locked::OwnerDied(mut guard) => {
///         // repair the protected state, then:
///         guard.mark_consistent();
///     }
/// }
/// assert!(!m.is_poisoned());
/// ```
#[repr(C)]
pub struct RobustMutex {
    word: AtomicU32,
    reserved: AtomicU32,
    owner: AtomicU64,
}

#[cfg(not(all(shm_loom, feature = "loom")))]
const _: () = assert!(core::mem::size_of::<RobustMutex>() == 16 && core::mem::align_of::<RobustMutex>() == 8);

/// What [`RobustMutex::lock`] got.
#[must_use = "an OwnerDied lock must be repaired and marked consistent"]
#[derive(Debug)]
pub enum Locked<'a> {
    /// The mutex was free or released normally.
    Acquired(MutexGuard<'a>),
    /// The previous holder died holding it: the protected state may be half-updated. Repair it
    /// and call [`MutexGuard::mark_consistent`], or the mutex is poisoned on unlock.
    OwnerDied(MutexGuard<'a>),
}

impl<'a> Locked<'a> {
    /// The guard, whichever way it was acquired.
    pub fn into_guard(self) -> MutexGuard<'a> {
        match self {
            Locked::Acquired(g) | Locked::OwnerDied(g) => g,
        }
    }
}

/// Why a lock attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// A holder that had taken the mutex over from a dead owner unlocked it without marking the
    /// state consistent.
    #[error("the mutex is poisoned: its protected state was left inconsistent after a holder died")]
    Poisoned,
    /// The timeout elapsed while another (live) process held the mutex.
    #[error("timed out waiting for the mutex (held by pid {holder})")]
    TimedOut {
        /// Pid of the holder when we gave up.
        holder: u32,
    },
    /// A live process that is not a member of the mutex's group held it on
    /// [`STRANGER_STRIKES`] consecutive rechecks (invariant 5): the shared memory was written
    /// by something that does not follow the protocol. Nothing was taken over.
    #[error("the mutex is held by live pid {holder}, which is not a member of its group: its lock word was written outside the protocol")]
    Stranger {
        /// Pid in the lock word.
        holder: u32,
    },
    /// `try_lock`: a live process holds the mutex.
    #[error("the mutex is held by pid {holder}")]
    WouldBlock {
        /// Pid of the holder.
        holder: u32,
    },
}

/// [`RobustMutex::unlock_held`] by a process that does not hold the mutex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the mutex is not held by this process (holder pid {holder}, 0 for none)")]
pub struct NotHolder {
    /// Pid in the lock word (0: free).
    pub holder: u32,
}

impl RobustMutex {
    /// An unlocked mutex (all zero).
    #[cfg(not(all(shm_loom, feature = "loom")))]
    pub const fn new() -> Self {
        Self { word: AtomicU32::new(0), reserved: AtomicU32::new(0), owner: AtomicU64::new(0) }
    }

    /// An unlocked mutex (all zero).
    #[cfg(all(shm_loom, feature = "loom"))]
    pub fn new() -> Self {
        Self { word: AtomicU32::new(0), reserved: AtomicU32::new(0), owner: AtomicU64::new(0) }
    }

    /// Makes this mutex unlocked, whatever its words held: for a mutex in memory that nobody
    /// else can see yet, such as a block the allocator just handed out, whose bytes are
    /// whatever its previous use left there.
    pub fn reset(&self) {
        // Relaxed: the memory is not visible to anyone yet; whoever publishes it (the array
        // header's magic, stored with Release) orders these stores before the publication.
        self.word.store(0, Ordering::Relaxed);
        self.reserved.store(0, Ordering::Relaxed);
        self.owner.store(0, Ordering::Relaxed);
    }

    /// Locks, waiting as long as a live process holds the mutex.
    ///
    /// # Errors
    ///
    /// [`LockError::Poisoned`].
    pub fn lock(&self) -> Result<Locked<'_>, LockError> {
        self.lock_until(None, &AnyProcess)
    }

    /// Locks, waiting as long as a live *member* of `members` holds the mutex (invariant 5).
    ///
    /// # Errors
    ///
    /// [`LockError::Poisoned`], or [`LockError::Stranger`] when a live process that is not a
    /// member holds it.
    pub fn lock_among(&self, members: &impl Members) -> Result<Locked<'_>, LockError> {
        self.lock_until(None, members)
    }

    /// Locks, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`LockError::Poisoned`], or [`LockError::TimedOut`] naming the holder.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Locked<'_>, LockError> {
        self.lock_until(Some(Instant::now() + timeout), &AnyProcess)
    }

    /// Locks if the mutex is free or its holder is dead; never sleeps.
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] when a live process holds it; [`LockError::Poisoned`].
    pub fn try_lock(&self) -> Result<Locked<'_>, LockError> {
        let me = sync::current_identity();
        let w = self.word.load(Ordering::Relaxed);
        if w == 0 && self.acquire(0, me, 0) {
            return Ok(Locked::Acquired(self.guard(me)));
        }
        // Acquire: as in `lock_slow`, before judging the holder.
        let w = self.word.load(Ordering::Acquire);
        if w & POISONED != 0 {
            return Err(LockError::Poisoned);
        }
        if w & PID_MASK != 0 && self.holder_is_dead(w) && self.acquire(w, me, RECOVERING) {
            return Ok(Locked::OwnerDied(self.guard(me)));
        }
        Err(LockError::WouldBlock { holder: w & PID_MASK })
    }

    /// Whether the mutex is poisoned.
    pub fn is_poisoned(&self) -> bool {
        self.word.load(Ordering::Relaxed) & POISONED != 0
    }

    /// Clears a poisoned mutex for a caller that has re-created the protected state by other
    /// means. Returns whether it was poisoned.
    pub fn reset_poison(&self) -> bool {
        self.word.compare_exchange(POISONED, 0, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    /// Unlocks a mutex that this process holds without a guard: for a binding that holds the
    /// mutex across calls (it forgot the guard with [`core::mem::forget`]), such as a lock held
    /// from Python between `acquire()` and `release()`. The caller declares the protected
    /// state consistent: a mutex taken over from a dead holder is not poisoned.
    ///
    /// # Errors
    ///
    /// [`NotHolder`] when the lock word does not name this process (free, or held by another
    /// process); nothing changes then.
    pub fn unlock_held(&self) -> Result<(), NotHolder> {
        let me = pid_of(sync::current_identity());
        // Relaxed: only our own process could have stored our pid, so the read is
        // ordered after that store by program order (or by the Python lock handing over
        // between our threads).
        let w = self.word.load(Ordering::Relaxed);
        if w & PID_MASK != me || w & POISONED != 0 {
            return Err(NotHolder { holder: w & PID_MASK });
        }
        self.unlock(false);
        Ok(())
    }

    /// Pid of the current holder, if any.
    pub fn holder(&self) -> Option<u32> {
        match self.word.load(Ordering::Relaxed) & PID_MASK {
            0 => None,
            pid => Some(pid),
        }
    }

    #[inline]
    fn lock_until(&self, deadline: Option<Instant>, members: &impl Members) -> Result<Locked<'_>, LockError> {
        let me = sync::current_identity();
        // Invariant 4: the uncontended path.
        if self.acquire(0, me, 0) {
            return Ok(Locked::Acquired(self.guard(me)));
        }
        self.lock_slow(me, deadline, members)
    }

    #[cold]
    fn lock_slow(
        &self,
        me: IdentityBits,
        deadline: Option<Instant>,
        members: &impl Members,
    ) -> Result<Locked<'_>, LockError> {
        // Invariant 5: the word last judged a stranger's, and on how many rechecks in a row.
        let mut strikes = (0, 0);
        loop {
            let w = self.word.load(Ordering::Relaxed);
            if w & POISONED != 0 {
                return Err(LockError::Poisoned);
            }
            if w & PID_MASK == 0 {
                // Free: take it, and keep WAITERS set since others may be asleep.
                if self.acquire(w, me, WAITERS) {
                    return Ok(Locked::Acquired(self.guard(me)));
                }
                continue;
            }
            if w & WAITERS == 0
                && self.word.compare_exchange(w, w | WAITERS, Ordering::Relaxed, Ordering::Relaxed).is_err()
            {
                continue;
            }
            let mut sleep = RECHECK;
            if let Some(deadline) = deadline {
                let now = Instant::now();
                if now >= deadline {
                    return Err(LockError::TimedOut { holder: w & PID_MASK });
                }
                sleep = sleep.min(deadline - now);
            }
            if sync::futex_wait(&self.word, w | WAITERS, sleep) == Waited::TimedOut {
                // Invariant 2: after a timeout, judge the holder of the word we slept on.
                // Acquire: orders our read of the owner word after the previous holder's
                // unlock (which cleared it), so an older holder's identity is never paired
                // with a newer holder's pid (found in review).
                // The same Acquire load makes a member's group entry visible (invariant 5).
                let now = self.word.load(Ordering::Acquire);
                if now & PID_MASK == 0 || now & POISONED != 0 {
                    continue;
                }
                if self.holder_is_dead(now) {
                    if self.acquire(now, me, RECOVERING) {
                        return Ok(Locked::OwnerDied(self.guard(me)));
                    }
                    continue;
                }
                match self.judge(now, members) {
                    Judged::Member => strikes = (0, 0),
                    Judged::Stranger => {
                        strikes = if strikes.0 == now { (now, strikes.1 + 1) } else { (now, 1) };
                        if strikes.1 >= STRANGER_STRIKES {
                            return Err(LockError::Stranger { holder: now & PID_MASK });
                        }
                    }
                    // It changed or died while we judged it: judge afresh next time.
                    Judged::Moved => strikes = (0, 0),
                }
            }
        }
    }

    /// CAS from `expected` to held by `me`, keeping `WAITERS` if it was set, adding `flags`
    /// (`WAITERS` when others may sleep, `RECOVERING` when taking over from a dead holder).
    #[inline]
    fn acquire(&self, expected: u32, me: IdentityBits, flags: u32) -> bool {
        let new = pid_of(me) | (expected & WAITERS) | flags;
        // Acquire: pairs with the Release swap in `unlock`; the previous holder's writes to the
        // protected state happen-before ours.
        self.word.compare_exchange(expected, new, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    fn guard(&self, me: IdentityBits) -> MutexGuard<'_> {
        // Relaxed: advice for waiters, checked against the lock word (module doc).
        self.owner.store(me, Ordering::Relaxed);
        MutexGuard { mutex: self }
    }

    /// Whether the holder named by lock word `w` is provably dead.
    fn holder_is_dead(&self, w: u32) -> bool {
        let pid = w & PID_MASK;
        let owner = self.owner.load(Ordering::Relaxed);
        if owner != 0 && pid_of(owner) == pid {
            sync::is_dead(owner)
        } else {
            sync::pid_is_dead(pid)
        }
    }

    /// Invariant 5: what the group says of the live holder of word `w`, confirmed against the
    /// word and the holder's liveness after the group answered.
    fn judge(&self, w: u32, members: &impl Members) -> Judged {
        let pid = w & PID_MASK;
        let owner = self.owner.load(Ordering::Relaxed);
        let identity = (owner != 0 && pid_of(owner) == pid).then_some(owner);
        match members.standing(Holder { pid, identity }) {
            Standing::Member => Judged::Member,
            // The holder may have unlocked (and left the group) or died while the group was
            // read: only a word unchanged since, of a holder still alive, counts as a strike.
            Standing::Stranger if self.word.load(Ordering::Acquire) == w && !self.holder_is_dead(w) => Judged::Stranger,
            Standing::Stranger => Judged::Moved,
        }
    }

    fn unlock(&self, poison: bool) {
        self.owner.store(0, Ordering::Relaxed);
        // Release: pairs with the Acquire CAS of the next holder.
        let prev = self.word.swap(if poison { POISONED } else { 0 }, Ordering::Release);
        if prev & WAITERS != 0 {
            // A poisoned mutex wakes everyone, so each learns it at once.
            sync::futex_wake(&self.word, if poison { u32::MAX } else { 1 });
        }
    }
}

/// What [`RobustMutex::judge`] concluded about a live holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judged {
    /// A member: keep waiting.
    Member,
    /// A live stranger still holds the very word judged: one strike.
    Stranger,
    /// The word or the holder's liveness changed while the group was read.
    Moved,
}

impl Default for RobustMutex {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for RobustMutex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let w = self.word.load(Ordering::Relaxed);
        f.debug_struct("RobustMutex")
            .field("holder", &(w & PID_MASK))
            .field("waiters", &(w & WAITERS != 0))
            .field("recovering", &(w & RECOVERING != 0))
            .field("poisoned", &(w & POISONED != 0))
            .finish()
    }
}

/// Holds a [`RobustMutex`]; unlocks on drop.
#[derive(Debug)]
pub struct MutexGuard<'a> {
    mutex: &'a RobustMutex,
}

impl MutexGuard<'_> {
    /// Declares the protected state repaired after [`Locked::OwnerDied`]. Without it, dropping
    /// the guard poisons the mutex (invariant 3). A no-op for a normally acquired mutex.
    pub fn mark_consistent(&mut self) {
        self.mutex.word.fetch_and(!RECOVERING, Ordering::Relaxed);
    }

    /// Whether the state still needs [`MutexGuard::mark_consistent`].
    pub fn is_recovering(&self) -> bool {
        self.mutex.word.load(Ordering::Relaxed) & RECOVERING != 0
    }
}

impl Drop for MutexGuard<'_> {
    fn drop(&mut self) {
        let poison = self.is_recovering();
        self.mutex.unlock(poison);
    }
}

#[cfg(all(test, not(all(shm_loom, feature = "loom"))))]
mod tests {
    use super::*;

    #[test]
    fn unlock_held_releases_only_for_the_holder() {
        let m = RobustMutex::new();
        assert_eq!(m.unlock_held(), Err(NotHolder { holder: 0 }));
        core::mem::forget(m.lock().unwrap().into_guard());
        assert_eq!(m.holder(), Some(std::process::id()));
        assert_eq!(m.unlock_held(), Ok(()));
        assert_eq!(m.holder(), None);
    }

    #[test]
    fn try_lock_and_timeouts_name_the_holder() {
        let m = RobustMutex::new();
        let me = std::process::id();
        let g = m.lock().unwrap().into_guard();
        assert_eq!(m.holder(), Some(me));
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(m.try_lock().unwrap_err(), LockError::WouldBlock { holder: me });
                assert_eq!(m.lock_timeout(Duration::from_millis(30)).unwrap_err(), LockError::TimedOut { holder: me });
            });
        });
        drop(g);
        assert_eq!(m.holder(), None);
        assert!(matches!(m.lock_timeout(Duration::from_millis(30)).unwrap(), Locked::Acquired(_)));
    }

    #[test]
    fn threads_exclude_each_other_and_sleepers_are_woken() {
        let m = RobustMutex::new();
        let counter = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2_000 {
                        let _g = m.lock().unwrap().into_guard();
                        let v = counter.load(Ordering::Relaxed);
                        std::hint::black_box(v);
                        counter.store(v + 1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(counter.load(Ordering::Relaxed), 8_000);
        assert_eq!(m.word.load(Ordering::Relaxed), 0, "free and no waiters left behind");
    }

    #[test]
    fn a_word_poisoned_or_recovering_behaves_as_documented() {
        let m = RobustMutex::new();
        m.word.store(POISONED, Ordering::Relaxed);
        assert_eq!(m.try_lock().unwrap_err(), LockError::Poisoned);
        assert!(m.reset_poison() && !m.reset_poison());
        let mut g = m.lock().unwrap().into_guard();
        m.word.fetch_or(RECOVERING, Ordering::Relaxed);
        assert!(g.is_recovering());
        g.mark_consistent();
        drop(g);
        assert!(!m.is_poisoned());
    }
}
