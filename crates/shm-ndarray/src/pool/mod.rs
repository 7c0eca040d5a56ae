//! The pool: arena segments, a process table, transfer tokens and named arrays, opened by name
//! from any process.
//!
//! # Invariants
//!
//! 1. A pool is a set of arena segments named `pyshm-<pool>` (metadata segment 0) and
//!    `pyshm-<pool>-<suffix>`, where the suffix is 16 hex digits from `getrandom` recorded in
//!    the segment's directory entry (directory invariant 4): nobody can pre-create the name of
//!    a segment the pool will grow into. Pool names have no `-`, so a file name says which
//!    pool it belongs to ([`parse_segment_name`]). Metadata segments hold only the directory,
//!    array headers and their holder overflow blocks; data segments hold only array data (see
//!    `header`, invariant 1).
//! 2. A process is a member of the pool while it holds a slot of the directory's process
//!    table; that slot's index is its holder slot in every array's refcount. A forked child
//!    takes a slot of its own before its first operation and re-acquires, under its own slot,
//!    every array it inherited that is still there (checked as a first pin checks a handle).
//! 3. An array is freed when its refcount dies (no holder process, no pending token, no name);
//!    exactly one process learns it and frees the data block, then the header block. A small
//!    array whose last reference is its own process's is renewed instead (header invariant 4,
//!    `recycle`): the process keeps the block for its next small array.
//! 4. `collect` drops everything dead processes held (their holder bits, their arena blocks),
//!    frees orphaned arrays, and recycles their slots. It runs by itself when an allocation
//!    would otherwise fail, when a process joins the pool, and when one leaves it (in a pool
//!    of more than 64 processes only if it finds no other member alive: then the dead do not
//!    keep the pool from its teardown).
//! 5. A pool that is not persistent is torn down (every segment unlinked) by the last process
//!    that leaves it; a process opening it afterwards gets [`PoolError::Gone`].
//! 6. In the common case, creating an array, making a handle and attaching one make no
//!    syscall: segments are mapped once per process, the pool itself once per process.
//! 7. Only processes the process table names (`Live`, or `Recovering` a dead one's slot) hold
//!    the pool's locks (the directory lock, every array's refcount lock): a process registers
//!    before its first lock and unregisters last, under the directory lock. Every pool lock is
//!    taken with the table as its group (`lock_among`, mutex invariant 5), so a live process
//!    outside the table that holds one (a word written by a buggy or hostile process of the
//!    same user) makes the operation fail with [`HandleError::Stranger`] (or
//!    [`PoolError::NotAPool`] when growing) instead of waiting forever; it is never taken over.
//! 8. Freed array data stays reserved for reuse (the warm reserve) while the data segments hold
//!    at most `keep` bytes beyond what live arrays use; the process that frees an array's data
//!    beyond that gives its pages back at once (`reserve`). Without any call, a pool whose
//!    arrays are all freed holds its segments' metadata, at most `keep` bytes of data pages
//!    and the small blocks processes cache; after [`Pool::trim`], the metadata and the pages
//!    of metadata segments.
//!
//! # One file per protocol
//!
//! [`PoolShared`] is this process's view of a pool; its methods are split by protocol, each
//! file opening with the invariants it keeps (citing the numbers above):
//!
//! - `options`: [`PoolOptions`] and their defaults.
//! - `open`: creating a pool and opening one by name; the per-process registry (invariant 6).
//! - `membership`: this process's slot, a forked child's re-acquisition, leaving, teardown and
//!   the last drop (invariants 2 and 5).
//! - `segments`: mapping segments, allocating in them, growing the pool, running out of
//!   memory, and the one checked view of an array header in a metadata segment (invariant 1).
//! - `create`: making an array: its blocks, its header, its `LocalArray` written in place.
//! - `pin`: attaching a handle through every check of a first pin, and cancelling one.
//! - `reserve`: the warm reserve, and giving freed data beyond it back (invariant 8).
//! - `release`: letting go of an array: freeing it, or renewing a small array's block
//!   (invariant 3).
//! - `collect`: what happens when a process dies holding an array (invariant 4), and lost
//!   tokens.
//! - `overflow`: the blocks where an array's refcount keeps its holders beyond twelve.
//! - `names`: named arrays; `name_index`: the growable hash index of names behind them.
//! - `admin`: listing and cleaning pools in /dev/shm without joining them.
//! - `backend`: where growth segments live (/dev/shm files or memfds) and how a process
//!   reaches a memfd segment it did not inherit.
//! - `local_array`: this process's one hold of an array, with its hand-rolled reference count.
//! - `shared_array`: [`SharedArray`], an array or a view of one, as this process holds it.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use shm_arena::{Arena, Block};
use shm_sync::{ProcessTable, RefError, TokenTable};

