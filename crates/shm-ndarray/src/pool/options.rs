//! How a pool is created: [`PoolOptions`] and their defaults.
//!
//! # Invariants
//!
//! 1. Options are read once, by the creator, and written into the directory (pool invariant
//!    1); a process that opens the pool reads them there, never from its own options.
//! 2. The defaults leave room for the rest of the machine: data segments grow up to half of
//!    /dev/shm (at least 256 MiB), and the warm reserve of freed memory kept for reuse is
//!    512 MiB or an eighth of /dev/shm, whichever is less.
//!
//! The one option that is per process is `wait`: how long this process's allocations wait for
//! other processes to free memory (`Pool::set_wait` changes it later).

use std::time::Duration;

/// Process slots of a pool unless [`PoolOptions::process_slots`] says otherwise: what a pool had
/// before pools could have more (every segment's owner table, and segment 0's process table,
/// stay as small as they were).
pub const DEFAULT_PROCESS_SLOTS: u32 = 255;
use crate::directory::KEEP_SET;

/// How to create (or open) a pool.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    pub(crate) name: Option<String>,
    pub(crate) segment_capacity: u64,
    pub(crate) max_size: u64,
    pub(crate) max_size_set: bool,
    pub(crate) min_block: u64,
    pub(crate) meta_capacity: u64,
    pub(crate) process_slots: u32,
    pub(crate) token_slots: u32,
    pub(crate) persistent: Option<bool>,
    pub(crate) persist_while_named: bool,
    pub(crate) wait: Option<Duration>,
    pub(crate) keep: u64,
    pub(crate) backend: super::Backend,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            name: None,
            segment_capacity: 64 << 20,
            max_size: default_max_size(),
            max_size_set: false,
            min_block: 256,
            meta_capacity: 16 << 20,
            process_slots: DEFAULT_PROCESS_SLOTS,
            token_slots: 8192,
            persistent: None,
            persist_while_named: false,
            wait: None,
            keep: default_keep(),
            backend: super::Backend::Shm,
        }
    }
}

impl PoolOptions {
    /// `max_size` as set, or the default of the backend: half of /dev/shm for files there,
    /// half of the memory (the cgroup's limit if lower) for memfds, which /dev/shm does not bound.
    pub(crate) fn effective_max_size(&self) -> u64 {
        if self.max_size_set || self.backend == super::Backend::Shm {
            self.max_size
        } else {
            super::backend::memory_limit().map_or(self.max_size, |m| (m / 2).max(256 << 20))
        }
    }
}

/// Half of /dev/shm, at least 256 MiB: a pool should not starve the rest of the machine.
fn default_max_size() -> u64 {
    rustix::fs::statvfs("/dev/shm").map(|s| s.f_blocks * s.f_frsize / 2).unwrap_or(1 << 30).max(256 << 20)
}

/// The default warm reserve: 512 MiB, at most an eighth of /dev/shm (8 MiB in a 64 MiB
/// container). Measured with W1 of docs/performance.md (a 160 MB array made and freed per
/// call, and with a plain input a second 160 MB copy): it keeps its speed with 2 x 160 MB warm
/// and loses it below (docs/performance.md, "The warm reserve").
pub fn default_keep() -> u64 {
    let shm = rustix::fs::statvfs("/dev/shm").map(|s| s.f_blocks * s.f_frsize).unwrap_or(8 << 30);
    (512 << 20).min(shm / 8)
}

impl PoolOptions {
    /// Defaults: unnamed, 64 MiB data segments, grows to half of /dev/shm, 256-byte blocks.
    pub fn new() -> Self {
        Self::default()
    }
    /// A named pool (`pyshm-<name>` in /dev/shm), which unrelated programs can open.
    /// Named pools are persistent unless told otherwise.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Capacity of each data segment (a larger array gets a segment of its own size).
    pub fn segment_capacity(mut self, bytes: u64) -> Self {
        self.segment_capacity = bytes;
        self
    }
    /// Most bytes the pool may reserve in /dev/shm beyond its first (metadata) segment.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self.max_size_set = true;
        self
    }
    /// Smallest data block (and alignment of array data), a power of two from 64.
    pub fn min_block(mut self, bytes: u64) -> Self {
        self.min_block = bytes;
        self
    }
    /// Process slots: how many processes may use the pool at once (default
    /// [`DEFAULT_PROCESS_SLOTS`], at most [`MAX_PROCESSES`](super::MAX_PROCESSES)). Each slot
    /// costs 64 bytes in segment 0 and, up to about 1,000, an owner slot of 128 bytes in every
    /// segment (a process takes one only in the segments it allocates in; see
    /// [`MAX_PROCESSES`](super::MAX_PROCESSES)).
    pub fn process_slots(mut self, slots: u32) -> Self {
        self.process_slots = slots;
        self
    }
    /// Transfer token slots (handles in flight at once).
    pub fn token_slots(mut self, slots: u32) -> Self {
        self.token_slots = slots;
        self
    }
    /// Whether the pool outlives its last process (until unlinked).
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = Some(persistent);
        self
    }
    /// Whether the pool outlives its last process while it has named arrays (and only then):
    /// the model of a store of named arrays, which disappears with its last name.
    pub fn persist_while_named(mut self, yes: bool) -> Self {
        self.persist_while_named = yes;
        self
    }
    /// The warm reserve: how many bytes of freed array data the pool keeps reserved for reuse
    /// (reusing them makes no syscall). Freed data beyond it is given back to the system at
    /// once, by the process that frees it (a punch, about 370 us per MiB). Default
    /// [`default_keep`].
    pub fn keep(mut self, bytes: u64) -> Self {
        self.keep = bytes.min(!KEEP_SET);
        self
    }

    /// Where the segments the pool grows into live: files in /dev/shm (the default) or
    /// memfds, which do not count against /dev/shm (`pool/backend.rs`).
    pub fn backend(mut self, backend: super::Backend) -> Self {
        self.backend = backend;
        self
    }

    /// How long an allocation waits for other processes to free memory before it fails.
    pub fn wait(mut self, wait: Option<Duration>) -> Self {
        self.wait = wait;
        self
    }
}

pub(super) const NO_WAIT: u64 = u64::MAX;

pub(super) fn wait_to_ns(wait: Option<Duration>) -> u64 {
    wait.map_or(NO_WAIT, |w| u64::try_from(w.as_nanos()).unwrap_or(NO_WAIT - 1))
}
