//! Regressions found by the review of session 4's changes (renewal, the locals table,
//! `LocalRef`): an array this process let go of (by `leave`) must be pinned again through every
//! check of a first pin, so its stale handle never attaches a renewed or reused place, and a
//! new array may be made where such an array was.
#![allow(unsafe_code)] // fork, kill, waitpid

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use shm_ndarray::{Handle, HandleError, Pool, PoolOptions, ShmArray, TypedError};
use shm_testkit::{fork, wait};

fn small() -> PoolOptions {
    PoolOptions::new().segment_capacity(4 << 20).max_size(16 << 20)
}

fn leftovers(pool: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&format!("pyshm-{pool}")))
        .collect()
}

/// Bytes 24..32 of a handle: its header `Block` (place, size, generation).
fn header_bits(h: &Handle) -> [u8; 8] {
    h.to_bytes()[24..32].try_into().unwrap()
}

fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    (a, b)
}

/// `pin`'s branch for an array this process still has a `LocalArray` of but does not hold
/// (`NOT_HELD` after `leave`, or inherited and never re-acquired) acquires whatever header is at
/// that place now, and never checks the refcount's target (handle step 5, refcount invariant
/// 5). Another process renews the block and makes its next small array there: our stale,
/// untracked handle then attaches that other array's block under the old array's identity.
#[test]
fn a_stale_handle_of_an_array_this_process_let_go_by_leaving_is_refused_after_the_block_is_renewed() {
    let pool = Pool::create(&small()).unwrap();
    let name = pool.name().to_owned();
    let (mut parent, mut child) = pair();
    // The child: a member of the pool that will be the array's last holder.
    let pid = fork(|| {
        pool.join().unwrap();
        child.write_all(b"j").unwrap();
        let mut len = [0u8; 1];
        child.read_exact(&mut len).unwrap();
        let mut bytes = vec![0u8; len[0] as usize];
        child.read_exact(&mut bytes).unwrap();
        let a = ShmArray::<f64>::attach(&pool, &Handle::from_bytes(&bytes).unwrap()).unwrap();
        child.write_all(b"a").unwrap();
        let mut go = [0u8; 1];
        child.read_exact(&mut go).unwrap();
        // The parent has left: we are the only reference, so this renews the block, and our
        // next array of the same block size is made in it.
        drop(a);
        let y = ShmArray::<f64>::from_slice(&pool, &[8], &[2.0; 8]).unwrap();
        let yb = y.as_shared().untracked_handle().to_bytes();
        child.write_all(&[yb.len() as u8]).unwrap();
        child.write_all(&yb).unwrap();
        let mut end = [0u8; 1];
        let _ = child.read(&mut end); // until the parent is done (or the timeout)
        drop(y);
        pool.leave();
        0
    });
    let mut buf = [0u8; 1];
    parent.read_exact(&mut buf).unwrap();
    let a = ShmArray::<f64>::from_slice(&pool, &[8], &[1.0; 8]).unwrap();
    let untracked = a.as_shared().untracked_handle();
    let tracked = a.handle().unwrap().to_bytes();
    parent.write_all(&[tracked.len() as u8]).unwrap();
    parent.write_all(&tracked).unwrap();
    parent.read_exact(&mut buf).unwrap(); // the child holds it
    pool.leave(); // our hold goes; `a` stays, NOT_HELD, in our table
    parent.write_all(b"g").unwrap();
    let mut len = [0u8; 1];
    parent.read_exact(&mut len).unwrap();
    let mut yb = vec![0u8; len[0] as usize];
    parent.read_exact(&mut yb).unwrap();
    let y_handle = Handle::from_bytes(&yb).unwrap();
    let same_block = header_bits(&y_handle) == header_bits(&untracked);

    // The old array is gone (its only holder let go of it); its handle must be stale.
    let outcome = match ShmArray::<f64>::attach(&pool, &untracked) {
        Ok(b) => Err(format!("attached; it reads {:?} (the child's next array holds 2.0)", b.to_vec())),
        Err(TypedError::Handle(HandleError::Stale)) => Ok(()),
        Err(e) => Err(format!("unexpected error {e:?}")),
    };

    parent.write_all(b"e").unwrap();
    assert_eq!(wait(pid), 0);
    drop(a);
    pool.leave();
    drop(pool);
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
    assert!(same_block, "premise: the child's next array was made in the renewed block");
    outcome.unwrap();
}

