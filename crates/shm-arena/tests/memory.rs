//! The memory model: sparse segments, pages reserved per block, given back on request, and a
//! full /dev/shm reported as `AllocError::NoSpace` instead of a `SIGBUS`.
//!
//! The small-/dev/shm test runs itself again as a child in a private mount namespace
//! (`unshare -m`, as root, which CI is) with a 64 MiB tmpfs mounted on /dev/shm: the child sees
//! only that tmpfs, the machine's /dev/shm is untouched, and the mount vanishes with the child.
#![allow(unsafe_code)] // writing the blocks

use std::os::unix::fs::MetadataExt;

use shm_arena::{AllocError, Arena, ArenaOptions};

const PAGE: u64 = 4096;

/// Unlinks a named arena when the test ends, pass or fail.
struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/dev/shm/{}", self.0));
    }
}

/// Bytes tmpfs holds for the arena's file (allocated blocks, not its length).
fn held(a: &Arena) -> u64 {
    std::fs::metadata(format!("/dev/shm/{}", a.name().unwrap())).unwrap().blocks() * 512
}

fn touch(a: &Arena, b: shm_arena::Block, bytes: u64) {
    let p = a.as_ptr(b).unwrap();
    // SAFETY: the block is ours, at least `bytes` long, and its first `bytes` are reserved.
    unsafe { p.as_ptr().write_bytes(0x5A, bytes as usize) };
}

#[test]
fn a_segment_holds_its_metadata_and_the_pages_of_its_blocks_only() {
    let a = ArenaOptions::new(256 << 20).min_block(4096).create().unwrap();
    let _g = Unlink(a.name().unwrap().to_owned());
    let s = a.stats();
    assert_eq!(s.reserved_data_bytes, 0);
    assert_eq!(held(&a), s.metadata_bytes, "only the metadata is reserved at creation");
    assert!(s.metadata_bytes < 1 << 20, "{}", s.metadata_bytes);
    // 40 MB takes a 64 MiB block, but only its 40 MB (rounded to a page) are held.
    let size = 40_000_000;
    let b = a.alloc(size).unwrap();
    assert_eq!(b.size(), 64 << 20);
    touch(&a, b, size);
    let rounded = size.div_ceil(PAGE) * PAGE;
    assert_eq!(a.stats().reserved_data_bytes, rounded);
    assert_eq!(held(&a), s.metadata_bytes + rounded);
    a.check().unwrap();
    // Giving it back returns the memory; the arena is as new.
    a.free_and_release(b).unwrap();
    assert_eq!(a.stats().reserved_data_bytes, 0);
    assert_eq!(held(&a), s.metadata_bytes);
    a.check().unwrap();
}

#[test]
fn reuse_is_warm_and_a_trim_punches_every_free_page() {
    let a = ArenaOptions::new(16 << 20).create().unwrap();
    let _g = Unlink(a.name().unwrap().to_owned());
    let meta = a.stats().metadata_bytes;
    let blocks: Vec<_> = (0..8).map(|_| a.alloc(1 << 20).unwrap()).collect();
    let small: Vec<_> = (0..64).map(|_| a.alloc(1000).unwrap()).collect();
    for b in &blocks {
        touch(&a, *b, 1 << 20);
    }
    let reserved = a.stats().reserved_data_bytes;
    assert_eq!(reserved, (8 << 20) + 16 * PAGE, "64 blocks of 1 KiB share 16 pages");
    assert_eq!(a.held_bytes(), meta + reserved);
    // Another handle (another process) reads the same count.
    assert_eq!(Arena::open(a.name().unwrap()).unwrap().held_bytes(), meta + reserved);
    for b in blocks.iter().skip(1) {
        a.free(*b).unwrap(); // a plain free keeps the pages (the warm reserve)
    }
    assert_eq!(a.stats().reserved_data_bytes, reserved);
    let again = a.alloc(1 << 20).unwrap();
    assert_eq!(a.stats().reserved_data_bytes, reserved, "a reused block needs no new pages");
    a.free(again).unwrap();
    // The trim claims and punches every free page-sized region; in-use blocks keep theirs.
    assert_eq!(a.release_free(), 7 << 20, "the bytes that were reserved, no more");
    assert_eq!(a.stats().reserved_data_bytes, (1 << 20) + 16 * PAGE);
    assert_eq!(held(&a), meta + (1 << 20) + 16 * PAGE);
    assert_eq!(a.held_bytes(), held(&a), "the count follows the bitmap");
    a.check().unwrap();
    // What is still in use kept its bytes.
    // SAFETY: nobody writes the block meanwhile.
    assert!(unsafe { a.bytes(blocks[0]).unwrap() }.iter().all(|x| *x == 0x5A));
    for b in small {
        a.free(b).unwrap();
    }
    a.free(blocks[0]).unwrap();
    a.release_free();
    assert_eq!(a.stats().reserved_data_bytes, 0);
    assert_eq!(held(&a), meta);
    assert_eq!(a.held_bytes(), meta);
    a.check().unwrap();
}

