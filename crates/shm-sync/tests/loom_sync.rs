//! loom models of shm-sync's protocols: mutual exclusion and wakeups of the robust mutex,
//! take-over after the holder's death and poisoning, and the event's no-lost-wakeup rules.
//!
//! Run by `cargo xtask test` with `RUSTFLAGS="--cfg shm_loom" LOOM_MAX_PREEMPTIONS=2`.
//! The futex is modelled by a loom Mutex + Condvar (see `sync.rs`): an untimed sleep that nobody
//! wakes is a loom deadlock, which is how a lost wakeup shows.
#![cfg(all(shm_loom, feature = "loom"))]

use loom::sync::atomic::{AtomicU32, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;
use shm_sync::{Event, LockError, Locked, RobustMutex, Wait};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

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

#[test]
fn a_dead_holder_is_taken_over_and_poisons_without_repair() {
    model(|| {
        shm_sync::loom_support::timeouts_fire(true);
        let m = Arc::new(RobustMutex::new());
        let m1 = m.clone();
        let holder = thread::spawn(move || {
            std::mem::forget(m1.lock().unwrap().into_guard());
            shm_sync::loom_support::die();
        });
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
        shm_sync::loom_support::timeouts_fire(true);
        let m = Arc::new(RobustMutex::new());
        let m1 = m.clone();
        let holder = thread::spawn(move || {
            std::mem::forget(m1.lock().unwrap().into_guard());
            shm_sync::loom_support::die();
        });
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

#[test]
fn an_event_notification_is_never_lost() {
    model(|| {
        let e = Arc::new(Event::new());
        let seen = e.sequence();
        let e1 = e.clone();
        let notifier = thread::spawn(move || e1.notify_all());
        // An untimed wait: if the notification were lost, loom would report a deadlock.
        assert!(matches!(e.wait_for_change(seen, None), Wait::Changed(_)));
        notifier.join().unwrap();
    });
}

#[test]
fn a_listener_never_misses_a_condition_changed_before_notify_if_waiting() {
    model(|| {
        let e = Arc::new(Event::new());
        let ready = Arc::new(AtomicU32::new(0));
        let (e1, r1) = (e.clone(), ready.clone());
        let notifier = thread::spawn(move || {
            r1.store(1, SeqCst);
            e1.notify_if_waiting();
        });
        let listener = e.listen();
        let seen = listener.sequence();
        if ready.load(SeqCst) == 0 {
            // Untimed: a skipped notification would deadlock here.
            assert!(matches!(listener.wait(seen, None), Wait::Changed(_)));
        }
        drop(listener);
        notifier.join().unwrap();
    });
}
