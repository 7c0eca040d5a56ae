//! Unit tests of the tree over heap stores.

use std::collections::HashSet;
use std::sync::atomic::Ordering::SeqCst;

use super::node::{NodeWord, BUSY, FREEING, OCC_LEFT, RESERVED_OWNER};
use super::*;
use crate::sync::words::heap_words;
use crate::sync::SharedU32;

struct Stores {
    nodes: Box<[SharedU32]>,
    search: Box<[SharedU32]>,
    depth: u32,
}

impl Stores {
    fn new(depth: u32) -> Self {
        Self {
            nodes: heap_words(BuddyTree::<[SharedU32]>::node_words(depth)),
            search: heap_words(BuddyTree::<[SharedU32]>::search_words(depth)),
            depth,
        }
    }
    fn tree(&self) -> BuddyTree<'_, [SharedU32]> {
        BuddyTree::new(&self.nodes[..], &self.search[..], self.depth).unwrap()
    }
}

fn leaves_of(tree: &BuddyTree<'_, [SharedU32]>, b: NodeRef) -> std::ops::Range<u64> {
    let first = tree.first_leaf(b.index);
    first..first + (1u64 << tree.order_of(b.index))
}

#[test]
fn geometry_is_checked() {
    let s = Stores::new(3);
    assert!(BuddyTree::new(&s.nodes[..], &s.search[..], 4).is_err());
    assert!(BuddyTree::new(&s.nodes[..], &s.search[..], MAX_DEPTH + 1).is_err());
    let t = s.tree();
    assert_eq!(t.leaves(), 8);
    assert_eq!(t.node_at(3, 5), Some(13));
    assert_eq!(t.node_at(2, 5), None, "leaf 5 is not aligned to a pair");
    assert_eq!(t.first_leaf(13), 5);
    assert_eq!(t.order_of(1), 3);
}

#[test]
fn every_leaf_once_then_exhausted_then_all_back() {
    let s = Stores::new(5);
    let t = s.tree();
    let mut seen = HashSet::new();
    let mut blocks = Vec::new();
    while let Some(b) = t.alloc(5, 1) {
        assert!(seen.insert(b.index), "leaf {} handed out twice", b.index);
        blocks.push(b);
    }
    assert_eq!(blocks.len(), 32);
    assert!(t.alloc(4, 1).is_none() && t.alloc(0, 1).is_none());
    let report = t.check().unwrap();
    assert_eq!(report.leaves_in_use, 32);
    for b in blocks {
        t.free(b, 1).unwrap();
    }
    let report = t.check().unwrap();
    assert_eq!(report.leaves_free, 32);
    assert_eq!(report.largest_free_order, Some(5), "everything coalesced back into the root");
    assert!(t.alloc(0, 1).is_some(), "the whole tree is one block again");
}

#[test]
fn mixed_sizes_never_overlap() {
    let s = Stores::new(8);
    let t = s.tree();
    let mut owner_of = vec![None; 256];
    let mut live = Vec::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for step in 0..4000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if rng % 3 != 0 || live.is_empty() {
            let level = 3 + (rng >> 8) as u32 % 6;
            if let Some(b) = t.alloc(level, 1) {
                for leaf in leaves_of(&t, b) {
                    assert!(owner_of[leaf as usize].replace(step).is_none(), "leaf {leaf} double allocated");
                }
                live.push(b);
            }
        } else {
            let b = live.swap_remove((rng >> 20) as usize % live.len());
            for leaf in leaves_of(&t, b) {
                owner_of[leaf as usize] = None;
            }
            t.free(b, 1).unwrap();
        }
    }
    let report = t.check().unwrap();
    let in_use: u64 = live.iter().map(|b| 1u64 << t.order_of(b.index)).sum();
    assert_eq!(report.leaves_in_use, in_use);
    for b in live {
        t.free(b, 1).unwrap();
    }
    assert_eq!(t.check().unwrap().largest_free_order, Some(8));
}

#[test]
fn double_free_and_stale_references_are_refused() {
    let s = Stores::new(4);
    let t = s.tree();
    let a = t.alloc(4, 1).unwrap();
    t.free(a, 1).unwrap();
    assert_eq!(t.free(a, 1), Err(BlockStateError::NotAllocated { index: a.index }));
    let again = t.alloc(4, 1).unwrap();
    assert_eq!(again.index, a.index, "warm reuse: the freed leaf comes back first");
    assert_ne!(again.generation, a.generation);
    assert!(matches!(t.free(a, 1), Err(BlockStateError::StaleGeneration { .. })));
    assert!(matches!(t.validate(a), Err(BlockStateError::StaleGeneration { .. })));
    assert!(t.validate(again).is_ok());
    assert!(matches!(t.free(NodeRef { index: 999, generation: 0 }, 1), Err(BlockStateError::OutOfRange { .. })));
    t.free(again, 1).unwrap();
    t.check().unwrap();
}

