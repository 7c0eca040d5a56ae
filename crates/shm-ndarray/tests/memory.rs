//! What a pool costs the machine: sparse segments, an array's block costs its size rounded to a
//! page, and a full /dev/shm is a typed error (`ArrayError::NoSpace`), never a `SIGBUS`.
//!
//! The small-/dev/shm test runs itself again as a child in a private mount namespace
//! (`unshare -m`, as root, which CI is) with a 64 MiB tmpfs mounted on /dev/shm: only the child
//! sees it, and the mount vanishes with the child.

use std::time::Duration;

use shm_ndarray::{ArrayError, Pool, PoolOptions, ShmArray};

#[test]
fn a_fresh_pool_holds_a_few_mib_and_an_array_its_pages() {
    let pool = Pool::create(&PoolOptions::new()).unwrap();
    let fresh = pool.stats().held;
    assert!(fresh <= 4 << 20, "a fresh default pool holds {fresh} bytes");
    // A small and a medium array: their data segment's metadata and their pages.
    let small = ShmArray::<u8>::zeros(&pool, &[1000]).unwrap();
    let medium = ShmArray::<u8>::zeros(&pool, &[1 << 20]).unwrap();
    let with_data_segment = pool.stats().held;
    assert!(with_data_segment <= fresh + (4 << 20), "{fresh} -> {with_data_segment}");
    // A large array gets a sparse segment of its own: 100 MB costs 100 MB (to the page, plus
    // a few KiB of metadata), not the 128 MiB of its power-of-two block.
    let size = 100_000_000u64;
    let large = ShmArray::<u8>::zeros(&pool, &[size]).unwrap();
    let cost = pool.stats().held - with_data_segment;
    assert!(cost as f64 <= size as f64 * 1.01, "100 MB held {cost} bytes");
    assert!(cost >= size);
    drop((small, medium, large));
}

const CHILD: &str = "PYSHM_TEST_SMALL_SHM_CHILD";

fn in_small_shm() {
    let pool = Pool::create(&PoolOptions::new()).unwrap();
    // Small and medium arrays succeed while space lasts...
    let small: Vec<_> = (0..200).map(|_| ShmArray::<f64>::zeros(&pool, &[1000]).unwrap()).collect();
    let medium: Vec<_> = (0..20).map(|_| ShmArray::<u8>::zeros(&pool, &[1 << 20]).unwrap()).collect();
    // ...and one that cannot fit is a typed error naming the way out.
    match ShmArray::<u8>::zeros(&pool, &[100 << 20]) {
        Err(e @ ArrayError::NoSpace { .. }) => {
            let text = e.to_string();
            assert!(text.contains("--shm-size") && text.contains("emptyDir"), "{text}");
        }
        other => panic!("expected NoSpace, got {:?}", other.map(|a| a.len())),
    }
    drop((small, medium));
}

#[test]
fn a_default_pool_works_in_a_64_mib_dev_shm() {
    if std::env::var_os(CHILD).is_some() {
        return in_small_shm();
    }
    shm_testkit::run_in_small_dev_shm("a_default_pool_works_in_a_64_mib_dev_shm", CHILD);
}

#[test]
fn trim_gives_freed_arrays_pages_back() {
    let pool = Pool::create(&PoolOptions::new()).unwrap();
    let fresh = pool.stats().held;
    let arrays: Vec<_> = (0..8).map(|_| ShmArray::<u8>::zeros(&pool, &[1 << 20]).unwrap()).collect();
    let keep = ShmArray::<u8>::from_slice(&pool, &[1 << 20], &vec![7u8; 1 << 20]).unwrap();
    let full = pool.stats().held;
    assert!(full >= fresh + (9 << 20));
    drop(arrays);
    assert_eq!(pool.stats().held, full, "freed memory stays for reuse until a trim");
    assert!(pool.trim() >= 8 << 20);
    let trimmed = pool.stats().held;
    assert!(trimmed <= full - (8 << 20), "{full} -> {trimmed}");
    // What is still alive kept its data, and the pool works on.
    assert!(keep.to_vec().iter().all(|x| *x == 7));
    let again = ShmArray::<u8>::zeros(&pool, &[1 << 20]).unwrap();
    assert!(again.to_vec().iter().all(|x| *x == 0));
    pool.check().unwrap();
}

