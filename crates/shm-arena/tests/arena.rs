//! The arena through its public API, in one process.

use shm_arena::BlockStateError;
use shm_arena::{AllocError, Arena, ArenaOptions, Block, BlockError, OpenError, OpenOptions};
use std::time::Duration;

/// Unlinks a named arena when the test ends, pass or fail.
struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/dev/shm/{}", self.0));
    }
}

fn named(capacity: u64) -> (Arena, Unlink) {
    let a = ArenaOptions::new(capacity).create().unwrap();
    let guard = Unlink(a.name().unwrap().to_owned());
    (a, guard)
}

/// Writes a file of /dev/shm mode 0600, as pyshm creates its segments: a file others may
/// write is refused before its contents are looked at (tests/other_users.rs).
fn write_private(path: String, bytes: impl AsRef<[u8]>) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    f.write_all(bytes.as_ref()).unwrap();
}

fn fill(arena: &Arena, b: Block, byte: u8) {
    // SAFETY: the test owns `b` exclusively until it frees it.
    unsafe { arena.bytes_mut(b).unwrap().fill(byte) };
}

fn all_equal(arena: &Arena, b: Block, byte: u8) -> bool {
    // SAFETY: nobody writes `b` while the test reads it.
    unsafe { arena.bytes(b).unwrap().iter().all(|x| *x == byte) }
}

#[test]
fn create_is_private_reserved_and_unguessable() {
    let (a, _g) = named(1 << 20);
    let name = a.name().unwrap();
    assert!(name.starts_with("pyshm-") && name.len() == 6 + 32);
    let meta = std::fs::metadata(format!("/dev/shm/{name}")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), a.segment_size());
    let metadata = a.stats().metadata_bytes;
    assert_eq!(meta.blocks() * 512, metadata, "the metadata pages are reserved at creation, no data page");
    assert!(metadata < a.segment_size());
    let (b, _g2) = named(1 << 20);
    assert_ne!(a.name(), b.name());
    assert_ne!(a.segment_id(), b.segment_id());
}

#[test]
fn any_valid_name_and_prefix_work() {
    let pid = std::process::id();
    // A name of the caller's choosing, outside any prefix the crate knows.
    let chosen = format!("myapp-arena-{pid}");
    let a = ArenaOptions::new(1 << 20).name(&chosen).create().unwrap();
    let _g = Unlink(chosen.clone());
    assert_eq!(a.name(), Some(chosen.as_str()));
    let opened = Arena::open(&chosen).unwrap();
    assert_eq!(opened.segment_id(), a.segment_id());
    // A random name under the caller's prefix, found again by listing that prefix.
    let prefix = format!("myapp-{pid}-");
    let b = ArenaOptions::new(1 << 20).name_prefix(&prefix).create().unwrap();
    let _g2 = Unlink(b.name().unwrap().to_owned());
    assert!(b.name().unwrap().starts_with(&prefix) && b.name().unwrap().len() == prefix.len() + 32);
    let listed = shm_arena::list_segments(&prefix).unwrap();
    assert_eq!(listed.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), [b.name().unwrap()]);
    assert_eq!(listed[0].len, b.segment_size());
    // What no POSIX name can be is refused before any syscall.
    for bad in ["", "a/b", "a b", ".."] {
        let err = ArenaOptions::new(1 << 20).name(bad).create().err();
        assert!(matches!(err, Some(shm_arena::CreateError::InvalidName { .. })), "{bad:?}: {err:?}");
    }
}

#[test]
fn two_handles_see_the_same_blocks() {
    let (a, _g) = named(1 << 20);
    let b = Arena::open(a.name().unwrap()).unwrap();
    assert_eq!(a.segment_id(), b.segment_id());
    assert_ne!(a.owner_tag().unwrap(), b.owner_tag().unwrap());
    let block = a.alloc(3000).unwrap();
    assert_eq!(block.size(), 4096);
    fill(&a, block, 0x5A);
    assert!(all_equal(&b, block, 0x5A));
    b.validate(block).unwrap();
    b.free(block).unwrap();
    assert!(matches!(a.validate(block), Err(BlockError::State(_))));
    a.check().unwrap();
    b.check().unwrap();
}

#[test]
fn blocks_are_aligned_sized_and_disjoint() {
    let (a, _g) = named(4 << 20);
    let mut blocks = Vec::new();
    for (i, size) in [1u64, 64, 65, 200, 1024, 5000, 70_000].iter().cycle().take(60).enumerate() {
        let b = a.alloc(*size).unwrap();
        assert!(b.size() >= *size && b.size() >= a.min_block());
        assert_eq!(b.offset() % b.size(), 0);
        assert_eq!(a.as_ptr(b).unwrap().as_ptr() as usize % b.size().min(4096) as usize, 0);
        fill(&a, b, i as u8);
        blocks.push((b, i as u8));
    }
    for (b, byte) in &blocks {
        assert!(all_equal(&a, *b, *byte), "block {b:?} was overwritten by another");
    }
    let aligned = a.alloc_aligned(100, 8192).unwrap();
    assert_eq!(aligned.offset() % 8192, 0);
    assert_eq!(a.alloc_aligned(10, 3), Err(AllocError::BadAlignment(3)));
    for (b, _) in blocks {
        a.free(b).unwrap();
    }
    a.free(aligned).unwrap();
    let report = a.check().unwrap();
    assert_eq!(report.leaves_in_use, 0);
}