#[test]
fn freed_memory_is_reused_before_untouched_memory() {
    let s = Stores::new(10);
    let t = s.tree();
    // Touch the first quarter with small blocks, free them all, then ask for one of each size.
    let small: Vec<_> = (0..64).map(|_| t.alloc(6, 1).unwrap()).collect();
    let touched_end = small.iter().map(|b| leaves_of(&t, *b).end).max().unwrap();
    for b in small {
        t.free(b, 1).unwrap();
    }
    for level in [10, 8, 6, 4] {
        let b = t.alloc(level, 1).unwrap();
        assert!(leaves_of(&t, b).end <= touched_end.max(1 << t.order_of(b.index)), "level {level} got cold memory");
        t.free(b, 1).unwrap();
    }
    t.check().unwrap();
}

#[test]
fn tail_beyond_capacity_is_never_handed_out() {
    let s = Stores::new(6);
    let t = s.tree();
    assert_eq!(t.reserve_tail(45), 64 - 45);
    let mut total = 0;
    while let Some(b) = t.alloc(6, 1) {
        assert!(leaves_of(&t, b).end <= 45);
        total += 1;
    }
    assert_eq!(total, 45);
    let report = t.check().unwrap();
    assert_eq!(report.leaves_reserved, 19);
    assert_eq!(report.leaves_in_use, 45);
    assert!(t.alloc(0, 1).is_none());
    assert!(matches!(
        t.free(NodeRef { index: t.node_at(6, 50).unwrap(), generation: 0 }, 1),
        Err(BlockStateError::NotAllocated { .. })
    ));
}

#[test]
fn park_unpark_and_owner_changes() {
    let s = Stores::new(4);
    let t = s.tree();
    let b = t.alloc(2, 3).unwrap();
    t.change_owner(b, 3, 0).unwrap();
    assert!(matches!(t.change_owner(b, 3, 4), Err(BlockStateError::WrongOwner { .. })));
    assert_eq!(t.park(b, 5).unwrap().previous_owner, 0);
    assert!(matches!(t.free(b, 5), Err(BlockStateError::Cached { .. })), "a parked block was freed already");
    assert!(matches!(t.park(b, 5), Err(BlockStateError::Cached { .. })));
    let report = t.check().unwrap();
    assert_eq!((report.blocks_cached, report.blocks_in_use), (1, 0));
    let b2 = t.unpark(b, 5).unwrap();
    assert_eq!(b2.index, b.index);
    assert_ne!(b2.generation, b.generation);
    assert!(matches!(t.unpark(b2, 5), Err(BlockStateError::NotParked { .. })));
    t.park(b2, 5).unwrap();
    t.free_parked(b2, 5).unwrap();
    assert_eq!(t.check().unwrap().largest_free_order, Some(4));
}

#[test]
fn recovery_frees_blocks_finishes_frees_and_undoes_claims() {
    let s = Stores::new(6);
    let t = s.tree();
    let dead = 7;
    let keep = t.alloc(6, 1).unwrap();
    let in_use = t.alloc(4, dead).unwrap();
    let parked = t.alloc(6, dead).unwrap();
    t.park(parked, dead).unwrap();
    // A free cut short after FREEING and part of phase 1.
    let freeing = t.alloc(5, dead).unwrap();
    let w = t.word(freeing.index);
    s.nodes[freeing.index].store(w.with_flags(FREEING).0, SeqCst);
    s.nodes[freeing.index >> 1].fetch_or(super::node::coal_bit_for(freeing.index), SeqCst);
    // A claim whose climb never started, inside a region nobody marked.
    let lone = t.node_at(6, 60).unwrap();
    s.nodes[lone].store(NodeWord::block(dead, 1).0, SeqCst);
    // A claim under someone else's block (its climb would fail there).
    let big = t.alloc(2, 1).unwrap();
    let under = t.first_leaf(big.index);
    let under = t.node_at(6, under + 1).unwrap();
    s.nodes[under].store(NodeWord::block(dead, 1).0, SeqCst);
    assert!(t.check().is_err(), "the tree is mid-operation");

    let report = t.recover_owner(dead, 2);
    t.repair();
    assert_eq!(report.frees_finished, 1);
    assert_eq!(report.blocks_freed, 3, "in use, parked, and the lone claim");
    assert_eq!(report.claims_undone, 1);
    let after = t.check().unwrap();
    assert_eq!(after.leaves_in_use, 1 + 16, "only owner 1's blocks remain");
    assert!(!after.leaves_by_owner.contains_key(&dead));
    let _ = in_use;
    t.free(keep, 1).unwrap();
    t.free(big, 1).unwrap();
    assert_eq!(t.check().unwrap().largest_free_order, Some(6));
}

