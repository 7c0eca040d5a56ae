//! Pools with many processes (issue 13 item 6): every process slot of a 320-slot pool taken,
//! slots beyond 255 holding arrays beside the lowest (one array held by all of them, so its
//! holders go through the refcount's overflow block), holders at slots beyond 255 SIGKILLed and
//! `collect` reclaiming exactly what they held, one process too many refused with
//! `PoolError::Full`; and 1,024 short-lived processes going through one pool in batches, slots
//! recycled.
//!
//! And 4,096 processes alive in one pool at once (`process_slots` = 4,096), every one of them
//! holding an array of its own: an arena has at most 1,022 owner slots, so their arrays' headers
//! spread over several metadata segments (a process takes an owner slot in a segment only when it
//! allocates there); the 4,097th process is refused, and `collect` reclaims what SIGKILLed ones
//! held.
//!
//! Every child is a fork of this test (`shm_testkit::fork`) that blocks on a pipe only the
//! parent writes, so it exits when the parent closes it or dies; a watchdog thread SIGKILLs every
//! child and aborts the test if it has not finished in `WATCHDOG`.
#![allow(unsafe_code)] // pipes, read/write/close/kill on them and on our children

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shm_ndarray::{HandleError, Pool, PoolError, PoolOptions, ShmArray};
use shm_testkit::{fork, kill, wait};

/// Process slots of the full-table test: beyond 256, so slots a 256-bit holder bitmap could not
/// name hold arrays.
const SLOTS: u32 = 320;
/// Generous: the slowest step is forking a few hundred children on 2 busy cores.
const WATCHDOG: Duration = Duration::from_secs(240);

/// One test at a time: a fork copies every thread's locks, and the other test's threads may
/// hold some (the pool registry's) at that instant.
static SERIAL: Mutex<()> = Mutex::new(());

/// A pipe: (read end, write end).
fn pipe() -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid out-array of two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    (fds[0], fds[1])
}

fn write_byte(fd: i32, b: u8) {
    // SAFETY: writes one byte from a valid buffer to a descriptor we own.
    assert_eq!(unsafe { libc::write(fd, [b].as_ptr().cast(), 1) }, 1, "write");
}

/// One byte, or `None` at EOF.
fn read_byte(fd: i32) -> Option<u8> {
    let mut b = [0u8; 1];
    // SAFETY: reads one byte into a valid buffer from a descriptor we own.
    (unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) } == 1).then_some(b[0])
}

fn close(fd: i32) {
    // SAFETY: closes a descriptor we own and do not use afterwards.
    unsafe { libc::close(fd) };
}

/// The children of a test, SIGKILLed (and the test aborted) by a watchdog if it runs too long.
struct Children {
    /// The children's pids, and whether the test is done.
    state: Arc<Mutex<(Vec<i32>, bool)>>,
}

impl Children {
    fn new(what: &'static str) -> Self {
        let state = Arc::new(Mutex::new((Vec::<i32>::new(), false)));
        let watched = state.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + WATCHDOG;
            while !watched.lock().unwrap_or_else(|p| p.into_inner()).1 {
                if Instant::now() > deadline {
                    for pid in &watched.lock().unwrap_or_else(|p| p.into_inner()).0 {
                        // SAFETY: a signal to our own child.
                        unsafe { libc::kill(*pid, libc::SIGKILL) };
                    }
                    eprintln!("watchdog: {what} did not finish in {WATCHDOG:?}");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { state }
    }

    fn add(&self, pid: i32) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0.push(pid);
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
    }
}

#[test]
fn every_slot_taken_the_highest_hold_arrays_their_kill_is_collected_exactly_and_one_more_is_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let children = Children::new("the full table test");
    let pool = Pool::create(&PoolOptions::new().process_slots(SLOTS)).unwrap();
    let shared = ShmArray::<u64>::from_slice(&pool, &[8], &[7; 8]).unwrap();
    let base = pool.stats();
    let (release_r, release_w) = pipe();
    let (report_r, report_w) = pipe();
    // Slot 0 is ours; a child registering takes the lowest free slot, so child `i` (forked
    // after child `i - 1` reported) is slot `i`: slots up to SLOTS - 1 hold arrays, and all
    // of them hold `shared` (twelve inline, the rest in its overflow block).
    let mut pids = vec![0];
    for slot in 1..SLOTS {
        let pid = fork(|| {
            close(release_w);
            // Joining re-acquires `shared` under our own slot; then an array only we hold.
            pool.join().unwrap();
            let mine = ShmArray::<u64>::from_slice(&pool, &[4], &[u64::from(slot); 4]).unwrap();
            assert_eq!(shared.to_vec(), [7; 8]);
            write_byte(report_w, b'Y');
            let _ = read_byte(release_r); // until the parent closes the pipe
            drop(mine);
            pool.leave();
            0
        });
        children.add(pid);
        pids.push(pid);
        assert_eq!(read_byte(report_r), Some(b'Y'), "child at slot {slot}");
        assert_eq!(pool.stats().processes, slot as usize + 1);
    }
    assert_eq!(pool.stats().arrays, base.arrays + u64::from(SLOTS) - 1);

