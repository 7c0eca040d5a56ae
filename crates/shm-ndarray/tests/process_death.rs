//! What happens when a process dies holding arrays (SIGKILLed): `collect` frees what it held,
//! small and large, and every byte comes back; a handle it sent before dying stays
//! attachable.
#![allow(unsafe_code)] // kill, and a pipe between processes

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use shm_ndarray::{Handle, HandleError, Pool, PoolOptions, ShmArray, HANDLE_FIXED_LEN};
use shm_testkit::{fork, wait};

const TOOL: &str = env!("CARGO_BIN_EXE_shm-ndarray");

/// 4 MiB data segments, up to 16 MiB.
fn small() -> PoolOptions {
    PoolOptions::new().segment_capacity(4 << 20).max_size(16 << 20)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
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
fn the_tokens_of_named_dead_senders_are_reclaimed_and_no_others() {
    let pool = Pool::create(&small()).unwrap();
    let before = pool.stats();
    let started = std::time::Instant::now();
    // Two dead senders with two handles in flight each, and ours (alive) with one.
    let mut pids = Vec::new();
    for _ in 0..2 {
        let mut child = Command::new(TOOL).args(["hold", pool.name(), "2"]).stdout(Stdio::piped()).spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        for _ in 0..2 {
            lines.next().unwrap().unwrap();
        }
        pids.push(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let ours = ShmArray::<f64>::zeros(&pool, &[8]).unwrap();
    let ours_handle = ours.handle().unwrap();
    drop(ours);
    let me = std::process::id();
    pool.collect(); // the second child's join collected the first already
    let arrays = pool.stats().arrays;
    assert_eq!(arrays, before.arrays + 5, "four held by the dead senders' tokens, one by ours");
    // A live sender is never chosen, nor a pid not named, nor a token older than asked.
    assert_eq!(pool.reclaim_tokens_of_dead(&[me], Duration::from_secs(3600)), 0);
    assert_eq!(pool.reclaim_tokens_of_dead(&[pids[1]], Duration::ZERO), 0, "sent earlier than that");
    assert_eq!(pool.reclaim_tokens_of_dead(&[pids[0]], started.elapsed()), 2);
    assert_eq!(pool.stats().arrays, before.arrays + 3);
    assert_eq!(pool.reclaim_tokens_of_dead(&pids, started.elapsed()), 2);
    assert_eq!(pool.stats().arrays, before.arrays + 1);
    let back = ShmArray::<f64>::attach(&pool, &ours_handle).unwrap();
    assert_eq!(back.to_vec(), vec![0.0; 8], "our handle is still attachable");
    drop(back);
    let after = pool.stats();
    assert_eq!((after.used, after.arrays), (before.used, before.arrays), "every byte came back");
    pool.check().unwrap();
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
