//! A trim (`Arena::release_free`) never makes another handle's allocation fail (`trim`
//! invariant 3), and trims of one segment run one at a time.
//!
//! Two handles of one memfd arena stand for two processes (each has its own owner tag, as a
//! process would; threads here only provide the concurrency, nothing depends on sharing an
//! address space). The memfd arena reserves no pages with `fallocate`, so both loops run fast
//! and meet each other often.
#![allow(clippy::disallowed_types)] // test-local flags between two threads, not shared memory

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use shm_arena::{AllocError, Arena, ArenaOptions, OpenOptions};

fn second_handle(a: &Arena) -> Arena {
    Arena::open_fd(a.fd().try_clone().unwrap(), &OpenOptions::new()).unwrap()
}

/// The review's scenario, made sharper: an empty 16 MiB arena, one handle trimming in a loop,
/// another allocating 1 MiB and 16 MiB (the whole arena: any block a trim holds is in its
/// way) and freeing. Before the trim claimed one chunk at a time and made allocations wait,
/// thousands of the 16 MiB allocations (and some of the 1 MiB ones) failed.
#[test]
fn allocations_never_fail_while_another_handle_trims() {
    let a = ArenaOptions::new(16 << 20).create_anonymous().unwrap();
    let trimmer = second_handle(&a);
    let stop = AtomicBool::new(false);
    let trims = AtomicU64::new(0);
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Relaxed) {
                trimmer.release_free();
                trims.fetch_add(1, Relaxed);
            }
        });
        // Watchdog for the start: the trimmer thread runs before we count.
        let start = Instant::now();
        while trims.load(Relaxed) == 0 {
            assert!(start.elapsed() < Duration::from_secs(60), "the trimming thread never ran");
            std::thread::yield_now();
        }
        for i in 0..20_000u32 {
            let size = if i % 2 == 0 { 1 << 20 } else { 16 << 20 };
            match a.alloc_with_ptr(size) {
                Ok((b, p)) => {
                    // SAFETY: the block is ours and its first page reserved (memory invariant 1).
                    unsafe { p.as_ptr().write(1) };
                    a.free(b).unwrap();
                }
                Err(e @ AllocError::Exhausted { .. }) => failures.push((i, e)),
                Err(e) => panic!("allocation {i}: {e}"),
            }
        }
        stop.store(true, Relaxed);
    });
    assert!(trims.load(Relaxed) > 10, "the loops overlapped: {} trims", trims.load(Relaxed));
    assert!(failures.is_empty(), "{} allocations failed during trims, first: {:?}", failures.len(), failures.first());
    a.check().unwrap();
    assert_eq!(a.stats().in_use_bytes, 0);
}

/// Two handles trimming at once each give back what is free; the second waits for the first
/// (one trim at a time) rather than claiming blocks the first is punching.
#[test]
fn concurrent_trims_take_turns_and_give_everything_back() {
    let a = ArenaOptions::new(64 << 20).create_anonymous().unwrap();
    let other = second_handle(&a);
    let blocks: Vec<_> = (0..32).map(|_| a.alloc_with_ptr(1 << 20).unwrap()).collect();
    for (b, p) in &blocks {
        // SAFETY: ours, 1 MiB, reserved.
        unsafe { std::ptr::write_bytes(p.as_ptr(), 7, 1 << 20) };
        let _ = b;
    }
    for (b, _) in blocks.iter().skip(8) {
        a.free(*b).unwrap();
    }
    let given: u64 = std::thread::scope(|s| {
        let t = s.spawn(|| other.release_free());
        a.release_free() + t.join().unwrap()
    });
    assert_eq!(given, 24 << 20, "every free reserved page once, none twice");
    assert_eq!(a.stats().reserved_data_bytes, 8 << 20);
    for (b, p) in blocks.iter().take(8) {
        // SAFETY: still ours; nobody writes it.
        assert!(unsafe { std::slice::from_raw_parts(p.as_ptr(), 1 << 20) }.iter().all(|x| *x == 7));
        a.free(*b).unwrap();
    }
    a.check().unwrap();
}
