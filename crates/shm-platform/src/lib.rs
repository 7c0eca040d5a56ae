//! The platform layer under `shm-arena` and `shm-sync`: what both need from Linux, and the one
//! switch that runs their algorithms under loom.
//!
//! # What holds
//!
//! 1. Every futex wait and wake is the *shared* futex and every wait is bounded ([`futex`]): a
//!    wake from any process that maps a word reaches every waiter on it, and a waiter can
//!    always look again, for instance to notice that a process died.
//! 2. A process is named by pid and start time ([`process::ProcessIdentity`]), so a reused
//!    pid never passes for a dead process, and a process is declared dead only with proof.
//! 3. [`process::fork_generation`] changes in a child after every fork made through libc; its
//!    `pthread_atfork` hook is registered when the library is loaded (`.init_array`).
//! 4. Algorithms name no atomic type directly: they take them from [`sync`], which swaps in
//!    loom's atomics, futex and identities under `--cfg shm_loom` with the `loom` feature
//!    (the crates above pass their `loom` feature down to this one).
//!
//! # Why a crate of its own
//!
//! `shm-sync`'s locks and refcounts need the futex, process identity and the loom facade, but
//! not an allocator; `shm-arena` needs the same three. Keeping them here lets both depend on
//! one small crate with no segment code, and keeps one definition of "alive" and one loom
//! model of the futex for the whole workspace (see `docs/architecture.md`, "Layers").
//!
//! # Example
//!
//! ```
//! use shm_platform::futex::{wait, wake, WaitOutcome};
//! use shm_platform::process::{fork_generation, Liveness, ProcessIdentity};
//! use shm_platform::sync::SharedU32;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), shm_platform::process::IdentityError> {
//! let me = ProcessIdentity::current()?;
//! assert_eq!(ProcessIdentity::from_bits(me.to_bits()), Some(me));
//! assert_eq!(me.liveness(), Liveness::Alive);
//! let generation = fork_generation(); // compare later to notice a fork
//!
//! let word = SharedU32::new(0);
//! assert_eq!(wait(&word, 1, Duration::from_millis(1)), WaitOutcome::ValueChanged);
//! assert_eq!(wake(&word, u32::MAX), 0);
//! assert_eq!(fork_generation(), generation);
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]

pub mod futex;
pub mod process;
pub mod sync;
#[allow(unsafe_code)] // thin syscall wrappers (rustix) and `pthread_atfork`
pub(crate) mod sys;
