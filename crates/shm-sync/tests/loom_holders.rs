//! loom models of the refcount over a `HolderList` (twelve inline holders and an overflow
//! bitmap): two processes that both need the overflow link exactly one and both end up
//! holding; a process killed right after linking leaves an overflow the next one uses; a
//! holder killed in the overflow between the set and the count is counted by the repair, and
//! swept; a linker whose repair finds the record dead is named its freer.
//!
//! Run by `cargo xtask test` with `RUSTFLAGS="--cfg shm_loom" LOOM_MAX_PREEMPTIONS=2`.
#![cfg(all(shm_loom, feature = "loom"))]

mod common;

use common::model;
use loom::sync::Arc;
use loom::thread;
use shm_sync::holders::{Change, HolderList};
use shm_sync::{AtomicU64, Holder, Members, RefCount, RefError, Released, Standing, TokenSlot, TokenTable};

/// Slots 0..12 fill the inline lanes; these go to the overflow.
const BEYOND: [u32; 2] = [70, 100];

/// A record held by slots 0..12 (its lanes full), with two overflow bitmaps of 128 bits its
/// group resolves (ids 1 and 2).
struct Fixture {
    rc: RefCount<HolderList>,
    slots: Vec<TokenSlot>,
    overflows: [Vec<AtomicU64>; 2],
}

impl Members for Fixture {
    fn standing(&self, _holder: Holder) -> Standing {
        Standing::Member
    }
    fn holder_overflow(&self, id: u64) -> Option<&[AtomicU64]> {
        self.overflows.get((id as usize).wrapping_sub(1)).map(|v| &v[..])
    }
}

fn fixture() -> Arc<Fixture> {
    let f = Fixture {
        rc: RefCount::new(),
        slots: (0..2).map(|_| TokenSlot::new()).collect(),
        overflows: [0, 1].map(|_| (0..2).map(|_| AtomicU64::new(0)).collect()),
    };
    f.rc.init(7, 0);
    let t = TokenTable::new(&f.slots);
    for slot in 1..12 {
        f.rc.acquire(slot, &t, &f).unwrap();
    }
    Arc::new(f)
}

/// Acquires `slot`, linking overflow `id` when the record needs one; whether our link was the
/// one that took.
fn acquire_linking(f: &Fixture, slot: u32, id: u64) -> bool {
    let t = TokenTable::new(&f.slots);
    match f.rc.acquire(slot, &t, f) {
        Ok(_) => false,
        Err(RefError::NeedsOverflow) => {
            let linked = f.rc.link_overflow(id, slot, &t, f).unwrap() == Change::Changed;
            f.rc.acquire(slot, &t, f).unwrap();
            linked
        }
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn two_processes_needing_the_overflow_link_exactly_one_and_both_hold() {
    model(|| {
        let f = fixture();
        let f1 = f.clone();
        let other = thread::spawn(move || acquire_linking(&f1, BEYOND[1], 2));
        let mine = acquire_linking(&f, BEYOND[0], 1);
        let other = other.join().unwrap();
        assert!(mine ^ other, "exactly one link took: {mine} {other}");
        let (winner, loser) = if mine { (0, 1) } else { (1, 0) };
        assert_eq!(f.rc.overflow_id(), winner as u64 + 1);
        assert!(f.overflows[loser].iter().all(|w| w.load(core::sync::atomic::Ordering::Relaxed) == 0));
        assert_eq!(f.rc.holder_count(), 14);
        assert!(BEYOND.iter().all(|s| f.rc.is_held_by_among(*s, &*f)));
    });
}

#[test]
fn a_process_killed_right_after_linking_leaves_an_overflow_the_next_one_uses() {
    model(|| {
        shm_sync::loom_support::timeouts_fire(true);
        let f = fixture();
        let f1 = f.clone();
        let dying = thread::spawn(move || {
            f1.rc.link_overflow_and_abandon(1);
            shm_sync::loom_support::die();
        });
        dying.join().unwrap();
        let t = TokenTable::new(&f.slots);
        // Our link is refused: the dead process's took (the commit point); its block is ours.
        assert!(!acquire_linking(&f, BEYOND[0], 2));
        assert_eq!((f.rc.overflow_id(), f.rc.holder_count()), (1, 13));
        assert_eq!(f.rc.drop_holder(BEYOND[0], &t, &*f).unwrap(), Released::Remaining);
        assert_eq!(f.rc.holder_count(), 12);
    });
}

#[test]
fn a_holder_killed_in_the_overflow_between_the_set_and_the_count_is_counted_and_swept() {
    model(|| {
        shm_sync::loom_support::timeouts_fire(true);
        let f = fixture();
        let t = TokenTable::new(&f.slots);
        f.rc.link_overflow(1, 0, &t, &*f).unwrap();
        f.rc.acquire(BEYOND[0], &t, &*f).unwrap();
        // Slot BEYOND[1] sets its overflow bit and is killed before its count follows, while
        // slot BEYOND[0] lets go at the same time.
        let f1 = f.clone();
        let dying = thread::spawn(move || {
            f1.rc.insert_holder_and_abandon(BEYOND[1], &*f1);
            shm_sync::loom_support::die();
        });
        let released = f.rc.release(BEYOND[0], &t, &*f).unwrap();
        dying.join().unwrap();
        assert_eq!(released, Released::Remaining);
        // The sweep of the dead slot finds it in the set once the repair has counted it.
        assert_eq!(f.rc.drop_holder(BEYOND[1], &t, &*f).unwrap(), Released::Remaining);
        assert_eq!((f.rc.holder_count(), f.rc.holders_among(&*f)), (12, (0..12).collect::<Vec<u32>>()));
        for slot in 1..12 {
            assert_eq!(f.rc.release(slot, &t, &*f).unwrap(), Released::Remaining);
        }
        assert_eq!(f.rc.release(0, &t, &*f).unwrap(), Released::Last);
    });
}

#[test]
fn a_linker_whose_repair_finds_the_record_dead_is_named_its_freer() {
    model(|| {
        shm_sync::loom_support::timeouts_fire(true);
        let f = Arc::new(Fixture {
            rc: RefCount::new(),
            slots: (0..2).map(|_| TokenSlot::new()).collect(),
            overflows: [0, 1].map(|_| (0..2).map(|_| AtomicU64::new(0)).collect()),
        });
        f.rc.init(7, 0);
        // The last holder is killed releasing, between the set and the count.
        let f1 = f.clone();
        let dying = thread::spawn(move || {
            f1.rc.remove_holder_and_abandon(0, &*f1);
            shm_sync::loom_support::die();
        });
        dying.join().unwrap();
        let t = TokenTable::new(&f.slots);
        // A process linking an overflow (it needed one a moment ago) repairs it: dead, ours to free.
        assert_eq!(f.rc.link_overflow(1, 5, &t, &*f), Err(RefError::Orphaned));
        assert_eq!(f.rc.freer(), Some(5), "the linker is named: its rescuer finishes the free");
        assert_eq!(f.rc.drop_holder(5, &t, &*f).unwrap(), Released::FreerDied);
    });
}
