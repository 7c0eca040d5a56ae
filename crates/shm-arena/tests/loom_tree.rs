//! loom models of the buddy tree's races: claim vs claim, climb vs claim of an ancestor, free vs
//! free of buddies (coalescing), free vs allocation of the freed place, double free, and the
//! recovery and repair passes running beside live allocations.
//!
//! Run by `cargo xtask test` as
//! `RUSTFLAGS="--cfg shm_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release -p shm-arena --features loom --test loom_tree`.
//! Each model is one scenario on a tree of depth 1 or 2, at most 3 threads.
#![cfg(all(shm_loom, feature = "loom"))]

use loom::sync::atomic::AtomicU32;
use loom::sync::Arc;
use loom::thread;
use shm_arena::tree::node::NodeWord;
use shm_arena::tree::{BuddyTree, NodeRef};
use std::sync::atomic::Ordering::SeqCst;

type Tree<'a> = BuddyTree<'a, [AtomicU32]>;

struct Stores {
    nodes: Vec<AtomicU32>,
    search: Vec<AtomicU32>,
    depth: u32,
}

impl Stores {
    fn new(depth: u32) -> Arc<Self> {
        let zeros = |n| (0..n).map(|_| AtomicU32::new(0)).collect();
        Arc::new(Self { nodes: zeros(Tree::node_words(depth)), search: zeros(Tree::search_words(depth)), depth })
    }
    fn tree(&self) -> Tree<'_> {
        BuddyTree::new(&self.nodes[..], &self.search[..], self.depth).unwrap()
    }
}

fn span(t: &Tree<'_>, b: NodeRef) -> (u64, u64) {
    let first = t.first_leaf(b.index);
    (first, first + (1u64 << t.order_of(b.index)))
}