#[test]
fn one_walk_recovers_several_dead_owners_each_under_its_own_tag_without_a_rescuer_tag() {
    let s = Stores::new(6);
    let t = s.tree();
    let keep = t.alloc(6, 1).unwrap();
    let a = t.alloc(4, 5).unwrap();
    let b = t.alloc(6, 7).unwrap();
    let c = t.alloc(5, 7).unwrap();
    t.park(c, 7).unwrap();
    // A free by owner 9 cut short after FREEING.
    let d = t.alloc(6, 9).unwrap();
    let w = t.word(d.index);
    s.nodes[d.index].store(w.with_flags(FREEING).0, SeqCst);
    let report = t.recover_owners(&|o| [5, 7, 9].contains(&o), None);
    assert_eq!((report.blocks_freed, report.frees_finished, report.claims_undone), (3, 1, 0));
    t.repair();
    let after = t.check().unwrap();
    assert_eq!(after.leaves_by_owner.keys().copied().collect::<Vec<_>>(), vec![1], "only owner 1's block remains");
    assert!(t.validate(keep).is_ok() && t.validate(a).is_err() && t.validate(b).is_err());
    t.free(keep, 1).unwrap();
    assert_eq!(t.check().unwrap().largest_free_order, Some(6));
}

#[test]
fn repair_clears_marks_left_by_a_cut_phase_two() {
    let s = Stores::new(4);
    let t = s.tree();
    let a = t.alloc(4, 1).unwrap();
    t.free(a, 1).unwrap();
    // A phase 2 that died: the path to the root still says "left side occupied".
    let mut node = a.index;
    while node > 1 {
        s.nodes[node >> 1].fetch_or(super::node::occ_bit_for(node), SeqCst);
        node >>= 1;
    }
    let stale = t.check().unwrap();
    // Each ancestor's mark matches a marked child except the lowest, which stands over a leaf.
    assert_eq!(stale.stale_occupancy_marks, 1, "conservative marks are reported, not violations");
    assert_eq!(stale.largest_free_order, Some(3), "the stale mark hides the root block");
    assert_eq!(t.repair(), 4);
    let repaired = t.check().unwrap();
    assert_eq!((repaired.stale_occupancy_marks, repaired.largest_free_order), (0, Some(4)));
    assert_eq!(t.repair(), 0, "nothing left to repair");
}

#[test]
fn recovery_never_touches_reserved_or_other_owners() {
    let s = Stores::new(5);
    let t = s.tree();
    t.reserve_tail(20);
    let mine = t.alloc(5, 3).unwrap();
    assert_eq!(t.recover_owner(RESERVED_OWNER, 1), RecoveryReport::default());
    assert_eq!(t.recover_owner(4, 1).blocks_freed, 0);
    assert!(t.validate(mine).is_ok());
    assert_eq!(t.word(1).0 & OCC_LEFT, OCC_LEFT);
    assert_eq!(t.word(mine.index).0 & BUSY, BUSY);
}

#[test]
fn corrupt_hints_are_ignored() {
    let s = Stores::new(4);
    let t = s.tree();
    // Garbage in every hint slot and the cursors, summary says every level has hints.
    for w in s.search.iter() {
        w.store(u32::MAX - 3, SeqCst);
    }
    let mut n = 0;
    while t.alloc(4, 1).is_some() {
        n += 1;
    }
    assert_eq!(n, 16);
    t.check().unwrap();
}