    // One process too many: joining, making an array and attaching are all refused alike.
    let handle = shared.handle().unwrap();
    let extra = fork(|| {
        close(release_w);
        let join = matches!(pool.join(), Err(PoolError::Full { slots, .. }) if slots == SLOTS);
        let attach = matches!(pool.attach(&handle), Err(HandleError::PoolFull { slots, .. }) if slots == SLOTS);
        i32::from(!(join && attach))
    });
    children.add(extra);
    assert_eq!(wait(extra), 0, "the extra process was not refused with PoolError::Full / HandleError::PoolFull");
    pool.cancel(&handle).unwrap();

    // SIGKILL the holders at the highest slots: collect drops their hold of `shared` and
    // frees the array each held alone, and nothing else.
    let killed: Vec<u32> = (SLOTS - 60..SLOTS).step_by(6).collect();
    assert!(killed.iter().all(|s| *s > 255));
    for slot in &killed {
        kill(pids[*slot as usize]);
    }
    let r = pool.collect();
    assert_eq!((r.dead_processes, r.arrays_freed), (killed.len(), killed.len()));
    let after = pool.stats();
    assert_eq!(after.arrays, base.arrays + u64::from(SLOTS) - 1 - killed.len() as u64);
    assert_eq!(after.processes, SLOTS as usize - killed.len());
    assert_eq!(shared.to_vec(), [7; 8], "the array the dead shared with others is intact");

    // Their slots are free again: a newcomer takes the lowest of them and holds arrays there.
    let newcomer = fork(|| {
        close(release_w);
        pool.join().unwrap();
        let mine = ShmArray::<u8>::zeros(&pool, &[100]).unwrap();
        i32::from(mine.to_vec() != [0; 100] || shared.to_vec() != [7; 8])
    });
    children.add(newcomer);
    assert_eq!(wait(newcomer), 0);

    // Let the others go: each frees its array and leaves.
    close(release_w);
    for (slot, pid) in pids.iter().enumerate().skip(1) {
        if !killed.contains(&(slot as u32)) {
            assert_eq!(wait(*pid), 0, "child at slot {slot}");
        }
    }
    pool.collect(); // the newcomer exited without leaving: its slot and array come back here
    let end = pool.stats();
    assert_eq!((end.arrays, end.processes), (base.arrays, 1));
    drop(shared);
    pool.check().unwrap();
    close(release_r);
    close(report_r);
    close(report_w);
}