#[test]
fn whole_reservation_is_still_available() {
    let a = ArenaOptions::new(4 << 20).reserve_whole(true).create().unwrap();
    let _g = Unlink(a.name().unwrap().to_owned());
    assert_eq!(held(&a), a.segment_size());
    assert_eq!(a.held_bytes(), a.segment_size());
    assert_eq!(a.stats().reserved_data_bytes, a.segment_size() - a.stats().metadata_bytes);
    let b = a.alloc(1 << 20).unwrap();
    a.free_and_release(b).unwrap();
    assert_eq!(a.release_free(), 0);
    assert_eq!(held(&a), a.segment_size(), "nothing is given back");
    // Another process (here a second handle) learns the mode from the header.
    let other = Arena::open(a.name().unwrap()).unwrap();
    assert_eq!(other.stats().reserved_data_bytes, a.stats().reserved_data_bytes);
}

/// `memory.rs` invariant 6: with a warm block free, a new block never takes pages given back. Here
/// the block freed last (the first hint) is the punched one; the allocation takes the warm one.
#[test]
fn a_free_warm_block_is_preferred_to_one_whose_pages_were_given_back() {
    let a = ArenaOptions::new(16 << 20).cache_max_block(0).create().unwrap();
    let _g = Unlink(a.name().unwrap().to_owned());
    let blocks: Vec<_> = (0..4).map(|_| a.alloc(1 << 20).unwrap()).collect();
    for b in &blocks {
        touch(&a, *b, 1 << 20);
    }
    a.free(blocks[1]).unwrap(); // warm: its pages stay reserved
    a.free_and_release(blocks[0]).unwrap(); // given back, and freed last
    let held_before = held(&a);
    let again = a.alloc(1 << 20).unwrap();
    assert_eq!(again.offset(), blocks[1].offset(), "the warm block, not the punched one");
    assert_eq!(held(&a), held_before, "no page reserved");
    // The warm path asks no limit: a refusing `admit` is not consulted.
    a.free(again).unwrap();
    let (warm, _) = a.alloc_admitting(1 << 20, &|_| false).unwrap();
    assert_eq!(warm.offset(), blocks[1].offset());
    a.check().unwrap();
}

/// `memory.rs` invariant 5: pages are reserved only with the caller's consent; a refusal gives the
/// block back and reserves nothing.
#[test]
fn admit_bounds_what_an_allocation_reserves() {
    let a = ArenaOptions::new(16 << 20).cache_max_block(0).create().unwrap();
    let _g = Unlink(a.name().unwrap().to_owned());
    let asked = std::cell::Cell::new(0);
    let admit = |bytes: u64| {
        asked.set(bytes);
        bytes <= 1 << 20
    };
    match a.alloc_admitting(3 << 20, &admit) {
        Err(AllocError::OverLimit { requested, reserving }) => {
            assert_eq!((requested, reserving), (3 << 20, 3 << 20));
        }
        other => panic!("expected OverLimit, got {other:?}"),
    }
    assert_eq!(asked.get(), 3 << 20, "asked with the bytes it would reserve");
    assert_eq!(a.stats().in_use_bytes, 0, "the block went back");
    assert_eq!(a.stats().reserved_data_bytes, 0);
    let (b, _) = a.alloc_admitting(1 << 20, &admit).unwrap();
    assert_eq!(a.stats().reserved_data_bytes, 1 << 20);
    a.free(b).unwrap();
    a.check().unwrap();
}

const CHILD: &str = "PYSHM_TEST_SMALL_SHM_CHILD";