#[test]
fn bad_references_are_typed_errors() {
    let (a, _g) = named(1 << 16);
    let b = a.alloc(256).unwrap();
    a.free(b).unwrap();
    assert!(matches!(a.free(b), Err(BlockError::State(_))), "double free");
    let c = a.alloc(256).unwrap();
    if c.offset() == b.offset() {
        assert!(
            matches!(a.free(b), Err(BlockError::State(BlockStateError::StaleGeneration { .. }))),
            "stale reference to a reused place"
        );
    }
    assert!(matches!(a.free(Block::from_parts(1 << 40, 64, 0)), Err(BlockError::OutOfBounds { .. })));
    assert!(matches!(a.free(Block::from_parts(64, 128, 0)), Err(BlockError::Misaligned { .. })));
    assert!(matches!(a.as_ptr(Block::from_parts(0, 1 << 17, 0)), Err(BlockError::OutOfBounds { .. })));
    for bits in [0u64, u64::MAX, 0xDEAD_BEEF_0000_0000, 0x0000_0000_FFFF_FFFF] {
        assert!(a.validate(Block::from_bits(bits)).is_err() || Block::from_bits(bits) == c);
    }
    a.free(c).unwrap();
    a.check().unwrap();
}

#[test]
fn exhaustion_is_an_error_that_says_why_and_memory_comes_back() {
    let (a, _g) = named(64 * 1024);
    assert!(matches!(a.alloc(128 * 1024), Err(AllocError::TooLarge { .. })));
    let mut held = Vec::new();
    loop {
        match a.alloc(4096) {
            Ok(b) => held.push(b),
            Err(AllocError::Exhausted { requested, block, free, largest_free, cached }) => {
                assert_eq!((requested, block, free, largest_free, cached), (4096, 4096, 0, 0, 0));
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(held.len(), 16);
    for b in held.drain(..) {
        a.free(b).unwrap();
    }
    // Freed small blocks sit in the cache; a big request still succeeds (the cache is flushed).
    let whole = a.alloc(64 * 1024).unwrap();
    a.free(whole).unwrap();
    assert_eq!(a.stats().largest_free_block + a.stats().cached_bytes, 64 * 1024);
}

#[test]
fn freed_blocks_are_reused_first() {
    let (a, _g) = named(16 << 20);
    for size in [64u64, 4096, 1 << 20] {
        let first = a.alloc(size).unwrap();
        a.free(first).unwrap();
        let again = a.alloc(size).unwrap();
        assert_eq!(again.offset(), first.offset(), "size {size}: the warm block comes back");
        a.free(again).unwrap();
    }
}

#[test]
fn dropping_an_arena_frees_what_it_owns_unless_disowned() {
    let (a, _g) = named(1 << 20);
    let b = Arena::open(a.name().unwrap()).unwrap();
    let owned = b.alloc(1000).unwrap();
    let kept = b.alloc(1000).unwrap();
    b.disown(kept).unwrap();
    assert!(b.disown(kept).is_err(), "already disowned");
    drop(b);
    assert!(a.validate(owned).is_err(), "owned blocks die with their owner");
    a.validate(kept).unwrap();
    a.adopt(kept).unwrap();
    a.free(kept).unwrap();
    a.check().unwrap();
}

#[test]
fn stats_add_up() {
    let (a, _g) = named(1 << 20);
    let blocks: Vec<_> = (0..10).map(|_| a.alloc(10_000).unwrap()).collect();
    let s = a.stats();
    assert_eq!(s.capacity, 1 << 20);
    assert_eq!(s.in_use_bytes, 10 * 16384);
    assert_eq!(s.blocks_in_use, 10);
    assert_eq!(s.in_use_bytes + s.cached_bytes + s.free_bytes, s.capacity);
    assert_eq!(s.free_blocks.iter().map(|(size, n)| size * n).sum::<u64>(), s.free_bytes);
    assert_eq!(s.largest_free_block, 512 * 1024);
    assert_eq!(s.live_owners, 1);
    for b in blocks {
        a.free(b).unwrap();
    }
}

#[test]
fn odd_capacity_uses_exactly_what_was_asked() {
    let a = ArenaOptions::new(100 * 1024).min_block(1024).create_anonymous().unwrap();
    assert_eq!(a.capacity(), 100 * 1024);
    assert_eq!(a.max_block(), 64 * 1024);
    let mut n = 0;
    while a.alloc(1024).is_ok() {
        n += 1;
    }
    assert_eq!(n, 100);
}

#[test]
fn opening_refuses_what_is_not_a_valid_segment() {
    assert!(matches!(Arena::open("pyshm-does-not-exist-anywhere"), Err(OpenError::NotFound { .. })));
    let name = format!("pyshm-test-foreign-{}", std::process::id());
    let _g = Unlink(name.clone());
    let fast = OpenOptions::new().wait(Duration::from_millis(50));
    // Not a pyshm segment at all.
    write_private(format!("/dev/shm/{name}"), vec![0x41u8; 8192]);
    assert!(matches!(Arena::open_with(&name, &fast), Err(OpenError::Foreign { .. })));
    // Too short to hold a header.
    write_private(format!("/dev/shm/{name}"), b"PYSHMSEG");
    assert!(matches!(Arena::open_with(&name, &fast), Err(OpenError::Truncated { .. })));
    // A header nobody finished writing.
    write_private(format!("/dev/shm/{name}"), vec![0u8; 8192]);
    assert!(matches!(Arena::open_with(&name, &fast), Err(OpenError::NotInitialized { .. })));
}

#[test]
fn opening_refuses_truncated_and_tampered_segments() {
    let (a, g) = named(1 << 20);
    let path = format!("/dev/shm/{}", g.0);
    let original = std::fs::read(&path).unwrap();
    let fast = OpenOptions::new().wait(Duration::from_millis(50));
    // Truncated: a copy cut short.
    let short = format!("{}-short", g.0);
    let _gs = Unlink(short.clone());
    write_private(format!("/dev/shm/{short}"), &original[..original.len() / 2]);
    assert!(matches!(Arena::open_with(&short, &fast), Err(OpenError::Truncated { .. })));
    // Tampered: one byte of the geometry changed.
    let bad = format!("{}-bad", g.0);
    let _gb = Unlink(bad.clone());
    let mut tampered = original.clone();
    tampered[48] ^= 1;
    write_private(format!("/dev/shm/{bad}"), &tampered);
    assert!(matches!(Arena::open_with(&bad, &fast), Err(OpenError::Corrupt { .. })));
    // Another layout version.
    let mut newer = original;
    newer[8] = 99;
    write_private(format!("/dev/shm/{bad}"), &newer);
    assert!(matches!(Arena::open_with(&bad, &fast), Err(OpenError::Version { found: 99, .. })));
    drop(a);
}

#[test]
fn unlink_removes_the_name_but_not_the_mapping() {
    let a = ArenaOptions::new(1 << 16).create().unwrap();
    let name = a.name().unwrap().to_owned();
    let b = a.alloc(64).unwrap();
    a.unlink().unwrap();
    assert!(!std::path::Path::new(&format!("/dev/shm/{name}")).exists());
    assert!(matches!(a.unlink(), Err(OpenError::NotFound { .. })));
    fill(&a, b, 1);
    a.free(b).unwrap();
}

#[test]
fn a_full_dev_shm_is_an_error_at_creation() {
    // Ask to reserve more than /dev/shm holds: the reservation fails cleanly and leaves nothing
    // behind. More than its whole size, not only more than is free: tmpfs refuses that at once,
    // while a request between the two is allocated page by page until the limit, and a /dev/shm
    // as large as the machine's memory (the usual default: half of it, or more in containers)
    // would bring the OOM killer first on a machine that has other /dev/shm files.
    let stat = rustix::fs::statvfs("/dev/shm").unwrap();
    let (free, total) = (stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize);
    let name = format!("pyshm-test-nospace-{}", std::process::id());
    let huge = (total + (1 << 30)).min(16 << 40);
    // Sparse (the default), the same capacity is only address space: creation succeeds.
    if let Ok(sparse) = ArenaOptions::new(huge).min_block(1 << 20).name(&name).create() {
        let (stats, size) = (sparse.stats(), sparse.segment_size());
        sparse.unlink().unwrap(); // before the assertion: a failure leaves no file
        assert!(stats.metadata_bytes < size / 100, "{stats:?}");
    }
    match ArenaOptions::new(huge).min_block(1 << 20).reserve_whole(true).name(&name).create() {
        Err(shm_arena::CreateError::NoSpace { requested, available, .. }) => {
            assert!(requested > free);
            assert!(available.is_some());
        }
        Err(shm_arena::CreateError::Layout(_)) => {} // larger than a tree can address here
        other => panic!("expected NoSpace, got {:?}", other.map(|a| a.capacity())),
    }
    assert!(!std::path::Path::new(&format!("/dev/shm/{name}")).exists(), "nothing left behind");
}

#[test]
fn threads_sharing_one_arena_never_share_a_block() {
    let a = ArenaOptions::new(8 << 20).create_anonymous().unwrap();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let a = &a;
            scope.spawn(move || {
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t << 32) | 1;
                let mut live: Vec<(Block, u8)> = Vec::new();
                for step in 0..20_000u32 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    if live.len() < 48 && (live.is_empty() || rng % 2 == 0) {
                        let b = a.alloc(1 + rng % 9000).unwrap();
                        let byte = (t as u8) << 5 | (step % 31) as u8;
                        fill(a, b, byte);
                        live.push((b, byte));
                    } else {
                        let (b, byte) = live.swap_remove((rng >> 20) as usize % live.len());
                        assert!(all_equal(a, b, byte), "thread {t}: {b:?} was overwritten");
                        a.free(b).unwrap();
                    }
                }
                for (b, byte) in live {
                    assert!(all_equal(a, b, byte));
                    a.free(b).unwrap();
                }
            });
        }
    });
    a.trim();
    let report = a.check().unwrap();
    assert_eq!((report.blocks_in_use, report.blocks_cached), (0, 0));
}

