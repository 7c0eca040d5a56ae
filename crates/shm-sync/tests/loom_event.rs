//! loom models of the event's no-lost-wakeup rules: a notification is never lost, and a
//! registered listener never misses a change made before `notify_if_waiting`.
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
use shm_sync::{Event, Wait};

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
