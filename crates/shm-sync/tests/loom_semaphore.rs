//! loom model of the semaphore: each permit goes to one taker, and sleepers are woken.
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
use shm_sync::Semaphore;

#[test]
fn a_semaphore_hands_each_permit_to_one_taker_and_wakes_sleepers() {
    model(|| {
        let s = Arc::new(Semaphore::with_permits(0));
        let taken = Arc::new(AtomicU32::new(0));
        let takers: Vec<_> = (0..2)
            .map(|_| {
                let (s, taken) = (s.clone(), taken.clone());
                thread::spawn(move || {
                    s.acquire(); // untimed: a lost wakeup deadlocks the model
                    taken.fetch_add(1, SeqCst);
                })
            })
            .collect();
        s.release(1);
        s.release(1);
        for t in takers {
            t.join().unwrap();
        }
        assert_eq!(taken.load(SeqCst), 2);
        assert_eq!(s.available(), 0);
    });
}
