//! The pool through its public API: every dtype, views, handles across fork and across a
//! separately started process, processes SIGKILLed while holding arrays and while a handle is
//! in flight, running out of room with and without waiting, growth, stale and crafted handles,
//! named arrays and teardown.
#![allow(unsafe_code)] // fork, kill, waitpid

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use shm_ndarray::{
    ArrayError, DType, Handle, HandleError, NameError, Pool, PoolError, PoolOptions, ShmArray, HANDLE_FIXED_LEN,
};
use shm_testkit::{fork, wait};

const TOOL: &str = env!("CARGO_BIN_EXE_shm-ndarray");

fn small() -> PoolOptions {
    PoolOptions::new().segment_capacity(4 << 20).max_size(16 << 20)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn leftovers(pool: &str) -> Vec<String> {
    shm_testkit::shm_files(&format!("pyshm-{pool}"))
}

#[test]
fn every_dtype_round_trips_through_a_handle() {
    let pool = Pool::create(&small()).unwrap();
    for (descr, size) in [
        ("|b1", 1),
        ("|i1", 1),
        ("|u1", 1),
        ("<i2", 2),
        ("<u2", 2),
        ("<i4", 4),
        ("<u4", 4),
        ("<i8", 8),
        ("<u8", 8),
        ("<f2", 2),
        ("<f4", 4),
        ("<f8", 8),
        ("<f16", 16),
        ("<c8", 8),
        ("<c16", 16),
        ("<M8[ns]", 8),
        ("<m8[s]", 8),
        ("|S5", 5),
        ("<U3", 12),
        ("|V7", 7),
        ("[('x', '<f8'), ('y', '<i2'), ('s', '|S3')]", 13),
    ] {
        let dtype = DType::new(descr, size).unwrap();
        let a = pool.empty(&dtype, &[3, 2], false).unwrap();
        let b = pool.attach(&Handle::from_bytes(&a.handle().unwrap().to_bytes()).unwrap()).unwrap();
        assert_eq!(b.dtype(), &dtype, "{descr}");
        assert_eq!((b.shape(), b.strides()), (&[3, 2][..], &[2 * size as i64, size as i64][..]));
        assert!(a.same_array(&b));
    }
    assert!(DType::new("|O", 8).is_err());
}

#[test]
fn views_travel_with_their_own_offset_shape_and_strides() {
    let pool = Pool::create(&small()).unwrap();
    let mut a = ShmArray::<f64>::from_slice(&pool, &[4, 5], &(0..20).map(f64::from).collect::<Vec<_>>()).unwrap();
    // Column 2, rows reversed: offset of element (3, 2), stride -5 elements.
    let column = a.as_shared().view((3 * 5 + 2) * 8, &[4], &[-40]).unwrap();
    let got = pool.attach(&Handle::from_bytes(&column.handle().unwrap().to_bytes()).unwrap()).unwrap();
    assert_eq!((got.offset(), got.shape(), got.strides()), (136, &[4][..], &[-40][..]));
    // SAFETY: reading 4 elements along the validated view; nobody writes meanwhile.
    let read = |i: isize| unsafe { got.as_ptr().cast::<f64>().wrapping_offset(-5 * i).read() };
    assert_eq!((0..4).map(read).collect::<Vec<_>>(), vec![17.0, 12.0, 7.0, 2.0]);
    a.as_slice_mut().unwrap()[2] = -1.0;
    assert_eq!(read(3), -1.0, "the same memory");
    assert!(a.as_shared().view(0, &[21], &[8]).is_err(), "past the end");
    assert!(a.as_shared().view(8, &[4], &[-40]).is_err(), "before the start");
}

#[test]
fn a_forked_child_attaches_writes_and_the_parent_sees_it() {
    let pool = Pool::create(&small()).unwrap();
    let a = ShmArray::<f64>::zeros(&pool, &[1000]).unwrap();
    let bytes = a.handle().unwrap().to_bytes();
    let pid = fork(|| {
        let mut b = ShmArray::<f64>::attach(&pool, &Handle::from_bytes(&bytes).unwrap()).unwrap();
        b.as_slice_mut().unwrap().fill(7.0);
        0
    });
    assert_eq!(wait(pid), 0);
    assert!(a.to_vec().iter().all(|x| *x == 7.0));
    let r = pool.collect();
    assert_eq!(r.dead_processes, 1, "the child left without unregistering");
    drop(a);
    assert_eq!(pool.stats().used, 0, "freed once the parent let go");
}

#[test]
fn a_separately_started_process_attaches_by_handle() {
    let pool = Pool::create(&small()).unwrap();
    let a = ShmArray::<f64>::from_slice(&pool, &[4], &[1.0, 2.0, 3.0, 4.5]).unwrap();
    let h = hex(&a.handle().unwrap().to_bytes());
    let out = Command::new(TOOL).args(["sum", pool.name(), &h]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.5");
    let h = hex(&a.handle().unwrap().to_bytes());
    assert!(Command::new(TOOL).args(["fill", pool.name(), &h, "2"]).status().unwrap().success());
    assert_eq!(a.to_vec(), vec![2.0; 4]);
}

#[test]
fn a_process_killed_holding_arrays_is_collected_and_every_byte_comes_back() {
    let pool = Pool::create(&small()).unwrap();
    let before = pool.stats();
    let mut child = Command::new(TOOL).args(["hold", pool.name(), "3"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let handles: Vec<String> = (0..3).map(|_| lines.next().unwrap().unwrap()).collect();
    // We attach one of them too: it must survive the holder's death.
    let kept = ShmArray::<f64>::attach(&pool, &Handle::from_bytes(&unhex(&handles[0])).unwrap()).unwrap();
    assert_eq!(pool.stats().used, 3 << 20);
    child.kill().unwrap(); // SIGKILL with three arrays held and two handles in flight
    child.wait().unwrap();
    let r = pool.collect();
    assert_eq!(r.dead_processes, 1);
    assert_eq!(r.arrays_freed, 0, "all three are still referenced: one held, two by tokens");
    assert_eq!(pool.reclaim_tokens_older_than(Duration::ZERO), 2, "the two handles nobody attached");
    assert_eq!(pool.stats().used, 1 << 20, "only the array we hold remains");
    assert!(kept.to_vec().iter().all(|x| *x == 0.0));
    drop(kept);
    let after = pool.stats();
    assert_eq!((after.used, after.arrays), (before.used, before.arrays), "every byte came back");
    pool.check().unwrap();
}

#[test]
fn a_handle_sent_by_a_process_that_then_dies_stays_attachable() {
    let pool = Pool::create(&small()).unwrap();
    let mut fds = [0; 2];
    // SAFETY: a valid array of two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let pid = fork(|| {
        let a = ShmArray::<f64>::from_slice(&pool, &[2], &[3.0, 4.0]).unwrap();
        let bytes = a.handle().unwrap().to_bytes();
        // SAFETY: writing a valid buffer to our pipe.
        unsafe { libc::write(fds[1], bytes.as_ptr().cast(), bytes.len()) };
        drop(a); // the sender lets go before the receiver attaches
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let mut buf = vec![0u8; HANDLE_FIXED_LEN + 16];
    // SAFETY: reading into a valid buffer of that length.
    assert_eq!(unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) }, buf.len() as isize);
    // SAFETY: `pid` is our child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(wait(pid), -libc::SIGKILL);
    pool.collect();
    let b = ShmArray::<f64>::attach(&pool, &Handle::from_bytes(&buf).unwrap()).unwrap();
    assert_eq!(b.to_vec(), vec![3.0, 4.0], "the token kept it alive through the sender's death");
    // The token is claimed once; attaching the handle again works while the array lives.
    let again = ShmArray::<f64>::attach(&pool, &Handle::from_bytes(&buf).unwrap()).unwrap();
    assert!(again.as_shared().same_array(b.as_shared()));
    drop((b, again));
    assert_eq!(pool.stats().used, 0, "the claimed token no longer keeps it");
    let stale = pool.attach(&Handle::from_bytes(&buf).unwrap()).unwrap_err();
    assert_eq!(stale, HandleError::Stale);
    for fd in fds {
        // SAFETY: closing our descriptors.
        unsafe { libc::close(fd) };
    }
}

#[test]
fn stale_and_crafted_handles_are_refused_without_touching_other_memory() {
    let pool = Pool::create(&small()).unwrap();
    let a = ShmArray::<f64>::zeros(&pool, &[16]).unwrap();
    let untracked = a.as_shared().untracked_handle();
    drop(a);
    assert_eq!(pool.attach(&untracked).unwrap_err(), HandleError::Stale, "the array was freed");
    let b = ShmArray::<f64>::zeros(&pool, &[16]).unwrap(); // likely the same place
    assert_eq!(pool.attach(&untracked).unwrap_err(), HandleError::Stale, "its place holds another array");
    let good = b.handle().unwrap().to_bytes();
    // Every truncation, and every single-byte corruption, is an error or a view of `b` itself.
    for len in 0..good.len() {
        assert!(Handle::from_bytes(&good[..len]).is_err());
    }
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..good.len() {
        for bit in [1u8, 0x80, 0xFF] {
            let mut bad = good.clone();
            bad[i] ^= bit;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            if let Ok(h) = Handle::from_bytes(&bad) {
                if let Ok(view) = pool.attach(&h) {
                    assert!(view.same_array(b.as_shared()), "byte {i}: attached to another array");
                }
            }
        }
    }
    let other = Pool::create(&small()).unwrap();
    assert!(matches!(other.attach(&Handle::from_bytes(&good).unwrap()), Err(HandleError::WrongPool { .. })));
}

#[test]
fn a_full_pool_fails_with_numbers_or_waits_for_a_free() {
    let pool = Pool::create(&PoolOptions::new().segment_capacity(1 << 20).max_size(1 << 20)).unwrap();
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
    let waiting = Pool::create(
        &PoolOptions::new().segment_capacity(1 << 20).max_size(1 << 20).wait(Some(Duration::from_secs(10))),
    )
    .unwrap();
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
    let pool = Pool::create(&PoolOptions::new().segment_capacity(1 << 20).max_size(9 << 20)).unwrap();
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
fn named_arrays_live_until_deleted_and_can_be_listed() {
    let name = format!("testnamed{}", std::process::id());
    let pool = Pool::create(&small().name(&name)).unwrap();
    {
        let a = ShmArray::<i64>::from_slice(&pool, &[3], &[1, 2, 3]).unwrap();
        pool.publish("results", a.as_shared()).unwrap();
        assert!(matches!(pool.publish("results", a.as_shared()), Err(NameError::Exists(_))));
        assert!(matches!(pool.publish("a/b", a.as_shared()), Err(NameError::Invalid(_))));
    }
    assert_eq!(pool.names(), vec!["results".to_owned()]);
    let found = ShmArray::<i64>::try_from(pool.lookup("results").unwrap()).unwrap();
    assert_eq!(found.to_vec(), vec![1, 2, 3], "the name kept it alive");
    drop(found);
    pool.unpublish("results").unwrap();
    assert!(matches!(pool.lookup("results"), Err(NameError::NotFound(_))));
    assert_eq!(pool.stats().used, 0, "freed with its name");
    pool.unlink();
    drop(pool);
    assert!(leftovers(&name).is_empty());
}

#[test]
fn the_last_process_out_of_an_unnamed_pool_removes_it() {
    let pool = Pool::create(&small()).unwrap();
    let name = pool.name().to_owned();
    let _a = ShmArray::<u8>::zeros(&pool, &[100]).unwrap();
    assert!(!leftovers(&name).is_empty());
    drop(_a);
    drop(pool);
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
    assert!(matches!(Pool::open(&name), Err(PoolError::NotFound { .. })));
}

#[test]
fn clean_removes_pools_of_dead_processes_and_never_a_live_one() {
    let live = Pool::create(&small()).unwrap();
    // A pool whose only process was SIGKILLed: its segments stay behind.
    let mut child = Command::new(TOOL).args(["hold", live.name(), "1"]).stdout(Stdio::piped()).spawn().unwrap();
    let _ = std::io::BufReader::new(child.stdout.take().unwrap()).lines().next();
    child.kill().unwrap();
    child.wait().unwrap();
    let orphan = {
        let name = format!("testorphan{}", std::process::id());
        let pid = fork(|| {
            let p = Pool::create(&small().name(&name).persistent(false)).unwrap();
            let _a = ShmArray::<u8>::zeros(&p, &[10_000]).unwrap(); // a data segment of its own
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        while leftovers(&name).len() < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: our child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait(pid);
        name
    };
    let removed = shm_ndarray::clean_dead_pools(false);
    assert!(removed.contains(&orphan), "{removed:?}");
    assert!(leftovers(&orphan).is_empty());
    assert!(!removed.contains(&live.name().to_owned()), "a live pool is never touched");
    assert!(ShmArray::<u8>::zeros(&live, &[10]).is_ok());
}

#[test]
fn leaving_releases_what_this_process_holds_and_the_last_one_out_removes_the_pool() {
    let pool = Pool::create(&small()).unwrap();
    let name = pool.name().to_owned();
    // A child holds an array of its own, and stays registered until it exits.
    let (mut parent_end, mut child_end) = std::os::unix::net::UnixStream::pair().unwrap();
    let pid = fork(|| {
        use std::io::{Read, Write};
        let _b = ShmArray::<u8>::zeros(&pool, &[1000]).unwrap();
        child_end.write_all(b"x").unwrap();
        child_end.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 1];
        let _ = child_end.read(&mut buf); // until the parent says go
        0
    });
    let mut buf = [0u8; 1];
    std::io::Read::read_exact(&mut parent_end, &mut buf).unwrap();
    let a = ShmArray::<u8>::zeros(&pool, &[1000]).unwrap(); // after the fork: the child has none of it
    assert_eq!(pool.stats().arrays, 2);
    pool.leave();
    assert_eq!(pool.stats().arrays, 1, "our array was released; the child's stays");
    assert!(
        !leftovers(&name).is_empty(),
        "the child is still a member: {} processes, child {:?}",
        pool.live_processes(),
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.split(' ').nth(2).map(str::to_owned))
    );
    drop(a); // after leaving: nothing to release, and nothing else released by mistake
    assert_eq!(pool.stats().arrays, 1);
    std::io::Write::write_all(&mut parent_end, b"x").unwrap();
    assert_eq!(wait(pid), 0);
    // Using the pool again registers anew; leaving again as the last live process removes it.
    let c = ShmArray::<u8>::zeros(&pool, &[10]).unwrap();
    pool.leave();
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
    drop(c);
    drop(pool);
}

#[test]
fn a_pool_that_persists_while_named_outlives_its_processes_only_while_it_has_names() {
    let name = format!("testpnamed{}", std::process::id());
    let opts = small().name(&name).persistent(false).persist_while_named(true);
    let pool = Pool::create(&opts).unwrap();
    let a = ShmArray::<i32>::from_slice(&pool, &[2], &[4, 5]).unwrap();
    pool.publish("kept", a.as_shared()).unwrap();
    drop(a);
    pool.leave();
    assert!(!leftovers(&name).is_empty(), "a name keeps the pool");
    let listed = shm_ndarray::list_pools().into_iter().find(|p| p.name == name).unwrap();
    assert!(listed.persistent && listed.live_processes == 0);
    assert!(!shm_ndarray::clean_dead_pools(false).contains(&name), "clean keeps a named pool");
    let found = ShmArray::<i32>::try_from(pool.lookup("kept").unwrap()).unwrap();
    assert_eq!(found.to_vec(), vec![4, 5]);
    drop(found);
    pool.unpublish("kept").unwrap();
    pool.leave();
    assert!(leftovers(&name).is_empty(), "without names it goes with its last process");
}

#[test]
fn small_arrays_live_inline_and_come_back_when_their_holder_dies() {
    let pool = Pool::create(&small()).unwrap();
    let before = pool.stats();
    // The data fills its whole region: the header before it must stay intact.
    let a = ShmArray::<u8>::from_slice(&pool, &[4000], &[0xAB; 4000]).unwrap();
    let b = ShmArray::<u8>::attach(&pool, &a.handle().unwrap()).unwrap();
    assert!(b.to_vec().iter().all(|x| *x == 0xAB));
    assert_eq!(pool.stats().arrays, before.arrays + 1);
    drop((a, b));
    let (mut parent_end, mut child_end) = std::os::unix::net::UnixStream::pair().unwrap();
    let pid = fork(|| {
        use std::io::Write;
        let held: Vec<_> = (0..3).map(|i| ShmArray::<u16>::from_slice(&pool, &[100], &[i; 100]).unwrap()).collect();
        child_end.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_secs(60));
        drop(held);
        0
    });
    let mut buf = [0u8; 1];
    std::io::Read::read_exact(&mut parent_end, &mut buf).unwrap();
    assert_eq!(pool.stats().arrays, before.arrays + 3);
    // SAFETY: our child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait(pid);
    let r = pool.collect();
    assert_eq!((r.dead_processes, r.arrays_freed), (1, 3));
    let after = pool.stats();
    assert_eq!((after.arrays, after.used), (before.arrays, before.used));
    pool.check().unwrap();
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
fn an_allocation_that_finds_no_room_takes_back_this_processes_renewed_blocks() {
    // A full metadata segment whose only free room is blocks this process renewed must still
    // serve an array of another size. (The pool cannot grow: a metadata segment takes 16 MiB.)
    let pool = Pool::create(&PoolOptions::new().segment_capacity(1 << 20).max_size(1 << 20)).unwrap();
    let before = pool.stats();
    let mut big = Vec::new();
    while let Ok(a) = ShmArray::<u8>::zeros(&pool, &[3000]) {
        big.push(a); // 4 KiB blocks
        assert!(big.len() <= 5000, "the metadata segment never filled up");
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

#[test]
fn cancelling_a_handle_gives_its_token_back_and_frees_an_array_nobody_else_holds() {
    let pool = Pool::create(&small()).unwrap();
    let before = pool.stats();
    let f64s = DType::of::<f64>();
    // Big enough for a data block of its own: freed memory shows in `used`.
    let a = pool.empty(&f64s, &[1 << 17], false).unwrap();
    let sent = a.handle().unwrap();
    let kept = a.handle().unwrap();
    drop(a);
    assert_eq!(pool.stats().used, before.used + (1 << 20), "two tokens keep it alive");

    pool.cancel(&sent).unwrap();
    assert!(matches!(pool.cancel(&sent), Err(HandleError::Stale)), "a token is given back once");
    assert!(pool.stats().used > before.used, "the other token still holds it");
    let attached = pool.attach(&kept).unwrap();
    assert!(matches!(pool.cancel(&kept), Err(HandleError::Stale)), "a claimed token cannot be cancelled");
    drop(attached);
    assert_eq!(pool.stats().used, before.used, "freed when the last reference went");

    let b = pool.empty(&f64s, &[1 << 17], false).unwrap();
    let last = b.handle().unwrap();
    drop(b);
    pool.cancel(&last).unwrap();
    let after = pool.stats();
    assert_eq!((after.used, after.arrays), (before.used, before.arrays), "the token was its only reference");
    assert!(matches!(pool.attach(&last), Err(HandleError::Stale)));

    let untracked = pool.empty(&f64s, &[4], false).unwrap();
    pool.cancel(&untracked.untracked_handle()).unwrap();
    let other = Pool::create(&small()).unwrap();
    assert!(matches!(other.cancel(&last), Err(HandleError::WrongPool { .. })));
    pool.check().unwrap();
}