#[test]
fn a_thousand_short_lived_processes_go_through_one_pool_in_batches() {
    const BATCH: usize = 64;
    const PROCESSES: usize = 1024;
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let children = Children::new("the thousand processes test");
    let pool = Pool::create(&PoolOptions::new()).unwrap();
    let shared = ShmArray::<u64>::from_slice(&pool, &[8], &[7; 8]).unwrap();
    let base = pool.stats();
    let (report_r, report_w) = pipe();
    for batch in 0..PROCESSES / BATCH {
        let (hold_r, hold_w) = pipe();
        let mut kept = Vec::new();
        for i in 0..BATCH {
            let pid = fork(|| {
                close(hold_w);
                pool.join().unwrap();
                let mine = ShmArray::<u64>::from_slice(&pool, &[4], &[i as u64; 4]).unwrap();
                assert_eq!(shared.to_vec(), [7; 8]);
                write_byte(report_w, b'Y');
                if i % 2 == 0 {
                    // Half stay, holding, until SIGKILLed.
                    let _ = read_byte(hold_r);
                }
                drop(mine);
                pool.leave();
                0
            });
            children.add(pid);
            if i % 2 == 0 {
                kept.push(pid);
            } else {
                assert_eq!(wait(pid), 0, "batch {batch}, child {i}");
            }
        }
        for i in 0..BATCH {
            assert_eq!(read_byte(report_r), Some(b'Y'), "batch {batch}, child {i}");
        }
        for pid in &kept {
            kill(*pid);
        }
        close(hold_w);
        close(hold_r);
        let r = pool.collect();
        assert_eq!((r.dead_processes, r.arrays_freed), (kept.len(), kept.len()), "batch {batch}");
        let now = pool.stats();
        assert_eq!((now.arrays, now.processes), (base.arrays, 1), "batch {batch}");
    }
    assert_eq!(shared.to_vec(), [7; 8]);
    drop(shared);
    pool.check().unwrap();
    close(report_r);
    close(report_w);
}

#[test]
fn four_thousand_ninety_six_processes_live_at_once_each_with_an_array_of_its_own() {
    /// Every slot: ours and 4,095 children's.
    const LIVE: u32 = 4096;
    /// Children forked before their reports are read.
    const BATCH: u32 = 128;
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let children = Children::new("the 4,096 live processes test");
    let started = Instant::now();
    let pool = Pool::create(&PoolOptions::new().process_slots(LIVE)).unwrap();
    let shared = ShmArray::<u64>::from_slice(&pool, &[8], &[7; 8]).unwrap();
    let base = pool.stats();
    let (release_r, release_w) = pipe();
    let (report_r, report_w) = pipe();
    let mut pids = vec![0];
    let mut forked = 1;
    while forked < LIVE {
        let batch = BATCH.min(LIVE - forked);
        for _ in 0..batch {
            let n = u64::from(forked);
            let pid = fork(|| {
                close(release_w);
                // Joining holds `shared` under our own slot; then an array of our own: 8 bytes,
                // inline in its header, so in a metadata segment whose owner table has room.
                pool.join().unwrap();
                let mine = ShmArray::<u64>::from_slice(&pool, &[1], &[n]).unwrap();
                let ok = shared.to_vec() == [7; 8] && mine.to_vec() == [n];
                write_byte(report_w, if ok { b'Y' } else { b'N' });
                let _ = read_byte(release_r); // until the parent closes the pipe
                let ok = mine.to_vec() == [n];
                // Freed by us (a free needs no owner slot in its segment), then we leave: a
                // leave from a pool of more than 64 members that finds another one alive does
                // not collect (4,095 collects over 4,096 slots took minutes).
                drop(mine);
                pool.leave();
                i32::from(!ok)
            });
            children.add(pid);
            pids.push(pid);
            forked += 1;
        }
        for _ in 0..batch {
            assert_eq!(read_byte(report_r), Some(b'Y'), "a child of the batch ending at {forked}");
        }
        if (forked - 1) % 1024 == 0 {
            eprintln!("{forked} processes live after {:?}", started.elapsed());
        }
    }
    let s = pool.stats();
    assert_eq!((s.processes, s.arrays), (LIVE as usize, base.arrays + u64::from(LIVE) - 1));
    // At most 1,014 processes allocate in one segment (1,022 owner slots, 8 kept for frees): the
    // headers went on to metadata segments grown for them.
    assert!(s.segments >= (LIVE as usize).div_ceil(1014), "{} segments", s.segments);
    eprintln!("{LIVE} processes live after {:?}, {} segments", started.elapsed(), s.segments);

    // One process too many is refused.
    let extra = fork(|| {
        close(release_w);
        i32::from(!matches!(pool.join(), Err(PoolError::Full { slots, .. }) if slots == LIVE))
    });
    children.add(extra);
    assert_eq!(wait(extra), 0, "the extra process was not refused with PoolError::Full");

    // SIGKILL a few, spread over the slots (and so over the metadata segments their arrays live
    // in): collect frees exactly the arrays they held alone.
    let killed: Vec<usize> = (7..LIVE as usize).step_by(511).collect();
    for child in &killed {
        kill(pids[*child]);
    }
    let r = pool.collect();
    assert_eq!((r.dead_processes, r.arrays_freed), (killed.len(), killed.len()));
    let s = pool.stats();
    assert_eq!(s.processes, LIVE as usize - killed.len());
    assert_eq!(s.arrays, base.arrays + u64::from(LIVE) - 1 - killed.len() as u64);
    assert_eq!(shared.to_vec(), [7; 8]);

    close(release_w);
    for (child, pid) in pids.iter().enumerate().skip(1) {
        if !killed.contains(&child) {
            assert_eq!(wait(*pid), 0, "child {child}");
        }
    }
    eprintln!("all left after {:?}", started.elapsed());
    // They gave their slots back themselves (and the blocks a process keeps for reuse after a
    // drop, held by its slot, went with them): nothing is left to collect.
    let r = pool.collect();
    assert_eq!(r.dead_processes, 0);
    let end = pool.stats();
    assert_eq!((end.arrays, end.processes), (base.arrays, 1));
    drop(shared);
    pool.check().unwrap();
    eprintln!("done after {:?}", started.elapsed());
    drop(children);
    close(release_r);
    close(report_r);
    close(report_w);
}

