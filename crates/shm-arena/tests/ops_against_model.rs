//! Random operation sequences against a model of what must hold.
//!
//! The model is the set of live blocks, each with a byte pattern written into all of its bytes.
//! After every operation: allocated blocks are aligned, inside the arena and disjoint from every
//! live block; every live block still holds its pattern (so an overlap anywhere is caught); an
//! allocation fails only when the model shows no aligned free range of that size; stale and
//! double frees are refused and change nothing.

use proptest::prelude::*;
use shm_arena::{AllocError, Arena, ArenaOptions, Block};

#[derive(Clone, Debug)]
enum Op {
    Alloc { size: u64 },
    Free { pick: usize },
    FreeAgain { pick: usize },
    Validate { pick: usize },
    DisownAdopt { pick: usize },
    Trim,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..=20_000).prop_map(|size| Op::Alloc { size }),
        3 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => any::<usize>().prop_map(|pick| Op::FreeAgain { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Validate { pick }),
        1 => any::<usize>().prop_map(|pick| Op::DisownAdopt { pick }),
        1 => Just(Op::Trim),
    ]
}

struct Model {
    live: Vec<(Block, u8)>,
    freed: Vec<Block>,
    next_pattern: u8,
}

fn fill(a: &Arena, b: Block, byte: u8) {
    // SAFETY: the model holds `b` alone until it frees it.
    unsafe { a.bytes_mut(b).unwrap().fill(byte) };
}

fn intact(a: &Arena, b: Block, byte: u8) -> bool {
    // SAFETY: nobody writes `b` while the model reads it.
    unsafe { a.bytes(b).unwrap().iter().all(|x| *x == byte) }
}

fn overlaps(a: Block, b: Block) -> bool {
    a.offset() < b.offset() + b.size() && b.offset() < a.offset() + a.size()
}

/// Whether some block of `size` (aligned to it) fits between the live blocks.
fn model_has_room(live: &[(Block, u8)], capacity: u64, size: u64) -> bool {
    (0..capacity / size)
        .map(|i| Block::from_parts(i * size, size, 0))
        .any(|candidate| live.iter().all(|(b, _)| !overlaps(*b, candidate)))
}

fn run(min_block: u64, capacity: u64, ops: Vec<Op>) {
    let a = ArenaOptions::new(capacity).min_block(min_block).create_anonymous().unwrap();
    let mut m = Model { live: Vec::new(), freed: Vec::new(), next_pattern: 1 };
    for op in ops {
        match op {
            Op::Alloc { size } => match a.alloc(size) {
                Ok(b) => {
                    assert!(b.size() >= size.max(min_block) && b.size() < 2 * size.max(min_block));
                    assert_eq!(b.offset() % b.size(), 0, "aligned to its size");
                    assert!(b.offset() + b.size() <= a.capacity());
                    for (other, _) in &m.live {
                        assert!(!overlaps(b, *other), "{b:?} overlaps live {other:?}");
                    }
                    fill(&a, b, m.next_pattern);
                    m.live.push((b, m.next_pattern));
                    m.next_pattern = m.next_pattern.wrapping_add(1).max(1);
                }
                Err(AllocError::TooLarge { .. }) => assert!(size > a.max_block()),
                Err(AllocError::Exhausted { block, .. }) => {
                    assert!(
                        !model_has_room(&m.live, a.capacity(), block),
                        "exhausted although a {block}-byte slot is free"
                    )
                }
                Err(e) => panic!("unexpected {e}"),
            },
            Op::Free { pick } if !m.live.is_empty() => {
                let (b, byte) = m.live.swap_remove(pick % m.live.len());
                assert!(intact(&a, b, byte), "{b:?} was overwritten");
                a.free(b).unwrap();
                m.freed.push(b);
            }
            Op::FreeAgain { pick } if !m.freed.is_empty() => {
                let stale = m.freed[pick % m.freed.len()];
                // The place may hold a new block now; then its generation differs (14 bits).
                let reused_with_same_generation = m.live.iter().any(|(b, _)| *b == stale);
                if !reused_with_same_generation {
                    assert!(a.free(stale).is_err(), "stale free of {stale:?} accepted");
                }
            }
            Op::Validate { pick } if !m.live.is_empty() => {
                a.validate(m.live[pick % m.live.len()].0).unwrap();
            }
            Op::DisownAdopt { pick } if !m.live.is_empty() => {
                let b = m.live[pick % m.live.len()].0;
                a.disown(b).unwrap();
                assert!(a.disown(b).is_err());
                a.adopt(b).unwrap();
            }
            Op::Trim => a.trim(),
            _ => {}
        }
        for (b, byte) in &m.live {
            assert!(intact(&a, *b, *byte), "{b:?} was overwritten");
        }
    }
    let in_use: u64 = m.live.iter().map(|(b, _)| b.size()).sum();
    assert_eq!(a.stats().in_use_bytes, in_use);
    for (b, _) in m.live.drain(..) {
        a.free(b).unwrap();
    }
    a.trim();
    let report = a.check().unwrap();
    assert_eq!(report.leaves_free * min_block, a.capacity());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn op_sequences_keep_every_block_intact(
        min_block in prop_oneof![Just(16u64), Just(64), Just(256)],
        capacity in prop_oneof![Just(64 * 1024u64), Just(100 * 1024), Just(256 * 1024)],
        ops in prop::collection::vec(op(), 1..300),
    ) {
        run(min_block, capacity, ops);
    }
}
