//! Trimming: giving an arena's free pages back ([`Arena::release_free`]) while other processes
//! allocate, without ever making one of their allocations fail (docs/architecture.md, "Memory").
//!
//! A free block's pages can be punched only by someone who holds the block (`pages`
//! invariant 3), so a trim claims each free region through the tree before it punches it. Claimed
//! all at once (as it was first written), the regions made a concurrent allocation in an empty
//! arena find nothing: 11 of 20,000 1 MiB allocations in a 16 MiB arena failed with a thread
//! trimming in a loop (found in review). The protocol below keeps the claims small and makes a
//! failed allocation wait for the trim instead of failing.
//!
//! # Invariants
//!
//! 1. A trim holds at most one claimed block at a time, of at most [`TRIM_CHUNK`] bytes (and at
//!    least a page): it walks the tree in address order, claims a vacant node of at most that
//!    size with the ordinary claim (a CAS from vacant, tree invariant 2), clears its bits,
//!    punches it and frees it before it claims the next. Claimed, the block is the trim's alone
//!    (and recovered with its owner tag if the trimmer dies), so nobody uses pages it punches.
//! 2. At most one trim per segment runs at a time: the trim state's tag field names the owner
//!    tag running it (0: none), set by a CAS from 0 and cleared by the trim when it ends.
//!    Whoever finds the named owner gone (`OwnerTable::is_gone`) clears the field.
//! 3. An allocation that finds no block while a trim runs registers as a waiter (the waiter
//!    field) before it looks again; a trim does not claim while waiters are registered: it
//!    pauses, holding nothing, with the paused flag set, which it clears only in a word with no
//!    waiter (or when its budget of [`PAUSE_MAX`] per trim is spent, so a waiter that died
//!    cannot stall it). After its registration, the first release by the trim (the sequence
//!    field changes), the paused flag or the trim's end leaves the trim holding nothing until
//!    the waiter leaves: the waiter's look then sees every free block, as if no trim ran, and
//!    it looks at once. A trim therefore delays an allocation by at most one chunk's punch; it
//!    never makes it fail, and an allocation that cannot fit fails without waiting out the
//!    pause (before the flag, it waited for a release while the paused trim waited for it).
//! 4. Every wait is a shared futex wait with a timeout (`shm_platform::futex` invariant 2),
//!    and each side gives up after a bound ([`PAUSE_MAX`], [`WAIT_MAX`]): a dead or stopped
//!    process on the other side costs time, never a hang. Inside those bounds no wait relies
//!    on a timeout: every change the other side waits for comes with a wake. The loom models
//!    (`tests/loom_trim.rs`) run this code with untimed waits and a frozen clock, so a lost
//!    wakeup or a mutual wait shows as a deadlock.
//!
//! The trim state word (a `u32` in the segment header, offset 544; zero in a new segment):
//!
//! | bits | field | written by |
//! |---|---|---|
//! | 0-9 | tag of the trimming arena, 0 for none | the trim (begin: CAS from 0; end: `fetch_update`, with bit 20), or whoever finds it gone |
//! | 10-19 | allocations waiting for the trim | the waiters (`fetch_update` +1 below the maximum, `fetch_sub` 1) |
//! | 20 | paused: the trim holds nothing and waits for the waiters | the trim (set when it pauses; cleared by a `fetch_update` only where bits 10-19 are 0, unless its budget is spent) |
//! | 21-31 | release sequence (wraps at 2,048) | the trim, `fetch_add` after each block it frees |
//!
//! (Bit 20 was the sequence's lowest bit in the first version of this layout, never released.)
//!
//! Orderings: the word carries no data (the blocks synchronise through their node words,
//! `SeqCst`); its read-modify-writes are `AcqRel` and its loads `Acquire` so that each side's
//! decision is ordered after the other's last step on the word (a waiter's registration before
//! the trim's next pause check, which follows its own release in the word's modification order;
//! the paused flag after the trim's last free, so a waiter that sees it sees the block free).
//!
//! The protocol is written against [`TrimHost`] (the word, liveness, recovery, a clock) and
//! the tree's word store, so the arena and the loom models run the same [`TrimState`] code
//! (`sync` invariant 1).

use std::time::{Duration, Instant};

use core::sync::atomic::Ordering::{AcqRel, Acquire};

use crate::arena::Arena;
use crate::block::Block;
use crate::layout::PAGE;
use crate::sync::{AtomicWords, FutexWord, SharedU32, Waited};
use crate::tree::{BuddyTree, NodeRef};

