//! Named points inside multi-step protocols where a test can make this process die, to check
//! that the survivors finish or undo what it started (feature `kill-points`, for tests only).
//!
//! A test forks a child, arms one point in it ([`arm`]) and drives it there: the child aborts
//! (`SIGABRT`: no destructor, no unwinding, like a `SIGKILL` at that instruction). Without the
//! feature every point compiles to nothing.

use std::sync::Mutex;

static ARMED: Mutex<Option<&'static str>> = Mutex::new(None);

/// Makes this process abort when it next reaches the point named `point`.
///
/// Points: `free:start` (a freer that learned its array died, before anything),
/// `free:data-marked` (the header says the data block is being given back, the arena does not
/// yet), `free:data-freed` (the data block is given back), `free:header-adopted` (the header
/// block is the freer's, its magic still set).
pub fn arm(point: &'static str) {
    *ARMED.lock().unwrap_or_else(|p| p.into_inner()) = Some(point);
}

/// Aborts if `point` is armed.
pub(crate) fn reached(point: &'static str) {
    if *ARMED.lock().unwrap_or_else(|p| p.into_inner()) == Some(point) {
        std::process::abort();
    }
}