fn assert_disjoint(t: &Tree<'_>, blocks: &[NodeRef]) {
    for (i, a) in blocks.iter().enumerate() {
        for b in &blocks[i + 1..] {
            let (a0, a1) = span(t, *a);
            let (b0, b1) = span(t, *b);
            assert!(a1 <= b0 || b1 <= a0, "blocks {a:?} and {b:?} overlap");
        }
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    if std::env::var("LOOM_LOG").is_ok() {
        return loom::model(f);
    }
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

#[test]
fn two_claims_of_leaves_are_disjoint() {
    model(|| {
        let s = Stores::new(1);
        let handles: Vec<_> = (1..=2u16)
            .map(|owner| {
                let s = s.clone();
                thread::spawn(move || s.tree().alloc(1, owner))
            })
            .collect();
        let got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let got: Vec<_> = got.into_iter().flatten().collect();
        assert_eq!(got.len(), 2, "two leaves, two requests: both succeed");
        assert_disjoint(&s.tree(), &got);
        s.tree().check().unwrap();
    });
}

#[test]
fn a_block_and_a_leaf_inside_it_are_never_both_handed_out() {
    model(|| {
        let s = Stores::new(1);
        let s1 = s.clone();
        let whole = thread::spawn(move || s1.tree().alloc(0, 1));
        let leaf = s.tree().alloc(1, 2);
        let whole = whole.join().unwrap();
        assert!(whole.is_none() || leaf.is_none(), "root {whole:?} and leaf {leaf:?} both allocated");
        assert!(whole.is_some() || leaf.is_some(), "one of them must win");
        s.tree().check().unwrap();
    });
}

#[test]
fn buddies_freed_together_coalesce_while_a_pair_is_requested() {
    model(|| {
        let s = Stores::new(2);
        let t = s.tree();
        let a = t.alloc(2, 1).unwrap();
        let b = t.alloc(2, 1).unwrap();
        let keep = t.alloc(2, 1).unwrap(); // keeps the other pair busy
        let (s1, s2) = (s.clone(), s.clone());
        let fa = thread::spawn(move || s1.tree().free(a, 1).unwrap());
        let fb = thread::spawn(move || s2.tree().free(b, 1).unwrap());
        let pair = s.tree().alloc(1, 2);
        fa.join().unwrap();
        fb.join().unwrap();
        let t = s.tree();
        let mut live = vec![keep];
        live.extend(pair);
        assert_disjoint(&t, &live);
        t.check().unwrap();
        if pair.is_none() {
            assert!(t.alloc(1, 2).is_some(), "after both frees the pair is free again");
        }
    });
}

#[test]
fn a_freed_leaf_is_reclaimed_by_one_of_two_allocators() {
    model(|| {
        let s = Stores::new(1);
        let t = s.tree();
        let a = t.alloc(1, 1).unwrap();
        let b = t.alloc(1, 1).unwrap();
        let s1 = s.clone();
        let freer = thread::spawn(move || {
            s1.tree().free(a, 1).unwrap();
            s1.tree().alloc(1, 1)
        });
        let s2 = s.clone();
        let other = thread::spawn(move || s2.tree().alloc(1, 2));
        let x = freer.join().unwrap();
        let y = other.join().unwrap();
        let t = s.tree();
        let live: Vec<_> = [Some(b), x, y].into_iter().flatten().collect();
        assert_eq!(live.len(), 2, "one leaf was freed, exactly one allocator gets it");
        assert_disjoint(&t, &live);
        t.check().unwrap();
    });
}

#[test]
fn concurrent_double_free_succeeds_once() {
    model(|| {
        let s = Stores::new(1);
        let a = s.tree().alloc(1, 1).unwrap();
        let s1 = s.clone();
        let first = thread::spawn(move || s1.tree().free(a, 1).is_ok());
        let second = s.tree().free(a, 2).is_ok();
        let first = first.join().unwrap();
        assert!(first ^ second, "exactly one free succeeds ({first}, {second})");
        let report = s.tree().check().unwrap_or_else(|v| panic!("{v:?}\n{}", shm_arena::tree::trace::dump()));
        assert_eq!(report.leaves_free, 2);
    });
}

#[test]
fn recovery_of_a_cut_claim_beside_a_live_allocation() {
    model(|| {
        let s = Stores::new(2);
        // Owner 9 died right after claiming leaf 4, before climbing.
        s.nodes[4].store(NodeWord::block(9, 1).0, SeqCst);
        let s1 = s.clone();
        let rescuer = thread::spawn(move || {
            let t = s1.tree();
            t.recover_owner(9, 1);
            t.repair();
        });
        let got = s.tree().alloc(1, 2);
        rescuer.join().unwrap();
        let t = s.tree();
        t.check().unwrap();
        let report = t.check().unwrap();
        assert_eq!(report.leaves_in_use, got.map_or(0, |_| 2));
        assert!(!report.leaves_by_owner.contains_key(&9));
    });
}

#[test]
fn repair_beside_a_climbing_allocation_keeps_its_marks() {
    model(|| {
        let s = Stores::new(2);
        // A phase 2 that died left "left subtree occupied" marks above a vacant subtree.
        s.nodes[1].fetch_or(shm_arena::tree::node::OCC_LEFT, SeqCst);
        s.nodes[2].fetch_or(shm_arena::tree::node::OCC_LEFT, SeqCst);
        let s1 = s.clone();
        let repairer = thread::spawn(move || {
            s1.tree().repair();
        });
        let got = s.tree().alloc(2, 1);
        repairer.join().unwrap();
        let t = s.tree();
        assert!(got.is_some());
        t.repair();
        let report = t.check().unwrap();
        assert_eq!(report.leaves_in_use, 1);
    });
}

/// Who holds each leaf right now: taking a leaf someone holds is a double allocation.
struct Occupancy(Vec<AtomicU32>);

impl Occupancy {
    fn new(leaves: usize) -> Arc<Self> {
        Arc::new(Self((0..leaves).map(|_| AtomicU32::new(0)).collect()))
    }
    fn take(&self, t: &Tree<'_>, b: NodeRef, who: u32) {
        let (first, end) = span(t, b);
        for leaf in first..end {
            let prev = self.0[leaf as usize].swap(who, SeqCst);
            assert_eq!(prev, 0, "leaf {leaf} handed to {who} while {prev} holds it");
        }
    }
    fn give_back(&self, t: &Tree<'_>, b: NodeRef, who: u32) {
        let (first, end) = span(t, b);
        for leaf in first..end {
            assert_eq!(self.0[leaf as usize].swap(0, SeqCst), who);
        }
    }
}

fn mixed(plans: &'static [&'static [u32]]) {
    model(move || {
        shm_arena::tree::trace::clear();
        let s = Stores::new(2);
        let occ = Occupancy::new(4);
        // Leaves 0-1 are held throughout, so the threads contend for the other pair.
        let held = s.tree().alloc(1, 9).unwrap();

        let handles: Vec<_> = plans
            .iter()
            .enumerate()
            .map(|(i, levels)| {
                let (s, occ) = (s.clone(), occ.clone());
                let levels = levels.to_vec();
                let who = i as u32 + 1;
                thread::spawn(move || {
                    let t = s.tree();
                    for level in levels {
                        if let Some(b) = t.alloc(level, who as u16) {
                            occ.take(&t, b, who);
                            occ.give_back(&t, b, who);
                            t.free(b, who as u16).unwrap();
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // No mark may be missing (that could hand out a block twice); conservative leftovers
        // of NBBS are allowed and the repair pass clears them.
        let t = s.tree();
        let report = t.check().unwrap_or_else(|v| panic!("{v:?}\n{}", shm_arena::tree::trace::dump()));
        assert_eq!(report.leaves_free, 2);
        t.free(held, 9).unwrap();
        t.repair();
        let report = t.check().unwrap();
        assert_eq!((report.largest_free_order, report.stale_occupancy_marks), (Some(2), 0), "everything coalesced");
    });
}

#[test]
fn three_threads_allocate_and_free_mixed_sizes() {
    mixed(&[&[2], &[1], &[2]]);
}

#[test]
fn two_threads_reuse_one_leaf_and_coalesce() {
    mixed(&[&[2], &[2]]);
}