/// The largest block a trim claims at once (invariant 1): 2 MiB, punched in well under a
/// millisecond on this VM (a touched MiB takes about 370 us), so that is all a waiter waits.
pub const TRIM_CHUNK: u64 = 2 << 20;
/// The longest a trim pauses for waiters in all (invariant 3).
const PAUSE_MAX: Duration = Duration::from_millis(100);
/// The longest an allocation waits for a trim (invariant 4); a trim pauses for it after one
/// chunk, so this is reached only when the trimmer is stopped or its host very slow.
const WAIT_MAX: Duration = Duration::from_secs(1);
/// One futex wait: how often each side looks at the other's liveness.
const TICK: Duration = Duration::from_millis(1);

const TAG_MASK: u32 = (1 << 10) - 1;
const WAITER_ONE: u32 = 1 << 10;
const WAITER_MASK: u32 = TAG_MASK << 10;
/// Set by a trim that pauses for waiters (holding nothing), cleared when none is left.
const PAUSED: u32 = 1 << 20;
const SEQ_ONE: u32 = 1 << 21;

fn trimmer(word: u32) -> u16 {
    (word & TAG_MASK) as u16
}

fn waiters(word: u32) -> u32 {
    (word & WAITER_MASK) >> 10
}

fn sequence(word: u32) -> u32 {
    word >> 21
}

/// What the protocol asks of the arena around it: the arena implements it over its mapped
/// header word, the loom models (`tests/loom_trim.rs`) over loom's atomics, so both run the
/// code below unchanged (`sync` invariant 1).
pub trait TrimHost {
    /// The trim state word's type.
    type Word: FutexWord + ?Sized;
    /// The trim state word (module doc).
    fn state_word(&self) -> &Self::Word;
    /// Whether owner `tag` is gone: its slot free, or its process dead (invariant 2).
    fn is_gone(&self, tag: u16) -> bool;
    /// Frees what dead owners held; called by a waiter that cleared a dead trimmer, whose
    /// claimed chunk is freed with the rest of what it owned.
    fn recover_dead(&self);
    /// A monotonic clock (for [`PAUSE_MAX`] and [`WAIT_MAX`]).
    fn now(&self) -> Duration;
}

/// The protocol of the module doc, on one host's trim state word.
pub struct TrimState<'a, H: ?Sized> {
    host: &'a H,
}

/// Ends a trim when dropped (invariant 2), waking whoever waits on the word.
#[must_use = "dropping the guard ends the trim"]
pub struct TrimGuard<'a, H: TrimHost + ?Sized> {
    host: &'a H,
    tag: u16,
}

impl<H: TrimHost + ?Sized> Drop for TrimGuard<'_, H> {
    fn drop(&mut self) {
        let word = self.host.state_word();
        let tag = u32::from(self.tag);
        // AcqRel: ordered after our last release (a waiter that sees the tag gone looks again).
        let _ = word.fetch_update(AcqRel, Acquire, |w| (w & TAG_MASK == tag).then_some(w & !(TAG_MASK | PAUSED)));
        word.wake_all();
    }
}

impl<'a, H: TrimHost + ?Sized> TrimState<'a, H> {
    /// The protocol on `host`'s word.
    pub fn new(host: &'a H) -> Self {
        Self { host }
    }

