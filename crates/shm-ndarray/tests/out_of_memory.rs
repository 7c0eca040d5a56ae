//! Running out of room: an allocation fails with the numbers or waits for a free, the pool
//! grows by segments up to its limit, a free reaches a waiter, and an allocation neither spins
//! on a half-created segment nor misses this process's renewed blocks.

use std::time::Duration;

use shm_ndarray::{ArrayError, DType, Pool, PoolOptions, ShmArray};

/// `max_size` for one 1 MiB data segment: `max_size` counts held bytes, the segment's data
/// pages and its metadata (about 20 KiB with [`SLOTS`]), but not a 16 MiB metadata segment's
/// (1 MiB of tree).
const ONE_SEGMENT: u64 = (1 << 20) + (32 << 10);

/// Process slots of these pools: a segment's owner table, part of its metadata, grows with
/// them, and the limits above are set for this many.
const SLOTS: u32 = 128;

/// Small pools: [`SLOTS`] processes, the given data segment capacity.
fn small_pool(segment_capacity: u64) -> PoolOptions {
    PoolOptions::new().process_slots(SLOTS).segment_capacity(segment_capacity)
}

/// 1 MiB data segments, up to 8 MiB.
fn one_mib_segments() -> PoolOptions {
    small_pool(1 << 20).max_size(8 << 20)
}

#[test]
fn a_full_pool_fails_with_numbers_or_waits_for_a_free() {
    let pool = Pool::create(&small_pool(1 << 20).max_size(ONE_SEGMENT)).unwrap();
    let a = ShmArray::<u8>::zeros(&pool, &[1 << 20]).unwrap();
    // (Arrays of 4 KiB or less live in the metadata segment: take a larger one.)
    match ShmArray::<u8>::zeros(&pool, &[8192]) {
        Err(ArrayError::OutOfMemory { requested, free, largest_free, .. }) => {
            assert_eq!((requested, free, largest_free), (8192, 0, 0));
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    let err = ShmArray::<u8>::zeros(&pool, &[8192]).unwrap_err().to_string();
    assert!(err.contains("max_size") && err.contains("/dev/shm"), "says how to fix it: {err}");
    // With waiting, a free by another process (here, a thread) lets the allocation through.
    let waiting = Pool::create(&small_pool(1 << 20).max_size(ONE_SEGMENT).wait(Some(Duration::from_secs(10)))).unwrap();
    let big = ShmArray::<u8>::zeros(&waiting, &[1 << 20]).unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(big);
        });
        let got = ShmArray::<u8>::zeros(&waiting, &[1 << 19]).unwrap();
        assert_eq!(got.len(), 1 << 19);
    });
    drop(a);
}

#[test]
fn the_pool_grows_by_segments_up_to_its_limit() {
    let pool = Pool::create(&small_pool(1 << 20).max_size(9 << 20)).unwrap();
    let arrays: Vec<_> = (0..5).map(|_| ShmArray::<u8>::zeros(&pool, &[1 << 20]).unwrap()).collect();
    let s = pool.stats();
    assert_eq!(s.capacity, 5 << 20);
    assert!(s.segments >= 6, "one metadata segment and five data segments");
    let big = ShmArray::<u8>::zeros(&pool, &[3 << 20]).unwrap(); // its own 4 MiB segment
    assert_eq!(big.len(), 3 << 20);
    assert_eq!(pool.stats().capacity, 9 << 20);
    assert!(matches!(ShmArray::<u8>::zeros(&pool, &[1 << 20]), Err(ArrayError::OutOfMemory { .. })), "10 MiB > 9 MiB");
    drop(arrays);
    assert!(ShmArray::<u8>::zeros(&pool, &[1 << 20]).is_ok(), "reuses freed segments");
}

#[test]
fn an_allocation_does_not_spin_on_a_half_created_segment() {
    let pool = Pool::create(&one_mib_segments().max_size(ONE_SEGMENT).wait(Some(Duration::from_millis(200)))).unwrap();
    let _fill = pool.empty(&DType::of::<u8>(), &[1 << 20], false).unwrap();
    // An empty object where pools used to grow next (what a process SIGKILLed inside segment
    // creation left, or another user planted): growth draws random names now, and must not
    // wait on it either way.
    let path = format!("/dev/shm/pyshm-{}-2", pool.name());
    std::fs::File::create(&path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let p2 = pool.clone();
    let allocating = std::thread::spawn(move || {
        let _ = tx.send(p2.empty(&DType::of::<u8>(), &[1024], false).is_ok());
    });
    let returned = rx.recv_timeout(Duration::from_secs(10));
    let _ = std::fs::remove_file(&path);
    assert!(returned.is_ok(), "the allocation never returned");
    // Joined, so its pool handle is dropped before the test ends: an unjoined thread holding the
    // last handle dies with the process and leaves the pool behind.
    allocating.join().unwrap();
}

#[test]
fn a_free_reaches_a_waiter_even_from_a_small_cached_block() {
    let pool = Pool::create(&small_pool(1 << 16).max_size((1 << 16) + (32 << 10)).wait(Some(Duration::from_secs(10))))
        .unwrap();
    let big = pool.empty(&DType::of::<u8>(), &[1 << 16], false).unwrap();
    let smalls = std::thread::spawn({
        let pool = pool.clone();
        move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(big);
            let _keep = pool; // the freeing side stays idle afterwards
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert!(pool.empty(&DType::of::<u8>(), &[256], false).is_ok(), "the waiter got the freed memory");
    smalls.join().unwrap();
}

#[test]
fn an_allocation_that_finds_no_room_takes_back_this_processes_renewed_blocks() {
    // A full metadata segment whose only free room is blocks this process renewed must still
    // serve an array of another size. (The pool cannot grow: a new metadata segment holds about
    // 1 MiB of tree at creation, more than max_size.)
    let pool = Pool::create(&small_pool(1 << 20).max_size(512 << 10)).unwrap();
    let before = pool.stats();
    let mut big = Vec::new();
    while let Ok(a) = ShmArray::<u8>::zeros(&pool, &[3000]) {
        big.push(a); // 4 KiB blocks
        assert!(big.len() <= 5000, "the metadata segment never filled up: {:?}", pool.stats());
    }
    // Fill what is left with smaller blocks (1 byte of data: a 256-byte block each).
    let mut filler = Vec::new();
    while let Ok(a) = ShmArray::<u8>::zeros(&pool, &[1]) {
        filler.push(a);
    }
    big.truncate(big.len() - 4);
    assert_eq!(pool.stats().reserved, before.reserved + 4 * 4096, "four renewed 4 KiB blocks, nothing else free");
    let other_size = ShmArray::<u8>::zeros(&pool, &[1500]).expect("the renewed blocks were given back");
    assert_eq!(pool.stats().reserved, before.reserved);
    drop((other_size, big, filler));
    pool.check().unwrap();
}
