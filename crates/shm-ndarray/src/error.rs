//! Errors of the pool and its arrays: one enum per operation, each variant actionable.

use shm_arena::{AllocError, CreateError, OpenError};

use crate::dtype::DTypeError;

/// Why a pool could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The pool name breaks the naming rule.
    #[error("invalid pool name {name:?}: use 1 to 100 letters, digits, '_' or '.'")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// No pool of that name exists (it was never created, or it was torn down).
    #[error("no pool named {name:?}: it does not exist (any more)")]
    NotFound {
        /// The pool name.
        name: String,
    },
    /// The pool's last process detached and it was torn down while we opened it.
    #[error("pool {name:?} was torn down")]
    Gone {
        /// The pool name.
        name: String,
    },
    /// The pool was made by another version of pyshm, whose layout this one cannot read (an
    /// upgrade that left a persistent pool behind, or two installations sharing /dev/shm).
    #[error("{name:?} was made by another version of pyshm ({what} version {found}; this pyshm reads version {ours}): use it from that version, or remove it with `python -m pyshm clean --persistent` once no program of that version runs (its arrays are lost)")]
    OtherVersion {
        /// The segment name.
        name: String,
        /// Which layout differs: `"directory"` or `"segment layout"`.
        what: &'static str,
        /// The version found.
        found: u64,
        /// The version this library reads.
        ours: u64,
    },
    /// The segment exists but is not a pyshm pool.
    #[error("{name:?} is not a pyshm pool: {why}")]
    NotAPool {
        /// The segment name.
        name: String,
        /// What was found.
        why: &'static str,
    },
    /// The pool was made in another pid namespace (another container sharing /dev/shm): pids
    /// there mean other processes here, so this process could not tell its processes alive
    /// from dead and must not join (directory invariant 5).
    #[error("pool {name:?} belongs to another pid namespace (pid:[{pool_namespace}], this process is in pid:[{ours}]): processes of different pid namespaces cannot share a pool; use a pool of your own")]
    OtherNamespace {
        /// The pool name.
        name: String,
        /// The pool's pid namespace (inode number; 0 if its creator could not tell).
        pool_namespace: u64,
        /// This process's (0 if it cannot tell).
        ours: u64,
    },
    /// Every process slot is taken by a live process.
    #[error("pool {name:?} has all {slots} process slots taken by live processes")]
    Full {
        /// The pool name.
        name: String,
        /// Number of slots.
        slots: u32,
    },
    /// Options out of range.
    #[error("invalid pool options: {0}")]
    Options(&'static str),
    /// Creating a segment failed (for instance, no room in /dev/shm).
    #[error(transparent)]
    Create(#[from] CreateError),
    /// Opening a segment failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A memfd segment of the pool could not be reached: no live process of the pool holds its
    /// descriptor any more (`pool::backend`, invariant 4).
    #[error("pool {pool:?}: cannot reach its memfd segment {index}: {why}")]
    SegmentUnreachable {
        /// The pool name.
        pool: String,
        /// The segment's index in the directory.
        index: usize,
        /// What was tried.
        why: String,
    },
    /// Allocating the pool's own metadata failed.
    #[error("allocating pool metadata: {0}")]
    Alloc(#[from] AllocError),
}

/// Why an array could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ArrayError {
    /// The element type cannot live in shared memory.
    #[error(transparent)]
    DType(#[from] DTypeError),
    /// More dimensions than numpy supports, or a size that overflows.
    #[error("invalid shape {shape:?}: {why}")]
    Shape {
        /// The shape given.
        shape: Vec<u64>,
        /// What is wrong.
        why: &'static str,
    },
    /// The pool is full and cannot grow, even after waiting.
    #[error("pool {pool:?} is out of memory: {requested} bytes requested, {free} bytes free, largest free block {largest_free} bytes, /dev/shm has {shm_free} bytes free; raise the pool's max_size (PoolOptions::max_size), free arrays, or let allocations wait for other processes to free memory (PoolOptions::wait, Pool::set_wait)")]
    OutOfMemory {
        /// The pool name.
        pool: String,
        /// Bytes requested (data).
        requested: u64,
        /// Free bytes in the pool's segments.
        free: u64,
        /// Largest free block.
        largest_free: u64,
        /// Free bytes in /dev/shm.
        shm_free: u64,
    },
    /// /dev/shm (or the memfd's tmpfs) has no room for the pages the array needs, even after
    /// collecting what dead processes held.
    #[error("pool {pool:?}: no room in /dev/shm for {requested} bytes ({reserving} bytes of pages to reserve), /dev/shm has {shm_free} bytes free; free arrays, enlarge /dev/shm (docker run --shm-size=..., a memory-backed Kubernetes emptyDir), or keep the pool out of /dev/shm with PYSHM_BACKEND=memfd")]
    NoSpace {
        /// The pool name.
        pool: String,
        /// Bytes requested.
        requested: u64,
        /// Bytes of pages that had to be reserved.
        reserving: u64,
        /// Free bytes in /dev/shm.
        shm_free: u64,
    },
    /// Growing the pool failed for a system reason.
    #[error(transparent)]
    Grow(#[from] PoolError),
    /// The pool was torn down.
    #[error("the pool was torn down")]
    PoolGone,
}

/// Why a handle could not be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The bytes are not a handle of this library.
    #[error("not a pyshm handle: {0}")]
    Malformed(&'static str),
    /// The handle is for another pool.
    #[error("the handle belongs to pool {handle_pool}, not {this_pool}")]
    WrongPool {
        /// Pool id in the handle (hex).
        handle_pool: String,
        /// This pool's id (hex).
        this_pool: String,
    },
    /// The array the handle named was freed (or its place now holds another array).
    #[error("stale handle: the array was freed (its memory may now hold another array)")]
    Stale,
    /// The handle names places outside its array: corrupted or crafted.
    #[error("invalid handle: {0}")]
    Invalid(&'static str),
    /// A lock of the pool is held by a live process that is not registered in the pool: its
    /// shared memory was written by something that does not follow the protocol (a buggy or
    /// hostile process of the same user). Nothing was taken over; the pool should be
    /// recreated.
    #[error("the pool is corrupt: {lock} lock is held by live pid {pid}, which is not a process of the pool")]
    Stranger {
        /// Pid in the lock word.
        pid: u32,
        /// Which lock.
        lock: &'static str,
    },
    /// The pool's segment could not be opened.
    #[error("cannot open the pool segment the handle names: {0}")]
    Segment(String),
    /// This process could not start holding the array: more than twelve processes hold it, so
    /// its holders need an overflow block in the pool's metadata, and none could be allocated
    /// (the pool is at its `max_size`, or out of segments). Nothing was taken.
    #[error("cannot hold the array: pool {pool:?} has no metadata memory left for the block that records more than twelve holders of an array")]
    NoHolderRoom {
        /// The pool name.
        pool: String,
    },
    /// No handle could be made: every transfer token slot of the pool is taken by a handle
    /// sent and not attached yet. Nothing was taken; the sender may send the data instead,
    /// wait for receivers to attach, or reclaim old tokens (`Pool::reclaim_tokens_older_than`).
    #[error("cannot make a handle: all {slots} transfer token slots of the pool are taken by handles sent and not attached yet; send the data instead, or reclaim old tokens")]
    TokensFull {
        /// Slots in the pool's token table.
        slots: usize,
    },
    /// No handle could be made: this process already has half the pool's transfer token slots
    /// in flight, its share (so one program cannot take the table from the others). Nothing
    /// was taken; what to do is as for [`HandleError::TokensFull`].
    #[error("cannot make a handle: this process has {quota} handles in flight, its share of the {slots} transfer token slots of the pool; send the data instead, or reclaim old tokens")]
    SenderQuota {
        /// Slots one process may hold.
        quota: usize,
        /// Slots in the pool's token table.
        slots: usize,
    },
    /// This process could not join the pool to attach the array: every process slot is taken
    /// by a live process (the same outcome as [`PoolError::Full`], which making an array or
    /// joining gives).
    #[error("cannot attach: pool {pool:?} has all {slots} process slots taken by live processes")]
    PoolFull {
        /// The pool name.
        pool: String,
        /// Number of process slots.
        slots: u32,
    },
    /// This process could not join the pool to attach the array: the pool was made in another
    /// pid namespace (the same outcome as [`PoolError::OtherNamespace`]).
    #[error("cannot attach: pool {pool:?} belongs to another pid namespace (pid:[{pool_namespace}], this process is in pid:[{ours}]): processes of different pid namespaces cannot share a pool")]
    OtherNamespace {
        /// The pool name.
        pool: String,
        /// The pool's pid namespace.
        pool_namespace: u64,
        /// This process's.
        ours: u64,
    },
}