    /// Takes the trim state's tag field for `tag` (invariant 2), waiting for a running trim to
    /// end; `None` if it does not end within [`WAIT_MAX`].
    pub fn begin(&self, tag: u16) -> Option<TrimGuard<'a, H>> {
        let word = self.host.state_word();
        let deadline = self.host.now() + WAIT_MAX;
        loop {
            let w = word.load(Acquire);
            let other = trimmer(w);
            if other == 0 {
                if word.compare_exchange(w, w | u32::from(tag), AcqRel, Acquire).is_ok() {
                    return Some(TrimGuard { host: self.host, tag });
                }
                continue;
            }
            if self.host.now() >= deadline {
                return None;
            }
            if word.wait(w, TICK) == Waited::TimedOut {
                self.clear_gone_trimmer(w);
            }
        }
    }

    /// Clears the tag field if the trimmer it names is gone (invariant 2).
    fn clear_gone_trimmer(&self, w: u32) -> bool {
        let other = trimmer(w);
        if other == 0 || !self.host.is_gone(other) {
            return false;
        }
        let word = self.host.state_word();
        let _ = word.fetch_update(AcqRel, Acquire, |now| (trimmer(now) == other).then_some(now & !(TAG_MASK | PAUSED)));
        word.wake_all();
        true
    }

    /// The walk of invariant 1, by the holder of the trim (`begin`): claims each vacant node
    /// of order at most `chunk_order` (and at least `page_order`: nodes below it are not
    /// visited) for `tag`, and hands it to `chunk`, which gives its pages back and frees it.
    /// Returns the sum of what `chunk` returned.
    pub fn walk<N, S>(
        &self,
        tree: &BuddyTree<'_, N, S>,
        tag: u16,
        page_order: u32,
        chunk_order: u32,
        mut chunk: impl FnMut(NodeRef) -> u64,
    ) -> u64
    where
        N: AtomicWords + ?Sized,
        S: AtomicWords + ?Sized,
    {
        let word = self.host.state_word();
        let mut paused = Duration::ZERO;
        let mut punched = 0;
        // Depth first, left child on top: address order, so a node is never visited twice.
        let mut stack = vec![1usize];
        while let Some(node) = stack.pop() {
            let order = tree.order_of(node);
            if tree.word(node).is_block() {
                continue; // in use, cached, parked or being freed: not ours to give back
            }
            if order <= chunk_order && tree.word(node).is_vacant() {
                self.pause_for_waiters(&mut paused);
                if let Ok(r) = tree.try_claim(node, tag) {
                    punched += chunk(r);
                    // Invariant 3: a release; wake the waiters so they look again.
                    if waiters(word.fetch_add(SEQ_ONE, AcqRel)) > 0 {
                        word.wake_all();
                    }
                    continue;
                }
                // Taken meanwhile (or an ancestor was): look below it as for a busy node.
                if tree.word(node).is_block() {
                    continue;
                }
            }
            if order > page_order {
                stack.push(2 * node + 1);
                stack.push(2 * node);
            }
        }
        punched
    }

    /// Waits while allocations wait for this trim, at most [`PAUSE_MAX`] in all (invariant 3).
    ///
    /// Paused, the trim holds nothing (it pauses only between chunks), and says so with the
    /// paused flag, which it clears only when no waiter is registered: a waiter that sees the
    /// flag knows its look is conclusive. Before the flag, a waiter whose look found nothing
    /// (memory held by live owners) waited for a release while the trim waited for it to
    /// leave, each for the other, until the pause budget ran out: 100 ms, and the budget gone
    /// for the rest of the trim (found by the loom model
    /// `a_trim_and_an_allocation_that_cannot_fit_finish_without_waiting_on_each_other`). A flag,
    /// not a bump of the sequence: a waiter that comes as another leaves restores the word's
    /// value, so a trim cannot tell from the word that a new waiter needs telling (tried first;
    /// `two_waiters_that_cannot_fit_and_a_trim_all_finish` deadlocked).
    fn pause_for_waiters(&self, paused: &mut Duration) {
        let word = self.host.state_word();
        if *paused >= PAUSE_MAX || waiters(word.load(Acquire)) == 0 {
            return; // budget spent (a dead waiter's count): no flag a waiter could rely on
        }
        // AcqRel: after our last release, so a waiter that sees the flag sees our frees.
        let _ = word.fetch_update(AcqRel, Acquire, |w| Some(w | PAUSED));
        word.wake_all();
        loop {
            let w = word.load(Acquire);
            let give_up = *paused >= PAUSE_MAX;
            if waiters(w) == 0 || give_up {
                // Clear the flag only in a word with no waiter (or once the budget is spent):
                // a waiter registered now may have seen it and be looking.
                let clear = |w: u32| (waiters(w) == 0 || give_up).then_some(w & !PAUSED);
                if word.fetch_update(AcqRel, Acquire, clear).is_ok() {
                    return;
                }
                continue;
            }
            let t = self.host.now();
            word.wait(w, TICK);
            *paused += self.host.now().saturating_sub(t);
        }
    }

    /// For an allocation that found no block: registers as a waiter and looks again with
    /// `retry` until a look is conclusive (invariant 3: no trim runs, the trim pauses, or it
    /// has released a block since we registered). `None` when that look found nothing either.
    #[cold]
    pub fn wait_out<T>(&self, mut retry: impl FnMut() -> Option<T>) -> Option<T> {
        let word = self.host.state_word();
        // Register even when no trim seems to run: one may have held our block during our last
        // look and ended since, and another may start before our next one. Registered, any trim
        // that starts later sees us before its first claim (AcqRel: ordered before our next
        // look, and seen by the trim's next pause check).
        let registered = word.fetch_update(AcqRel, Acquire, |w| (waiters(w) < TAG_MASK).then_some(w + WAITER_ONE));
        let after = registered.map_or_else(|w| w, |w| w + WAITER_ONE);
        let deadline = self.host.now() + WAIT_MAX;
        let found = loop {
            if let Some(b) = retry() {
                break Some(b);
            }
            let w = word.load(Acquire);
            if trimmer(w) == 0 || w & PAUSED != 0 || sequence(w) != sequence(after) {
                break retry(); // the trim holds nothing now (invariant 3): a conclusive look
            }
            if self.host.now() >= deadline {
                break None;
            }
            if word.wait(w, TICK) == Waited::TimedOut && self.clear_gone_trimmer(w) {
                // Its claimed block is freed with the rest of what it owned.
                self.host.recover_dead();
                break retry();
            }
        };
        // A trim paused for us sleeps on the word: wake it.
        if registered.is_ok() && trimmer(word.fetch_sub(WAITER_ONE, AcqRel)) != 0 {
            word.wake_all();
        }
        found
    }
}

