//! Arrays this process let go of (after `Pool::leave`, or inherited across a fork and not held
//! again): whatever is done with them must never touch the memory that replaced them. Found by
//! the two reviews of session 4: a re-pin, a forked child's re-acquisition, `handle()`,
//! `publish()` and typed borrows each used the old header or data as if the process still held
//! it, so a stale handle attached another array, holder bits and tokens landed in another
//! array's elements, and two `&mut` slices covered the same bytes. Each now holds the array
//! again through every check of a first pin, or fails with `Stale`.
#![allow(unsafe_code)] // fork, waitpid

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use shm_ndarray::{Handle, HandleError, Pool, PoolOptions, ShmArray, TypedError};
use shm_testkit::{fork, wait};

fn small() -> PoolOptions {
    PoolOptions::new().segment_capacity(4 << 20).max_size(16 << 20)
}

/// A pool that cannot grow (a metadata segment takes 16 MiB), so filling it coalesces freed
/// header blocks into larger blocks.
fn unable_to_grow() -> PoolOptions {
    PoolOptions::new().segment_capacity(1 << 20).max_size(1 << 20)
}

/// A socket pair whose reads give up after 10 s.
fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    (a, b)
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
/// `Keeper::release` tells it to (or after 10 s).
struct Keeper {
    pid: libc::pid_t,
    sock: UnixStream,
}

impl Keeper {
    fn start(pool: &Pool) -> Self {
        let (mut sock, mut child) = pair();
        let pid = fork(|| {
            pool.join().unwrap();
            child.write_all(b"j").unwrap();
            let mut end = [0u8; 1];
            let _ = child.read(&mut end);
            pool.leave();
            0
        });
        let mut buf = [0u8; 1];
        sock.read_exact(&mut buf).unwrap();
        Keeper { pid, sock }
    }

    fn release(mut self) {
        self.sock.write_all(b"e").unwrap();
        assert_eq!(wait(self.pid), 0);
    }
}

/// Leaves and drops the pool, then checks nothing of it is left in /dev/shm.
fn finish(pool: Pool) {
    let name = pool.name().to_owned();
    pool.leave();
    drop(pool);
    let left = shm_testkit::shm_files(&format!("pyshm-{name}"));
    assert!(left.is_empty(), "{left:?}");
}

/// An array `a` this process let go of by leaving, whose 256-byte header block was freed and
/// now lies inside the data of a zeroed 4 KiB array `big[i]` (at least 256 bytes into its block,
/// so the old header's refcount words fall in the covering array's elements). Returns
/// `(a, big, i)`.
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

/// The nonzero bytes of an array made zeroed: what a stray write left.
fn nonzero(b: &ShmArray<u8>) -> Vec<(usize, u8)> {
    b.to_vec().into_iter().enumerate().filter(|(_, x)| *x != 0).collect()
}

/// Runs `touch` on a stale array whose old header lies inside a zeroed array's data, and
/// checks that nothing was written there.
fn never_writes_into_another_arrays_data(what: &str, touch: impl FnOnce(&Pool, &ShmArray<f64>) -> String) {
    let pool = Pool::create(&unable_to_grow()).unwrap();
    let keeper = Keeper::start(&pool);
    let (a, big, covering) = stale_array_inside_another_arrays_data(&pool);
    let result = touch(&pool, &a);
    let dirty = covering.map(|i| nonzero(&big[i])).unwrap_or_default();
    keeper.release();
    drop((a, big));
    finish(pool);
    assert!(covering.is_some(), "premise: a 4 KiB array was made over the freed header's place");
    assert!(dirty.is_empty(), "{what} gave {result}; the zeroed array over the old header now has bytes {dirty:?}");
}

