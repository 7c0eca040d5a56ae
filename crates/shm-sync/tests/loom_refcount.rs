//! loom models of the holder-tracked refcount: exactly one last release, repair after a
//! holder dies inside a change, renewal, no revival of a record released last, the holder
//! count following the holder set (also when a holder is killed between the two), and a dead
//! record naming its freer to the rescuer of that slot alone.
//!
//! Run by `cargo xtask test` with `RUSTFLAGS="--cfg shm_loom" LOOM_MAX_PREEMPTIONS=2`.
//! The futex is modelled by a loom Mutex + Condvar (see `shm_platform::sync::primitive`): an
//! untimed sleep that nobody wakes is a loom deadlock, which is how a lost wakeup shows.
#![cfg(all(shm_loom, feature = "loom"))]

mod common;

use common::{fixture, model};
use loom::thread;
use shm_sync::{Acquired, AnyProcess, RefError, Released, TokenTable};

#[test]
fn two_holders_releasing_at_once_make_exactly_one_last() {
    model(|| {
        let f = fixture(&[0, 1]);
        let f1 = f.clone();
        let other = thread::spawn(move || f1.rc.release(1, &TokenTable::new(&f1.slots), &AnyProcess).unwrap());
        let mine = f.rc.release(0, &TokenTable::new(&f.slots), &AnyProcess).unwrap();
        let other = other.join().unwrap();
        assert_eq!([mine, other].iter().filter(|r| **r == Released::Last).count(), 1);
        assert!(f.rc.is_dead());
    });
}

#[test]
fn a_holder_dying_inside_a_change_is_repaired_by_the_next() {
    model(|| {
        shm_sync::loom_support::timeouts_fire(true);
        let f = fixture(&[0, 1]);
        let f1 = f.clone();
        let dying = thread::spawn(move || {
            // Holder 1 dies in the middle of a change, lock held.
            f1.rc.lock_and_abandon();
            shm_sync::loom_support::die();
        });
        dying.join().unwrap();
        let t = TokenTable::new(&f.slots);
        // The survivor drops the dead holder's reference, then its own.
        assert_eq!(f.rc.drop_holder(1, &t, &AnyProcess).unwrap(), Released::Remaining);
        assert_eq!(f.rc.release(0, &t, &AnyProcess).unwrap(), Released::Last);
    });
}

#[test]
fn a_renewed_record_is_never_taken_for_its_old_self() {
    // Holder 0 lets go of target 7 and would reuse the record as 9; slot 1 acquires it by
    // 7 at the same time (a stale handle) and checks the target once it holds it.
    model(|| {
        let f = fixture(&[0]);
        let f1 = f.clone();
        let late = thread::spawn(move || {
            let t = TokenTable::new(&f1.slots);
            match f1.rc.acquire(1, &t, &AnyProcess) {
                Ok(_) if f1.rc.target() == 7 => true,
                Ok(_) => {
                    // Renewed under us: let go; the renewer's hold keeps the record.
                    assert_eq!(f1.rc.release(1, &t, &AnyProcess).unwrap(), Released::Remaining);
                    false
                }
                Err(e) => panic!("a renewed record stays alive: {e:?}"),
            }
        });
        let t = TokenTable::new(&f.slots);
        let released = f.rc.release_or_renew(0, &t, 9, &AnyProcess).unwrap();
        let old_self_taken = late.join().unwrap();
        match released {
            Released::Renewed => {
                assert!(!old_self_taken, "a stale reader took the renewed record for target 7");
                assert_eq!((f.rc.target(), f.rc.holders()), (9, vec![0]));
            }
            Released::Remaining => {
                assert!(old_self_taken, "released while the reader holds it, yet it saw another target");
                assert_eq!((f.rc.target(), f.rc.holders()), (7, vec![1]));
            }
            other => panic!("{other:?}"),
        }
        assert!(!f.rc.is_dead());
    });
}

#[test]
fn a_record_released_last_is_never_revived() {
    model(|| {
        let f = fixture(&[0]);
        let f1 = f.clone();
        let late = thread::spawn(move || f1.rc.acquire(1, &TokenTable::new(&f1.slots), &AnyProcess));
        let released = f.rc.release(0, &TokenTable::new(&f.slots), &AnyProcess).unwrap();
        match (released, late.join().unwrap()) {
            (Released::Last, Err(RefError::Dead)) => {}
            (Released::Remaining, Ok(Acquired::First)) => assert!(!f.rc.is_dead()),
            other => panic!("a freed block was revived, or a held one freed: {other:?}"),
        }
    });
}

