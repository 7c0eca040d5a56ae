//! Thin, typed wrappers over the Linux syscalls of the platform layer: the shared futex and
//! process identity.
//!
//! Invariants:
//!
//! 1. This module is the only place in the crate that calls rustix or libc functions, so every
//!    syscall the crate makes can be found, reviewed and faked here (house style 9).
//! 2. Every wrapper returns [`rustix::io::Result`] (an [`Errno`]) untouched, except where the
//!    doc says an errno is an expected outcome and is mapped to a value; callers add context
//!    (pid, word) when they wrap it in their own error enum.
//! 3. Every futex operation here is the *shared* futex (`Flags::empty()`): the words live in
//!    memory mapped by several processes, and a private (`FUTEX_PRIVATE_FLAG`) wake sent by one
//!    process never reaches a private waiter in another.
//!
//! The wrappers fall into two groups: waiting on words in mapped memory ([`futex_wait`],
//! [`futex_wake`]), and process identity ([`process_exists`], [`current_pid`],
//! [`install_fork_hook`]), plus the monotonic clock ([`monotonic_ns`]). The segment syscalls
//! (`shm_open`, `memfd_create`, `fallocate`, ...) stay in `shm-arena`'s own `sys` module: only
//! the allocator needs them.

use std::time::Duration;

use rustix::io::{self, Errno};
use rustix::process::Pid;
use rustix::thread::futex;

/// How a [`futex_wait`] ended. Each is a normal outcome; the caller re-checks the word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FutexWaitOutcome {
    /// The thread slept and was woken by a `FUTEX_WAKE` (or, rarely, spuriously).
    Woken,
    /// The word did not hold `expected` when the kernel checked it (`EAGAIN`); the thread did
    /// not sleep.
    ValueChanged,
    /// The timeout elapsed (`ETIMEDOUT`).
    TimedOut,
    /// A signal handler ran (`EINTR`).
    Interrupted,
}

/// `futex(2)` `FUTEX_WAIT` (shared, relative timeout): sleeps while `word` holds `expected`,
/// for at most `timeout`.
///
/// The futex is the shared one (no `FUTEX_PRIVATE_FLAG`), keyed by the physical page, so a
/// wake from any process that maps the same word reaches this waiter (invariant 3). A
/// `timeout` too large for a `timespec` is clamped to the largest one.
///
/// # Errors
///
/// `EINVAL` (misaligned word or bad timeout), `EFAULT`, `ENOSYS`. The expected errnos are
/// outcomes (see [`FutexWaitOutcome`]).
///
/// # References
///
/// - `futex(2)`, `futex(7)`
// The word lives in mapped shared memory, where loom's handle-based atomics cannot go; it is
// never loom-modelled (loom models the futex as a Mutex + Condvar instead), so it is the core
// type, not the `sync` facade's.
#[allow(clippy::disallowed_types)]
pub(crate) fn futex_wait(
    word: &core::sync::atomic::AtomicU32,
    expected: u32,
    timeout: Duration,
) -> io::Result<FutexWaitOutcome> {
    let timeout = futex::Timespec::try_from(timeout)
        .unwrap_or(futex::Timespec { tv_sec: futex::Secs::MAX, tv_nsec: 999_999_999 });
    match futex::wait(word, futex::Flags::empty(), expected, Some(&timeout)) {
        Ok(()) => Ok(FutexWaitOutcome::Woken),
        Err(Errno::AGAIN) => Ok(FutexWaitOutcome::ValueChanged),
        Err(Errno::TIMEDOUT) => Ok(FutexWaitOutcome::TimedOut),
        Err(Errno::INTR) => Ok(FutexWaitOutcome::Interrupted),
        Err(err) => Err(err),
    }
}

/// `futex(2)` `FUTEX_WAKE` (shared): wakes at most `count` threads, in any process, waiting on
/// `word`, and returns how many it woke.
///
/// The kernel reads the count as a signed `int`, so `count` is clamped to `i32::MAX`:
/// `u32::MAX` means "wake all" (unclamped it would read as -1 and wake one).
///
/// # Errors
///
/// `EINVAL` (misaligned word), `EFAULT`, `ENOSYS`.
///
/// # References
///
/// - `futex(2)`, `futex(7)`
// Same reason as `futex_wait`: a word in mapped shared memory, never loom-modelled.
#[allow(clippy::disallowed_types)]
pub(crate) fn futex_wake(word: &core::sync::atomic::AtomicU32, count: u32) -> io::Result<u32> {
    let count = count.min(i32::MAX as u32);
    let woken = futex::wake(word, futex::Flags::empty(), count)?;
    Ok(u32::try_from(woken).unwrap_or(u32::MAX))
}

/// `kill(2)` with signal 0: whether a process with this pid exists.
///
/// `Ok` and `EPERM` (it exists but belongs to another user) mean yes, `ESRCH` means no. A
/// zombie still exists here; [`crate::process`] reads its state to tell. Pid 0 and pids above
/// `i32::MAX` name no process (and `kill` would read them as "my process group" or a negative
/// group), so they answer no without a syscall.
///
/// # Errors
///
/// Any other errno from `kill(2)`; none is expected for signal 0.
///
/// # References
///
/// - `kill(2)`
pub(crate) fn process_exists(pid: u32) -> io::Result<bool> {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Ok(false);
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) | Err(Errno::PERM) => Ok(true),
        Err(Errno::SRCH) => Ok(false),
        Err(err) => Err(err),
    }
}

