//! loom models of the trim protocol (`shm_arena::trim`, docs/architecture.md "Memory"): the
//! same `TrimState` code the arena runs, over loom's atomics and the platform layer's modelled
//! futex, on a buddy tree of depth 1 (two leaves: each leaf is one chunk, the root is the whole
//! arena).
//!
//! What is checked: an allocation racing a trim never reports exhaustion while the only free
//! memory is the chunk being trimmed (invariant 3); a trim and a waiter never wait for each
//! other forever (the futex is an untimed loom sleep unless a model lets timeouts fire, and the
//! clock is frozen, so neither [`PAUSE_MAX`] nor [`WAIT_MAX`] can end a wait: a lost wakeup or
//! a mutual wait shows as a loom deadlock); a trimmer that dies holding a chunk is cleared, by a
//! waiting allocation or by the next trim (invariant 2); trims and allocations never hold the
//! same leaf at once.
//!
//! Run by `cargo xtask test` as
//! `RUSTFLAGS="--cfg shm_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release -p shm-arena --features loom --test loom_trim`.
//! Each model is one scenario, at most 3 threads.
//!
//! [`PAUSE_MAX`]: shm_arena::trim
//! [`WAIT_MAX`]: shm_arena::trim
#![cfg(all(shm_loom, feature = "loom"))]

use loom::sync::atomic::{AtomicU32, AtomicU64};
use loom::sync::Arc;
use loom::thread;
use shm_arena::loom_support;
use shm_arena::tree::{BuddyTree, NodeRef};
use shm_arena::trim::{TrimHost, TrimState};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

type Tree<'a> = BuddyTree<'a, [AtomicU32]>;

/// Owner tags used by the models (index into `World::owners`).
const TAGS: usize = 4;
/// The trim state's tag and waiter fields and paused flag (its sequence field may hold anything at the end).
const TAG_AND_WAITERS: u32 = (1 << 21) - 1;

/// A depth-1 tree, the trim state word, who acts as each owner tag, and who holds each leaf.
struct World {
    nodes: Vec<AtomicU32>,
    search: Vec<AtomicU32>,
    state: AtomicU32,
    /// Identity (loom fake process) acting as each tag; 0 while unused.
    owners: Vec<AtomicU64>,
    /// Set once a dead tag's blocks were recovered (one rescuer per dead owner).
    recovered: Vec<AtomicU32>,
    /// Who holds each leaf right now: taking a held leaf is a double allocation.
    leaves: Vec<AtomicU32>,
}

impl World {
    fn new() -> Arc<Self> {
        let zeros = |n| (0..n).map(|_| AtomicU32::new(0)).collect::<Vec<_>>();
        Arc::new(Self {
            nodes: zeros(Tree::node_words(1)),
            search: zeros(Tree::search_words(1)),
            state: AtomicU32::new(0),
            owners: (0..TAGS).map(|_| AtomicU64::new(0)).collect(),
            recovered: zeros(TAGS),
            leaves: zeros(2),
        })
    }
    fn tree(&self) -> Tree<'_> {
        BuddyTree::new(&self.nodes[..], &self.search[..], 1).unwrap()
    }
    /// The calling thread acts as `tag` from now on.
    fn host(&self, tag: u16) -> Host<'_> {
        self.owners[usize::from(tag)].store(loom_support::current_identity(), SeqCst);
        Host { world: self, me: tag }
    }
    fn take(&self, b: NodeRef, who: u16) {
        let t = self.tree();
        let first = t.first_leaf(b.index);
        for leaf in first..first + (1 << t.order_of(b.index)) {
            let prev = self.leaves[leaf as usize].swap(u32::from(who), SeqCst);
            assert_eq!(prev, 0, "leaf {leaf} handed to {who} while {prev} holds it");
        }
    }
    fn give(&self, b: NodeRef, who: u16) {
        let t = self.tree();
        let first = t.first_leaf(b.index);
        for leaf in first..first + (1 << t.order_of(b.index)) {
            assert_eq!(self.leaves[leaf as usize].swap(0, SeqCst), u32::from(who));
        }
    }
}

/// One thread's view: the world, acting as tag `me`. The clock is frozen (module doc).
struct Host<'w> {
    world: &'w World,
    me: u16,
}