#[test]
fn blocks_in_use_lists_exactly_the_live_blocks_in_address_order() {
    let (a, _g) = named(1 << 20);
    let mut live: Vec<Block> = (0..20).map(|i| a.alloc(100 + i * 900).unwrap()).collect();
    let freed: Vec<Block> = live.drain(..5).collect();
    for b in freed {
        a.free(b).unwrap(); // small ones go to the cache: cached blocks are not "in use"
    }
    live.sort_by_key(|b| b.offset());
    assert_eq!(a.blocks_in_use(), live);
}

#[test]
fn memory_parked_in_another_handles_cache_comes_back_after_a_failed_allocation() {
    let a = ArenaOptions::new(1 << 20).cache_max_block(1 << 20).create_anonymous().unwrap();
    let b = Arena::open_fd(a.fd().try_clone().unwrap(), &OpenOptions::new().cache_max_block(1 << 20)).unwrap();
    b.owner_tag().unwrap(); // a handle caches frees only once it holds an owner slot
    let x = a.alloc(1 << 20).unwrap();
    b.free(x).unwrap(); // parked in b's cache
    match a.alloc(64) {
        Err(AllocError::Exhausted { cached, free, .. }) => {
            assert_eq!((cached, free), (1 << 20, 0), "the error says where the memory is")
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    // b's next operation answers the request to trim; then a's retry succeeds.
    let _ = b.validate(x);
    let y = b.alloc(64).unwrap();
    b.free(y).unwrap();
    assert!(a.alloc(64).is_ok());
}

#[test]
fn owner_slots_are_taken_by_allocations_only_and_frees_need_none() {
    // 16 slots: 14 for allocating handles, 2 kept for frees by handles holding none.
    let a = ArenaOptions::new(1 << 20).owner_slots(16).create_anonymous().unwrap();
    let open = || Arena::open_fd(a.fd().try_clone().unwrap(), &OpenOptions::new()).unwrap();
    let readers: Vec<Arena> = (0..40).map(|_| open()).collect();
    assert!(readers.iter().all(|r| !r.is_registered()), "mapping takes no slot");
    assert_eq!(a.stats().live_owners, 0);
    let mut blocks = vec![a.alloc(64).unwrap()];
    let allocators: Vec<Arena> = (0..13).map(|_| open()).collect();
    for h in &allocators {
        blocks.push(h.alloc(64).unwrap());
    }
    assert_eq!(a.stats().live_owners, 14);
    let last = open();
    assert!(!last.has_owner_room() && matches!(last.alloc(64), Err(AllocError::Register(_))));
    // A handle with no slot frees anything (through a transient slot, straight to the tree),
    // and cannot adopt.
    let shared = a.alloc(256).unwrap();
    a.disown(shared).unwrap();
    assert!(matches!(last.adopt(shared), Err(BlockError::NoOwnerSlot { slots: 16 })));
    assert!(matches!(last.disown(blocks[1]), Err(BlockError::State(BlockStateError::WrongOwner { .. }))));
    last.free(shared).unwrap();
    for (r, b) in readers.iter().zip(blocks.drain(..)) {
        r.free(b).unwrap();
    }
    assert!(readers.iter().all(|r| !r.is_registered()) && !last.is_registered());
    assert!(matches!(last.free(shared), Err(BlockError::State(_))), "a second free is refused");
    // The slots of allocating handles come back when they are dropped.
    drop(allocators);
    assert!(last.has_owner_room());
    let b = last.alloc(64).unwrap();
    assert!(last.is_registered());
    last.free(b).unwrap();
    drop(last);
    a.check().unwrap();
    assert_eq!(a.stats().in_use_bytes, 0);
}
