//! The memfd backend: growth segments are memfds, not files in /dev/shm; a forked child
//! inherits them, a separately started process gets them through a live member's
//! `/proc/<pid>/fd`; the member that served them can be SIGKILLed; a segment that no live
//! member holds any more is a typed error, and the pool still collects, checks and tears down.
//!
//! Separately started processes are the crate's `shm-ndarray` tool (`hold` makes arrays and
//! sleeps, `sum` and `fill` attach by handle); every wait on them has a deadline.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use shm_ndarray::{Backend, Handle, HandleError, Pool, PoolOptions, ShmArray};
use shm_testkit::{fork, shm_files, until, wait};

const TOOL: &str = env!("CARGO_BIN_EXE_shm-ndarray");

/// A memfd pool with 4 MiB data segments.
fn memfd_pool() -> Pool {
    Pool::create(&PoolOptions::new().backend(Backend::Memfd).segment_capacity(4 << 20).max_size(1 << 30)).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// Runs the tool to completion (at most 30 s) and returns its stdout, or panics with stderr.
fn tool(args: &[&str]) -> String {
    let mut child = Command::new(TOOL).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("shm-ndarray {args:?} did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "shm-ndarray {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `shm-ndarray hold POOL n`: a separately started member that made `n` arrays of 1 MiB (in
/// memfd segments it created) and sleeps; killed on drop.
struct Holder {
    child: Child,
    handles: Vec<Handle>,
}

impl Holder {
    fn start(pool: &str, n: usize) -> Holder {
        let mut child = Command::new(TOOL).args(["hold", pool, &n.to_string()]).stdout(Stdio::piped()).spawn().unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        // Watchdog: the reader thread's lines must come within 30 s.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut handles = Vec::new();
        while handles.len() < n {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => handles.push(Handle::from_bytes(&unhex(&line)).unwrap()),
                Err(_) => {
                    let _ = child.kill();
                    panic!("shm-ndarray hold printed {} of {n} handles in 30 s", handles.len());
                }
            }
        }
        Holder { child, handles }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn growth_segments_are_memfds_and_a_separate_process_reaches_them() {
    let pool = memfd_pool();
    assert_eq!(pool.backend(), Backend::Memfd);
    let before = shm_files(&format!("pyshm-{}", pool.name()));
    let mut small = ShmArray::<f64>::from_slice(&pool, &[4], &[1.0, 2.0, 3.0, 4.5]).unwrap();
    let large = ShmArray::<f64>::zeros(&pool, &[1 << 20]).unwrap(); // 8 MiB: a segment of its own
    let big = ShmArray::<f64>::from_slice(&pool, &[1 << 17], &vec![0.5; 1 << 17]).unwrap();
    // Only segment 0 is a file: the data segments are not in /dev/shm.
    assert_eq!(shm_files(&format!("pyshm-{}", pool.name())), before);
    assert_eq!(before, vec![format!("pyshm-{}", pool.name())]);
    assert!(pool.stats().segments >= 3, "{:?}", pool.stats());
    // A process that did not inherit anything opens the pool by name and the segments through us.
    let h = hex(&big.handle().unwrap().to_bytes());
    assert_eq!(tool(&["sum", pool.name(), &h]), format!("{}", 0.5 * (1 << 17) as f64));
    assert_eq!(tool(&["fill", pool.name(), &h, "2"]), "");
    assert!(big.to_vec().iter().all(|x| *x == 2.0));
    // A forked child inherits the descriptors and mappings.
    let h_small = small.handle().unwrap();
    let pid = fork(|| {
        let mut a = ShmArray::<f64>::attach(&pool, &h_small).unwrap();
        a.as_slice_mut().unwrap().fill(7.0);
        0
    });
    assert_eq!(wait(pid), 0);
    assert!(small.as_slice_mut().unwrap().iter().all(|x| *x == 7.0));
    drop((small, large, big));
    pool.check().unwrap();
}

#[test]
fn a_member_that_served_descriptors_can_be_sigkilled() {
    let pool = memfd_pool();
    // B, a separately started member, grows the pool by memfd segments only it holds.
    let mut b = Holder::start(pool.name(), 2);
    // We reach B's segment through /proc/B/fd and now hold its descriptor ourselves.
    let mut ours = ShmArray::<f64>::attach(&pool, &b.handles[0]).unwrap();
    ours.as_slice_mut().unwrap().fill(3.0);
    b.kill();
    // B is gone: a third process is served by us, and B's data is intact.
    let h = hex(&ours.handle().unwrap().to_bytes());
    assert_eq!(tool(&["sum", pool.name(), &h]), format!("{}", 3.0 * 131_072.0));
    // B's other array: its token is pending, its segment held by us: still reachable.
    let second = ShmArray::<f64>::attach(&pool, &b.handles[1]).unwrap();
    assert_eq!(second.to_vec().iter().sum::<f64>(), 0.0);
    // B's slot is collected (by us, or by the `sum` process when it joined).
    pool.collect();
    assert_eq!(pool.live_processes(), 1);
    pool.check().unwrap();
    drop((ours, second));
    pool.reclaim_tokens_older_than(Duration::ZERO);
    pool.collect();
    pool.check().unwrap();
}

#[test]
fn a_segment_no_live_member_holds_is_a_typed_error_and_the_pool_recovers() {
    let pool = memfd_pool();
    // B makes 6 arrays of 1 MiB: more than one 4 MiB segment, none of which we map.
    let mut b = Holder::start(pool.name(), 6);
    b.kill();
    let mut lost = 0;
    for h in &b.handles {
        match pool.attach(h) {
            Err(HandleError::Segment(why)) => {
                assert!(why.contains("memfd") && why.contains("no live process"), "{why}");
                lost += 1;
            }
            other => panic!("expected an unreachable segment, got {:?}", other.map(|a| a.shape().to_vec())),
        }
    }
    assert_eq!(lost, 6);
    // Collecting B (its slot, its arrays' holder bits and tokens) works around the lost segments.
    pool.collect();
    assert_eq!(pool.live_processes(), 1);
    pool.reclaim_tokens_older_than(Duration::ZERO);
    pool.collect();
    pool.check().unwrap();
    // The pool still grows and works.
    let a = ShmArray::<f64>::from_slice(&pool, &[1 << 17], &vec![1.0; 1 << 17]).unwrap();
    assert_eq!(a.to_vec().iter().sum::<f64>(), 131_072.0);
}

#[test]
fn nothing_is_left_in_dev_shm_when_every_process_is_gone() {
    let name = format!("memfd_gone_{}", std::process::id());
    let pid = fork(|| {
        let options =
            PoolOptions::new().name(name.clone()).persistent(false).backend(Backend::Memfd).segment_capacity(4 << 20);
        let pool = Pool::create(&options).unwrap();
        std::mem::forget(ShmArray::<f64>::zeros(&pool, &[1 << 20]).unwrap());
        std::mem::forget(pool);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    until("the child made an array in a memfd segment", || {
        shm_ndarray::list_pools().iter().any(|p| p.name == name && p.memfd_segments >= 1)
    });
    shm_testkit::kill(pid);
    // Only segment 0 was ever a file; `clean` removes it now that its process is dead, and the
    // memfds went with the process.
    assert_eq!(shm_files(&format!("pyshm-{name}")), vec![format!("pyshm-{name}")]);
    let removed = shm_ndarray::clean_dead_pools(false);
    assert!(removed.contains(&name), "{removed:?}");
    assert!(shm_files(&format!("pyshm-{name}")).is_empty());
}

const SMALL_SHM_CHILD: &str = "PYSHM_TEST_MEMFD_SMALL_SHM_CHILD";

/// In a 64 MiB /dev/shm: a 200 MB array, which a /dev/shm pool refuses with `NoSpace`, works.
fn in_small_shm() {
    let pool = memfd_pool();
    let mut a = ShmArray::<u8>::zeros(&pool, &[200_000_000]).unwrap();
    a.as_slice_mut().unwrap().fill(1);
    let small: Vec<_> = (0..200).map(|_| ShmArray::<f64>::zeros(&pool, &[1000]).unwrap()).collect();
    assert_eq!(a.as_slice().unwrap().iter().map(|x| u64::from(*x)).sum::<u64>(), 200_000_000);
    // Only segment 0 is in /dev/shm: it holds a few MiB.
    let fs = rustix::fs::statvfs("/dev/shm").unwrap();
    let used = (fs.f_blocks - fs.f_bfree) * fs.f_frsize;
    assert!(used < 8 << 20, "/dev/shm holds {used} bytes");
    drop((a, small));
}

#[test]
fn a_200_mb_array_works_in_a_64_mib_dev_shm() {
    if std::env::var_os(SMALL_SHM_CHILD).is_some() {
        return in_small_shm();
    }
    // The test runs itself again as a child in a private mount namespace (`unshare -m`, as
    // root, which CI is) with a 64 MiB tmpfs on /dev/shm: only the child sees it, and the mount
    // vanishes with the child.
    shm_testkit::run_in_small_dev_shm("a_200_mb_array_works_in_a_64_mib_dev_shm", SMALL_SHM_CHILD);
}