impl TrimHost for Host<'_> {
    type Word = AtomicU32;
    fn state_word(&self) -> &AtomicU32 {
        &self.world.state
    }
    fn is_gone(&self, tag: u16) -> bool {
        let who = self.world.owners[usize::from(tag)].load(SeqCst);
        who != 0 && loom_support::is_dead(who)
    }
    fn recover_dead(&self) {
        let t = self.world.tree();
        for tag in 1..TAGS as u16 {
            if self.is_gone(tag) && self.world.recovered[usize::from(tag)].swap(1, SeqCst) == 0 {
                // The dead owner's holds end with it; its blocks are then freed.
                for leaf in &self.world.leaves {
                    let _ = leaf.compare_exchange(u32::from(tag), 0, SeqCst, SeqCst);
                }
                t.recover_owner(tag, self.me);
                t.repair();
            }
        }
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl Host<'_> {
    /// `Arena::release_free`: begin, then walk with every leaf a chunk; the chunk's "punch"
    /// holds its leaf in the occupancy map. Returns the chunks trimmed (`None`: never began).
    fn trim(&self) -> Option<u64> {
        let state = TrimState::new(self);
        let _guard = state.begin(self.me)?;
        let tree = self.world.tree();
        Some(state.walk(&tree, self.me, 0, 0, |r| {
            self.world.take(r, self.me);
            self.world.give(r, self.me);
            tree.free(r, self.me).unwrap();
            1
        }))
    }
    /// `Arena::alloc_slow`'s last step: a block of `level`, waiting out a trim if none is free.
    fn alloc(&self, level: u32) -> Option<NodeRef> {
        let tree = self.world.tree();
        let r = tree.alloc(level, self.me).or_else(|| TrimState::new(self).wait_out(|| tree.alloc(level, self.me)))?;
        self.world.take(r, self.me);
        Some(r)
    }
    fn free(&self, r: NodeRef) {
        self.world.give(r, self.me);
        self.world.tree().free(r, self.me).unwrap();
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

#[test]
fn an_allocation_of_the_whole_arena_racing_a_trim_waits_and_gets_it() {
    // Everything is free; the trim claims each leaf in turn, so the root is blocked whenever
    // the allocation looks while a chunk is held. It must wait, never report exhaustion.
    model(|| {
        let w = World::new();
        let w1 = w.clone();
        let trimmer = thread::spawn(move || w1.host(1).trim());
        let h = w.host(2);
        let got = h.alloc(0);
        assert!(got.is_some(), "exhaustion reported while the only blocker was the trim's chunk");
        h.free(got.unwrap());
        assert!(trimmer.join().unwrap().is_some());
        assert_eq!(w.state.load(SeqCst) & TAG_AND_WAITERS, 0, "no trimmer, no waiter left registered");
        w.tree().check().unwrap();
    });
}

#[test]
fn a_trim_and_an_allocation_that_cannot_fit_finish_without_waiting_on_each_other() {
    // Leaf 0 is held by a live owner: the root cannot be had, trim or no trim. The allocation
    // must report exhaustion and the trim must finish; with the clock frozen, a trim paused for
    // a waiter that waits for the trim would be a loom deadlock.
    model(|| {
        let w = World::new();
        let held = w.host(3).alloc(1).unwrap();
        let w1 = w.clone();
        let trimmer = thread::spawn(move || w1.host(1).trim());
        let got = w.host(2).alloc(0);
        assert!(got.is_none(), "the root was handed out while leaf 0 is held");
        assert_eq!(trimmer.join().unwrap(), Some(1), "the trim gives back the one free leaf");
        w.host(3).free(held);
        assert_eq!(w.state.load(SeqCst) & TAG_AND_WAITERS, 0);
        w.tree().check().unwrap();
    });
}

#[test]
fn a_trimmer_that_dies_holding_a_chunk_is_cleared_and_the_waiter_gets_the_block() {
    // Timeouts fire, so the waiter can look at the trimmer's liveness; nothing else ends its
    // wait (the clock is frozen). The recovery frees the dead trimmer's chunk.
    model(|| {
        loom_support::timeouts_fire(true);
        let w = World::new();
        let w1 = w.clone();
        let trimmer = thread::spawn(move || {
            let h = w1.host(1);
            std::mem::forget(TrimState::new(&h).begin(1).unwrap());
            // The walk's claim of a leaf (none when the allocation holds the root already).
            let chunk = w1.tree().alloc(1, 1);
            loom_support::die();
            chunk
        });
        let h = w.host(2);
        let got = h.alloc(0);
        let chunk = trimmer.join().unwrap();
        let got = got.unwrap_or_else(|| panic!("the waiter gave up; dead trimmer's chunk {chunk:?}"));
        h.free(got);
        let state = w.state.load(SeqCst) & TAG_AND_WAITERS;
        // Tag 1 may stay named only when the allocation had the root first and never waited.
        assert!(state == 0 || (state == 1 && chunk.is_none()), "state {state:#x} after the waiter got the block");
        w.tree().check().unwrap();
    });
}

#[test]
fn a_dead_trimmer_is_cleared_by_the_next_trim_and_trims_never_share_a_chunk() {
    // Trimmer 1 dies holding leaf 0 and the trim state; trimmer 2 (waiting to begin) clears it
    // and trims the other leaf; an allocation of a leaf runs beside them. The occupancy map
    // asserts that no leaf is held by two of them at once.
    model(|| {
        loom_support::timeouts_fire(true);
        let w = World::new();
        let begun = Arc::new(AtomicU32::new(0));
        let (w1, b1) = (w.clone(), begun.clone());
        let dying = thread::spawn(move || {
            let h = w1.host(1);
            std::mem::forget(TrimState::new(&h).begin(1).unwrap());
            b1.store(1, SeqCst);
            if let Some(chunk) = w1.tree().alloc(1, 1) {
                w1.take(chunk, 1);
            }
            loom_support::die();
        });
        let w2 = w.clone();
        let next = thread::spawn(move || {
            // Starts once trimmer 1 holds the trim state (it may die at any point after).
            while begun.load(SeqCst) == 0 {
                thread::yield_now();
            }
            w2.host(2).trim()
        });
        let h = w.host(3);
        if let Some(r) = h.alloc(1) {
            h.free(r);
        }
        dying.join().unwrap();
        assert!(next.join().unwrap().is_some(), "the next trim began once the dead one was cleared");
        assert_eq!(w.state.load(SeqCst) & TAG_AND_WAITERS, 0, "no trimmer or waiter left registered");
        w.tree().check().unwrap();
    });
}

#[test]
fn two_allocations_of_a_leaf_racing_a_trim_both_get_one() {
    // Two leaves, two allocations of one leaf each, and a trim claiming each leaf in turn: the
    // memory suffices, so neither may report exhaustion, however the trim's chunk and the
    // other allocation's leaf together block one of them for a while.
    model(|| {
        let w = World::new();
        let w1 = w.clone();
        let trimmer = thread::spawn(move || w1.host(1).trim());
        let w2 = w.clone();
        let other = thread::spawn(move || {
            let h = w2.host(2);
            let got = h.alloc(1);
            assert!(got.is_some(), "exhaustion reported with a leaf for each allocation");
            got
        });
        let h = w.host(3);
        let got = h.alloc(1);
        assert!(got.is_some(), "exhaustion reported with a leaf for each allocation");
        let theirs = other.join().unwrap();
        h.free(got.unwrap());
        w.host(2).free(theirs.unwrap());
        assert!(trimmer.join().unwrap().is_some());
        assert_eq!(w.state.load(SeqCst) & TAG_AND_WAITERS, 0);
        w.tree().check().unwrap();
    });
}

#[test]
fn two_waiters_that_cannot_fit_and_a_trim_all_finish() {
    // As the model above with leaf 0 held, with a second waiter that registers while the trim
    // already pauses for the first: the trim announces its pause again, so neither waiter
    // waits for a release that never comes (a loom deadlock with the clock frozen).
    model(|| {
        let w = World::new();
        let held = w.host(3).alloc(1).unwrap();
        let w1 = w.clone();
        let trimmer = thread::spawn(move || w1.host(1).trim());
        let w2 = w.clone();
        let other = thread::spawn(move || w2.host(2).alloc(0).is_none());
        assert!(w.host(3).alloc(0).is_none(), "the root was handed out while leaf 0 is held");
        assert!(other.join().unwrap(), "the root was handed out while leaf 0 is held");
        assert_eq!(trimmer.join().unwrap(), Some(1));
        w.host(3).free(held);
        assert_eq!(w.state.load(SeqCst) & TAG_AND_WAITERS, 0);
        w.tree().check().unwrap();
    });
}