/// `getpid(2)`: the calling process's id (in the caller's pid namespace).
///
/// # References
///
/// - `getpid(2)`
pub(crate) fn current_pid() -> u32 {
    // Pids are positive, so the cast keeps the value.
    rustix::process::getpid().as_raw_pid() as u32
}

/// `stat(2)` of `/proc/self/ns/pid`: the inode number naming the calling process's pid
/// namespace (equal inode numbers on one procfs mean one namespace).
///
/// # Errors
///
/// Any errno of `stat(2)`: `ENOENT` where `/proc` is not mounted or has no `ns` directory.
///
/// # References
///
/// - `stat(2)`, `pid_namespaces(7)`, `namespaces(7)` ("The /proc/pid/ns/ directory")
pub(crate) fn pid_namespace_inode() -> io::Result<u64> {
    rustix::fs::stat("/proc/self/ns/pid").map(|s| s.st_ino)
}

/// `pthread_atfork(3)` with only a child handler: after every `fork()` made through libc, the
/// child runs `child` before `fork` returns in it.
///
/// The handler runs in the child of a possibly multithreaded process, where only
/// async-signal-safe work is allowed: it must not allocate, lock or panic (touching atomics is
/// fine). Raw `clone(2)`/`vfork(2)` and `posix_spawn(3)` do not run it.
///
/// # Errors
///
/// `ENOMEM` if libc cannot record the handler.
///
/// # References
///
/// - `pthread_atfork(3)`, `fork(2)`, `signal-safety(7)`
pub(crate) fn install_fork_hook(child: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `pthread_atfork` only records the three pointers; the two `None`s are allowed,
    // and `child` is a valid `extern "C" fn()` for the life of the program (glibc unregisters
    // handlers of a shared object when it is unloaded). What the handler may do in the child
    // is this function's documented contract, not a memory-safety precondition of the call.
    let rc = unsafe { libc::pthread_atfork(None, None, Some(child)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw_os_error(rc))
    }
}

/// `clock_gettime(2)` with `CLOCK_MONOTONIC`, in nanoseconds: one clock for every process of
/// the machine (saturating, which no uptime reaches).
///
/// # References
///
/// - `clock_gettime(2)`
// Under loom, model time replaces the clock.
#[cfg_attr(all(shm_loom, feature = "loom"), allow(dead_code))]
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

#[cfg(test)]
// Futex words in these tests are plain heap words, the stand-in for mapped memory, not loom.
#[allow(clippy::disallowed_types)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc;
    use std::time::Instant;

    #[test]
    fn futex_wait_on_changed_value_returns_at_once() {
        let word = AtomicU32::new(1);
        assert_eq!(futex_wait(&word, 0, Duration::from_secs(30)).unwrap(), FutexWaitOutcome::ValueChanged);
    }

    #[test]
    fn futex_wait_times_out() {
        let word = AtomicU32::new(0);
        let outcome = loop {
            match futex_wait(&word, 0, Duration::from_millis(10)).unwrap() {
                FutexWaitOutcome::Interrupted => continue,
                other => break other,
            }
        };
        assert_eq!(outcome, FutexWaitOutcome::TimedOut);
    }

    #[test]
    fn futex_wake_without_waiters_wakes_none() {
        let word = AtomicU32::new(0);
        assert_eq!(futex_wake(&word, u32::MAX).unwrap(), 0);
    }

    #[test]
    fn futex_wake_from_another_thread_wakes_the_waiter() {
        // The word never changes, so the waiter can only leave through a wake: a broken wake
        // shows up as `TimedOut` after the watchdog, not as a silent pass.
        const WATCHDOG: Duration = Duration::from_secs(30);
        let word = AtomicU32::new(0);
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let outcome = loop {
                    match futex_wait(&word, 0, WATCHDOG).unwrap() {
                        FutexWaitOutcome::Interrupted => continue,
                        other => break other,
                    }
                };
                done_tx.send(outcome).unwrap();
            });
            // The waker cannot know when the waiter is asleep, so it keeps waking until the
            // waiter reports back.
            let deadline = Instant::now() + WATCHDOG + Duration::from_secs(5);
            let mut woken_total = 0;
            let outcome = loop {
                woken_total += futex_wake(&word, 1).unwrap();
                match done_rx.recv_timeout(Duration::from_millis(1)) {
                    Ok(outcome) => break outcome,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        assert!(Instant::now() < deadline, "watchdog: waiter never reported");
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => panic!("waiter panicked"),
                }
            };
            assert_eq!(outcome, FutexWaitOutcome::Woken);
            assert!(woken_total >= 1);
            assert_eq!(word.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn current_process_exists() {
        assert_eq!(current_pid(), std::process::id());
        assert!(process_exists(current_pid()).unwrap());
        // pid 1 exists in every pid namespace; it may belong to another user (EPERM).
        assert!(process_exists(1).unwrap());
    }

    #[test]
    fn reaped_child_does_not_exist() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        // The pid could in principle be reused in between; on a test machine it is not.
        assert!(!process_exists(pid).unwrap());
    }

    #[test]
    fn impossible_pids_do_not_exist() {
        assert!(!process_exists(0).unwrap());
        assert!(!process_exists(u32::MAX).unwrap());
        assert!(!process_exists(i32::MAX as u32 + 1).unwrap());
    }
}