#[test]
fn a_holder_killed_between_the_set_and_the_count_is_counted_by_the_repair() {
    // Slot 1 is added to the holder set but dies before its count follows: the next taker of
    // the lock rebuilds the count from the set (invariant 2), so holder 0's release is not the
    // last while slot 1 is named, and the sweep of slot 1 is.
    model(|| {
        shm_sync::loom_support::timeouts_fire(true);
        let f = fixture(&[0]);
        let f1 = f.clone();
        let dying = thread::spawn(move || {
            f1.rc.insert_holder_and_abandon(1, &AnyProcess);
            shm_sync::loom_support::die();
        });
        dying.join().unwrap();
        let t = TokenTable::new(&f.slots);
        assert_eq!(f.rc.release(0, &t, &AnyProcess).unwrap(), Released::Remaining);
        assert_eq!((f.rc.holders(), f.rc.holder_count()), (vec![1], 1));
        assert_eq!(f.rc.drop_holder(1, &t, &AnyProcess).unwrap(), Released::Last);
    });
}

#[test]
fn a_holder_killed_between_removal_and_the_count_is_not_counted_twice() {
    model(|| {
        shm_sync::loom_support::timeouts_fire(true);
        let f = fixture(&[0, 1]);
        let f1 = f.clone();
        let dying = thread::spawn(move || {
            f1.rc.remove_holder_and_abandon(1, &AnyProcess);
            shm_sync::loom_support::die();
        });
        dying.join().unwrap();
        let t = TokenTable::new(&f.slots);
        assert_eq!(f.rc.drop_holder(1, &t, &AnyProcess).unwrap(), Released::NotHeld);
        assert_eq!(f.rc.holder_count(), 1);
        assert_eq!(f.rc.release(0, &t, &AnyProcess).unwrap(), Released::Last);
    });
}

#[test]
fn the_holder_count_follows_the_set_under_concurrent_changes() {
    model(|| {
        let f = fixture(&[0]);
        let (f1, f2) = (f.clone(), f.clone());
        let passing = thread::spawn(move || {
            let t = TokenTable::new(&f1.slots);
            f1.rc.acquire(1, &t, &AnyProcess).map(|_| f1.rc.release(1, &t, &AnyProcess).unwrap())
        });
        let staying = thread::spawn(move || f2.rc.acquire(2, &TokenTable::new(&f2.slots), &AnyProcess));
        let mine = f.rc.release(0, &TokenTable::new(&f.slots), &AnyProcess).unwrap();
        let (passing, staying) = (passing.join().unwrap(), staying.join().unwrap());
        match staying {
            // Slot 2 came in before the record died: it holds it alone at the end.
            Ok(Acquired::First) => {
                assert_eq!((f.rc.holders(), f.rc.holder_count(), f.rc.is_dead()), (vec![2], 1, false));
                assert_ne!(mine, Released::Last);
                assert!(!matches!(passing, Ok(Released::Last)));
            }
            // The record died before slot 2 came: exactly one release learned it.
            Err(RefError::Dead) => {
                let lasts = [Ok(mine), passing].iter().filter(|r| matches!(r, Ok(Released::Last))).count();
                assert_eq!((lasts, f.rc.holder_count(), f.rc.is_dead()), (1, 0, true));
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn the_freer_of_a_dead_record_is_named_to_the_rescuer_of_its_slot_alone() {
    // Two holders let go at once; whichever learns it was the last is the freer, and dies
    // before freeing. A rescuer dropping each slot hears `FreerDied` for the freer's slot
    // only, as often as it asks (a rescuer that dies too is followed by another).
    model(|| {
        let f = fixture(&[0, 1]);
        let f1 = f.clone();
        let other = thread::spawn(move || f1.rc.release(1, &TokenTable::new(&f1.slots), &AnyProcess).unwrap());
        let mine = f.rc.release(0, &TokenTable::new(&f.slots), &AnyProcess).unwrap();
        let other = other.join().unwrap();
        let freer = match (mine, other) {
            (Released::Last, Released::Remaining) => 0,
            (Released::Remaining, Released::Last) => 1,
            both => panic!("exactly one last release: {both:?}"),
        };
        assert_eq!(f.rc.freer(), Some(freer));
        let t = TokenTable::new(&f.slots);
        for _ in 0..2 {
            assert_eq!(f.rc.drop_holder(freer, &t, &AnyProcess).unwrap(), Released::FreerDied);
            assert_eq!(f.rc.drop_holder(1 - freer, &t, &AnyProcess).unwrap(), Released::NotHeld);
        }
        assert!(f.rc.is_dead(), "a freer's death never revives the record");
    });
}
