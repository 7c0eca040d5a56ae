//! loom model of the flag's rule: a waiter never misses a set (invariant 1 of `flag.rs`).
//!
//! Run by `cargo xtask test` with `RUSTFLAGS="--cfg shm_loom" LOOM_MAX_PREEMPTIONS=2`.
//! An untimed wait that nobody wakes is a loom deadlock, which is how a missed set shows.
#![cfg(all(shm_loom, feature = "loom"))]

mod common;

use common::model;
use loom::sync::Arc;
use loom::thread;
use shm_sync::Flag;

#[test]
fn a_waiter_never_misses_a_set() {
    model(|| {
        let f = Arc::new(Flag::new());
        let f1 = f.clone();
        let setter = thread::spawn(move || f1.set());
        assert!(f.wait(None));
        setter.join().unwrap();
    });
}
