//! Regressions found by the review of 373a8ad ("re-pinning an array this process let go of goes
//! through every check of a first pin"). That commit routes every *pin* of an array this
//! process does not hold through `pin_header`; these tests show the other operations on such a
//! `LocalArray` (after `leave`, or inherited by a fork child whose re-acquisition failed) that
//! still use its header, or its data, as if the process held it. Both are older than 373a8ad
//! (they are the same kind of defect as the ones it fixed, on paths it did not cover).
#![allow(unsafe_code)] // fork, waitpid

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use shm_ndarray::{Handle, Pool, PoolOptions, ShmArray};
use shm_testkit::{fork, wait};

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

/// Byte offset in its segment of the header block a handle names.
fn offset(h: &Handle) -> u64 {
    (u64::from_le_bytes(header_bits(h)) >> 20) << 4
}

/// A forked member that keeps the pool from being torn down when we leave; it leaves when
/// told (or after 10 s). Returns its pid and our end of the socket.
fn keeper(pool: &Pool) -> (libc::pid_t, UnixStream) {
    let (mut parent, mut child) = UnixStream::pair().unwrap();
    for s in [&parent, &child] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
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
    (pid, parent)
}

fn release_keeper(pid: libc::pid_t, mut sock: UnixStream) {
    sock.write_all(b"e").unwrap();
    assert_eq!(wait(pid), 0);
}

/// Like `review_session4::attaching_a_stale_handle_never_writes_into_another_arrays_data`: an
/// array `a` this process let go of by leaving, whose 256-byte header block was freed and now
/// lies inside the data of a zeroed 4 KiB array `big[i]` (at least 256 bytes into its block, so
/// the old header's refcount words fall in the covering array's elements). Returns `(a, big, i)`.
fn stale_array_inside_another_arrays_data(pool: &Pool) -> (ShmArray<f64>, Vec<ShmArray<u8>>, Option<usize>) {
    // 256-byte arrays; keep one whose place is 256..=3072 bytes into its 4 KiB window.
    let mut small: Vec<_> = (0..16).map(|_| ShmArray::<f64>::from_slice(pool, &[8], &[1.0; 8]).unwrap()).collect();
    let at = small
        .iter()
        .position(|a| (256..=3072).contains(&(offset(&a.as_shared().untracked_handle()) % 4096)))
        .expect("premise: one of 16 consecutive 256-byte blocks is inside its 4 KiB window");
    let a = small.swap_remove(at);
    drop(small);
    let place = offset(&a.as_shared().untracked_handle());
    // `a` is NOT_HELD from here; its block is freed.
    pool.leave();
    // Fill the metadata segment with zeroed 4 KiB arrays (3000 bytes + a 192-byte header).
    let mut big = Vec::new();
    while let Ok(b) = ShmArray::<u8>::zeros(pool, &[3000]) {
        big.push(b);
        assert!(big.len() <= 5000, "the metadata segment never filled up");
    }
    let covering = big.iter().position(|b| {
        let o = offset(&b.as_shared().untracked_handle());
        o < place && place < o + 4096
    });
    (a, big, covering)
}

fn nonzero(b: &ShmArray<u8>) -> Vec<(usize, u8)> {
    b.to_vec().into_iter().enumerate().filter(|(_, x)| *x != 0).collect()
}

/// `SharedArray::handle` sends a token on `local.header().refcount` without asking whether this
/// process still holds the array (`holder`), let alone checking the arena, the magic, the nonce
/// word or the target as a pin now does. After `leave` (or in a fork child whose
/// re-acquisition found the array gone) that header may be freed and its place reused: the
/// token's lock CAS and count increment land in another array's elements (or, at the same
/// place, keep another array alive under a token no handle can claim).
#[test]
fn a_handle_of_an_array_let_go_by_leaving_never_writes_into_another_arrays_data() {
    // Segment 0 cannot grow (a metadata segment takes 16 MiB), so filling it coalesces the
    // freed header's block into larger blocks.
    let pool = Pool::create(&PoolOptions::new().segment_capacity(1 << 20).max_size(1 << 20)).unwrap();
    let name = pool.name().to_owned();
    let (pid, sock) = keeper(&pool);
    let (a, big, covering) = stale_array_inside_another_arrays_data(&pool);
    let sent = a.as_shared().handle();
    let outcome = match covering {
        Some(i) => {
            let dirty = nonzero(&big[i]);
            if dirty.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "handle() gave {:?}; the zeroed array covering the old header now has nonzero bytes {dirty:?}",
                    sent.as_ref().map(|_| ())
                ))
            }
        }
        None => Ok(()),
    };
    release_keeper(pid, sock);
    drop((a, big));
    pool.leave();
    drop(pool);
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
    assert!(covering.is_some(), "premise: a 4 KiB array was made over the freed header's place");
    outcome.unwrap();
}

