//! Processes SIGKILLed inside the memory protocols: while growing a memfd pool (backend.rs,
//! segments.rs) and while trimming (shm-arena's trim.rs, reserve.rs), with the parent using
//! the pool at the same time. After each: no data lost (the parent's arrays keep their
//! contents, including while the child ran), no block handed out twice (arrays made meanwhile
//! and afterwards keep distinct contents, and `check` passes), `collect` frees what the dead
//! held, and `clean` removes what is left once every process is gone.
//!
//! Children are forked (`shm_testkit::fork`) and killed with SIGKILL at varying delays;
//! `shm_testkit::kill` asserts each died of that signal (not of a panic, nor of a SIGBUS).

use std::time::{Duration, Instant};

use shm_ndarray::{Backend, Pool, PoolOptions, ShmArray};
use shm_testkit::{fork, shm_files, until};

/// An array of `len` bytes, every one `value` (every page touched).
fn full(pool: &Pool, len: u64, value: u8) -> ShmArray<u8> {
    let mut a = ShmArray::<u8>::zeros(pool, &[len]).unwrap();
    a.as_slice_mut().unwrap().fill(value);
    a
}

fn holds(a: &ShmArray<u8>, value: u8) -> bool {
    a.as_slice().unwrap().iter().all(|x| *x == value)
}

/// Uses the pool for `time`: makes, checks and frees arrays whose contents say who made them.
/// A block handed out twice, or pages punched under an array, shows as a wrong byte.
fn use_pool_for(pool: &Pool, time: Duration, len: u64) {
    let end = Instant::now() + time;
    let mut value = 100u8;
    while Instant::now() < end {
        let a = full(pool, len, value);
        let b = full(pool, len / 3, value.wrapping_add(1));
        assert!(holds(&a, value) && holds(&b, value.wrapping_add(1)), "an array changed under us");
        value = value.wrapping_add(2).max(100);
    }
}

/// The parent's arrays, made before any child: they must survive every kill unchanged.
fn witnesses(pool: &Pool) -> Vec<ShmArray<u8>> {
    (1..=4).map(|i| full(pool, 300 << 10, i)).collect()
}

fn witnesses_hold(w: &[ShmArray<u8>]) -> bool {
    w.iter().zip(1..).all(|(a, i)| holds(a, i))
}

#[test]
fn a_process_killed_while_growing_a_memfd_pool_loses_nothing() {
    // 1 MiB data segments: a 600 KiB array takes one, a 1.5 MiB array a segment of its own, so
    // the child grows the pool by a memfd segment about every array it makes.
    let options = PoolOptions::new().backend(Backend::Memfd).segment_capacity(1 << 20).max_size(1 << 30);
    let pool = Pool::create(&options).unwrap();
    let w = witnesses(&pool);
    for round in 0..12u64 {
        let pid = fork(|| loop {
            // Four alive at once, then all freed: new segments in the first pass (each of the
            // child's memfds dies with it, so every child grows anew), reuse afterwards.
            let arrays: Vec<_> =
                (0..4).map(|k| full(&pool, if k % 2 == 0 { 600 << 10 } else { 1536 << 10 }, 9)).collect();
            drop(arrays);
        });
        // Early kills land in the child's first growths; the parent grows the pool meanwhile.
        use_pool_for(&pool, Duration::from_micros(300 + 700 * (round % 6)), 200 << 10);
        shm_testkit::kill(pid);
        assert!(witnesses_hold(&w), "round {round}: the parent's arrays changed");
    }
    pool.collect();
    pool.check().unwrap();
    assert_eq!(pool.live_processes(), 1);
    // The pool works and grows on, every array with its own memory.
    let after: Vec<_> = (0..6u8).map(|i| full(&pool, 600 << 10, 50 + i)).collect();
    assert!(after.iter().zip(50..).all(|(a, v)| holds(a, v)) && witnesses_hold(&w));
    drop((after, w));
    pool.check().unwrap();
}

#[test]
fn a_memfd_pool_whose_only_process_is_killed_while_growing_is_cleaned_up() {
    let name = format!("kill_grow_{}", std::process::id());
    let pid = fork(|| {
        let options = PoolOptions::new()
            .name(name.clone())
            .persistent(false)
            .backend(Backend::Memfd)
            .segment_capacity(1 << 20)
            .max_size(1 << 30);
        let pool = Pool::create(&options).unwrap();
        // Grows without end (at most the directory's 256 segments, then fails: long after).
        loop {
            std::mem::forget(full(&pool, 600 << 10, 9));
        }
    });
    until("the child grew its pool by memfd segments", || {
        shm_ndarray::list_pools().iter().any(|p| p.name == name && p.memfd_segments >= 4)
    });
    shm_testkit::kill(pid);
    // Only segment 0 was ever a file; the memfds went with the process; `clean` removes it.
    assert_eq!(shm_files(&format!("pyshm-{name}")), vec![format!("pyshm-{name}")]);
    let removed = shm_ndarray::clean_dead_pools(false);
    assert!(removed.contains(&name), "{removed:?}");
    assert!(shm_files(&format!("pyshm-{name}")).is_empty());
}

/// A child trims in a loop (so a kill lands inside the trim walk: holding the segment's trim
/// tag, often a claimed chunk) while the parent makes and frees arrays in the same segments.
fn killed_while_trimming(backend: Backend) {
    let pool = Pool::create(&PoolOptions::new().backend(backend).segment_capacity(8 << 20).max_size(1 << 30)).unwrap();
    let w = witnesses(&pool);
    // Free pages for the trims to give back: warm blocks in the data segment.
    drop((0..6).map(|i| full(&pool, 1 << 20, i)).collect::<Vec<_>>());
    for round in 0..10u64 {
        let pid = fork(|| loop {
            pool.trim();
        });
        use_pool_for(&pool, Duration::from_millis(2 + 3 * (round % 5)), 1 << 20);
        shm_testkit::kill(pid);
        assert!(witnesses_hold(&w), "round {round}: the parent's arrays changed");
        // The dead trimmer's tag and claimed chunk are in the way of nothing: a trim of ours
        // takes over (after one futex tick) and allocations find every block.
        pool.trim();
        use_pool_for(&pool, Duration::from_millis(1), 1 << 20);
    }
    pool.collect();
    pool.check().unwrap();
    let after: Vec<_> = (0..6u8).map(|i| full(&pool, 1 << 20, 60 + i)).collect();
    assert!(after.iter().zip(60..).all(|(a, v)| holds(a, v)) && witnesses_hold(&w));
    drop((after, w));
    pool.trim();
    let s = pool.stats();
    assert_eq!((s.live, s.arrays), (0, 0), "{s:?}");
    assert!(s.held <= 4 << 20, "after trim the pool holds {} bytes", s.held);
    pool.check().unwrap();
}

#[test]
fn a_process_killed_while_trimming_leaves_a_consistent_pool() {
    killed_while_trimming(Backend::Shm);
}

#[test]
fn a_process_killed_while_trimming_a_memfd_pool_leaves_it_consistent() {
    killed_while_trimming(Backend::Memfd);
}