/// The body, run in the child with a 64 MiB /dev/shm of its own.
fn in_small_shm() {
    // Address space is free: a 1 GiB arena fits in a 64 MiB /dev/shm.
    let a = ArenaOptions::new(1 << 30).min_block(4096).create().unwrap();
    let mut held = Vec::new();
    // Small and medium blocks succeed while space lasts...
    for _ in 0..40 {
        let b = a.alloc(1 << 20).unwrap();
        touch(&a, b, 1 << 20);
        held.push(b);
    }
    // ...and a request that cannot fit is a typed error, not a SIGBUS at first touch.
    match a.alloc(100 << 20) {
        Err(AllocError::NoSpace { requested, available: Some(free), .. }) => {
            assert_eq!(requested, 100 << 20);
            assert!(free < 64 << 20, "{free}");
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    a.check().unwrap(); // the failed block went back
                        // Giving memory back makes room again.
    for b in held.drain(..) {
        a.free_and_release(b).unwrap();
    }
    let b = a.alloc(50 << 20).unwrap();
    touch(&a, b, 50 << 20);
    a.free(b).unwrap();
    a.check().unwrap();
    a.unlink().unwrap();
}

#[test]
fn a_64_mib_dev_shm_gives_a_typed_error_not_a_sigbus() {
    if std::env::var_os(CHILD).is_some() {
        return in_small_shm();
    }
    run_in_small_shm("a_64_mib_dev_shm_gives_a_typed_error_not_a_sigbus");
}

/// The body of the next test: a tmpfs `fallocate` that fails with `ENOSPC` rolls back the pages
/// it added and never written. Pages it found already reserved (here by an earlier block, never
/// written, bits still set) must survive that rollback (Linux zeroes and marks them up to date
/// on the second reservation, so they are no longer undoable), or the bits would claim pages the
/// file no longer holds and a write to them would `SIGBUS`.
fn a_failed_reservation_leaves_no_stale_bits() {
    let a = ArenaOptions::new(1 << 30).min_block(4096).cache_max_block(0).create().unwrap();
    let meta = a.stats().metadata_bytes;
    // 1 MiB reserved and never written (an np.empty array), freed the ordinary way: bits kept.
    let first = a.alloc(1 << 20).unwrap();
    a.free(first).unwrap();
    assert_eq!(a.stats().reserved_data_bytes, 1 << 20);
    assert_eq!(held(&a), meta + (1 << 20));
    // Another file takes most of /dev/shm; a larger block over the same pages does not fit in
    // what is left, so its fallocate fails midway (tmpfs refuses at once only a request larger
    // than the whole file system).
    let filler = std::fs::File::create("/dev/shm/filler").unwrap();
    filler.set_len(48 << 20).unwrap();
    rustix::fs::fallocate(&filler, rustix::fs::FallocateFlags::empty(), 0, 48 << 20).unwrap();
    assert!(matches!(a.alloc(30 << 20), Err(AllocError::NoSpace { .. })));
    // Every page the bitmap calls reserved is still held by the file (memory invariant 1).
    let reserved = a.stats().reserved_data_bytes;
    assert!(held(&a) >= meta + reserved, "bits say {reserved} bytes reserved, the file holds {}", held(&a) - meta);
    // So a block on those pages can be written even when /dev/shm is full.
    let top = std::fs::File::create("/dev/shm/filler2").unwrap();
    for _ in 0..64 {
        // Takes every page left, a MiB at a time (each call fails at once when none is left).
        let end = top.metadata().unwrap().len();
        if rustix::fs::fallocate(&top, rustix::fs::FallocateFlags::empty(), end, 1 << 20).is_err() {
            break;
        }
    }
    let again = a.alloc(1 << 20).unwrap();
    touch(&a, again, 1 << 20);
    a.free(again).unwrap();
    a.unlink().unwrap();
}

#[test]
fn a_failed_reservation_leaves_no_stale_bits_in_a_64_mib_dev_shm() {
    if std::env::var_os(CHILD).is_some() {
        return a_failed_reservation_leaves_no_stale_bits();
    }
    run_in_small_shm("a_failed_reservation_leaves_no_stale_bits_in_a_64_mib_dev_shm");
}

/// Runs test `name` of this binary again in a child with a 64 MiB /dev/shm of its own.
fn run_in_small_shm(name: &str) {
    shm_testkit::run_in_small_dev_shm(name, CHILD);
}