/// `publish` acquires the name directory's holder bit on `local.header().refcount` under the
/// same assumption: on an array this process let go of, it writes that bit into whatever now
/// lies at the old header's place, and records a name for a dead array.
#[test]
fn publishing_an_array_let_go_by_leaving_never_writes_into_another_arrays_data() {
    let pool = Pool::create(&PoolOptions::new().segment_capacity(1 << 20).max_size(1 << 20)).unwrap();
    let name = pool.name().to_owned();
    let (pid, sock) = keeper(&pool);
    let (a, big, covering) = stale_array_inside_another_arrays_data(&pool);
    let published = pool.publish("stale", a.as_shared());
    let outcome = match covering {
        Some(i) => {
            let dirty = nonzero(&big[i]);
            if dirty.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "publish gave {:?}; the zeroed array covering the old header now has nonzero bytes {dirty:?}",
                    published.as_ref().map(|_| ())
                ))
            }
        }
        None => Ok(()),
    };
    let _ = pool.unpublish("stale");
    release_keeper(pid, sock);
    drop((a, big));
    pool.leave();
    drop(pool);
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
    assert!(covering.is_some(), "premise: a 4 KiB array was made over the freed header's place");
    outcome.unwrap();
}

/// `typed` invariant 1: "safe slices never alias mutably" within a process, enforced by the
/// `borrows` counter of the array's one `LocalArray`. 373a8ad now lets a new array's entry
/// replace that of a `LocalArray` this process let go of (by `leave`, or inherited and not
/// re-acquired); the two `LocalArray`s then cover the same bytes with two independent counters,
/// and safe code gets two live `&mut [T]` over the same memory.
#[test]
fn an_array_let_go_by_leaving_and_a_new_array_at_its_place_never_lend_the_same_bytes_mutably_twice() {
    let pool = Pool::create(&PoolOptions::new().segment_capacity(4 << 20).max_size(16 << 20)).unwrap();
    let name = pool.name().to_owned();
    let (pid, sock) = keeper(&pool);
    let mut a = ShmArray::<f64>::from_slice(&pool, &[8], &[1.0; 8]).unwrap();
    let place = u64::from_le_bytes(header_bits(&a.as_shared().untracked_handle())) >> 20;
    pool.leave(); // `a` is NOT_HELD; its block is freed (renewed, then given back)
    let mut made = Vec::new();
    let mut found = None;
    for _ in 0..64 {
        let b = ShmArray::<f64>::from_slice(&pool, &[8], &[2.0; 8]).unwrap();
        let here = u64::from_le_bytes(header_bits(&b.as_shared().untracked_handle())) >> 20;
        if here == place {
            found = Some(b);
            break;
        }
        made.push(b);
    }
    let outcome = match found.as_mut() {
        Some(b) => {
            let (pa, pb) = (a.as_shared().as_ptr() as usize, b.as_shared().as_ptr() as usize);
            let overlap = pa < pb + 64 && pb < pa + 64;
            // Nothing is written through either borrow: two at once is the defect.
            let ma = a.as_slice_mut();
            let mb = b.as_slice_mut();
            if overlap && ma.is_some() && mb.is_some() {
                Err(format!("two exclusive borrows of the same 64 bytes ({pa:#x}, {pb:#x})"))
            } else {
                Ok(())
            }
        }
        None => Ok(()),
    };
    let premise = found.is_some();
    drop((found, made));
    release_keeper(pid, sock);
    drop(a);
    pool.leave();
    drop(pool);
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
    assert!(premise, "premise: a new array was made at the old one's place");
    outcome.unwrap();
}

/// The fork form of the first defect, without `leave`: a forked child whose re-acquisition
/// (now through `pin_header`, 373a8ad) rightly found its inherited array gone — the parent
/// dropped it, renewed its block and made its next array there — still sends a token on that
/// place's refcount when asked for a handle of the inherited array. The token names the
/// parent's new array (its target), the handle names the old one (its nonce), so nobody can
/// claim it: the parent's new array outlives everyone's references until tokens are
/// reclaimed.
#[test]
fn a_forked_childs_handle_of_an_inherited_array_the_parent_freed_does_not_pin_the_parents_next_array() {
    let pool = Pool::create(&PoolOptions::new().segment_capacity(4 << 20).max_size(16 << 20)).unwrap();
    let name = pool.name().to_owned();
    let (mut parent, child) = UnixStream::pair().unwrap();
    for s in [&parent, &child] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let a = ShmArray::<f64>::from_slice(&pool, &[8], &[1.0; 8]).unwrap();
    let untracked = a.as_shared().untracked_handle();
    let inherited = a.clone();
    let child_pool = pool.clone();
    let pid = fork(move || {
        let (pool, a, mut child) = (child_pool, inherited, child);
        let mut go = [0u8; 1];
        child.read_exact(&mut go).unwrap();
        pool.join().unwrap(); // re-acquisition: the array is gone, `a` stays unheld
        let sent = a.as_shared().handle().is_ok();
        child.write_all(&[u8::from(sent)]).unwrap();
        pool.leave();
        0
    });
    drop(a); // our last reference (the child's copy is the child's): renewed
    let b = ShmArray::<f64>::from_slice(&pool, &[8], &[2.0; 8]).unwrap();
    let same_block = header_bits(&b.as_shared().untracked_handle()) == header_bits(&untracked);
    parent.write_all(b"g").unwrap();
    let mut sent = [0u8; 1];
    parent.read_exact(&mut sent).unwrap();
    assert_eq!(wait(pid), 0);
    drop(b); // nobody else holds it: it must go (renewed: `reserved`, not an array)
    let arrays = pool.stats().arrays;
    pool.leave();
    drop(pool);
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
    assert!(same_block, "premise: our next array was made in the renewed block");
    assert_eq!(
        arrays,
        0,
        "our next array outlived its last reference (the child's handle() of its inherited, \
         unheld array gave {}: a token on our array under the old array's name)",
        if sent[0] == 1 { "Ok" } else { "Err" }
    );
}
