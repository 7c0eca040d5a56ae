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
use shm_sync::{LockError, Locked, RobustMutex};

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