/// `create_array` asserts (debug builds) that the locals entry of a new array's place is empty,
/// "the array that had this place before removed its entry before its hold went". A
/// `LocalArray` released by `leave` (or inherited by a fork child whose re-acquisition failed)
/// keeps its entry while the user still holds it, and its block can be freed and reused by
/// this very process.
#[test]
fn making_an_array_where_an_array_let_go_by_leaving_was_does_not_panic() {
    let pool = Pool::create(&small()).unwrap();
    let name = pool.name().to_owned();
    let (mut parent, mut child) = pair();
    // A member that keeps the pool from being torn down when we leave.
    let pid = fork(|| {
        pool.join().unwrap();
        child.write_all(b"j").unwrap();
        let mut end = [0u8; 1];
        let _ = child.read(&mut end);
        pool.leave();
        0
    });
    let mut buf = [0u8; 1];
    parent.read_exact(&mut buf).unwrap();
    let a = ShmArray::<f64>::from_slice(&pool, &[8], &[1.0; 8]).unwrap();
    let place = header_bits(&a.as_shared().untracked_handle());
    pool.leave(); // `a` is NOT_HELD; its block is freed (renewed, then given back)
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut made = Vec::new();
        for _ in 0..64 {
            let b = ShmArray::<f64>::from_slice(&pool, &[8], &[2.0; 8]).unwrap();
            let here = header_bits(&b.as_shared().untracked_handle());
            made.push(b);
            // Same place (the offset: bits 20.. of the block; the generation may differ).
            if u64::from_le_bytes(here) >> 20 == u64::from_le_bytes(place) >> 20 {
                return true;
            }
        }
        false
    }));
    parent.write_all(b"e").unwrap();
    assert_eq!(wait(pid), 0);
    drop(a);
    pool.leave();
    drop(pool);
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
    match outcome {
        Ok(found) => assert!(found, "premise: a new array was made at the old one's place"),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("creating an array panicked: {msg}");
        }
    }
}

/// The same branch of `pin` (an entry whose `LocalArray` this process no longer holds) runs the
/// refcount's `acquire` on whatever bytes are at the old header's place, without asking the
/// arena whether a block still starts there or reading the magic: once the place lies inside
/// another array's inline data, attaching the stale handle writes a holder bit into that
/// array's elements, and "succeeds".
#[test]
fn attaching_a_stale_handle_never_writes_into_another_arrays_data() {
    // Segment 0 cannot grow (a metadata segment takes 16 MiB), so filling it coalesces the
    // freed header's block into larger blocks.
    let pool = Pool::create(&PoolOptions::new().segment_capacity(1 << 20).max_size(1 << 20)).unwrap();
    let name = pool.name().to_owned();
    let (mut parent, mut child) = pair();
    let pid = fork(|| {
        pool.join().unwrap();
        child.write_all(b"j").unwrap();
        let mut end = [0u8; 1];
        let _ = child.read(&mut end);
        pool.leave();
        0
    });
    let mut buf = [0u8; 1];
    parent.read_exact(&mut buf).unwrap();
    let offset = |h: &Handle| (u64::from_le_bytes(header_bits(h)) >> 20) << 4;
    // Two 256-byte arrays; keep one whose place is not 4 KiB aligned (so a 4 KiB block can
    // cover it without starting there).
    let a0 = ShmArray::<f64>::from_slice(&pool, &[8], &[1.0; 8]).unwrap();
    let a1 = ShmArray::<f64>::from_slice(&pool, &[8], &[1.0; 8]).unwrap();
    let (a, other) = if offset(&a0.as_shared().untracked_handle()) % 4096 != 0 { (a0, a1) } else { (a1, a0) };
    drop(other);
    let untracked = a.as_shared().untracked_handle();
    let place = offset(&untracked);
    pool.leave(); // `a` is NOT_HELD; its block is freed
                  // Fill the metadata segment with zeroed 4 KiB arrays (3000 bytes + a 192-byte header).
    let mut big = Vec::new();
    while let Ok(b) = ShmArray::<u8>::zeros(&pool, &[3000]) {
        big.push(b);
        assert!(big.len() <= 5000, "the metadata segment never filled up");
    }
    let covering = big.iter().position(|b| {
        let o = offset(&b.as_shared().untracked_handle());
        o < place && place < o + 4096
    });
    let attached = ShmArray::<f64>::attach(&pool, &untracked);
    let outcome = match (&attached, covering) {
        (Err(TypedError::Handle(HandleError::Stale)), _) => Ok(()),
        (Ok(_), Some(i)) => {
            let v = big[i].to_vec();
            let dirty: Vec<_> = v.iter().enumerate().filter(|(_, x)| **x != 0).map(|(k, x)| (k, *x)).collect();
            Err(format!("attached; the zeroed array covering the old place now has nonzero bytes {dirty:?}"))
        }
        (r, c) => Err(format!("attach gave {:?} (covering array: {c:?})", r.as_ref().map(|_| ()))),
    };
    drop(attached);
    parent.write_all(b"e").unwrap();
    assert_eq!(wait(pid), 0);
    drop((a, big));
    pool.leave();
    drop(pool);
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
    assert!(covering.is_some(), "premise: a 4 KiB array was made over the freed header's place");
    outcome.unwrap();
}