use crate::directory::{DirLayout, Directory, KIND_DATA};
use crate::error::{ArrayError, HandleError, PoolError};
use crate::handle::Handle;
use crate::header::RENEWED;
use crate::locals::Locals;
use crate::recycle::{Renewed, Spares};
use crate::DType;

mod admin;
mod backend;
mod collect;
mod create;
mod local_array;
mod membership;
mod name_index;
mod names;
mod open;
mod options;
mod overflow;
mod pin;
mod release;
mod reserve;
mod segments;
mod shared_array;

pub use admin::{
    clean_dead_pools, clean_pools, list_pools, list_unreadable_pools, CleanReport, PoolInfo, SkipReason, SkippedFile,
};
pub use backend::Backend;
pub use collect::CollectReport;
pub use name_index::MAX_NAMES;
pub use names::NameError;
pub use options::{default_keep, PoolOptions, DEFAULT_PROCESS_SLOTS};
pub use shared_array::SharedArray;

use local_array::LocalArray;
use membership::Membership;
use options::{wait_to_ns, NO_WAIT};
use segments::MetaSegment;

/// Holder slot of the named-array directory (never a process slot).
pub(crate) const DIRECTORY_HOLDER: u32 = MAX_PROCESSES;
/// Most processes a pool can have at once: its process table's slots (every array's refcount
/// can name them all: `overflow`). A process also takes an owner slot in each arena segment it
/// allocates in (not in those it only maps), of which a segment has at most 1,022
/// (`open::ARENA_OWNER_SLOTS_MAX`): more allocating processes than that go on to other
/// segments (`segments` invariant 5), so all 4,096 can allocate at once.
pub const MAX_PROCESSES: u32 = 4096;
const ORD: core::sync::atomic::Ordering = core::sync::atomic::Ordering::Relaxed;

/// The /dev/shm name of segment 0 of `pool` (invariant 1).
fn root_segment_name(pool: &str) -> String {
    format!("{}{pool}", crate::NAME_PREFIX)
}

/// The /dev/shm name of the growth segment of `pool` whose directory entry records `suffix`
/// (invariant 1).
fn growth_segment_name(pool: &str, suffix: u64) -> String {
    format!("{}{pool}-{suffix:016x}", crate::NAME_PREFIX)
}

/// What a file name of /dev/shm says about the pool it belongs to: the inverse of
/// [`root_segment_name`] and [`growth_segment_name`] (invariant 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SegmentFileName<'a> {
    /// `pyshm-<pool>`: segment 0.
    Root(&'a str),
    /// `pyshm-<pool>-<suffix>`: a growth segment. The suffix is 16 lowercase hex digits, or,
    /// as directory version 1 named them, a decimal index (so `clean` finds those too).
    Growth(&'a str),
}

/// Parses a /dev/shm file name as [`SegmentFileName`]; `None` for a name no pool would use
/// (other `pyshm-` files: arenas of shm-arena's default prefix parse as a root that is not a
/// pool, which opening its directory tells).
pub(crate) fn parse_segment_name(file: &str) -> Option<SegmentFileName<'_>> {
    let rest = file.strip_prefix(crate::NAME_PREFIX)?;
    match rest.split_once('-') {
        None => open::valid_pool_name(rest).then_some(SegmentFileName::Root(rest)),
        Some((pool, suffix)) => {
            let random = suffix.len() == 16 && suffix.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            let legacy = (1..=3).contains(&suffix.len()) && suffix.bytes().all(|b| b.is_ascii_digit());
            (open::valid_pool_name(pool) && (random || legacy)).then_some(SegmentFileName::Growth(pool))
        }
    }
}

/// A pool as this process sees it. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Pool {
    pub(crate) shared: Arc<PoolShared>,
}

