//! Helpers for the workspace's multi-process tests (a dev-dependency only).
//!
//! Invariants:
//! 1. A forked child runs only the closure it is given and then `_exit`s: it never unwinds into
//!    the test harness, never runs the parent's destructors, and turns a panic into exit 101.
//! 2. Every helper that waits has a watchdog: a test that would hang fails instead.
#![allow(unsafe_code)] // fork, waitpid, kill, mmap: the point of this crate

use std::time::{Duration, Instant};

/// Forks; the child runs `child` and exits with its result (101 if it panicked).
///
/// # Panics
///
/// If `fork` fails.
pub fn fork(child: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: invariant 1: the child runs `child` and `_exit`s without unwinding; the callers'
    // closures use only the shared-memory libraries (fork-safe in a glibc process) and std.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(101);
        // SAFETY: ends the forked child at once (invariant 1).
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Waits for child `pid`: its exit code, or minus the signal that killed it.
///
/// # Panics
///
/// If `pid` is not a child of this process.
pub fn wait(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer; a pid that is not our child makes waitpid fail,
    // which the assertion reports.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid, "waitpid({pid})");
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    }
}

/// SIGKILLs child `pid` and reaps it.
///
/// # Panics
///
/// If the child had exited some other way first.
pub fn kill(pid: libc::pid_t) {
    // SAFETY: sends a signal to our child; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(wait(pid), -libc::SIGKILL, "child {pid} was not killed by SIGKILL");
}

/// Polls `cond` until it holds (invariant 2: fails the test after 10 s instead of hanging).
///
/// # Panics
///
/// After 10 s, naming `what`.
pub fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "watchdog: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Files in /dev/shm whose names start with `prefix` (what a test left behind).
///
/// # Panics
///
/// If /dev/shm cannot be read.
pub fn shm_files(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .expect("/dev/shm")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(prefix))
        .collect()
}

/// A zeroed page shared with forked children (`MAP_SHARED | MAP_ANONYMOUS`).
pub struct SharedPage(*mut u8);

impl SharedPage {
    /// Maps one zeroed shared page.
    ///
    /// # Panics
    ///
    /// If `mmap` fails.
    pub fn new() -> Self {
        // SAFETY: an anonymous shared mapping of one page: no file, no existing memory touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap failed");
        Self(p.cast())
    }

    /// The value of type `T` at `offset`.
    ///
    /// # Safety
    ///
    /// - `offset + size_of::<T>() <= 4096` and `offset` is aligned for `T`;
    /// - all-zero bytes are a valid `T`, and every process accesses it only through its own
    ///   (atomic) methods, as for the shared-memory primitives of this workspace.
    pub unsafe fn at<T>(&self, offset: usize) -> &T {
        debug_assert!(offset + std::mem::size_of::<T>() <= 4096);
        // SAFETY: the caller's contract; the page lives as long as `self`.
        unsafe { &*self.0.wrapping_add(offset).cast::<T>() }
    }
}

impl Default for SharedPage {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: unmaps the page mapped in `new`; no reference outlives `self`.
        unsafe { libc::munmap(self.0.cast(), 4096) };
    }
}

/// Runs test `name` of the current test binary again, as a child in a private mount namespace
/// (`unshare -m`, as root, which CI is) with a 64 MiB tmpfs on /dev/shm: only the child sees
/// it, and the mount vanishes with the child. The child has `marker` set in its environment, so
/// the test knows to do its work instead of starting another child. A watchdog fails the test
/// when the child does not finish in 60 s; a SIGBUS, a panic or a failure in it fails it too.
pub fn run_in_small_dev_shm(name: &str, marker: &str) {
    use std::time::{Duration, Instant};
    let me = std::env::current_exe().unwrap();
    let script =
        format!("mount -t tmpfs -o size=64m tmpfs /dev/shm && exec {} --exact {name} --nocapture", me.display());
    let mut child = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env(marker, "1")
        .spawn()
        .expect("spawn unshare (the test runs as root, as CI does)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child {name} in a 64 MiB /dev/shm did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "child {name} in a 64 MiB /dev/shm failed: {status:?}");
}