#[test]
fn threads_never_share_a_leaf() {
    use crate::sync::SharedU64;
    let s = Stores::new(9);
    let t = s.tree();
    let owner_of: Vec<SharedU64> = (0..512).map(|_| SharedU64::new(0)).collect();
    std::thread::scope(|scope| {
        for thread in 1..=4u16 {
            let owner_of = &owner_of;
            scope.spawn(move || {
                let mut rng = 0x2545_F491_4F6C_DD1Du64 * u64::from(thread);
                let mut live = Vec::new();
                for step in 1..=20_000u64 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let tag = (u64::from(thread) << 32) | step;
                    if rng % 2 == 0 || live.is_empty() {
                        if let Some(b) = t.alloc(5 + (rng >> 9) as u32 % 5, thread) {
                            for leaf in leaves_of(&t, b) {
                                let prev = owner_of[leaf as usize].swap(tag, SeqCst);
                                assert_eq!(prev, 0, "leaf {leaf} was already in use");
                            }
                            live.push((b, tag));
                        }
                    } else {
                        let (b, tag) = live.swap_remove((rng >> 17) as usize % live.len());
                        for leaf in leaves_of(&t, b) {
                            assert_eq!(owner_of[leaf as usize].swap(0, SeqCst), tag);
                        }
                        t.free(b, thread).unwrap();
                    }
                }
                for (b, _) in live {
                    for leaf in leaves_of(&t, b) {
                        owner_of[leaf as usize].store(0, SeqCst);
                    }
                    t.free(b, thread).unwrap();
                }
            });
        }
    });
    let report = t.check().unwrap();
    assert_eq!(report.leaves_free, 512);
    // Concurrent frees may leave conservative marks (see `check`); the repair clears them all.
    t.repair();
    assert_eq!(t.check().unwrap().largest_free_order, Some(9));
}

#[test]
fn every_op_level_interleaving_of_the_loom_scenario_coalesces() {
    // Threads: 1 = leaf alloc+free, 2 = pair alloc+free, 3 = leaf alloc+free; leaves 0-1 held.
    fn orders(left: &mut [usize; 3], out: &mut Vec<Vec<usize>>, cur: &mut Vec<usize>) {
        if left.iter().all(|n| *n == 0) {
            out.push(cur.clone());
            return;
        }
        for t in 0..3 {
            if left[t] > 0 {
                left[t] -= 1;
                cur.push(t);
                orders(left, out, cur);
                cur.pop();
                left[t] += 1;
            }
        }
    }
    let mut all = Vec::new();
    orders(&mut [2, 2, 2], &mut all, &mut Vec::new());
    for order in all {
        let s = Stores::new(2);
        let t = s.tree();
        let held = t.alloc(1, 9).unwrap();
        let mut live: [Option<NodeRef>; 3] = [None; 3];
        let mut step = [0; 3];
        for th in order {
            if step[th] == 0 {
                live[th] = t.alloc(if th == 1 { 1 } else { 2 }, th as u16 + 1);
            } else if let Some(b) = live[th].take() {
                t.free(b, th as u16 + 1).unwrap();
            }
            step[th] += 1;
        }
        t.free(held, 9).unwrap();
        assert_eq!(t.check().unwrap().largest_free_order, Some(2));
    }
}

#[test]
fn a_missing_mark_is_a_violation() {
    let s = Stores::new(3);
    let t = s.tree();
    let b = t.alloc(3, 1).unwrap();
    let _other_side = t.alloc(2, 1).unwrap(); // keeps the grandparent marked on its other side
                                              // The grandparent forgets that its child has a block below: the grandparent could now be
                                              // claimed as a block over a live one.
    let parent = b.index >> 1;
    s.nodes[parent >> 1].fetch_and(!super::node::occ_bit_for(parent), SeqCst);
    let violations = t.check().unwrap_err();
    assert!(
        violations.iter().any(|v| matches!(v, TreeViolation::MarkMismatch { marked: false, .. })),
        "{violations:?}"
    );
    // Vacant above a live block: the block is hidden below a node that looks free.
    s.nodes[1].store(0, SeqCst);
    assert!(t.check().unwrap_err().iter().any(|v| matches!(v, TreeViolation::HiddenBelow { .. })));
}

#[test]
fn the_block_freed_last_is_handed_out_next_at_its_size() {
    let s = Stores::new(8);
    let t = s.tree();
    let keep: Vec<_> = (0..3).map(|_| t.alloc(6, 1).unwrap()).collect();
    for level in [2, 4, 6, 8] {
        let first = t.alloc(level, 1).unwrap();
        let mut offsets = Vec::new();
        let mut b = first;
        for _ in 0..5 {
            t.free(b, 1).unwrap();
            b = t.alloc(level, 1).unwrap();
            offsets.push(b.index);
        }
        assert!(offsets.iter().all(|i| *i == first.index), "level {level}: {offsets:?} after {}", first.index);
        t.free(b, 1).unwrap();
    }
    for b in keep {
        t.free(b, 1).unwrap();
    }
}
