//! Regressions for bugs a review found (see docs/architecture.md for the protocols): each test
//! failed before its fix.
#![allow(unsafe_code)] // writing a corrupt directory, and fork

use std::time::Duration;

use shm_arena::ArenaOptions;
use shm_ndarray::{DType, Handle, HandleError, NameError, Pool, PoolOptions, ShmArray};
use shm_testkit::{fork, wait, SharedPage};

fn small() -> PoolOptions {
    PoolOptions::new().segment_capacity(1 << 20).max_size(8 << 20)
}

#[test]
fn a_handle_whose_view_overflows_is_refused() {
    let pool = Pool::create(&small()).unwrap();
    let a = pool.empty(&DType::of::<u8>(), &[64, 64], false).unwrap();
    let mut bytes = a.untracked_handle().to_bytes();
    // shape = [u64::MAX, u64::MAX], strides = [i64::MAX, i64::MAX]: the sum of spans overflowed.
    bytes[64..80].copy_from_slice(&[0xFF; 16]);
    bytes[80..88].copy_from_slice(&i64::MAX.to_le_bytes());
    bytes[88..96].copy_from_slice(&i64::MAX.to_le_bytes());
    let h = Handle::from_bytes(&bytes).unwrap();
    assert!(matches!(pool.attach(&h), Err(HandleError::Invalid(_))));
}

#[test]
fn a_handle_naming_a_data_segment_as_its_header_is_refused() {
    let pool = Pool::create(&small()).unwrap();
    // Larger than 4 KiB: its data is a block of segment 1, the first data segment.
    let a = pool.empty(&DType::of::<u8>(), &[8192], false).unwrap();
    let mut bytes = a.untracked_handle().to_bytes();
    bytes[6..8].copy_from_slice(&1u16.to_le_bytes());
    let h = Handle::from_bytes(&bytes).unwrap();
    assert!(matches!(pool.attach(&h), Err(HandleError::Invalid(_))));
}

#[test]
fn a_forked_child_does_not_repeat_its_parents_nonces() {
    let pool = Pool::create(&small()).unwrap();
    let page = SharedPage::new();
    // SAFETY: a u64-sized, aligned atomic at offset 0 of the zeroed page.
    let slot: &shm_arena::sync::SharedU64 = unsafe { page.at(0) };
    let nonce =
        |a: &shm_ndarray::SharedArray| u64::from_le_bytes(a.untracked_handle().to_bytes()[32..40].try_into().unwrap());
    let pid = fork(|| {
        let y = pool.empty(&DType::of::<u8>(), &[8], false).unwrap();
        slot.store(nonce(&y), std::sync::atomic::Ordering::SeqCst);
        0
    });
    let x = pool.empty(&DType::of::<u8>(), &[8], false).unwrap();
    assert_eq!(wait(pid), 0);
    assert_ne!(nonce(&x), slot.load(std::sync::atomic::Ordering::SeqCst));
    pool.collect();
}

#[test]
fn an_array_has_at_most_one_name() {
    let pool = Pool::create(&small()).unwrap();
    let a = ShmArray::<u8>::zeros(&pool, &[8]).unwrap();
    pool.publish("a", a.as_shared()).unwrap();
    assert!(matches!(pool.publish("b", a.as_shared()), Err(NameError::AlreadyNamed)));
    assert_eq!(pool.names(), vec!["a".to_owned()]);
    pool.unpublish("a").unwrap();
}

#[test]
fn list_pools_survives_a_corrupt_directory() {
    let name = format!("reviewcorrupt{}", std::process::id());
    let seg0 = ArenaOptions::new(1 << 20).min_block(128).name(format!("pyshm-{name}")).create().unwrap();
    let b = seg0.alloc(8192).unwrap();
    let p = seg0.as_ptr(b).unwrap().as_ptr().cast::<u64>();
    // SAFETY: the block is ours and 8192 bytes long; words 0 and 8-10 are inside it.
    unsafe { p.write(u64::from_le_bytes(*b"PYSHMPOL")) };
    // SAFETY: as above.
    unsafe { p.wrapping_add(8).write(1) }; // process slots
                                           // SAFETY: as above.
    unsafe { p.wrapping_add(9).write(1 << 59) }; // token slots: * 32 wraps
                                                 // SAFETY: as above.
    unsafe { p.wrapping_add(10).write(1) };
    seg0.root_word().store(b.to_bits(), std::sync::atomic::Ordering::Release);
    let listed = std::panic::catch_unwind(shm_ndarray::list_pools);
    let _ = seg0.unlink();
    assert!(listed.is_ok_and(|pools| pools.iter().all(|p| p.name != name)), "refused, not read");
}

#[test]
fn an_allocation_does_not_spin_on_a_half_created_segment() {
    let pool = Pool::create(&small().max_size(1 << 20).wait(Some(Duration::from_millis(200)))).unwrap();
    let _fill = pool.empty(&DType::of::<u8>(), &[1 << 20], false).unwrap();
    // What a process SIGKILLed inside segment creation leaves: an empty object at the next index.
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
    let pool = Pool::create(
        &PoolOptions::new().segment_capacity(1 << 16).max_size(1 << 16).wait(Some(Duration::from_secs(10))),
    )
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
#[allow(clippy::disallowed_types)] // a test-local flag between two threads, not shared memory
fn clean_never_removes_a_pool_that_is_being_created() {
    // A pool used to be published with no process registered in it, for an instant: a dead
    // pool to `clean_dead_pools` running in another process (found when two tests raced).
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                shm_ndarray::clean_dead_pools(false);
            }
        });
        // Stops the cleaner however this thread ends (a failed assertion must not hang).
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        for _ in 0..300 {
            let pool = Pool::create(&small()).unwrap();
            let root = format!("/dev/shm/pyshm-{}", pool.name());
            assert!(std::path::Path::new(&root).exists(), "a live pool was cleaned");
        }
    });
}

#[test]
fn a_header_made_where_array_data_was_has_a_fresh_lock() {
    // Small arrays keep their data in their header's block. When such a block is freed and
    // split, new headers land where data was. `RefCount::init` did not reset the lock, so a
    // header could start with a lock word of old data (here: the poison bit set), and the first
    // `handle()` spun forever. The handles are taken on another thread, so a regression fails
    // the test instead of hanging it.
    let pool = Pool::create(&small()).unwrap();
    for _ in 0..4 {
        // More than the per-process cache keeps, so the blocks go back to the tree and merge.
        let big: Vec<_> = (0..64).map(|_| pool.empty(&DType::of::<u8>(), &[3000], false).unwrap()).collect();
        for a in &big {
            // SAFETY: the array's 3000 bytes; nothing else writes them.
            unsafe { std::ptr::write_bytes(a.base_ptr().as_ptr(), 0xA5, 3000) };
        }
        drop(big);
        let arrays: Vec<_> = (0..512).map(|_| pool.empty(&DType::of::<f64>(), &[4], false).unwrap()).collect();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for a in &arrays {
                a.handle().unwrap();
            }
            done.send(()).unwrap();
        });
        assert!(finished.recv_timeout(Duration::from_secs(60)).is_ok(), "handle() never returned");
    }
}
