//! The primitives across real processes: a holder SIGKILLed with the mutex held, mutual
//! exclusion between processes, an event notified from another process, and a dead process
//! found in a process table.
#![allow(unsafe_code)] // mmap, fork, kill and waitpid in the tests themselves

use std::time::Duration;

use shm_platform::sync::{SharedU32, SharedU64};
use shm_sync::{Event, LockError, Locked, ProcessSlot, ProcessTable, RobustMutex, Wait};
use shm_testkit::{fork, kill, until, wait, SharedPage};

/// A zeroed page shared with forked children.
struct Shared(SharedPage);
impl Shared {
    fn new() -> Self {
        Self(SharedPage::new())
    }
    fn at<T>(&self, offset: usize) -> &T {
        // SAFETY: every `T` used here is a repr(C) struct of atomics (or an array of them) for
        // which all-zero is valid, placed at an aligned offset inside the page.
        unsafe { self.0.at(offset) }
    }
}

#[test]
fn a_holder_killed_with_the_lock_held_is_detected_and_poisons_unless_repaired() {
    let mem = Shared::new();
    let m: &RobustMutex = mem.at(0);
    let pid = fork(|| {
        let guard = m.lock().unwrap().into_guard();
        std::mem::forget(guard);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    until("child takes the lock", || m.holder() == Some(pid as u32));
    assert_eq!(m.try_lock().unwrap_err(), LockError::WouldBlock { holder: pid as u32 });
    kill(pid);
    // Taken over, and told so; dropping without repair poisons the mutex.
    let guard = match m.lock().unwrap() {
        Locked::OwnerDied(g) => g,
        Locked::Acquired(_) => panic!("the holder's death went unnoticed"),
    };
    assert!(guard.is_recovering());
    drop(guard);
    assert!(m.is_poisoned());
    assert_eq!(m.lock().unwrap_err(), LockError::Poisoned);
    assert!(m.reset_poison());
    assert!(matches!(m.lock().unwrap(), Locked::Acquired(_)));
}

#[test]
fn a_waiter_sleeping_on_the_lock_notices_the_holder_die() {
    let mem = Shared::new();
    let m: &RobustMutex = mem.at(0);
    let pid = fork(|| {
        std::mem::forget(m.lock().unwrap().into_guard());
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    until("child takes the lock", || m.holder() == Some(pid as u32));
    std::thread::scope(|s| {
        let waiter = s.spawn(|| match m.lock().unwrap() {
            Locked::OwnerDied(mut g) => {
                g.mark_consistent();
                true
            }
            Locked::Acquired(_) => false,
        });
        std::thread::sleep(Duration::from_millis(30)); // let it fall asleep on the futex
        kill(pid);
        assert!(waiter.join().unwrap(), "the sleeping waiter took the lock over");
    });
    assert!(!m.is_poisoned(), "marked consistent");
    assert!(matches!(m.lock().unwrap(), Locked::Acquired(_)));
}

/// Mutex invariant 5 across processes: a waiter of the group waits for a registered holder
/// (and gets the lock when it lets go), but refuses a live holder outside the group (a
/// forked child that never registered) instead of waiting for it, and leaves its lock alone.
#[test]
fn a_group_member_is_waited_for_and_a_live_stranger_refused() {
    let mem = Shared::new();
    let m: &RobustMutex = mem.at(0);
    let go: &SharedU32 = mem.at(64);
    let slots: &[ProcessSlot; 4] = mem.at(128);
    let table = ProcessTable::new(slots);
    table.register().unwrap();
    // A member: holds the lock until told to let go, a few rechecks later.
    let member = fork(|| {
        let t = ProcessTable::new(slots);
        let r = t.register().unwrap();
        let g = m.lock_among(&t).unwrap().into_guard();
        until("the parent lets the member go", || go.load(std::sync::atomic::Ordering::SeqCst) == 1);
        drop(g);
        t.unregister(r);
        0
    });
    until("the member takes the lock", || m.holder() == Some(member as u32));
    std::thread::scope(|s| {
        let waiter = s.spawn(|| m.lock_among(&table).map(|l| drop(l.into_guard())));
        std::thread::sleep(shm_sync::RECHECK * 4); // several rechecks judge the member
        go.store(1, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(waiter.join().unwrap(), Ok(()), "a member was waited for");
    });
    assert_eq!(wait(member), 0);
    // A stranger: alive, never registered, holding the lock.
    let stranger = fork(|| {
        std::mem::forget(m.lock().unwrap().into_guard());
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    until("the stranger takes the lock", || m.holder() == Some(stranger as u32));
    // Watchdog: a waiter that waited forever would hang the test; abort it instead.
    let (done, watchdog) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watchdog.recv_timeout(Duration::from_secs(30)) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            eprintln!("watchdog: lock_among still waits on a stranger after 30 s");
            std::process::abort();
        }
    });
    let refused = m.lock_among(&table).map(|l| drop(l.into_guard()));
    drop(done);
    assert_eq!(refused, Err(LockError::Stranger { holder: stranger as u32 }));
    assert_eq!(m.holder(), Some(stranger as u32), "never taken over");
    kill(stranger);
}

#[test]
fn processes_exclude_each_other() {
    let mem = Shared::new();
    let m: &RobustMutex = mem.at(0);
    let counter: &SharedU64 = mem.at(64);
    const ROUNDS: u64 = 5_000;
    let bump = || {
        for _ in 0..ROUNDS {
            let _g = m.lock().unwrap().into_guard();
            // A read-modify-write in two steps: lost updates show if exclusion fails.
            let v = counter.load(std::sync::atomic::Ordering::Relaxed);
            std::hint::black_box(v);
            counter.store(v + 1, std::sync::atomic::Ordering::Relaxed);
        }
        0
    };
    let children: Vec<_> = (0..2).map(|_| fork(bump)).collect();
    bump();
    for c in children {
        assert_eq!(wait(c), 0);
    }
    assert_eq!(counter.load(std::sync::atomic::Ordering::Relaxed), 3 * ROUNDS);
}

#[test]
fn an_event_is_notified_across_processes() {
    let mem = Shared::new();
    let e: &Event = mem.at(0);
    let flag: &SharedU32 = mem.at(64);
    let seen = e.sequence();
    let pid = fork(|| {
        // Registered before checking the flag: no notification can slip between.
        let l = e.listen();
        let seen = l.sequence();
        if flag.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            match l.wait(seen, Some(Duration::from_secs(10))) {
                Wait::Changed(_) => {}
                Wait::TimedOut => return 1,
            }
        }
        i32::from(flag.load(std::sync::atomic::Ordering::SeqCst) != 7)
    });
    std::thread::sleep(Duration::from_millis(20));
    flag.store(7, std::sync::atomic::Ordering::SeqCst);
    e.notify_if_waiting();
    assert_eq!(wait(pid), 0);
    assert_ne!(e.sequence(), seen);
}

#[test]
fn a_dead_process_is_found_and_its_slot_recycled() {
    let mem = Shared::new();
    let slots: &[ProcessSlot; 4] = mem.at(0);
    let table = ProcessTable::new(slots);
    let me = table.register().unwrap();
    assert!(!table.another_live(), "only we are registered");
    let pid = fork(|| {
        let t = ProcessTable::new(slots);
        let r = t.register().unwrap();
        t.user_words(r.index).unwrap()[0].store(42, std::sync::atomic::Ordering::Relaxed);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    until("child registers", || table.occupied() == 2);
    assert!(table.find_dead().is_empty(), "the child is alive");
    assert!(table.another_live(), "the child is another live member");
    kill(pid);
    assert!(!table.another_live(), "a dead member is not a live one");
    let dead = table.find_dead();
    assert_eq!(dead.len(), 1);
    let claimed = table.claim_dead(dead[0]).unwrap();
    assert_eq!(table.user_words(claimed.index).unwrap()[0].load(std::sync::atomic::Ordering::Relaxed), 42);
    assert!(table.claim_dead(dead[0]).is_none(), "one rescuer at a time");
    assert!(table.release_dead(claimed));
    assert_eq!(table.occupied(), 1);
    let again = table.register().unwrap();
    assert_eq!(
        table.user_words(again.index).unwrap()[0].load(std::sync::atomic::Ordering::Relaxed),
        0,
        "user words are reset"
    );
    assert!(table.is_current(me) && table.is_current(again));
}

mod refcounts {
    use super::*;
    use shm_sync::holders::HolderBitmap;
    use shm_sync::{Acquired, AnyProcess, RefCount, RefError, Released, Token, TokenError, TokenSlot, TokenTable};

    struct Layout<'a> {
        table: ProcessTable<'a>,
        tokens: TokenTable<'a>,
        rc: &'a RefCount<HolderBitmap<1>>,
    }

    fn layout(mem: &Shared) -> Layout<'_> {
        let slots: &[ProcessSlot; 4] = mem.at(0);
        let tokens: &[TokenSlot; 8] = mem.at(256);
        Layout { table: ProcessTable::new(slots), tokens: TokenTable::new(tokens), rc: mem.at(512) }
    }

    #[test]
    fn a_holder_killed_holding_references_is_dropped_by_a_survivor() {
        let mem = Shared::new();
        let l = layout(&mem);
        let me = l.table.register().unwrap();
        l.rc.init(1, me.index);
        let pid = fork(|| {
            let l = layout(&mem);
            let r = l.table.register().unwrap();
            assert_eq!(l.rc.acquire(r.index, &l.tokens, &AnyProcess).unwrap(), Acquired::First);
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        until("the child holds the block", || l.rc.holders().len() == 2);
        assert_eq!(
            l.rc.release(me.index, &l.tokens, &AnyProcess).unwrap(),
            Released::Remaining,
            "the child still holds it"
        );
        kill(pid);
        let dead = l.table.find_dead();
        assert_eq!(dead.len(), 1);
        let claimed = l.table.claim_dead(dead[0]).unwrap();
        assert_eq!(
            l.rc.drop_holder(claimed.index, &l.tokens, &AnyProcess).unwrap(),
            Released::Last,
            "the survivor frees it"
        );
        assert!(l.table.release_dead(claimed));
        assert!(l.rc.is_dead());
    }

    #[test]
    fn a_sent_handle_outlives_its_sender() {
        let mem = Shared::new();
        let l = layout(&mem);
        let token_word: &shm_platform::sync::SharedU64 = mem.at(1024);
        let pid = fork(|| {
            let l = layout(&mem);
            let r = l.table.register().unwrap();
            l.rc.init(1, r.index);
            let token = l.rc.send(&l.tokens, &AnyProcess).unwrap();
            token_word.store(u64::from(token.index) << 32 | token.generation, std::sync::atomic::Ordering::SeqCst);
            // The sender lets go and exits cleanly before anyone claims.
            assert_eq!(l.rc.release(r.index, &l.tokens, &AnyProcess).unwrap(), Released::Remaining);
            l.table.unregister(r);
            0
        });
        assert_eq!(wait(pid), 0);
        let bits = token_word.load(std::sync::atomic::Ordering::SeqCst);
        let token = Token { index: (bits >> 32) as u32, generation: bits & 0xFFFF_FFFF };
        assert!(!l.rc.is_dead(), "the token keeps it alive");
        let me = l.table.register().unwrap();
        assert_eq!(l.rc.claim(token, me.index, &l.tokens, &AnyProcess).unwrap(), Acquired::First);
        assert!(matches!(
            l.rc.claim(token, me.index, &l.tokens, &AnyProcess),
            Err(RefError::Token(TokenError::Stale { .. }))
        ));
        assert_eq!(l.rc.release(me.index, &l.tokens, &AnyProcess).unwrap(), Released::Last);
        assert!(
            matches!(
                l.rc.claim(token, me.index, &l.tokens, &AnyProcess),
                Err(RefError::Token(TokenError::Stale { .. }))
            ),
            "claimed after the free: refused"
        );
    }

    #[test]
    fn unclaimed_tokens_are_listed_with_their_age_and_reclaimed() {
        let mem = Shared::new();
        let l = layout(&mem);
        let me = l.table.register().unwrap();
        l.rc.init(1, me.index);
        let lost = l.rc.send(&l.tokens, &AnyProcess).unwrap();
        l.rc.release(me.index, &l.tokens, &AnyProcess).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let pending = l.tokens.pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].token, lost);
        assert!(pending[0].age_ns >= 5_000_000);
        assert_eq!(
            l.rc.cancel(lost, me.index, &l.tokens, &AnyProcess).unwrap(),
            Released::Last,
            "the lost message's block is freed"
        );
        assert!(l.tokens.pending().is_empty());
    }

    #[test]
    fn tokens_of_a_killed_sender_stay_claimable_until_reclaimed() {
        let mem = Shared::new();
        let l = layout(&mem);
        let pid = fork(|| {
            let l = layout(&mem);
            // Send until refused (its share: half the slots, transfer invariant 4), never
            // letting go, then die.
            let r = l.table.register().unwrap();
            l.rc.init(1, r.index);
            while l.rc.send(&l.tokens, &AnyProcess).is_ok() {}
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        until("the child takes its share of the table", || l.tokens.pending().len() == TokenTable::quota(8));
        kill(pid);
        // Tokens of a dead sender stay claimable (a receiver may still have the handle), so a
        // survivor reclaims them by age; the dead holder's bit goes with its process slot.
        let dead = l.table.claim_dead(l.table.find_dead()[0]).unwrap();
        assert_eq!(l.rc.drop_holder(dead.index, &l.tokens, &AnyProcess).unwrap(), Released::Remaining);
        let mut last = 0;
        for p in l.tokens.pending() {
            if l.rc.cancel(p.token, shm_sync::NO_FREER, &l.tokens, &AnyProcess).unwrap() == Released::Last {
                last += 1;
            }
        }
        assert_eq!(last, 1);
        assert_eq!(l.tokens.free_dead_reservations(), 0);
        assert!(l.rc.is_dead());
    }
}
