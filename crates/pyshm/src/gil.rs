//! Releasing the GIL without crashing at interpreter exit.
//!
//! Up to Python 3.13, a thread that asks for the GIL back after the interpreter began to
//! finalize is ended on the spot with `pthread_exit`, a forced unwind through whatever frames
//! are on its stack. Through Rust frames that own something (a `PyRef`, pyo3's own guards) that
//! is undefined behaviour, and in practice a segfault at exit: a daemon thread (one of the
//! executor's, or a user's) inside `collect()` while the main thread returns from `main` crashed
//! about one run in five (CPython issue 87135; Python 3.14 hangs such threads instead). The
//! wheel (`cargo xtask wheel`, linked by zig) carries its own unwinder, which glibc's forced
//! unwind (libgcc_s) cannot drive: there such an exit crashed every time.
//!
//! Invariants:
//! 1. Once [`at_exit`] has run, no thread of this module asks for the GIL back from a detached
//!    section: a closure that finishes after it parks its thread for good (what Python 3.14
//!    does with such threads), and a new call runs its closure without releasing the GIL.
//! 2. [`at_exit`] returns only when no thread is between the check of invariant 1 and the end
//!    of its `PyEval_RestoreThread` (the `re_entering` count is zero), so finalization, which
//!    starts after every atexit callback, never catches one there. The flag and the count form a
//!    store-then-load pair on each side (Dekker), hence `SeqCst` on all four accesses: either
//!    [`at_exit`] sees the thread's increment and waits for it, or the thread sees the flag.
//! 3. [`at_exit`] is an `atexit` callback registered when the module is first imported, so it
//!    runs after every callback the package registers later (atexit runs them last-in,
//!    first-out): leaving pools at exit still releases the GIL as usual. A callback registered
//!    before pyshm's import runs after it (multiprocessing's own exit function, when
//!    `multiprocessing.util` was imported first, and pyshm's leaving of pools inside it): such
//!    calls then run holding the GIL, which stalls other threads for their length but is
//!    correct, since invariant 1 only changes where the GIL is not released.
//! 4. A child made by `os.fork` starts with `re_entering` at zero (an `os.register_at_fork`
//!    child hook): it has only the forking thread, which holds the GIL, so a count inherited from
//!    threads of the parent that were taking the GIL back would make its [`at_exit`] wait the
//!    full [`RE_ENTRY_WAIT`] for threads that do not exist.

// Process-local state of this module, not shared memory: loom never models it (the facade the
// lint points to is for the shared-memory protocols of the crates below).
#![allow(clippy::disallowed_types)]
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyCFunction;

/// Set by [`at_exit`]: the interpreter is about to finalize.
static EXITING: AtomicBool = AtomicBool::new(false);
/// Threads that finished a detached closure and are taking the GIL back.
static RE_ENTERING: AtomicUsize = AtomicUsize::new(0);
/// How long [`at_exit`] waits for threads taking the GIL back: they need only the GIL, which it
/// releases while it waits, so this bound is never reached unless a thread is stopped (a
/// debugger), and then exit goes on rather than hang.
const RE_ENTRY_WAIT: Duration = Duration::from_secs(2);

/// `py.detach(f)`, safe at interpreter exit (invariant 1). `Send` is what pyo3 asks of a
/// detached closure (its `Ungil`) without the nightly `auto trait` feature.
pub(crate) fn detach<T, F>(py: Python<'_>, f: F) -> T
where
    F: Send + FnOnce() -> T,
    T: Send,
{
    if EXITING.load(SeqCst) {
        return f();
    }
    #[allow(clippy::disallowed_methods)] // the wrapper itself
    let result = py.detach(move || {
        let result = f();
        RE_ENTERING.fetch_add(1, SeqCst);
        if EXITING.load(SeqCst) {
            RE_ENTERING.fetch_sub(1, SeqCst);
            park_for_good();
        }
        result
    });
    RE_ENTERING.fetch_sub(1, SeqCst);
    result
}

/// Never returns: the thread sleeps until the process exits (threads are not joined at exit).
fn park_for_good() -> ! {
    loop {
        std::thread::park();
    }
}

/// The `atexit` callback (invariant 2). Before finalization, so pyo3's own detach is safe here.
#[allow(clippy::disallowed_methods)]
fn at_exit(py: Python<'_>) {
    EXITING.store(true, SeqCst);
    py.detach(|| {
        let deadline = Instant::now() + RE_ENTRY_WAIT;
        while RE_ENTERING.load(SeqCst) != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// Registers [`at_exit`] with Python's `atexit` (invariant 3) and the fork hook (invariant 4).
pub(crate) fn register_at_exit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let callback = PyCFunction::new_closure(py, Some(c"_pyshm_gil_at_exit"), None, |args, _kwargs| {
        at_exit(args.py());
    })?;
    py.import("atexit")?.call_method1("register", (callback,))?;
    let after_fork = PyCFunction::new_closure(py, Some(c"_pyshm_gil_after_fork"), None, |_args, _kwargs| {
        // The child's only thread holds the GIL: nothing of it is taking the GIL back.
        RE_ENTERING.store(0, SeqCst);
    })?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("after_in_child", after_fork)?;
    py.import("os")?.call_method("register_at_fork", (), Some(&kwargs))?;
    Ok(())
}
