//! An event log of tree operations for loom models (compiled only under `cfg(shm_loom)`).
//!
//! loom runs its threads one at a time on one OS thread, so a plain global list records the
//! interleaving in order. A model clears it at the start of each execution and prints it when
//! an assertion fails.

use std::sync::Mutex;

static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Appends an event.
pub fn record(event: String) {
    let id = format!("{:?}", loom::thread::current().id());
    LOG.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{id}: {event}"));
}

/// Forgets every event.
pub fn clear() {
    LOG.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// The events so far, one per line.
pub fn dump() -> String {
    LOG.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
}
