//! loom models of the robust mutex: mutual exclusion and wakeups, take-over after the
//! holder's death, and poisoning.
//!
//! Run by `cargo xtask test` with `RUSTFLAGS="--cfg shm_loom" LOOM_MAX_PREEMPTIONS=2`.
//! The futex is modelled by a loom Mutex + Condvar (see `shm_platform::sync::primitive`): an
//! untimed sleep that nobody wakes is a loom deadlock, which is how a lost wakeup shows.
#![cfg(all(shm_loom, feature = "loom"))]

mod common;

use common::model;
use loom::sync::atomic::{AtomicU32, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;
use shm_sync::{LockError, Locked, ProcessSlot, ProcessTable, RobustMutex};

#[test]
fn the_mutex_excludes_and_wakes_sleepers() {
    model(|| {
        let m = Arc::new(RobustMutex::new());
        let inside = Arc::new(AtomicU32::new(0));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (m, inside) = (m.clone(), inside.clone());
                thread::spawn(move || {
                    let g = m.lock().unwrap().into_guard();
                    assert_eq!(inside.fetch_add(1, SeqCst), 0, "two holders at once");
                    inside.fetch_sub(1, SeqCst);
                    drop(g);
                })
            })
            .collect();
        let g = m.lock().unwrap().into_guard();
        assert_eq!(inside.fetch_add(1, SeqCst), 0, "two holders at once");
        inside.fetch_sub(1, SeqCst);
        drop(g);
        for h in handles {
            h.join().unwrap();
        }
        assert!(matches!(m.try_lock(), Ok(Locked::Acquired(_))));
    });
}

/// A mutex and a thread that takes it and dies holding it (timeouts fire, so a waiter can
/// notice the death).
fn mutex_with_a_dying_holder() -> (Arc<RobustMutex>, thread::JoinHandle<()>) {
    shm_sync::loom_support::timeouts_fire(true);
    let m = Arc::new(RobustMutex::new());
    let m1 = m.clone();
    let holder = thread::spawn(move || {
        std::mem::forget(m1.lock().unwrap().into_guard());
        shm_sync::loom_support::die();
    });
    (m, holder)
}

#[test]
fn a_dead_holder_is_taken_over_and_poisons_without_repair() {
    model(|| {
        let (m, holder) = mutex_with_a_dying_holder();
        holder.join().unwrap();
        match m.lock().unwrap() {
            Locked::OwnerDied(g) => drop(g), // not repaired
            Locked::Acquired(_) => panic!("the dead holder's lock was handed out as clean"),
        }
        assert_eq!(m.lock().unwrap_err(), LockError::Poisoned);
    });
}

#[test]
fn a_waiter_takes_over_from_a_holder_that_dies_while_it_waits() {
    model(|| {
        let (m, holder) = mutex_with_a_dying_holder();
        let got = loop {
            match m.lock().unwrap() {
                Locked::OwnerDied(mut g) => {
                    g.mark_consistent();
                    break true;
                }
                // We won the race before the holder took it: release and let it in.
                Locked::Acquired(g) => drop(g),
            }
            if m.holder().is_none() {
                thread::yield_now();
            }
        };
        holder.join().unwrap();
        assert!(got);
        assert!(!m.is_poisoned());
    });
}

/// Mutex invariant 5: two processes of a group (a process table) that register, lock, unlock
/// and leave are never refused as strangers, whatever the interleaving and however often the
/// waiter's rechecks fire: the registration's fence makes a member's slot visible to a waiter
/// that read its lock word.
#[test]
fn members_of_the_group_are_never_refused() {
    model(|| {
        shm_sync::loom_support::timeouts_fire(true);
        let slots: Arc<Vec<ProcessSlot>> = Arc::new((0..2).map(|_| ProcessSlot::new()).collect());
        let m = Arc::new(RobustMutex::new());
        let (m1, slots1) = (m.clone(), slots.clone());
        let other = thread::spawn(move || {
            let table = ProcessTable::new(&slots1);
            let me = table.register().unwrap();
            drop(m1.lock_among(&table).expect("a member was refused").into_guard());
            table.unregister(me);
        });
        let table = ProcessTable::new(&slots);
        let me = table.register().unwrap();
        drop(m.lock_among(&table).expect("a member was refused").into_guard());
        table.unregister(me);
        other.join().unwrap();
    });
}

/// Mutex invariant 5: a live holder that is not in the group is refused, never taken over
/// (its word is left as it was), and a dead one is taken over as before.
#[test]
fn a_live_stranger_is_refused_and_a_dead_one_taken_over() {
    model(|| {
        shm_sync::loom_support::timeouts_fire(true);
        let slots: Vec<ProcessSlot> = (0..2).map(|_| ProcessSlot::new()).collect();
        let m = Arc::new(RobustMutex::new());
        let m1 = m.clone();
        let stranger = thread::spawn(move || {
            std::mem::forget(m1.lock().unwrap().into_guard());
            m1.holder().unwrap()
        });
        let pid = stranger.join().unwrap();
        let table = ProcessTable::new(&slots);
        table.register().unwrap();
        assert_eq!(m.lock_among(&table).unwrap_err(), LockError::Stranger { holder: pid });
        assert_eq!(m.holder(), Some(pid), "a stranger's lock was taken over");
    });
    model(|| {
        shm_sync::loom_support::timeouts_fire(true);
        let slots: Vec<ProcessSlot> = (0..2).map(|_| ProcessSlot::new()).collect();
        let (m, holder) = mutex_with_a_dying_holder();
        holder.join().unwrap();
        let table = ProcessTable::new(&slots);
        table.register().unwrap();
        assert!(matches!(m.lock_among(&table).unwrap(), Locked::OwnerDied(_)));
    });
}
