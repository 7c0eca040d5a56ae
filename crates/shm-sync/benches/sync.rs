//! Uncontended costs of shm-sync's primitives beside the alternatives, in one run:
//! lock+unlock of `RobustMutex`, `std::sync::Mutex` and a process-shared pthread mutex;
//! a holder's acquire+release of a `RefCount`; a notification nobody waits for.
#![allow(unsafe_code)] // the pthread mutex comparison

use criterion::{criterion_group, criterion_main, Criterion};
use shm_sync::holders::{HolderBitmap, HolderList, Holders};
use shm_sync::{AnyProcess, AtomicU64, Event, Holder, Members, RefCount, RobustMutex, Standing, TokenSlot, TokenTable};
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
    let rc: RefCount<HolderBitmap<4>> = RefCount::new();
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

/// A group whose holder-overflow id 1 is a 4,160-bit bitmap on the heap (a pool's would be a
/// block of its metadata): enough for 4,096 process slots and a directory holder.
struct OverflowGroup(Vec<AtomicU64>);

impl Members for OverflowGroup {
    fn standing(&self, _holder: Holder) -> Standing {
        Standing::Member
    }
    fn holder_overflow(&self, id: u64) -> Option<&[AtomicU64]> {
        (id == 1).then_some(&self.0[..])
    }
}

/// Today's header record (a 256-slot bitmap, 4 words) beside the 4,096-slot candidates, in one
/// run: a 4,096-slot bitmap (64 words, 512 bytes), and the `HolderList` (the same 32 bytes as
/// today's bitmap: twelve inline holders, then an overflow bitmap). For each: a second
/// holder's acquire+release, the last holder's release (with a re-init), and `collect`'s sweep
/// (`drop_holder` of a dead slot, which usually held nothing, and of one that held it).
fn holder_capacity(c: &mut Criterion, tokens: &TokenTable<'_>) {
    /// `rc` is held by slot 0 (and more), `second` a slot that does not hold it.
    fn bench<H: Holders>(
        g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        (rc, second): (&RefCount<H>, u32),
        tokens: &TokenTable<'_>,
        group: &impl Members,
    ) {
        g.bench_function(format!("{name}: acquire+release (second holder, slot {second})"), |b| {
            b.iter(|| {
                rc.acquire(black_box(second), tokens, group).unwrap();
                rc.release(black_box(second), tokens, group).unwrap();
            })
        });
        let last: RefCount<H> = RefCount::new();
        g.bench_function(format!("{name}: init+release (the last holder)"), |b| {
            b.iter(|| {
                last.init(1, black_box(3));
                black_box(last.release(3, tokens, group).unwrap());
            })
        });
        // `collect`'s sweep: every header is asked to drop a dead slot; most did not hold it.
        g.bench_function(format!("{name}: drop_holder of a slot that does not hold it (a sweep)"), |b| {
            b.iter(|| black_box(rc.drop_holder(black_box(second), tokens, group).unwrap()))
        });
        g.bench_function(format!("{name}: acquire+drop_holder (a dead holder swept)"), |b| {
            b.iter(|| {
                rc.acquire(black_box(second), tokens, group).unwrap();
                black_box(rc.drop_holder(black_box(second), tokens, group).unwrap())
            })
        });
    }
    let mut g = c.benchmark_group("refcount_holders");
    let today: RefCount<HolderBitmap<4>> = RefCount::new();
    today.init(1, 0);
    bench(&mut g, "256-slot bitmap (today)", (&today, 251), tokens, &AnyProcess);
    let wide: RefCount<HolderBitmap<64>> = RefCount::new();
    wide.init(1, 0);
    bench(&mut g, "4,096-slot bitmap", (&wide, 4091), tokens, &AnyProcess);
    // The list: slot 0 alone, so a second holder takes a lane.
    let group = OverflowGroup((0..65).map(|_| AtomicU64::new(0)).collect());
    let inline: RefCount<HolderList> = RefCount::new();
    inline.init(1, 0);
    bench(&mut g, "4,096-slot list, a lane", (&inline, 251), tokens, &group);
    // Its lanes full (slots 0..12) and an overflow linked: a second holder goes to the overflow.
    let full: RefCount<HolderList> = RefCount::new();
    full.init(1, 0);
    for slot in 1..12 {
        full.acquire(slot, tokens, &group).unwrap();
    }
    full.link_overflow(1, 0, tokens, &group).unwrap();
    bench(&mut g, "4,096-slot list, the overflow", (&full, 4091), tokens, &group);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = lock_unlock, refcount
}
criterion_main!(benches);