#[test]
fn attaching_a_stale_handle_never_writes_into_another_arrays_data() {
    never_writes_into_another_arrays_data("attach", |pool, a| {
        let attached = ShmArray::<f64>::attach(pool, &a.as_shared().untracked_handle());
        assert!(
            matches!(attached, Err(TypedError::Handle(HandleError::Stale))),
            "attach gave {:?}",
            attached.as_ref().map(|_| ())
        );
        "Stale".into()
    });
}

#[test]
fn a_handle_of_an_array_let_go_by_leaving_never_writes_into_another_arrays_data() {
    never_writes_into_another_arrays_data("handle()", |_, a| format!("{:?}", a.as_shared().handle().map(|_| ())));
}

#[test]
fn publishing_an_array_let_go_by_leaving_never_writes_into_another_arrays_data() {
    never_writes_into_another_arrays_data("publish", |pool, a| {
        let published = format!("{:?}", pool.publish("stale", a.as_shared()).map(|_| ()));
        let _ = pool.unpublish("stale");
        published
    });
}

/// `pin` re-pins an array this process still has a `LocalArray` of but does not hold. Another
/// process renews the block and makes its next small array there: our stale, untracked handle
/// must not attach that other array under the old array's identity.
#[test]
fn a_stale_handle_of_an_array_this_process_let_go_by_leaving_is_refused_after_the_block_is_renewed() {
    let pool = Pool::create(&small()).unwrap();
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
    let same_block = header_bits(&Handle::from_bytes(&yb).unwrap()) == header_bits(&untracked);
    // The old array is gone (its only holder let go of it); its handle must be stale.
    let outcome = match ShmArray::<f64>::attach(&pool, &untracked) {
        Ok(b) => Err(format!("attached; it reads {:?} (the child's next array holds 2.0)", b.to_vec())),
        Err(TypedError::Handle(HandleError::Stale)) => Ok(()),
        Err(e) => Err(format!("unexpected error {e:?}")),
    };
    parent.write_all(b"e").unwrap();
    assert_eq!(wait(pid), 0);
    drop(a);
    finish(pool);
    assert!(same_block, "premise: the child's next array was made in the renewed block");
    outcome.unwrap();
}

/// A new array may be made where an array this process let go of was (the locals entry then
/// names the unheld one), and the two never lend the same bytes mutably at once.
#[test]
fn an_array_let_go_by_leaving_and_a_new_array_at_its_place_never_lend_the_same_bytes_mutably_twice() {
    let pool = Pool::create(&small()).unwrap();
    let keeper = Keeper::start(&pool);
    let mut a = ShmArray::<f64>::from_slice(&pool, &[8], &[1.0; 8]).unwrap();
    let place = offset(&a.as_shared().untracked_handle());
    pool.leave(); // `a` is NOT_HELD; its block is freed (renewed, then given back)
    let mut made = Vec::new();
    let mut found = None;
    for _ in 0..64 {
        let b = ShmArray::<f64>::from_slice(&pool, &[8], &[2.0; 8]).unwrap();
        if offset(&b.as_shared().untracked_handle()) == place {
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
    keeper.release();
    drop(a);
    finish(pool);
    assert!(premise, "premise: a new array was made at the old one's place");
    outcome.unwrap();
}

/// The fork form, without `leave`: a forked child whose re-acquisition rightly found its
/// inherited array gone (the parent dropped it, renewed its block and made its next array
/// there) must not send a token on that place's refcount when asked for a handle of it: the
/// token would name the parent's new array, the handle the old one, and nobody could claim it.
#[test]
fn a_forked_childs_handle_of_an_inherited_array_the_parent_freed_does_not_pin_the_parents_next_array() {
    let pool = Pool::create(&small()).unwrap();
    let (mut parent, child) = pair();
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
    finish(pool);
    assert!(same_block, "premise: our next array was made in the renewed block");
    assert_eq!(
        arrays,
        0,
        "our next array outlived its last reference (the child's handle() of its inherited, \
         unheld array gave {}: a token on our array under the old array's name)",
        if sent[0] == 1 { "Ok" } else { "Err" }
    );
}
