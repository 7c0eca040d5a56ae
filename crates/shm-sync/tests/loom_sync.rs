//! loom models of shm-sync's protocols: mutual exclusion and wakeups of the robust mutex,
//! take-over after the holder's death and poisoning, and the event's no-lost-wakeup rules.
//!
//! Run by `cargo xtask test` with `RUSTFLAGS="--cfg shm_loom" LOOM_MAX_PREEMPTIONS=2`.
//! The futex is modelled by a loom Mutex + Condvar (see `shm_platform::sync::primitive`): an untimed sleep that nobody
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

mod refcounts {
    use super::*;
    use shm_sync::{Acquired, RefCount, RefError, Released, TokenSlot, TokenTable};

    struct Fixture {
        rc: RefCount<1>,
        slots: Vec<TokenSlot>,
    }

    fn fixture(holders: &[u32]) -> Arc<Fixture> {
        let f = Fixture { rc: RefCount::new(), slots: (0..2).map(|_| TokenSlot::new()).collect() };
        f.rc.init(7, holders[0]);
        let t = TokenTable::new(&f.slots);
        for h in &holders[1..] {
            f.rc.acquire(*h, &t).unwrap();
        }
        Arc::new(f)
    }

    #[test]
    fn two_holders_releasing_at_once_make_exactly_one_last() {
        model(|| {
            let f = fixture(&[0, 1]);
            let f1 = f.clone();
            let other = thread::spawn(move || f1.rc.release(1, &TokenTable::new(&f1.slots)).unwrap());
            let mine = f.rc.release(0, &TokenTable::new(&f.slots)).unwrap();
            let other = other.join().unwrap();
            assert_eq!([mine, other].iter().filter(|r| **r == Released::Last).count(), 1);
            assert!(f.rc.is_dead());
        });
    }

    #[test]
    fn a_token_keeps_the_record_alive_after_its_sender_lets_go() {
        model(|| {
            let f = fixture(&[0]);
            let token = f.rc.send(&TokenTable::new(&f.slots)).unwrap();
            let f1 = f.clone();
            let sender = thread::spawn(move || f1.rc.release(0, &TokenTable::new(&f1.slots)).unwrap());
            let t = TokenTable::new(&f.slots);
            assert_eq!(f.rc.claim(token, 1, &t).unwrap(), Acquired::First, "the block outlived its sender");
            assert_eq!(sender.join().unwrap(), Released::Remaining);
            assert_eq!(f.rc.release(1, &t).unwrap(), Released::Last);
        });
    }

    #[test]
    fn claim_and_cancel_race_and_exactly_one_wins() {
        model(|| {
            let f = fixture(&[0]);
            let t = TokenTable::new(&f.slots);
            let token = f.rc.send(&t).unwrap();
            f.rc.release(0, &t).unwrap();
            let f1 = f.clone();
            let canceller = thread::spawn(move || f1.rc.cancel(token, &TokenTable::new(&f1.slots)));
            let claimed = f.rc.claim(token, 1, &t);
            let cancelled = canceller.join().unwrap();
            match (claimed, cancelled) {
                (Ok(_), Err(RefError::Token(_))) => {
                    assert!(!f.rc.is_dead());
                    assert_eq!(f.rc.release(1, &t).unwrap(), Released::Last);
                }
                (Err(RefError::Token(_)), Ok(Released::Last)) => assert!(f.rc.is_dead()),
                other => panic!("both or neither won: {other:?}"),
            }
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
            assert_eq!(f.rc.drop_holder(1, &t).unwrap(), Released::Remaining);
            assert_eq!(f.rc.release(0, &t).unwrap(), Released::Last);
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
                match f1.rc.acquire(1, &t) {
                    Ok(_) if f1.rc.target() == 7 => true,
                    Ok(_) => {
                        // Renewed under us: let go; the renewer's hold keeps the record.
                        assert_eq!(f1.rc.release(1, &t).unwrap(), Released::Remaining);
                        false
                    }
                    Err(e) => panic!("a renewed record stays alive: {e:?}"),
                }
            });
            let t = TokenTable::new(&f.slots);
            let released = f.rc.release_or_renew(0, &t, 9).unwrap();
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
            let late = thread::spawn(move || f1.rc.acquire(1, &TokenTable::new(&f1.slots)));
            let released = f.rc.release(0, &TokenTable::new(&f.slots)).unwrap();
            match (released, late.join().unwrap()) {
                (Released::Last, Err(RefError::Dead)) => {}
                (Released::Remaining, Ok(Acquired::First)) => assert!(!f.rc.is_dead()),
                other => panic!("a freed block was revived, or a held one freed: {other:?}"),
            }
        });
    }
}

#[test]
fn a_semaphore_hands_each_permit_to_one_taker_and_wakes_sleepers() {
    use shm_sync::Semaphore;
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