/// An array of `shape` bytes, every one `value` (every page touched).
fn full(pool: &Pool, shape: &[u64], value: u8) -> ShmArray<u8> {
    let mut a = ShmArray::<u8>::zeros(pool, shape).unwrap();
    a.as_slice_mut().unwrap().fill(value);
    a
}

/// Held bytes of the data pages: what the warm reserve is about.
fn data_held(pool: &Pool, fresh: u64) -> u64 {
    pool.stats().held.saturating_sub(fresh)
}

#[test]
fn freed_data_beyond_keep_goes_back_at_once_and_trim_takes_the_rest() {
    let keep = 8u64 << 20;
    let pool = Pool::create(&PoolOptions::new().keep(keep)).unwrap();
    // A data segment exists (its metadata is part of the floor).
    drop(ShmArray::<u8>::zeros(&pool, &[8192]).unwrap());
    pool.trim();
    let floor = pool.stats().held;
    let arrays: Vec<_> = (0..6).map(|_| full(&pool, &[4 << 20], 7)).collect();
    let s = pool.stats();
    assert_eq!((s.live, s.keep), (24 << 20, keep));
    assert!(s.overhead() >= 1.0 && s.overhead() < 1.2, "{s:?}");
    assert!(data_held(&pool, floor) >= 24 << 20);
    drop(arrays);
    // No call: the frees themselves kept at most `keep` (one 4 MiB block over is given back).
    let s = pool.stats();
    assert_eq!(s.live, 0);
    // `warm` counts the metadata segment's free pages too (reserve invariant 5): the freed
    // headers' page or two beside the data.
    assert!(s.warm <= keep + (64 << 10), "{s:?}");
    // (The floor's trim gave the metadata segment's free pages back too: the six headers'
    // pages are reserved again, a few KiB beside the data.)
    assert!(data_held(&pool, floor) <= keep + (64 << 10), "held {} over the floor {floor}", s.held);
    // The warm reserve is warm: making and freeing an array again and again reserves nothing
    // new after the first time.
    let mut held = Vec::new();
    for _ in 0..5 {
        drop(full(&pool, &[4 << 20], 1));
        held.push(pool.stats().held);
    }
    assert!(held.windows(2).all(|w| w[0] == w[1]), "a reused block needs no new pages: {held:?}");
    // A large array (a segment of its own) is given back as soon as it is freed.
    let large = full(&pool, &[100 << 20], 1);
    drop(large);
    assert!(pool.stats().warm <= keep + (64 << 10), "{:?}", pool.stats());
    // trim gives back the warm reserve too.
    pool.trim();
    let s = pool.stats();
    assert_eq!(s.warm, 0, "{s:?}");
    assert!(s.held <= 4 << 20, "after trim the pool holds {} bytes", s.held);
    pool.check().unwrap();
}

#[test]
fn a_process_killed_while_giving_memory_back_leaves_a_consistent_pool() {
    // keep = 0: every free of a data block punches, so a kill lands inside give-back often.
    let pool = Pool::create(&PoolOptions::new().keep(0)).unwrap();
    for round in 0..8u64 {
        let pid = shm_testkit::fork(|| loop {
            let a = full(&pool, &[3 << 20], 9);
            let b = full(&pool, &[70_000], 9);
            drop((a, b));
        });
        std::thread::sleep(Duration::from_millis(20 + 13 * round));
        shm_testkit::kill(pid); // asserts it died of SIGKILL, not a panic or a SIGBUS
    }
    pool.collect();
    pool.check().unwrap();
    // Every page handed out is usable (no SIGBUS: set bits mean reserved pages), and the
    // memory is all there again.
    let arrays: Vec<_> = (0..8).map(|_| full(&pool, &[3 << 20], 5)).collect();
    assert!(arrays.iter().all(|a| a.to_vec().iter().all(|x| *x == 5)));
    drop(arrays);
    pool.trim();
    let s = pool.stats();
    assert_eq!((s.live, s.arrays), (0, 0), "{s:?}");
    assert!(s.held <= 4 << 20, "after trim the pool holds {} bytes", s.held);
    pool.check().unwrap();
}