#[test]
fn holders_sigkilled_while_their_array_overflows_leave_it_whole_and_collectable() {
    // Each round: a new array with data of its own, inherited by 24 children that all join at
    // once, so twelve take the inline lanes and the others race to link an overflow block
    // (refused linkers free theirs); some are SIGKILLed at random moments of that, inside the
    // link or not. Then everyone goes, `collect` runs, and the array must be freed exactly when
    // its creator lets go, with the pool's allocators intact.
    const ROUNDS: usize = 12;
    const CHILDREN: usize = 24;
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let children = Children::new("the overflow kill test");
    let pool = Pool::create(&PoolOptions::new().process_slots(64)).unwrap();
    let base = pool.stats();
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() | 1;
    let mut random = move |n: u32| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed % n
    };
    for round in 0..ROUNDS {
        let array = ShmArray::<u8>::from_slice(&pool, &[8192], &[round as u8; 8192]).unwrap();
        let (go_r, go_w) = pipe();
        let mut pids = Vec::new();
        for _ in 0..CHILDREN {
            let pid = fork(|| {
                close(go_w);
                let _ = read_byte(go_r); // all start together
                pool.join().unwrap();
                let ok = array.to_vec().iter().all(|x| *x == round as u8);
                pool.leave();
                i32::from(!ok)
            });
            children.add(pid);
            pids.push(pid);
        }
        close(go_r);
        close(go_w); // EOF: go
        for pid in &pids {
            std::thread::sleep(Duration::from_micros(u64::from(random(400))));
            if random(3) == 0 {
                // SAFETY: a signal to our own child (it may have exited already: then a no-op
                // on a zombie, and `wait` reports its exit code).
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
        }
        for pid in pids {
            let code = wait(pid);
            assert!(code == 0 || code == -libc::SIGKILL, "round {round}: a child exited with {code}");
        }
        pool.collect();
        assert_eq!(array.to_vec()[8191], round as u8, "round {round}: the array stays whole");
        assert_eq!(pool.stats().processes, 1, "round {round}");
        drop(array);
        assert_eq!(pool.stats().arrays, base.arrays, "round {round}: freed when its creator let go");
        pool.check().unwrap();
    }
}
