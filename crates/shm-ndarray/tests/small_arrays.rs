//! Small arrays (4 KiB or less with their header): one block of a metadata segment, renewed
//! for this process's next small array when dropped, with old handles staying stale; renewed
//! blocks go back when their process leaves or dies; headers made where data was start with a
//! fresh lock; threads sharing small arrays never see another array's data.
#![allow(unsafe_code)] // kill, and overwriting an array's bytes

use std::time::Duration;

use shm_ndarray::{DType, Handle, HandleError, Pool, PoolOptions, ShmArray};
use shm_testkit::{fork, wait};

/// 4 MiB data segments, up to 16 MiB.
fn small() -> PoolOptions {
    PoolOptions::new().segment_capacity(4 << 20).max_size(16 << 20)
}

/// 1 MiB data segments, up to 8 MiB.
fn one_mib_segments() -> PoolOptions {
    PoolOptions::new().segment_capacity(1 << 20).max_size(8 << 20)
}

#[test]
fn a_small_arrays_block_is_renewed_for_the_next_and_its_old_handles_stay_stale() {
    let pool = Pool::create(&small()).unwrap();
    let before = pool.stats();
    let a = ShmArray::<f64>::from_slice(&pool, &[8], &[1.0; 8]).unwrap();
    let untracked = a.as_shared().untracked_handle();
    drop(a);
    let s = pool.stats();
    assert_eq!((s.arrays, s.used), (before.arrays, before.used), "a renewed block is not an array");
    // A header of 192 bytes (one dimension, "<f8") and 64 of data: a 256-byte block.
    assert_eq!(s.reserved, before.reserved + 256, "kept for the next small array");
    assert_eq!(pool.attach(&untracked).unwrap_err(), HandleError::Stale);
    // The next array of that block size takes the renewed block; the old handle names a
    // different array there now, and still fails.
    let b = ShmArray::<f64>::from_slice(&pool, &[4, 2], &[2.0; 8]).unwrap();
    assert_eq!(pool.stats().reserved, before.reserved);
    assert_eq!(pool.attach(&untracked).unwrap_err(), HandleError::Stale);
    let again = ShmArray::<f64>::attach(&pool, &b.handle().unwrap()).unwrap();
    assert_eq!((again.shape(), again.to_vec()), (&[4u64, 2][..], vec![2.0; 8]));
    // A crafted handle naming the renewed block by its nonce word (0 while renewed) passes the
    // first look but not the check of the refcount's target after the pin.
    let c = ShmArray::<f64>::from_slice(&pool, &[8], &[3.0; 8]).unwrap();
    let mut crafted = c.as_shared().untracked_handle().to_bytes();
    drop(c);
    crafted[32..40].copy_from_slice(&0u64.to_le_bytes());
    assert_eq!(pool.attach(&Handle::from_bytes(&crafted).unwrap()).unwrap_err(), HandleError::Stale);
    // A block with a handle in flight is not renewed: the token keeps the array itself alive.
    let h = b.handle().unwrap();
    drop((b, again));
    assert_eq!(pool.stats().arrays, before.arrays + 1);
    let c = ShmArray::<f64>::attach(&pool, &h).unwrap();
    assert_eq!(c.to_vec(), vec![2.0; 8]);
    drop(c);
    assert_eq!(pool.stats().arrays, before.arrays);
    pool.check().unwrap();
}

#[test]
fn renewed_blocks_go_back_when_their_process_leaves_or_dies() {
    let pool = Pool::create(&small()).unwrap();
    let before = pool.stats();
    for leaves in [true, false] {
        let (mut parent_end, mut child_end) = std::os::unix::net::UnixStream::pair().unwrap();
        let pid = fork(|| {
            use std::io::{Read, Write};
            let arrays: Vec<_> =
                (0..3).map(|i| ShmArray::<u16>::from_slice(&pool, &[100], &[i; 100]).unwrap()).collect();
            drop(arrays); // three renewed blocks of 512 bytes, kept by this process
            child_end.write_all(b"x").unwrap();
            let mut go = [0u8; 1];
            child_end.read_exact(&mut go).unwrap();
            pool.leave(); // they go back
            child_end.write_all(b"y").unwrap();
            std::thread::sleep(Duration::from_secs(60));
            0
        });
        let mut buf = [0u8; 1];
        std::io::Read::read_exact(&mut parent_end, &mut buf).unwrap();
        let held = pool.stats();
        assert_eq!((held.arrays, held.reserved), (before.arrays, before.reserved + 3 * 512));
        if leaves {
            std::io::Write::write_all(&mut parent_end, b"g").unwrap();
            std::io::Read::read_exact(&mut parent_end, &mut buf).unwrap();
            assert_eq!(pool.stats().reserved, before.reserved, "given back on leaving");
        }
        // SAFETY: our child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait(pid);
        let r = pool.collect();
        assert_eq!(r.arrays_freed, if leaves { 0 } else { 3 }, "a dead process's renewed blocks are freed by collect");
        assert_eq!(pool.stats().reserved, before.reserved);
        pool.check().unwrap();
    }
}

#[test]
fn a_header_made_where_array_data_was_has_a_fresh_lock() {
    // Small arrays keep their data in their header's block. When such a block is freed and
    // split, new headers land where data was. `RefCount::init` did not reset the lock, so a
    // header could start with a lock word of old data (here: the poison bit set), and the first
    // `handle()` spun forever. The handles are taken on another thread, so a regression fails
    // the test instead of hanging it.
    let pool = Pool::create(&one_mib_segments()).unwrap();
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

#[test]
fn threads_making_attaching_and_dropping_the_same_small_arrays_never_see_another_arrays_data() {
    // Four threads share a board of handles. Each makes small arrays filled with a value of
    // its own, posts handles (tracked and untracked) of them, attaches whatever the others
    // posted, and drops everything in a shuffled order, so blocks are renewed and reused while
    // stale handles to them are being attached. An attach must give the array its handle
    // named, with that array's values, or Stale.
    use std::sync::Mutex;
    let pool = Pool::create(&small()).unwrap();
    let before = pool.stats();
    let board: Mutex<Vec<(u64, Handle)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (pool, board) = (&pool, &board);
            s.spawn(move || {
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut mine = Vec::new();
                for i in 0..3000u64 {
                    let value = t << 32 | i;
                    let len = 1 + next() % 200;
                    let a = ShmArray::<u64>::from_slice(pool, &[len], &vec![value; len as usize]).unwrap();
                    let h = if next() % 2 == 0 { a.handle().unwrap() } else { a.as_shared().untracked_handle() };
                    board.lock().unwrap().push((value, h));
                    mine.push(a);
                    let taken = {
                        let mut b = board.lock().unwrap();
                        let n = b.len();
                        (n > 0).then(|| b.swap_remove((next() % n as u64) as usize))
                    };
                    if let Some((value, h)) = taken {
                        match ShmArray::<u64>::attach(pool, &h) {
                            Ok(b) => assert!(b.to_vec().iter().all(|x| *x == value), "another array's data"),
                            Err(e) => assert_eq!(e, shm_ndarray::TypedError::Handle(HandleError::Stale)),
                        }
                    }
                    while mine.len() > 8 {
                        let k = (next() % mine.len() as u64) as usize;
                        drop(mine.swap_remove(k));
                    }
                }
            });
        }
    });
    // Handles never attached keep their arrays (tokens): cancel them, and everything is back.
    board.lock().unwrap().clear();
    pool.reclaim_tokens_older_than(Duration::ZERO);
    let after = pool.stats();
    assert_eq!((after.arrays, after.used), (before.arrays, before.used));
    pool.check().unwrap();
}