/// A pool as this process sees it, shared by its [`Pool`]s and the arrays made in it. Its
/// fields are private to `pool`; its methods live in the file of their protocol.
pub(crate) struct PoolShared {
    name: String,
    id: [u8; 16],
    dir_block: Block,
    /// The directory block in segment 0's mapping (validated at assembly).
    dir_ptr: NonNull<u8>,
    /// Per segment kind, the segment that served the last allocation (a hint).
    last_segment: [crate::sync::SharedU64; 3],
    layout: DirLayout,
    segments: Box<[OnceLock<Arena>]>,
    /// Serialises mapping segments; holds when each memfd segment that no live member could
    /// give us was last looked for (segments.rs: looked for again at most once a second).
    open_lock: Mutex<std::collections::HashMap<u16, std::time::Instant>>,
    membership: Mutex<Membership>,
    /// `fork_generation << 16 | slot + 1` of the current membership; 0 when none.
    fast_slot: crate::sync::SharedU64,
    /// The arrays this process holds, by header place (see `locals`).
    locals: Locals<LocalArray>,
    /// How long an allocation may wait for a free, in nanoseconds; `NO_WAIT` for not at all.
    wait_ns: crate::sync::SharedU64,
    /// This process's renewed small-array blocks (see `recycle`).
    renewed: Renewed,
    /// Spare `LocalArray` allocations.
    spares: Spares<LocalArray>,
    /// The count of names when this process last failed to allocate a smaller name index (0:
    /// never): the shrink is tried again only once the names halved (`names`, a hint).
    name_shrink_failed: crate::sync::SharedU64,
}

// SAFETY: `dir_ptr` points into segment 0's mapping, owned by `segments[0]` for as long as the
// `PoolShared` lives, and the directory is shared memory made of atomics that any thread may
// use; every other field is Send + Sync.
unsafe impl Send for PoolShared {}
// SAFETY: as for `Send`.
unsafe impl Sync for PoolShared {}

/// Usage figures of a pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of data capacity (all data segments).
    pub capacity: u64,
    /// Bytes of blocks holding array data: data blocks, and the blocks of small arrays (4 KiB
    /// or less with their header), which live in metadata segments.
    pub used: u64,
    /// Bytes free in data segments (including blocks cached by processes).
    pub free: u64,
    /// Largest free data block.
    pub largest_free: u64,
    /// Arrays alive (headers in use).
    pub arrays: u64,
    /// Segments (metadata and data).
    pub segments: usize,
    /// Processes registered.
    pub processes: usize,
    /// Bytes of small arrays' blocks that processes keep for their next small arrays (freed
    /// arrays' blocks, renewed rather than freed): given back when a process leaves the pool,
    /// when memory runs short, or by `collect` when it dies. Not in `used` or `arrays`.
    pub reserved: u64,
    /// Bytes the pool holds from /dev/shm (or the memfd's tmpfs): every segment's metadata and
    /// the pages reserved for blocks ([`shm_arena::ArenaStats`]). Segments are sparse, so this,
    /// not `capacity`, is what the pool costs the machine.
    pub held: u64,
    /// Handles sent and not attached yet: transfer tokens pending.
    pub handles_in_flight: u64,
    /// Transfer token slots of the pool: how many handles can be in flight at once.
    pub token_slots: u64,
    /// Bytes of array data alive: the data length of every array (headers, the rounding to
    /// blocks and pages, and metadata excluded). `held / live` is the pool's overhead
    /// ([`PoolStats::overhead`]).
    pub live: u64,
    /// The warm reserve now: bytes of pages held beyond the pages live arrays use (freed
    /// arrays' pages kept for reuse, in data segments, and in metadata segments the pages of
    /// free, cached and renewed small-array blocks), at most about `keep` plus the metadata
    /// segments' share (pool invariant 8); `trim` gives it back.
    pub warm: u64,
    /// The warm reserve's bound (`PoolOptions::keep`).
    pub keep: u64,
    /// Bytes of metadata blocks the name table holds: its index (none without names) and a
    /// 128-byte entry per name. Included in `held` through the pages they reserve.
    pub name_table: u64,
}

impl PoolStats {
    /// Bytes held per byte of live array data (`held / live`; infinite when nothing is live
    /// but memory is held, 1 for an empty pool holding nothing).
    pub fn overhead(&self) -> f64 {
        if self.live == 0 {
            return if self.held == 0 { 1.0 } else { f64::INFINITY };
        }
        self.held as f64 / self.live as f64
    }
}

