//! Fuzzing shm-arena and shm-ndarray: the logic behind the cargo-fuzz targets and the stable fallback runner.
//!
//! # What holds
//!
//! 1. Every input is valid. Decoding never rejects an input: it ends the iteration early, and
//!    that is a pass.
//! 2. An iteration panics only when shm-arena breaks a promise, and the panic message names
//!    the invariant (see [`arena_ops`] and [`open_header`]). Any error the arena returns for
//!    bad input is a pass.
//! 3. No iteration leaves a file in `/dev/shm`: named scratch segments are removed on every
//!    path, including a panic (see `shm_file`).
//!
//! # Use
//!
//! The cargo-fuzz targets in `fuzz_targets/` call [`run_arena_ops`] and [`run_open_header`].
//! `src/bin/fuzz_stable.rs` calls [`arena_ops::run`] and [`open_header::run`] with an
//! [`Observer`] that collects features, to steer its mutations without coverage
//! instrumentation. `README.md` says which runs where.
#![deny(unsafe_code)]

use std::collections::HashSet;

use arbitrary::Arbitrary;

#[allow(unsafe_code)] // writes and checks the bytes of live blocks
pub mod arena_ops;
pub mod handle_attach;
#[allow(unsafe_code)] // touches the bytes of blocks of an arena opened from corrupt bytes
pub mod open_header;
mod shm_file;

/// Runs one `arena_ops` iteration: an operation sequence on an anonymous arena, checked
/// against a model.
///
/// # Panics
///
/// When the arena breaks one of the invariants listed in [`arena_ops`].
pub fn run_arena_ops(data: &[u8]) {
    arena_ops::run(data, &mut ());
}

/// Runs one `open_header` iteration: opens a segment made of arbitrary or mutated bytes.
///
/// # Panics
///
/// When opening or using the segment panics inside shm-arena, or when this harness cannot
/// create its scratch files (see [`open_header`]).
pub fn run_open_header(data: &[u8]) {
    open_header::run(data, &mut ());
}

/// Runs one `handle_attach` iteration: decodes and attaches handle bytes against a live pool.
///
/// # Panics
///
/// When an attached view reaches outside the pool's arrays (see [`handle_attach`]).
pub fn run_handle_attach(data: &[u8]) {
    handle_attach::run(data, &mut ());
}

/// Receives the features an iteration reached (an operation and its outcome, an open error
/// kind): the stable runner keeps the inputs that reach new ones.
pub trait Observer {
    /// Records that feature `id` was reached.
    fn reached(&mut self, id: u32);
}

/// Records nothing (the cargo-fuzz targets, which have coverage instrumentation instead).
impl Observer for () {
    #[inline]
    fn reached(&mut self, _id: u32) {}
}

/// Collects the features.
impl Observer for HashSet<u32> {
    fn reached(&mut self, id: u32) {
        self.insert(id);
    }
}

/// The minimum block of a generated arena.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MinBlock {
    /// 16 bytes, the smallest the arena supports.
    B16,
    /// 64 bytes, the default.
    B64,
    /// 256 bytes.
    B256,
}

impl MinBlock {
    /// The minimum block in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            MinBlock::B16 => 16,
            MinBlock::B64 => 64,
            MinBlock::B256 => 256,
        }
    }
}
