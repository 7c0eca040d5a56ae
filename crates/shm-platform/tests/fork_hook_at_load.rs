//! The fork hook is installed when the library loads, not at the first call: a fork that
//! happens before any call (and so before any lazy setup could run) is still counted. A lazy
//! setup raced with forks made by other threads and could leave a child waiting forever.
//! (A test binary of its own, with one test: nothing here calls `fork_generation` first.)
#![allow(unsafe_code)] // fork, waitpid, _exit

#[test]
fn a_fork_before_the_first_call_is_counted() {
    // SAFETY: the child only calls `fork_generation` (an atomic load once the setup is done,
    // which it is: it ran at load) and `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = shm_platform::process::fork_generation() as i32;
        // SAFETY: ends the child without running the harness's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: our child; `status` is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let parent = shm_platform::process::fork_generation();
    assert!(libc::WIFEXITED(status));
    assert_eq!(libc::WEXITSTATUS(status) as u64, parent + 1, "the child counted its fork");
}