fn ref_to_handle(e: RefError) -> HandleError {
    match e {
        RefError::Dead | RefError::Orphaned | RefError::Token(_) | RefError::ForeignToken => HandleError::Stale,
        RefError::NotHolder { .. } | RefError::HolderOutOfRange { .. } => HandleError::Invalid("bad holder slot"),
        // `with_holder_room` links an overflow on NeedsOverflow; an id nothing resolves is
        // memory written outside the protocol.
        RefError::NeedsOverflow | RefError::OverflowUnavailable { .. } => {
            HandleError::Invalid("the array's holder overflow block is missing")
        }
        RefError::Stranger { holder } => HandleError::Stranger { pid: holder, lock: "an array's reference count" },
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Pool {
    /// The pool's name (the part after `pyshm-`).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// 128 random bits that identify the pool in handles.
    pub fn id(&self) -> [u8; 16] {
        self.shared.id
    }

    /// Registers this process in the pool if it is not yet (after a fork, this re-acquires the
    /// arrays the child inherited). Every operation does this on first use; calling it right
    /// after a fork narrows the window in which the parent could free an inherited array.
    ///
    /// # Errors
    ///
    /// [`PoolError::Full`] when every process slot is taken by a live process.
    pub fn join(&self) -> Result<(), PoolError> {
        self.shared.slot().map(|_| ())
    }

    /// How long allocations of this process wait for other processes to free memory.
    pub fn wait(&self) -> Option<Duration> {
        self.shared.wait()
    }

    /// Sets how long allocations of this process wait for other processes to free memory
    /// (`None`: fail at once when the pool is full and cannot grow).
    pub fn set_wait(&self, wait: Option<Duration>) {
        self.shared.wait_ns.store(wait_to_ns(wait), ORD);
    }

    /// Leaves the pool now, as a process does at exit: releases every array this process
    /// holds, gives up its process slot, and tears the pool down if this was its last process
    /// and it is not persistent. Arrays still alive in this process stay mapped (so a late
    /// access cannot fault), but no longer keep their memory; dropping them afterwards does
    /// nothing. Using the pool again afterwards registers this process anew.
    pub fn leave(&self) {
        self.shared.leave();
    }

    /// Frees what dead processes held and recycles their slots (invariant 4).
    pub fn collect(&self) -> CollectReport {
        self.shared.collect()
    }

    /// Gives every free page of the pool back to the system: this process's cached small-array
    /// blocks first, then every segment's free pages, data and metadata (`Arena::release_free`:
    /// free regions of a page or more are claimed a chunk at a time, punched and freed). Other
    /// processes are asked to empty their caches at their next operation. Returns the bytes
    /// given back (pages that were reserved). See `reserve.rs`.
    ///
    /// An allocation in another process that meets the trim waits for it (a chunk's punch)
    /// rather than failing or growing the pool.
    pub fn trim(&self) -> u64 {
        self.shared.trim()
    }

    /// Usage figures (walks the trees of every segment).
    pub fn stats(&self) -> PoolStats {
        self.shared.stats()
    }

    /// Creates an array of `shape` elements of `dtype`, C or Fortran ordered, with
    /// unspecified contents.
    ///
    /// # Errors
    ///
    /// [`ArrayError`]: bad shape, out of memory (after collecting, growing and waiting).
    pub fn empty(&self, dtype: &DType, shape: &[u64], fortran: bool) -> Result<SharedArray, ArrayError> {
        self.shared.create_array(dtype, shape, fortran)
    }

    /// Attaches a handle made by any process of this pool.
    ///
    /// # Errors
    ///
    /// [`HandleError`]: malformed, another pool, stale (the array was freed), invalid view.
    pub fn attach(&self, handle: &Handle) -> Result<SharedArray, HandleError> {
        self.shared.attach(handle)
    }

    /// Gives back the transfer token of a handle that will never be attached (a message that
    /// was lost or refused), so the array is freed if nothing else holds it. The token's
    /// refcount is changed exactly as a claim followed by a release would change it, without
    /// mapping the array for this process.
    ///
    /// An untracked handle carries no token: cancelling it does nothing.
    ///
    /// # Errors
    ///
    /// [`HandleError::WrongPool`]; [`HandleError::Stale`] if the token was claimed or
    /// cancelled already (or its array is gone); [`HandleError::Invalid`] for a handle that
    /// names no header.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ndarray::{DType, Pool, PoolOptions};
    /// # let pool = Pool::create(&PoolOptions::new().segment_capacity(1 << 20))?;
    /// let a = pool.empty(&DType::of::<f64>(), &[4], false)?;
    /// let handle = a.handle()?;
    /// pool.cancel(&handle)?;
    /// assert!(pool.cancel(&handle).is_err(), "a token is given back once");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&self, handle: &Handle) -> Result<(), HandleError> {
        self.shared.cancel(handle)
    }

    /// Registers `array` under `name` (the name then holds a reference until deleted). A pool
    /// holds up to [`MAX_NAMES`] names; looking one up costs the same at any number.
    ///
    /// # Errors
    ///
    /// [`NameError`]: invalid, taken, the array named already, [`NameError::Full`] at
    /// [`MAX_NAMES`], [`NameError::Memory`] when the pool has no room for the table's blocks.
    pub fn publish(&self, name: &str, array: &SharedArray) -> Result<(), NameError> {
        self.shared.publish(name, array)
    }

    /// The array registered under `name`.
    ///
    /// # Errors
    ///
    /// [`NameError::NotFound`], or a handle error if the named array is unusable.
    pub fn lookup(&self, name: &str) -> Result<SharedArray, NameError> {
        self.shared.lookup(name)
    }

    /// Removes `name`; the array is freed once nobody else holds it.
    ///
    /// # Errors
    ///
    /// [`NameError::NotFound`].
    pub fn unpublish(&self, name: &str) -> Result<(), NameError> {
        self.shared.unpublish(name)
    }

    /// Every registered name, in no particular order (names starting with a NUL byte, which
    /// pyshm's named locks and events use, included).
    ///
    /// # Errors
    ///
    /// [`NameError::Handle`] with [`HandleError::Stranger`] if the directory lock is held by a
    /// live process outside the pool (pool invariant 7).
    pub fn names(&self) -> Result<Vec<String>, NameError> {
        self.shared.names()
    }

    /// Unlinks every segment of the pool now (processes that have it mapped keep working).
    pub fn unlink(&self) {
        self.shared.teardown();
    }

    /// Checks every segment's tree (meaningful when nothing is in flight).
    ///
    /// # Errors
    ///
    /// The first segment's violations.
    pub fn check(&self) -> Result<(), shm_arena::CheckError> {
        for seg in self.shared.open_segments() {
            seg.1.check()?;
        }
        Ok(())
    }

    /// Process slots in use (live or being recovered).
    pub fn live_processes(&self) -> usize {
        ProcessTable::new(self.shared.dir().processes()).occupied()
    }

    /// Cancels tokens older than `age` (handles sent and never attached); returns how many.
    pub fn reclaim_tokens_older_than(&self, age: Duration) -> usize {
        let age = u64::try_from(age.as_nanos()).unwrap_or(u64::MAX);
        self.shared.reclaim_tokens(|p| p.age_ns >= age)
    }

    /// Cancels the tokens (handles sent and never attached) that processes with these `pids`
    /// sent at most `max_age` ago and that are provably dead now; returns how many. For a
    /// caller that knows nobody will read what those processes sent: an executor whose
    /// workers were killed when its pool broke discards their unread results. `max_age` (at
    /// most the time since the first of them started) keeps a token of an older process that
    /// had the same pid out; the executor passes the time since it last read a result, so a
    /// token in a result it delivered is kept too.
    pub fn reclaim_tokens_of_dead(&self, pids: &[u32], max_age: Duration) -> usize {
        let max_age = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
        self.shared.reclaim_tokens(|p| {
            p.age_ns <= max_age
                && pids.contains(&shm_platform::sync::primitive::pid_of(p.sender))
                && shm_platform::sync::primitive::is_dead(p.sender)
        })
    }
}

impl PoolShared {
    /// The /dev/shm name of segment `index`, as the directory records it (invariant 1).
    /// Meaningful for an index below the published `segment_count`.
    fn segment_file_name(&self, index: usize) -> String {
        if index == 0 {
            root_segment_name(&self.name)
        } else {
            growth_segment_name(&self.name, self.dir().segments()[index].suffix.load(ORD))
        }
    }

    #[inline]
    fn dir(&self) -> Directory<'_> {
        // SAFETY: validated at assembly (block, size and layout), mapped while segment 0 lives
        // (as long as `self`), all atomics.
        unsafe { Directory::new(self.dir_ptr.as_ptr(), self.layout) }
    }

    #[inline]
    fn processes(&self) -> ProcessTable<'_> {
        ProcessTable::new(self.dir().processes())
    }

    #[inline]
    fn tokens(&self) -> TokenTable<'_> {
        // Keyed by the pool's id: the same pool mapped twice shares one bound (transfer
        // invariant 4), and another pool mapped at a reused address does not inherit it.
        let id = &self.dir().header().id;
        TokenTable::with_key(self.dir().tokens(), id[0].load(ORD) ^ id[1].load(ORD).rotate_left(32))
    }

    fn wait(&self) -> Option<Duration> {
        let ns = self.wait_ns.load(ORD);
        (ns != NO_WAIT).then(|| Duration::from_nanos(ns))
    }

    fn stats(&self) -> PoolStats {
        let tokens = self.tokens();
        let mut s = PoolStats {
            processes: self.processes().occupied(),
            handles_in_flight: tokens.pending().len() as u64,
            token_slots: tokens.len() as u64,
            keep: self.keep(),
            name_table: self.name_table_bytes(),
            ..PoolStats::default()
        };
        // Pages of data segments live arrays use, summed from their headers (not the
        // directory's count, which is a hint: reserve invariant 3).
        let mut live_pages = 0;
        let mut data_reserved = 0;
        let mut meta_warm = 0;
        for (i, arena, kind) in self.open_segments() {
            s.segments += 1;
            let a = arena.stats();
            s.held += a.metadata_bytes + a.reserved_data_bytes;
            if kind == KIND_DATA {
                data_reserved += a.reserved_data_bytes;
                s.capacity += a.capacity;
                s.used += a.in_use_bytes;
                s.free += a.free_bytes + a.cached_bytes;
                s.largest_free = s.largest_free.max(a.largest_free_block);
            } else if let Some(meta) = MetaSegment::of(i, arena, kind) {
                // The pages live headers (and small arrays) use; the rest is warm (reserve.rs).
                let mut live_meta = reserve::PageSet::default();
                if i == 0 {
                    live_meta.add(self.dir_block.offset(), self.layout.size as u64);
                }
                // Headers with their magic: a freed header parked in a cache is not an array,
                // nor is a renewed one (header invariant 4).
                for (block, h) in self.headers(meta) {
                    if h.nonce.load(ORD) == RENEWED {
                        s.reserved += block.size();
                        continue;
                    }
                    live_meta.add(block.offset(), block.size());
                    s.arrays += 1;
                    let data_len = h.data_len.load(ORD);
                    s.live += data_len;
                    if h.inline_offset.load(ORD) != 0 {
                        s.used += block.size();
                    } else {
                        live_pages += data_len.max(1).div_ceil(4096) * 4096;
                    }
                }
                meta_warm += a.reserved_data_bytes.saturating_sub(live_meta.bytes());
            }
        }
        s.warm = data_reserved.saturating_sub(live_pages) + meta_warm;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_parse_back_to_their_pool() {
        assert_eq!(parse_segment_name(&root_segment_name("named_1000")), Some(SegmentFileName::Root("named_1000")));
        let growth = growth_segment_name("a.b_c", 0x0123_4567_89ab_cdef);
        assert_eq!(growth, "pyshm-a.b_c-0123456789abcdef");
        assert_eq!(parse_segment_name(&growth), Some(SegmentFileName::Growth("a.b_c")));
        assert_eq!(parse_segment_name(&growth_segment_name("p", 1)), Some(SegmentFileName::Growth("p")));
        // Directory version 1's names, so that `clean` still finds their leftovers.
        assert_eq!(parse_segment_name("pyshm-p-12"), Some(SegmentFileName::Growth("p")));
        // Not a pool's: another prefix, a name a pool cannot have, other suffixes.
        for other in [
            "other-p",
            "pyshm-",
            "pyshm-p-",
            "pyshm--0123456789abcdef",
            "pyshm-p-0123456789ABCDEF",
            "pyshm-p-0123456789abcde",
            "pyshm-p-1234",
            "pyshm-test-foreign-42",
            "pyshm-p q",
        ] {
            assert_eq!(parse_segment_name(other), None, "{other}");
        }
    }
}