/// The arena as the protocol's host: its header word, its owner table, the real clock.
struct ArenaHost<'a> {
    arena: &'a Arena,
    start: Instant,
}

impl TrimHost for ArenaHost<'_> {
    type Word = SharedU32;
    #[inline]
    fn state_word(&self) -> &SharedU32 {
        self.arena.segment.trim_state_word()
    }
    fn is_gone(&self, tag: u16) -> bool {
        self.arena.owners().is_gone(tag)
    }
    fn recover_dead(&self) {
        self.arena.recover_dead_owners();
    }
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Arena {
    fn trim_host(&self) -> ArenaHost<'_> {
        ArenaHost { arena: self, start: Instant::now() }
    }

    /// Gives back to the system every free page of the arena: walks the tree in address
    /// order, and claims each vacant region of a page or more (at most 2 MiB at a time), clears
    /// its bits, punches it and frees it again. Returns the bytes given back (pages that were
    /// marked reserved). Regions reserved with their bits clear (left by a death) are punched
    /// too.
    ///
    /// Also empties this handle's cache. An allocation by another handle that finds no block
    /// while a trim holds one waits for the trim to let it go (a chunk's punch), so a trim
    /// never makes an allocation fail; a trim started while another runs waits for it first.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_arena::ArenaOptions;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let arena = ArenaOptions::new(4 << 20).create_anonymous()?;
    /// let block = arena.alloc(1 << 20)?;
    /// arena.free(block)?; // a plain free keeps the pages for reuse
    /// assert_eq!(arena.release_free(), 1 << 20);
    /// assert_eq!(arena.stats().reserved_data_bytes, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn release_free(&self) -> u64 {
        if self.segment.whole_reserved() {
            return 0;
        }
        // Our own slot, or a transient one for the walk (`registration` invariant 3): the
        // blocks the walk claims are recovered with it if we die.
        let Ok(acting) = self.acting_owner() else { return 0 };
        let tag = acting.tag();
        if matches!(acting, crate::registration::ActingOwner::Registered(_)) {
            self.flush_cache(tag);
        }
        let host = self.trim_host();
        let state = TrimState::new(&host);
        let Some(_guard) = state.begin(tag) else { return 0 };
        let l = *self.segment.layout();
        let page_order = (PAGE.max(l.min_block()).trailing_zeros() - l.min_block_shift).min(l.depth);
        let chunk_order = (TRIM_CHUNK.trailing_zeros().saturating_sub(l.min_block_shift)).clamp(page_order, l.depth);
        let tree = self.tree();
        let owners = self.owners();
        state.walk(&tree, tag, page_order, chunk_order, |r| {
            let block = self.block_of(r);
            owners.account(tag, block.size() as i64);
            let punched = self.give_back(block);
            if tree.free(r, tag).is_ok() {
                owners.account(tag, -(block.size() as i64));
            }
            punched
        })
    }

    /// For an allocation that found no block: waits out a trim that may hold it
    /// ([`TrimState::wait_out`]).
    #[cold]
    pub(crate) fn wait_out_trim(&self, retry: impl Fn() -> Option<Block>) -> Option<Block> {
        TrimState::new(&self.trim_host()).wait_out(retry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_overlap() {
        let w = 5 | (3 * WAITER_ONE) | PAUSED | (7 * SEQ_ONE);
        assert_eq!((trimmer(w), waiters(w), w & PAUSED != 0, sequence(w)), (5, 3, true, 7));
        // The sequence wraps within its field and leaves the others alone.
        let w = (0..2048).fold(w, |w, _| w.wrapping_add(SEQ_ONE));
        assert_eq!((trimmer(w), waiters(w), w & PAUSED != 0, sequence(w)), (5, 3, true, 7));
        assert_eq!(WAITER_MASK & PAUSED, 0);
        assert!(u32::from(crate::tree::node::MAX_OWNER_TAG) <= TAG_MASK, "every tag fits its field");
    }
}
