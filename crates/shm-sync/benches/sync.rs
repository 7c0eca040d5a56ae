//! Uncontended costs of shm-sync's primitives beside the alternatives, in one run:
//! lock+unlock of `RobustMutex`, `std::sync::Mutex` and a process-shared pthread mutex;
//! a holder's acquire+release of a `RefCount`; a notification nobody waits for.
#![allow(unsafe_code)] // the pthread mutex comparison

use criterion::{criterion_group, criterion_main, Criterion};
use shm_sync::{AnyProcess, Event, RefCount, RobustMutex, TokenSlot, TokenTable};
use std::hint::black_box;

struct PthreadShared(Box<libc::pthread_mutex_t>);

impl PthreadShared {
    fn new() -> Self {
        // SAFETY: pthread types are plain C data for which all-zero is a valid "not yet
        // initialised" state; they are initialised below before any use.
        let mut m: Box<libc::pthread_mutex_t> = Box::new(unsafe { core::mem::zeroed() });
        // SAFETY: as above.
        let mut attr: libc::pthread_mutexattr_t = unsafe { core::mem::zeroed() };
        // SAFETY: `attr` is valid storage for an attribute object.
        unsafe { libc::pthread_mutexattr_init(&mut attr) };
        // SAFETY: `attr` was initialised just above.
        unsafe { libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED) };
        // SAFETY: `m` is valid storage; `attr` is initialised.
        unsafe { libc::pthread_mutex_init(&mut *m, &attr) };
        // SAFETY: `attr` is initialised and no longer needed.
        unsafe { libc::pthread_mutexattr_destroy(&mut attr) };
        Self(m)
    }
    fn lock_unlock(&mut self) {
        // SAFETY: an initialised mutex, locked by this thread...
        unsafe { libc::pthread_mutex_lock(&mut *self.0) };
        // SAFETY: ...and unlocked by the same thread.
        unsafe { libc::pthread_mutex_unlock(&mut *self.0) };
    }
}

fn lock_unlock(c: &mut Criterion) {
    let mut g = c.benchmark_group("lock_unlock_uncontended");
    let robust = RobustMutex::new();
    g.bench_function("RobustMutex", |b| b.iter(|| drop(black_box(robust.lock().unwrap()))));
    let std_mutex = std::sync::Mutex::new(());
    g.bench_function("std::sync::Mutex", |b| b.iter(|| drop(black_box(std_mutex.lock().unwrap()))));
    let mut pthread = PthreadShared::new();
    g.bench_function("pthread_mutex (PROCESS_SHARED)", |b| b.iter(|| pthread.lock_unlock()));
    g.finish();
}

fn refcount(c: &mut Criterion) {
    let slots: Vec<TokenSlot> = (0..64).map(|_| TokenSlot::new()).collect();
    let tokens = TokenTable::new(&slots);
    let rc: RefCount<4> = RefCount::new();
    rc.init(1, 0);
    let mut g = c.benchmark_group("refcount");
    g.bench_function("acquire+release (second holder)", |b| {
        b.iter(|| {
            rc.acquire(black_box(7), &tokens, &AnyProcess).unwrap();
            rc.release(black_box(7), &tokens, &AnyProcess).unwrap();
        })
    });
    g.bench_function("send+claim+release (a handle's trip)", |b| {
        b.iter(|| {
            let t = rc.send(&tokens, &AnyProcess).unwrap();
            rc.claim(t, black_box(9), &tokens, &AnyProcess).unwrap();
            rc.release(9, &tokens, &AnyProcess).unwrap();
        })
    });
    g.finish();
    holder_capacity(c, &tokens);
    let e = Event::new();
    c.bench_function("event/notify_if_waiting (nobody waits)", |b| b.iter(|| black_box(&e).notify_if_waiting()));
}

/// Today's header record (256 holders, 4 words) beside one with 4,096 holders (64 words, the
/// bitmap issue 13 item 6 would need), in one run: a second holder's acquire+release, the last
/// holder's release (with a re-init), and `collect`'s sweep (`drop_holder` of a dead slot, which
/// usually held nothing).
fn holder_capacity(c: &mut Criterion, tokens: &TokenTable<'_>) {
    fn bench<const W: usize>(
        g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        tokens: &TokenTable<'_>,
    ) {
        let holders = 64 * W as u32;
        let rc: RefCount<W> = RefCount::new();
        rc.init(1, 0);
        g.bench_function(format!("{holders} holders: acquire+release (second holder, slot {})", holders - 5), |b| {
            b.iter(|| {
                rc.acquire(black_box(holders - 5), tokens, &AnyProcess).unwrap();
                rc.release(black_box(holders - 5), tokens, &AnyProcess).unwrap();
            })
        });
        let last: RefCount<W> = RefCount::new();
        g.bench_function(format!("{holders} holders: init+release (the last holder)"), |b| {
            b.iter(|| {
                last.init(1, black_box(3));
                black_box(last.release(3, tokens, &AnyProcess).unwrap());
            })
        });
        // `collect`'s sweep: every header is asked to drop a dead slot; most did not hold it.
        let swept: RefCount<W> = RefCount::new();
        swept.init(1, 0);
        g.bench_function(format!("{holders} holders: drop_holder of a slot that does not hold it (a sweep)"), |b| {
            b.iter(|| black_box(swept.drop_holder(black_box(holders - 7), tokens, &AnyProcess).unwrap()))
        });
        g.bench_function(format!("{holders} holders: acquire+drop_holder (a dead holder swept)"), |b| {
            b.iter(|| {
                swept.acquire(black_box(holders - 7), tokens, &AnyProcess).unwrap();
                black_box(swept.drop_holder(black_box(holders - 7), tokens, &AnyProcess).unwrap())
            })
        });
    }
    let mut g = c.benchmark_group("refcount_holders");
    bench::<4>(&mut g, tokens);
    bench::<64>(&mut g, tokens);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = lock_unlock, refcount
}
criterion_main!(benches);
