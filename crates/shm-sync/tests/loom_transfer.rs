//! loom models of transfer tokens: a token keeps its record alive after the sender lets go,
//! and a claim racing a cancel has exactly one winner.
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
fn a_token_keeps_the_record_alive_after_its_sender_lets_go() {
    model(|| {
        let f = fixture(&[0]);
        let token = f.rc.send(&TokenTable::new(&f.slots), &AnyProcess).unwrap();
        let f1 = f.clone();
        let sender = thread::spawn(move || f1.rc.release(0, &TokenTable::new(&f1.slots), &AnyProcess).unwrap());
        let t = TokenTable::new(&f.slots);
        assert_eq!(f.rc.claim(token, 1, &t, &AnyProcess).unwrap(), Acquired::First, "the block outlived its sender");
        assert_eq!(sender.join().unwrap(), Released::Remaining);
        assert_eq!(f.rc.release(1, &t, &AnyProcess).unwrap(), Released::Last);
    });
}

#[test]
fn claim_and_cancel_race_and_exactly_one_wins() {
    model(|| {
        let f = fixture(&[0]);
        let t = TokenTable::new(&f.slots);
        let token = f.rc.send(&t, &AnyProcess).unwrap();
        f.rc.release(0, &t, &AnyProcess).unwrap();
        let f1 = f.clone();
        let canceller = thread::spawn(move || f1.rc.cancel(token, 1, &TokenTable::new(&f1.slots), &AnyProcess));
        let claimed = f.rc.claim(token, 1, &t, &AnyProcess);
        let cancelled = canceller.join().unwrap();
        match (claimed, cancelled) {
            (Ok(_), Err(RefError::Token(_))) => {
                assert!(!f.rc.is_dead());
                assert_eq!(f.rc.release(1, &t, &AnyProcess).unwrap(), Released::Last);
            }
            (Err(RefError::Token(_)), Ok(Released::Last)) => assert!(f.rc.is_dead()),
            other => panic!("both or neither won: {other:?}"),
        }
    });
}
