//! Robust synchronisation between processes over shared memory.
//!
//! Any process of a program may die at any instruction; the primitives here are built so that
//! a survivor can always go on:
//!
//! - [`RobustMutex`]: a futex mutex whose lock word names its holder. A waiter that finds the
//!   holder dead takes the mutex over and is told so ([`Locked::OwnerDied`]); uncontended
//!   lock and unlock make no syscall. A mutex that belongs to a group ([`Members`], such as a
//!   [`ProcessTable`]) refuses a live holder outside the group instead of waiting for it
//!   forever ([`LockError::Stranger`]).
//! - [`Event`]: wait until a sequence word changes, notify one or all, with a registration
//!   that lets a free path skip the notification when nobody listens; [`Semaphore`]: counted
//!   permits across processes; [`Flag`]: a set-or-clear flag with waits (Python's
//!   `threading.Event`).
//! - [`ProcessTable`]: slots naming processes by an identity that survives pid reuse, so
//!   anyone can find the dead and recycle their slots.
//! - [`RefCount`]: a reference count kept per holder process (a bitmap of process slots), so a
//!   survivor can drop exactly what a dead process held; with [`TokenTable`] transfer tokens
//!   that keep a block alive while its handle is in flight, refuse a stale claim, and can be
//!   reclaimed when they are never claimed.
//!
//! Every primitive is a `repr(C)` struct of atomics meant to be placed in shared memory (zeroed
//! memory is a valid initial state) and written so that loom can check it: build with
//! `RUSTFLAGS="--cfg shm_loom"` and the `loom` feature, as `cargo xtask test` does, and the
//! atomics, the futex and process identity are loom's models (see the `sync` module).
//!
//! Futex waits are always the shared futex and always bounded (`atomic-wait` uses the private
//! futex, which a wake from another process cannot reach).
#![deny(unsafe_code)]

mod event;
mod flag;
pub mod holders;
mod mutex;
mod process_table;
mod refcount;
mod semaphore;
mod sync;
mod transfer;

pub use event::{Event, Listener, Wait};
pub use flag::Flag;
pub use mutex::{
    AnyProcess, Holder, LockError, Locked, Members, MutexGuard, NotHolder, RobustMutex, Standing, RECHECK,
    STRANGER_STRIKES,
};
pub use process_table::{DeadProcess, ProcessSlot, ProcessTable, Registration, SlotState, TableFull};
pub use refcount::{Acquired, RefCount, RefError, Released, NO_FREER};
pub use semaphore::Semaphore;
/// The atomic word of shared memory that [`Members::holder_overflow`] resolves to (loom's
/// under the model).
pub use shm_platform::sync::primitive::AtomicU64;
pub use transfer::{PendingToken, Token, TokenError, TokenSlot, TokenTable};

/// Support for loom models: declare the calling model thread's process dead, and let timed
/// waits time out at once.
#[cfg(all(shm_loom, feature = "loom"))]
pub mod loom_support {
    /// The calling loom thread's fake process is dead from now on.
    pub fn die() {
        crate::sync::die();
    }
    /// Whether timed futex waits return `TimedOut` at once (after a yield).
    pub fn timeouts_fire(on: bool) {
        crate::sync::set_timeouts_fire(on);
    }
}