/// Segments invariant 4: `max_size` bounds held bytes on every path, also when an allocation
/// reserves pages inside a sparse segment that already exists (before, only growth checked it,
/// and a segment could fill to its capacity beyond the bound).
#[test]
fn max_size_bounds_pages_reserved_inside_an_existing_segment() {
    // What a 4 MiB data segment holds as soon as it exists (its metadata), measured in a trial
    // pool of the same shape.
    let options = || PoolOptions::new().segment_capacity(4 << 20);
    let trial = Pool::create(&options()).unwrap();
    let root = trial.stats().held;
    let probe = ShmArray::<u8>::zeros(&trial, &[8192]).unwrap();
    let segment_metadata = trial.stats().held - root - 8192;
    drop((probe, trial));
    // Room for the metadata and 2 MiB of pages, not 3; the segment's address space has 4 MiB.
    let pool = Pool::create(&options().max_size(segment_metadata + (2 << 20) + (512 << 10))).unwrap();
    let a = full(&pool, &[1 << 20], 1);
    let b = full(&pool, &[1 << 20], 2);
    match ShmArray::<u8>::zeros(&pool, &[1 << 20]) {
        Err(ArrayError::OutOfMemory { requested, .. }) => assert_eq!(requested, 1 << 20),
        other => panic!("expected OutOfMemory over max_size, got {:?}", other.map(|a| a.len())),
    }
    let s = pool.stats();
    assert_eq!(s.segments, 2, "the pool did not grow past the bound either: {s:?}");
    assert!(s.held - root <= segment_metadata + (2 << 20) + (512 << 10), "{s:?}");
    // Freed memory stays warm and is reused without reserving anything (no limit asked)...
    drop(a);
    let c = full(&pool, &[1 << 20], 3);
    // ...and after a trim gave pages back, there is room to reserve again.
    drop(c);
    pool.trim();
    let d = full(&pool, &[1 << 20], 4);
    assert!(b.to_vec().iter().all(|x| *x == 2) && d.to_vec().iter().all(|x| *x == 4));
    pool.check().unwrap();
}

/// Reserve invariants 4 and 5: small arrays' blocks (in metadata segments, cached by the arena
/// or renewed by the pool for this process's next array) count as warm, and `trim` gives
/// their pages back too.
#[test]
fn trim_gives_back_small_arrays_pages_and_caches_count_as_warm() {
    let pool = Pool::create(&PoolOptions::new()).unwrap();
    let fresh = pool.stats().held;
    let small: Vec<_> = (0..2000).map(|i| full(&pool, &[1024], i as u8)).collect();
    let s = pool.stats();
    assert!(s.held >= fresh + (2 << 20), "2,000 blocks of 2 KiB: {s:?}");
    assert!(s.warm < 64 << 10, "everything is live: {s:?}");
    drop(small);
    let s = pool.stats();
    assert_eq!(s.live, 0);
    assert!(s.warm >= (s.held - fresh) - (64 << 10), "the freed blocks' pages are warm: {s:?}");
    assert!(pool.trim() >= 2 << 20);
    let s = pool.stats();
    assert!(s.held <= fresh + (64 << 10), "{fresh} -> {}", s.held);
    assert!(s.warm <= 64 << 10, "{s:?}");
    // The pool works on, and its metadata segment reserves again what it needs.
    let again: Vec<_> = (0..100).map(|i| full(&pool, &[1024], i as u8)).collect();
    assert!(again.iter().enumerate().all(|(i, a)| a.to_vec().iter().all(|x| *x == i as u8)));
    drop(again);
    pool.check().unwrap();
}
