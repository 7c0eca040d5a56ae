//! The pool: arena segments, a process table, transfer tokens and named arrays, opened by name
//! from any process.
//!
//! # Invariants
//!
//! 1. A pool is a set of arena segments named `pyshm-<pool>` (metadata segment 0) and
//!    `pyshm-<pool>-<n>`. Metadata segments hold only the directory and array headers; data
//!    segments hold only array data (see `header`, invariant 1).
//! 2. A process is a member of the pool while it holds a slot of the directory's process
//!    table; that slot's index is its holder bit in every array's refcount. A forked child
//!    takes a slot of its own before its first operation and re-acquires, under its own slot,
//!    every array it inherited that is still there (checked as a first pin checks a handle).
//! 3. An array is freed when its refcount dies (no holder process, no pending token, no name);
//!    exactly one process learns it and frees the data block, then the header block. A small
//!    array whose last reference is its own process's is renewed instead (header invariant 4,
//!    `recycle`): the process keeps the block for its next small array.
//! 4. `collect` drops everything dead processes held (their holder bits, their arena blocks),
//!    frees orphaned arrays, and recycles their slots. It runs by itself when an allocation
//!    would otherwise fail and when a process joins or leaves the pool.
//! 5. A pool that is not persistent is torn down (every segment unlinked) by the last process
//!    that leaves it; a process opening it afterwards gets [`PoolError::Gone`].
//! 6. In the common case, creating an array, making a handle and attaching one make no
//!    syscall: segments are mapped once per process, the pool itself once per process.

use std::collections::{HashMap, HashSet};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use shm_arena::process::fork_generation;
use shm_arena::{AllocError, Arena, ArenaOptions, Block, CreateError, OpenError, OpenOptions};
use shm_sync::{Locked, ProcessTable, RefError, Registration, Released, TokenTable};

use crate::directory::{
    load_name, store_name, DirLayout, Directory, DIR_MAGIC, DIR_VERSION, FLAG_PERSISTENT, FLAG_PERSIST_NAMED,
    FLAG_TORN_DOWN, KIND_DATA, KIND_META, MAX_NAME_LEN, MAX_SEGMENTS,
};
use crate::error::{ArrayError, HandleError, PoolError};
use crate::handle::Handle;
use crate::header::{field_of, header_size, view_fits, ArrayHeader, ArrayMeta, ARRAY_MAGIC, MAX_DIMS, RENEWED};
use crate::locals::Locals;
use crate::recycle::{Renewed, Spares};
use crate::DType;

/// Holder bit of the named-array directory (never a process slot).
pub(crate) const DIRECTORY_HOLDER: u32 = 255;
/// Most processes a pool can have at once.
pub const MAX_PROCESSES: u32 = 255;
const ORD: core::sync::atomic::Ordering = core::sync::atomic::Ordering::Relaxed;

/// How to create (or open) a pool.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    pub(crate) name: Option<String>,
    pub(crate) segment_capacity: u64,
    pub(crate) max_size: u64,
    pub(crate) min_block: u64,
    pub(crate) meta_capacity: u64,
    pub(crate) process_slots: u32,
    pub(crate) token_slots: u32,
    pub(crate) name_slots: u32,
    pub(crate) persistent: Option<bool>,
    pub(crate) persist_while_named: bool,
    pub(crate) wait: Option<Duration>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            name: None,
            segment_capacity: 64 << 20,
            max_size: default_max_size(),
            min_block: 256,
            meta_capacity: 16 << 20,
            process_slots: 128,
            token_slots: 8192,
            name_slots: 256,
            persistent: None,
            persist_while_named: false,
            wait: None,
        }
    }
}

/// Half of /dev/shm, at least 256 MiB: a pool should not starve the rest of the machine.
fn default_max_size() -> u64 {
    rustix::fs::statvfs("/dev/shm").map(|s| s.f_blocks * s.f_frsize / 2).unwrap_or(1 << 30).max(256 << 20)
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
        self
    }
    /// Smallest data block (and alignment of array data), a power of two from 64.
    pub fn min_block(mut self, bytes: u64) -> Self {
        self.min_block = bytes;
        self
    }
    /// Process slots (at most 255).
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
    /// How long an allocation waits for other processes to free memory before it fails.
    pub fn wait(mut self, wait: Option<Duration>) -> Self {
        self.wait = wait;
        self
    }
}

/// Checks a pool name: 1 to 100 of letters, digits, '_' and '.'.
fn valid_pool_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 100 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

fn segment_name(pool: &str, index: usize) -> String {
    if index == 0 {
        format!("pyshm-{pool}")
    } else {
        format!("pyshm-{pool}-{index}")
    }
}

/// What this process knows of its membership.
struct Membership {
    registration: Option<Registration>,
    fork_generation: u64,
}

/// A pool as this process sees it. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Pool {
    pub(crate) shared: Arc<PoolShared>,
}

pub(crate) struct PoolShared {
    name: String,
    id: [u8; 16],
    dir_block: Block,
    /// The directory block in segment 0's mapping (validated at assembly).
    dir_ptr: NonNull<u8>,
    /// Per segment kind, the segment that served the last allocation (a hint).
    last_segment: [shm_arena::sync::SharedU64; 3],
    layout: DirLayout,
    segments: Box<[OnceLock<Arena>]>,
    open_lock: Mutex<()>,
    membership: Mutex<Membership>,
    /// `fork_generation << 16 | slot + 1` of the current membership; 0 when none.
    fast_slot: shm_arena::sync::SharedU64,
    /// The arrays this process holds, by header place (see `locals`).
    locals: Locals<LocalArray>,
    /// How long an allocation may wait for a free, in nanoseconds; `NO_WAIT` for not at all.
    wait_ns: shm_arena::sync::SharedU64,
    /// This process's renewed small-array blocks (see `recycle`).
    renewed: Renewed,
    /// Spare `LocalArray` allocations.
    spares: Spares<LocalArray>,
}

// SAFETY: `dir_ptr` points into segment 0's mapping, owned by `segments[0]` for as long as the
// `PoolShared` lives, and the directory is shared memory made of atomics that any thread may
// use; every other field is Send + Sync.
unsafe impl Send for PoolShared {}
// SAFETY: as for `Send`.
unsafe impl Sync for PoolShared {}

const NO_WAIT: u64 = u64::MAX;

/// Arrays whose header and data take at most this many bytes are one block in a metadata
/// segment (header invariant 1): one allocation, one ownership transfer and one free instead
/// of two of each.
const INLINE_MAX: u64 = 4096;

fn wait_to_ns(wait: Option<Duration>) -> u64 {
    wait.map_or(NO_WAIT, |w| u64::try_from(w.as_nanos()).unwrap_or(NO_WAIT - 1))
}

/// Pools already open in this process, by name (invariant 6).
fn registry() -> &'static Mutex<HashMap<String, Weak<PoolShared>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<PoolShared>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

impl Pool {
    /// Creates a pool with these options, or opens it if a pool of that name exists.
    ///
    /// # Errors
    ///
    /// [`PoolError`].
    pub fn create(options: &PoolOptions) -> Result<Pool, PoolError> {
        let name = match &options.name {
            Some(n) if !valid_pool_name(n) => return Err(PoolError::InvalidName { name: n.clone() }),
            Some(n) => n.clone(),
            None => {
                let random = shm_arena::SegmentName::random(crate::NAME_PREFIX)?;
                random.trim_start_matches(crate::NAME_PREFIX).to_owned()
            }
        };
        if let Some(existing) = Self::from_registry(&name) {
            return Ok(existing);
        }
        if options.process_slots == 0 || options.process_slots > MAX_PROCESSES {
            return Err(PoolError::Options("process_slots must be 1..=255"));
        }
        if options.token_slots == 0 || options.name_slots == 0 {
            return Err(PoolError::Options("token_slots and name_slots must be positive"));
        }
        let layout =
            DirLayout::new(options.process_slots as usize, options.token_slots as usize, options.name_slots as usize);
        let meta_capacity = options.meta_capacity.max((layout.size as u64 * 2).next_power_of_two());
        let owner_slots = options.process_slots + 8;
        let seg0 = match ArenaOptions::new(meta_capacity)
            .min_block(128)
            .owner_slots(owner_slots)
            .name(segment_name(&name, 0))
            .create()
        {
            Ok(a) => a,
            Err(CreateError::AlreadyExists { .. }) => return Self::open(&name),
            Err(e) => return Err(e.into()),
        };
        let dir_block = match seg0.alloc(layout.size as u64) {
            Ok(b) => b,
            Err(e) => {
                let _ = seg0.unlink();
                return Err(e.into());
            }
        };
        seg0.disown(dir_block).expect("a block we just allocated");
        let base = seg0.as_ptr(dir_block).expect("a block we just allocated");
        // SAFETY: the block is `layout.size` bytes (or more), 128-byte aligned, mapped while
        // `seg0` lives, and nobody else can see it before the root word publishes it.
        let dir = unsafe { Directory::new(base.as_ptr(), layout) };
        let h = dir.header();
        let id = seg0.segment_id();
        h.version.store(DIR_VERSION, ORD);
        h.id[0].store(u64::from_le_bytes(id[..8].try_into().unwrap()), ORD);
        h.id[1].store(u64::from_le_bytes(id[8..].try_into().unwrap()), ORD);
        let persistent = options.persistent.unwrap_or(options.name.is_some());
        let flags = if persistent { FLAG_PERSISTENT } else { 0 }
            | if options.persist_while_named { FLAG_PERSIST_NAMED } else { 0 };
        h.flags.store(flags, ORD);
        h.data_segment_capacity.store(options.segment_capacity, ORD);
        h.max_size.store(options.max_size, ORD);
        h.data_min_block.store(options.min_block, ORD);
        h.process_slots.store(u64::from(options.process_slots), ORD);
        h.token_slots.store(u64::from(options.token_slots), ORD);
        h.name_slots.store(u64::from(options.name_slots), ORD);
        dir.segments()[0].kind.store(KIND_META, ORD);
        dir.segments()[0].capacity.store(meta_capacity, ORD);
        h.segment_count.store(1, ORD);
        // The creator registers before the directory is published: a published pool with no
        // process in it is a dead pool to `clean_dead_pools`, which removed pools being created
        // (found by a test racing `clean`).
        let creator = ProcessTable::new(dir.processes()).register().expect("a new table has free slots");
        // Release: publishes every directory field before an opener can find the directory.
        h.magic.store(DIR_MAGIC, core::sync::atomic::Ordering::Release);
        seg0.root_word().store(dir_block.to_bits(), core::sync::atomic::Ordering::Release);
        let pool = Self::assemble(name, seg0, dir_block, layout, options.wait, Some(creator))?;
        Ok(pool)
    }

    /// Opens the pool named `name` (the part after `pyshm-`).
    ///
    /// # Errors
    ///
    /// [`PoolError::NotFound`], [`PoolError::NotAPool`], [`PoolError::Gone`], [`PoolError::Full`].
    pub fn open(name: &str) -> Result<Pool, PoolError> {
        if !valid_pool_name(name) {
            return Err(PoolError::InvalidName { name: name.to_owned() });
        }
        if let Some(existing) = Self::from_registry(name) {
            return Ok(existing);
        }
        let seg0 = Arena::open(&segment_name(name, 0)).map_err(|e| match e {
            OpenError::NotFound { .. } => PoolError::NotFound { name: name.to_owned() },
            e => PoolError::Open(e),
        })?;
        let not_a_pool = |why| PoolError::NotAPool { name: segment_name(name, 0), why };
        // The creator publishes the directory right after creating the segment: wait a little.
        let deadline = Instant::now() + Duration::from_secs(2);
        let root = loop {
            let r = seg0.root_word().load(core::sync::atomic::Ordering::Acquire);
            if r != 0 {
                break r;
            }
            if Instant::now() >= deadline {
                return Err(not_a_pool("its directory was never published"));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let (dir_block, base, layout) = read_directory(&seg0, root).map_err(not_a_pool)?;
        // SAFETY: `read_directory` validated the block, its size and the layout.
        let h = unsafe { Directory::new(base.as_ptr(), layout) }.header();
        if h.flags.load(ORD) & FLAG_TORN_DOWN != 0 {
            return Err(PoolError::Gone { name: name.to_owned() });
        }
        Self::assemble(name.to_owned(), seg0, dir_block, layout, None, None)
    }

    fn from_registry(name: &str) -> Option<Pool> {
        let reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        // A pool this process left and tore down stays reachable through its live arrays, but is
        // not the pool of that name any more: open (or create) it anew (found in review).
        reg.get(name)
            .and_then(Weak::upgrade)
            .filter(|shared| shared.dir().header().flags.load(ORD) & FLAG_TORN_DOWN == 0)
            .map(|shared| Pool { shared })
    }

    fn assemble(
        name: String,
        seg0: Arena,
        dir_block: Block,
        layout: DirLayout,
        wait: Option<Duration>,
        registration: Option<Registration>,
    ) -> Result<Pool, PoolError> {
        let id = seg0.segment_id();
        let dir_ptr = seg0
            .as_ptr(dir_block)
            .map_err(|_| PoolError::NotAPool { name: segment_name(&name, 0), why: "directory block" })?;
        let segments: Box<[OnceLock<Arena>]> = (0..MAX_SEGMENTS).map(|_| OnceLock::new()).collect();
        let _ = segments[0].set(seg0);
        let shared = Arc::new(PoolShared {
            name: name.clone(),
            id,
            dir_block,
            dir_ptr,
            last_segment: Default::default(),
            layout,
            segments,
            open_lock: Mutex::new(()),
            membership: Mutex::new(Membership { registration, fork_generation: fork_generation() }),
            fast_slot: shm_arena::sync::SharedU64::new(
                registration.map_or(0, |r| fork_generation() << 16 | u64::from(r.index + 1)),
            ),
            locals: Locals::new(MAX_SEGMENTS),
            wait_ns: shm_arena::sync::SharedU64::new(wait_to_ns(wait)),
            renewed: Renewed::new(),
            spares: Spares::new(),
        });
        let pool = Pool { shared };
        pool.shared.slot()?;
        pool.collect();
        registry().lock().unwrap_or_else(|p| p.into_inner()).insert(name, Arc::downgrade(&pool.shared));
        Ok(pool)
    }

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

    /// Registers `array` under `name` (the name then holds a reference until deleted).
    ///
    /// # Errors
    ///
    /// [`NameError`].
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

    /// Every registered name.
    pub fn names(&self) -> Vec<String> {
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
        self.shared.reclaim_tokens(age)
    }
}

/// A pool found in /dev/shm by [`list_pools`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    /// The pool's name.
    pub name: String,
    /// Bytes its segments take in /dev/shm.
    pub bytes: u64,
    /// Bytes of data blocks in use (0 if it could not be read).
    pub used: u64,
    /// Processes registered that are alive.
    pub live_processes: usize,
    /// Whether it outlives its processes.
    pub persistent: bool,
}

/// Every pool in /dev/shm, without joining any of them.
pub fn list_pools() -> Vec<PoolInfo> {
    let files = pool_files();
    let mut sizes: HashMap<&str, u64> = HashMap::new();
    for f in &files {
        *sizes.entry(f.pool.as_str()).or_default() += f.len;
    }
    files.iter().filter(|f| f.is_root).filter_map(|f| inspect(&f.pool, sizes[f.pool.as_str()])).collect()
}

/// A file of a pool in /dev/shm, named as [`segment_name`] names it.
struct PoolFile {
    /// The segment's file name.
    name: String,
    /// The pool's name (the part after `pyshm-`).
    pool: String,
    /// Metadata segment 0 (`pyshm-<pool>`), not a data segment (`pyshm-<pool>-<n>`).
    is_root: bool,
    len: u64,
}

/// Every file in /dev/shm that could be a pool's segment (the inverse of [`segment_name`]),
/// sorted by name. A snapshot: empty if /dev/shm cannot be read.
fn pool_files() -> Vec<PoolFile> {
    let files = shm_arena::list_segments(crate::NAME_PREFIX).unwrap_or_default();
    files
        .into_iter()
        .filter_map(|f| {
            let rest = f.name.strip_prefix(crate::NAME_PREFIX)?;
            let (pool, is_root) = match rest.rsplit_once('-') {
                Some((p, n)) if !p.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => (p.to_owned(), false),
                _ => (rest.to_owned(), true),
            };
            Some(PoolFile { pool, is_root, len: f.len, name: f.name })
        })
        .collect()
}

/// Checks the directory block that `root` (segment 0's root word) names: a block of segment 0,
/// the magic and version, counts in range before any arithmetic on them, and a layout that fits
/// the block (directory invariant 1). The one place `Pool::open` and `inspect` validate it.
fn read_directory(seg0: &Arena, root: u64) -> Result<(Block, NonNull<u8>, DirLayout), &'static str> {
    let block = Block::from_bits(root);
    let base = seg0.as_ptr(block).map_err(|_| "its root word names no block")?;
    if block.size() < 256 {
        return Err("its directory block is too small");
    }
    // SAFETY: a validated block of at least 256 bytes (the header), mapped while `seg0` lives;
    // only the header, all atomics, is read through this view.
    let probe = unsafe { Directory::new(base.as_ptr(), DirLayout::new(0, 0, 0)) };
    let h = probe.header();
    if h.magic.load(core::sync::atomic::Ordering::Acquire) != DIR_MAGIC {
        return Err("no directory magic");
    }
    if h.version.load(ORD) != DIR_VERSION {
        return Err("another directory version");
    }
    let counts = (h.process_slots.load(ORD), h.token_slots.load(ORD), h.name_slots.load(ORD));
    if counts.0 == 0 || counts.0 > u64::from(MAX_PROCESSES) || counts.1 > 1 << 24 || counts.2 > 1 << 20 {
        return Err("directory counts out of range");
    }
    let layout = DirLayout::new(counts.0 as usize, counts.1 as usize, counts.2 as usize);
    if layout.size as u64 > block.size() {
        return Err("directory larger than its block");
    }
    Ok((block, base, layout))
}

/// Reads a pool's directory without registering in it.
fn inspect(name: &str, bytes: u64) -> Option<PoolInfo> {
    let seg0 = Arena::open_with(&segment_name(name, 0), &OpenOptions::new().wait(Duration::from_millis(10))).ok()?;
    let root = seg0.root_word().load(core::sync::atomic::Ordering::Acquire);
    let (_, base, layout) = read_directory(&seg0, root).ok()?;
    // SAFETY: `read_directory` validated the block, its size and the layout.
    let dir = unsafe { Directory::new(base.as_ptr(), layout) };
    let h = dir.header();
    let table = ProcessTable::new(dir.processes());
    let live = (0..layout.process_slots as u32)
        .filter(|i| matches!(table.state(*i), Some(shm_sync::SlotState::Live(_) | shm_sync::SlotState::Recovering(_))))
        .count()
        .saturating_sub(table.find_dead().len());
    let mut used = 0;
    let count = h.segment_count.load(core::sync::atomic::Ordering::Acquire).min(MAX_SEGMENTS as u64);
    for i in 1..count as usize {
        if dir.segments()[i].kind.load(ORD) == KIND_DATA {
            if let Ok(a) = Arena::open_with(&segment_name(name, i), &OpenOptions::new().wait(Duration::from_millis(10)))
            {
                used += a.stats().in_use_bytes;
            }
        }
    }
    Some(PoolInfo {
        name: name.to_owned(),
        bytes,
        used,
        live_processes: live,
        persistent: h.flags.load(ORD) & FLAG_PERSISTENT != 0
            || (h.flags.load(ORD) & FLAG_PERSIST_NAMED != 0 && has_names(&dir)),
    })
}

/// Whether any name is registered in the directory.
fn has_names(dir: &Directory<'_>) -> bool {
    dir.names().iter().any(|e| e.state.load(core::sync::atomic::Ordering::Acquire) == 1)
}

/// Removes every non-persistent pool whose processes are all dead (and, with
/// `include_persistent`, persistent ones too), and segments left of pools that are gone. Never
/// touches a pool with a live process. Returns the names removed.
pub fn clean_dead_pools(include_persistent: bool) -> Vec<String> {
    let mut removed = Vec::new();
    for info in list_pools() {
        if info.live_processes > 0 || (info.persistent && !include_persistent) {
            continue;
        }
        remove_segments(&info.name);
        removed.push(info.name);
    }
    // Data segments whose metadata segment 0 is gone.
    let files = pool_files();
    let roots: HashSet<&str> = files.iter().filter(|f| f.is_root).map(|f| f.pool.as_str()).collect();
    for f in files.iter().filter(|f| !f.is_root && !roots.contains(f.pool.as_str())) {
        let _ = shm_arena::unlink(&f.name);
        if !removed.contains(&f.pool) {
            removed.push(f.pool.clone());
        }
    }
    removed
}

/// Unlinks every segment of `pool` (without opening any).
fn remove_segments(pool: &str) {
    for f in pool_files().iter().filter(|f| f.pool == pool) {
        let _ = shm_arena::unlink(&f.name);
    }
}

/// What [`Pool::collect`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectReport {
    /// Dead processes whose slots were recycled.
    pub dead_processes: usize,
    /// Arrays freed because their last holder was dead (or a holder died mid-change).
    pub arrays_freed: usize,
    /// Arena blocks freed because their allocating process died before publishing them.
    pub blocks_recovered: u64,
}

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
}

/// Why a named-array operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// The name is empty, too long or has '/'.
    #[error("invalid array name {0:?}: 1 to 88 bytes, no '/'")]
    Invalid(String),
    /// No array has that name.
    #[error("no array named {0:?} in this pool")]
    NotFound(String),
    /// The name is taken.
    #[error("an array named {0:?} exists already")]
    Exists(String),
    /// The name table is full.
    #[error("the pool's name table is full")]
    Full,
    /// The array has a name already (an array has at most one).
    #[error("the array has a name already; an array can have one name")]
    AlreadyNamed,
    /// The named array is unusable.
    #[error(transparent)]
    Handle(#[from] HandleError),
}

impl PoolShared {
    #[inline]
    fn dir(&self) -> Directory<'_> {
        // SAFETY: validated at assembly (block, size and layout), mapped while segment 0 lives
        // (as long as `self`), all atomics.
        unsafe { Directory::new(self.dir_ptr.as_ptr(), self.layout) }
    }

    fn processes(&self) -> ProcessTable<'_> {
        ProcessTable::new(self.dir().processes())
    }

    fn tokens(&self) -> TokenTable<'_> {
        TokenTable::new(self.dir().tokens())
    }

    /// This process's slot, registering first (and re-acquiring inherited arrays) after a fork.
    fn slot(&self) -> Result<u32, PoolError> {
        let fast = self.fast_slot.load(ORD);
        if fast != 0 && fast >> 16 == fork_generation() {
            return Ok((fast & 0xFFFF) as u32 - 1);
        }
        self.register_slow()
    }

    #[cold]
    fn register_slow(&self) -> Result<u32, PoolError> {
        let mut m = self.membership.lock().unwrap_or_else(|p| p.into_inner());
        let generation = fork_generation();
        if let Some(reg) = m.registration {
            if m.fork_generation == generation {
                return Ok(reg.index);
            }
        }
        let inherited = m.registration.is_some();
        let table = self.processes();
        let reg = match table.register() {
            Ok(r) => r,
            Err(_) => {
                drop(m);
                self.collect();
                m = self.membership.lock().unwrap_or_else(|p| p.into_inner());
                table.register().map_err(|e| PoolError::Full { name: self.name.clone(), slots: e.slots as u32 })?
            }
        };
        m.registration = Some(reg);
        m.fork_generation = generation;
        if inherited {
            // The parent's renewed blocks are held by the parent's slot (recycle invariant 3).
            // (Its nonce generator reseeds by itself: `next_nonce`.)
            self.renewed.forget_all();
        }
        self.fast_slot.store(generation << 16 | u64::from(reg.index + 1), ORD);
        drop(m);
        if inherited {
            self.reacquire_inherited(reg.index);
        }
        Ok(reg.index)
    }

    /// After a fork: hold, under our own slot, every array this process inherited (inv. 2).
    fn reacquire_inherited(&self, slot: u32) {
        // Each under its entry's lock, which keeps its `LocalArray` alive (locals invariant 2)
        // whatever its count; no reference is taken, so none is dropped under a lock.
        self.locals.for_each(|p| {
            // SAFETY: the entry is locked and names it (locals invariant 2).
            let local = unsafe { p.as_ref() };
            // Released by the parent's `leave` before the fork: not inherited as held.
            if local.holder.load(ORD) == NOT_HELD {
                return;
            }
            // The parent may have let go of it since the fork (the documented window): check it
            // as a first pin does, so a freed, reused or renewed place is never taken for it
            // (found in review, session 4). On failure it stays unheld here.
            let Ok(arena) = self.segment(local.meta_segment) else { return };
            if self.pin_header(arena, local.meta_segment, local.header_block, local.nonce, Pin::Acquire, slot).is_ok() {
                local.holder.store(holder_word(slot), ORD);
            }
        });
    }

    fn segment(&self, index: u16) -> Result<&Arena, PoolError> {
        let i = index as usize;
        if let Some(a) = self.segments.get(i).and_then(OnceLock::get) {
            return Ok(a);
        }
        if i >= MAX_SEGMENTS
            || i as u64 >= self.dir().header().segment_count.load(core::sync::atomic::Ordering::Acquire)
        {
            return Err(PoolError::NotFound { name: segment_name(&self.name, i) });
        }
        let _guard = self.open_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = self.segments[i].get() {
            return Ok(a);
        }
        let arena = Arena::open_with(&segment_name(&self.name, i), &OpenOptions::new())?;
        let _ = self.segments[i].set(arena);
        Ok(self.segments[i].get().expect("just set"))
    }

    fn open_segments(&self) -> Vec<(u16, &Arena, u64)> {
        let dir = self.dir();
        let count = dir.header().segment_count.load(core::sync::atomic::Ordering::Acquire).min(MAX_SEGMENTS as u64);
        (0..count as u16)
            .filter_map(|i| self.segment(i).ok().map(|a| (i, a, dir.segments()[i as usize].kind.load(ORD))))
            .collect()
    }

    fn next_nonce(&self) -> u64 {
        // splitmix64 over a per-thread counter seeded from getrandom: no shared write and no
        // atomic. Reseeded in a forked child, which would otherwise repeat its parent's nonces
        // (found in review), and so one array's token could cancel another's.
        std::thread_local! {
            /// (counter, the fork generation it was seeded in).
            static STATE: core::cell::Cell<(u64, u64)> = const { core::cell::Cell::new((0, u64::MAX)) };
        }
        let generation = fork_generation();
        let mut z = STATE.with(|state| {
            let (mut counter, seeded_in) = state.get();
            if seeded_in != generation {
                let mut seed = [0u8; 8];
                let _ = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty());
                // The cell's address tells threads apart should getrandom fail.
                counter = u64::from_le_bytes(seed) ^ (state as *const _ as u64);
            }
            counter = counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set((counter, generation));
            counter
        });
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) | 1
    }

    /// Allocates `size` bytes in a segment of `kind`, collecting, growing and waiting as needed.
    #[inline]
    fn alloc_in(&self, kind: u64, size: u64) -> Result<(u16, Block, NonNull<u8>), ArrayError> {
        // The common case: the segment that served the last allocation of this kind.
        let hint = self.last_segment[kind as usize].load(ORD) as u16;
        if let Some(arena) = self.segments.get(hint as usize).and_then(OnceLock::get) {
            if self.dir().segments()[hint as usize].kind.load(ORD) == kind && arena.max_block() >= size {
                if let Ok((b, p)) = arena.alloc_with_ptr(size) {
                    return Ok((hint, b, p));
                }
            }
        }
        self.alloc_in_slow(kind, size)
    }

    #[cold]
    fn alloc_in_slow(&self, kind: u64, size: u64) -> Result<(u16, Block, NonNull<u8>), ArrayError> {
        let deadline = self.wait().map(|w| Instant::now() + w);
        let mut collected = false;
        // A grow that reports progress without any must not spin forever.
        let mut grows = 0;
        loop {
            for (i, arena, k) in self.open_segments() {
                if k == kind && arena.max_block() >= size {
                    match arena.alloc_with_ptr(size) {
                        Ok((b, p)) => {
                            self.last_segment[kind as usize].store(u64::from(i), ORD);
                            return Ok((i, b, p));
                        }
                        Err(AllocError::Exhausted { .. } | AllocError::TooLarge { .. }) => {}
                        Err(e) => return Err(ArrayError::Grow(e.into())),
                    }
                }
            }
            if !collected {
                collected = true;
                // Our own renewed blocks first (recycle invariant 4), then what the dead held.
                let gave_back = kind == KIND_META && !self.renewed.is_empty();
                if gave_back {
                    if let Ok(slot) = self.slot() {
                        self.give_back_renewed(slot);
                    }
                }
                if self.collect() != CollectReport::default() || gave_back {
                    continue;
                }
            }
            if grows < 8 {
                match self.grow(kind, size) {
                    Ok(true) => {
                        grows += 1;
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => return Err(ArrayError::Grow(e)),
                }
            }
            // Full and cannot grow: wait for a free, if allowed.
            let dir = self.dir();
            let listener = dir.header().freed.listen();
            let seen = listener.sequence();
            let left = deadline.and_then(|d| d.checked_duration_since(Instant::now()));
            match left {
                Some(left) if !left.is_zero() => {
                    // Look once more after registering (the Event's invariant 2), then sleep.
                    if self.open_segments().iter().any(|(_, a, k)| *k == kind && a.stats().largest_free_block >= size) {
                        continue;
                    }
                    listener.wait(seen, Some(left));
                    collected = false;
                    grows = 0;
                }
                _ => return Err(self.out_of_memory(size)),
            }
        }
    }

    fn out_of_memory(&self, requested: u64) -> ArrayError {
        let s = self.stats();
        let shm_free = shm_arena::shm_free_bytes().unwrap_or(0);
        ArrayError::OutOfMemory {
            pool: self.name.clone(),
            requested,
            free: s.free,
            largest_free: s.largest_free,
            shm_free,
        }
    }

    /// Adds a segment of `kind` able to hold `size` bytes, if the limits allow (invariant 1).
    /// Returns false when the pool may not grow.
    fn grow(&self, kind: u64, size: u64) -> Result<bool, PoolError> {
        let dir = self.dir();
        let h = dir.header();
        let guard = match h.lock.lock() {
            Ok(Locked::Acquired(g)) => g,
            Ok(Locked::OwnerDied(mut g)) => {
                // The directory's protected state is append-only: an entry past the count is
                // ignored, so there is nothing to repair.
                g.mark_consistent();
                g
            }
            Err(_) => {
                h.lock.reset_poison();
                return Ok(true);
            }
        };
        // A torn-down pool's name may already belong to a new pool: never create (or remove) a
        // segment under it (found in review).
        if h.flags.load(ORD) & FLAG_TORN_DOWN != 0 {
            return Ok(false);
        }
        let count = h.segment_count.load(ORD) as usize;
        // Someone else may have grown the pool while we waited for the lock.
        for i in 0..count {
            let e = &dir.segments()[i];
            if e.kind.load(ORD) == kind {
                if let Ok(a) = self.segment(i as u16) {
                    if a.stats().largest_free_block >= size {
                        return Ok(true);
                    }
                }
            }
        }
        if count >= MAX_SEGMENTS {
            return Ok(false);
        }
        let (capacity, min_block) = if kind == KIND_META {
            (16 << 20, 128)
        } else {
            (h.data_segment_capacity.load(ORD).max(size.next_power_of_two()), h.data_min_block.load(ORD))
        };
        // `max_size` bounds every segment after segment 0 (small arrays live in metadata
        // segments, so those count too).
        let used: u64 = (1..count).map(|i| dir.segments()[i].capacity.load(ORD)).sum();
        if used + capacity > h.max_size.load(ORD) {
            return Ok(false);
        }
        // Every process of the pool may map every segment: as many owner slots as process slots.
        let owner_slots = h.process_slots.load(ORD) as u32 + 8;
        let options = ArenaOptions::new(capacity).min_block(min_block).owner_slots(owner_slots);
        let arena = match options.name(segment_name(&self.name, count)).create() {
            Ok(a) => a,
            Err(CreateError::NoSpace { .. }) => return Ok(false),
            Err(CreateError::AlreadyExists { .. }) => {
                // We hold the directory lock, so a segment at this index was left by a grower
                // that died before recording it, initialised or not: remove it and try again
                // (an unopenable leftover used to make every allocation spin; found in review).
                let _ = std::fs::remove_file(format!("/dev/shm/{}", segment_name(&self.name, count)));
                return Ok(true);
            }
            Err(e) => return Err(e.into()),
        };
        let entry = &dir.segments()[count];
        entry.kind.store(kind, ORD);
        entry.capacity.store(arena.capacity(), ORD);
        let _guard = self.open_lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.segments[count].set(arena);
        // Release: invariant 3, the entry before the count.
        h.segment_count.store(count as u64 + 1, core::sync::atomic::Ordering::Release);
        drop(guard);
        Ok(true)
    }

    fn create_array(self: &Arc<Self>, dtype: &DType, shape: &[u64], fortran: bool) -> Result<SharedArray, ArrayError> {
        if shape.len() > MAX_DIMS {
            return Err(ArrayError::Shape { shape: shape.to_vec(), why: "more than 64 dimensions" });
        }
        let elements = shape.iter().try_fold(1u64, |acc, n| acc.checked_mul(*n));
        let data_len = elements
            .and_then(|n| n.checked_mul(dtype.itemsize()))
            .filter(|n| *n <= 1 << 46)
            .ok_or_else(|| ArrayError::Shape { shape: shape.to_vec(), why: "size overflows" })?;
        let slot = self.slot().map_err(ArrayError::Grow)?;
        // The `LocalArray` is written in place in its allocation, its description first (see
        // `Dims` for why not build it and move it there).
        let spare = self.spares.take();
        let p: *mut LocalArray = spare.as_ptr().cast();
        // SAFETY: memory for a `LocalArray`, ours alone until `LocalRef::from_new` below.
        let meta = unsafe { ArrayMeta::write_contiguous(field_of!(p, LocalArray, meta), dtype, shape, fortran) };
        let placed = self.place_array(slot, meta, data_len);
        let Placed { meta_seg, header_block, header_ptr, data, nonce } = match placed {
            Ok(placed) => placed,
            Err(e) => {
                // SAFETY: the description written above, dropped once.
                unsafe { core::ptr::drop_in_place::<ArrayMeta>(field_of!(p, LocalArray, meta)) };
                // SAFETY: from `take`, its value dropped just above.
                unsafe { self.spares.give(spare) };
                return Err(e);
            }
        };
        // Ten writes, one per remaining field.
        #[allow(clippy::multiple_unsafe_ops_per_block)]
        // SAFETY: as above: fields of memory we own alone, each written once.
        unsafe {
            field_of!(p, LocalArray, refs).write(shm_arena::sync::SharedU64::new(1));
            field_of!(p, LocalArray, pool).write(self.clone());
            field_of!(p, LocalArray, meta_segment).write(meta_seg);
            field_of!(p, LocalArray, header_block).write(header_block);
            field_of!(p, LocalArray, header_ptr).write(header_ptr);
            field_of!(p, LocalArray, nonce).write(nonce);
            field_of!(p, LocalArray, data).write(data);
            field_of!(p, LocalArray, data_len).write(data_len);
            field_of!(p, LocalArray, holder).write(shm_arena::sync::SharedU64::new(holder_word(slot)));
            field_of!(p, LocalArray, borrows).write(shm_arena::sync::SharedU64::new(0));
        }
        // SAFETY: every field written (`meta` by `write_contiguous`, the rest just above:
        // `fields_needing_drop` lists them all), count 1, from `spares`.
        let local = unsafe { LocalRef::from_new(spare.cast()) };
        let capacity = || self.segment(meta_seg).map_or(0, |a| a.capacity());
        let mut entry = self.locals.lock(meta_seg, header_block.offset(), capacity).expect("a header block's place");
        // Empty, or naming a `LocalArray` this process does not hold (let go by `leave`, or
        // inherited and not re-acquired): a held one removes its entry before its hold goes
        // (locals invariant 2), and nobody can pin this array before a handle of it exists.
        let before = entry.replace(Some(local.ptr()));
        // SAFETY: `before` was named by the entry we hold locked (locals invariant 2).
        debug_assert!(before.is_none_or(|b| held_slot(unsafe { b.as_ref() }.holder.load(ORD)).is_none()));
        drop(entry);
        Ok(SharedArray::whole(local))
    }

    /// Finds a place for a new array described by `meta` (`data_len` bytes of data) and writes
    /// its header there, held by `slot`: a renewed block of this process, or new blocks.
    fn place_array(&self, slot: u32, meta: &ArrayMeta, data_len: u64) -> Result<Placed, ArrayError> {
        let header_len = header_size(meta.shape.len(), meta.dtype.descr().len());
        let placed = if header_len + data_len <= INLINE_MAX {
            // A small array: one block in a metadata segment, its data after its header.
            let data_at =
                |p: NonNull<u8>| NonNull::new(p.as_ptr().wrapping_add(header_len as usize)).expect("in a block");
            let size = (header_len + data_len).next_power_of_two();
            if let Some((meta_seg, header_block, header_ptr)) = self.take_renewed(size) {
                // SAFETY: a renewed block of this process, `size` bytes (at least header_len +
                // data_len), aligned to 128; we hold it alone under a target nobody was told
                // (recycle invariant 1), so nobody else reads what we write.
                let header = unsafe { &*header_ptr.as_ptr().cast::<ArrayHeader>() };
                // SAFETY: as above.
                let nonce = unsafe { header.renew((meta_seg, header_block.to_bits(), data_len), header_len, meta) };
                (meta_seg, header_block, header_ptr, data_at(header_ptr), nonce)
            } else {
                let nonce = self.next_nonce();
                let (meta_seg, header_block, header_ptr) = self.alloc_in(KIND_META, header_len + data_len)?;
                let meta_arena = self.segment(meta_seg).map_err(ArrayError::Grow)?;
                // SAFETY: a block we just allocated and have not published, of at least
                // header_len + data_len bytes, aligned to 128.
                let header = unsafe { &*header_ptr.as_ptr().cast::<ArrayHeader>() };
                // SAFETY: as above; nobody else sees the block until a handle exists.
                unsafe { header.init(nonce, slot, (meta_seg, header_block.to_bits(), data_len), header_len, meta) };
                meta_arena.disown(header_block).expect("our block");
                (meta_seg, header_block, header_ptr, data_at(header_ptr), nonce)
            }
        } else {
            let nonce = self.next_nonce();
            let (data_seg, data_block, data) = self.alloc_in(KIND_DATA, data_len.max(1))?;
            let (meta_seg, header_block, header_ptr) = match self.alloc_in(KIND_META, header_len) {
                Ok(x) => x,
                Err(e) => {
                    let _ = self.segment(data_seg).map(|a| a.free(data_block));
                    return Err(e);
                }
            };
            let meta_arena = self.segment(meta_seg).map_err(ArrayError::Grow)?;
            let data_arena = self.segment(data_seg).map_err(ArrayError::Grow)?;
            // SAFETY: a block we just allocated and have not published, of at least header_len
            // bytes (the header's own size), aligned to 128.
            let header = unsafe { &*header_ptr.as_ptr().cast::<ArrayHeader>() };
            // SAFETY: as above; nobody else sees the block until a handle exists.
            unsafe { header.init(nonce, slot, (data_seg, data_block.to_bits(), data_len), 0, meta) };
            // Ownership passes from the arena (our tag) to the refcount (header invariant 2):
            // header first, so a death in between is recovered by one of the two mechanisms.
            meta_arena.disown(header_block).expect("our block");
            data_arena.disown(data_block).expect("our block");
            (meta_seg, header_block, header_ptr, data, nonce)
        };
        let (meta_seg, header_block, header_ptr, data, nonce) = placed;
        Ok(Placed { meta_seg, header_block, header_ptr, data, nonce })
    }

    /// Pins the array at (segment, header block) and checks its nonce (header invariant 3).
    fn pin(self: &Arc<Self>, meta_seg: u16, header: Block, nonce: u64, how: Pin) -> Result<LocalRef, HandleError> {
        let slot = self.slot().map_err(|e| HandleError::Segment(e.to_string()))?;
        let arena = self.segment(meta_seg).map_err(|e| HandleError::Segment(e.to_string()))?;
        // Invariant 1: headers live only in metadata segments; a handle naming a data segment
        // would make user data pass for a header.
        if self.dir().segments()[meta_seg as usize].kind.load(ORD) != KIND_META {
            return Err(HandleError::Invalid("the handle names a data segment as its header's"));
        }
        // Declared before the guard, so dropped after it (locals invariant 3).
        let existing;
        // No place for a header block there: no array either.
        let mut entry = self.locals.lock(meta_seg, header.offset(), || arena.capacity()).ok_or(HandleError::Stale)?;
        // SAFETY: the entry is locked and names it (locals invariant 2).
        existing = entry.get().and_then(|p| unsafe { LocalRef::from_entry(p) });
        if let Some(existing) = &existing {
            if existing.nonce == nonce && existing.header_block == header {
                if held_slot(existing.holder.load(ORD)).is_none() {
                    // Released by `leave` (or inherited and never re-acquired): this attach
                    // takes a hold again, or the array could be freed under us (found in
                    // review) — through every check of a first pin, since the array may be
                    // gone and its place reused or renewed (found in review, session 4).
                    self.pin_header(arena, meta_seg, header, nonce, how, slot)?;
                    // Under the entry's lock, as every change of `holder` is.
                    existing.holder.store(holder_word(slot), ORD);
                    return Ok(existing.clone());
                }
                if let Pin::Token(token) = how {
                    // We hold it already: the token is consumed, our hold stays single. A token
                    // that is no longer pending (the handle was attached before) changes
                    // nothing: our hold keeps the array alive.
                    let _ = existing.header().refcount.claim(token, slot, &self.tokens());
                }
                return Ok(existing.clone());
            }
        }
        let (ptr, h, acquired) = self.pin_header(arena, meta_seg, header, nonce, how, slot)?;
        let unpin = |h: &ArrayHeader| self.unpin(h, acquired, slot, meta_seg, header);
        // SAFETY: pinned (header invariant 2), block of header.size() bytes.
        let Some(meta) = (unsafe { h.read_meta(header.size()) }) else {
            unpin(h);
            return Err(HandleError::Invalid("corrupt array header"));
        };
        let data_len = h.data_len.load(ORD);
        let Some(data) = self.data_of(header, ptr, h, data_len) else {
            unpin(h);
            return Err(HandleError::Invalid("the header names no valid data block"));
        };
        let local = LocalRef::new(LocalArray {
            refs: shm_arena::sync::SharedU64::new(1),
            pool: self.clone(),
            meta_segment: meta_seg,
            header_block: header,
            header_ptr: ptr,
            nonce,
            data,
            data_len,
            meta,
            holder: shm_arena::sync::SharedU64::new(holder_word(slot)),
            borrows: shm_arena::sync::SharedU64::new(0),
        });
        // Replacing the entry of a `LocalArray` whose last reference went takes its hold over;
        // replacing one this process does not hold (after `leave`, or inherited) takes nothing
        // (locals invariant 2).
        entry.replace(Some(local.ptr()));
        drop(entry);
        Ok(local)
    }

    /// Handle steps 2 to 5 (docs/architecture.md): the header block against the arena, its
    /// magic and nonce word, the pin (claim or acquire for `slot`), then the refcount's target
    /// against `nonce`, undoing the pin if it differs. Returns the header's address, the header
    /// and how the pin went.
    fn pin_header<'a>(
        &self,
        arena: &'a Arena,
        meta_seg: u16,
        header: Block,
        nonce: u64,
        how: Pin,
        slot: u32,
    ) -> Result<(NonNull<u8>, &'a ArrayHeader, shm_sync::Acquired), HandleError> {
        let ptr = arena.as_ptr(header).map_err(|_| HandleError::Stale)?;
        if header.size() < crate::header::FIXED as u64 {
            return Err(HandleError::Invalid("header block too small"));
        }
        // SAFETY: a validated block of at least FIXED bytes in a metadata segment (only headers
        // and the directory live there), mapped while the pool (and `arena`) lives; we read
        // atomics only until the array is pinned.
        let h = unsafe { &*ptr.as_ptr().cast::<ArrayHeader>() };
        if h.magic.load(core::sync::atomic::Ordering::Acquire) != ARRAY_MAGIC || h.nonce.load(ORD) != nonce {
            return Err(HandleError::Stale);
        }
        let tokens = self.tokens();
        let acquired = match how {
            Pin::Token(token) => h.refcount.claim(token, slot, &tokens),
            Pin::Acquire => h.refcount.acquire(slot, &tokens),
        };
        let acquired = match acquired {
            Ok(a) => a,
            Err(RefError::Orphaned) => {
                // Our repair found it unreferenced: we are the one to free it (invariant 3).
                self.free_array(meta_seg, header, h);
                return Err(HandleError::Stale);
            }
            Err(e) => return Err(ref_to_handle(e)),
        };
        // Pinned: the fields are stable now if the refcount's target is our nonce (header
        // invariant 2): the place may have been freed and reused, or renewed for another array
        // of its holder (invariant 4), between our first look and the pin.
        if h.refcount.target() != nonce {
            self.unpin(h, acquired, slot, meta_seg, header);
            return Err(HandleError::Stale);
        }
        Ok((ptr, h, acquired))
    }

    /// Undoes a pin that `pin_header` made: only a hold it took (with `Already`, the bit
    /// belongs to another `LocalArray` of this process; found in review).
    fn unpin(&self, h: &ArrayHeader, acquired: shm_sync::Acquired, slot: u32, meta_seg: u16, header: Block) {
        if acquired == shm_sync::Acquired::First && h.refcount.release(slot, &self.tokens()) == Ok(Released::Last) {
            self.free_array(meta_seg, header, h);
        }
    }

    fn attach(self: &Arc<Self>, handle: &Handle) -> Result<SharedArray, HandleError> {
        if handle.pool != self.id {
            return Err(HandleError::WrongPool { handle_pool: hex(&handle.pool), this_pool: hex(&self.id) });
        }
        let how = match handle.token {
            Some(t) => Pin::Token(t),
            None => Pin::Acquire,
        };
        let local = match self.pin(handle.meta_segment, handle.header, handle.nonce, how) {
            // The token was claimed already (the handle is attached a second time): the array
            // may still be alive, held by someone. Pinning by nonce is as safe as by token: a
            // freed or reused header fails the nonce check.
            Err(HandleError::Stale) if handle.token.is_some() => {
                self.pin(handle.meta_segment, handle.header, handle.nonce, Pin::Acquire)?
            }
            r => r?,
        };
        let itemsize = local.meta.dtype.itemsize();
        if !view_fits(handle.offset, &handle.shape, &handle.strides, itemsize, local.data_len) {
            return Err(HandleError::Invalid("the view lies outside its array"));
        }
        Ok(SharedArray::from_view(local, handle.offset, handle.shape.clone(), handle.strides.clone()))
    }

    fn cancel(&self, handle: &Handle) -> Result<(), HandleError> {
        if handle.pool != self.id {
            return Err(HandleError::WrongPool { handle_pool: hex(&handle.pool), this_pool: hex(&self.id) });
        }
        let Some(token) = handle.token else { return Ok(()) };
        let arena = self.segment(handle.meta_segment).map_err(|e| HandleError::Segment(e.to_string()))?;
        // Invariant 1, as in `pin`: only a metadata segment holds headers.
        if self.dir().segments()[handle.meta_segment as usize].kind.load(ORD) != KIND_META {
            return Err(HandleError::Invalid("the handle names a data segment as its header's"));
        }
        let ptr = arena.as_ptr(handle.header).map_err(|_| HandleError::Stale)?;
        if handle.header.size() < crate::header::FIXED as u64 {
            return Err(HandleError::Invalid("header block too small"));
        }
        // SAFETY: as in `pin_header`: a validated block of at least FIXED bytes in a metadata
        // segment, mapped while the pool lives; only atomics are read.
        let h = unsafe { &*ptr.as_ptr().cast::<ArrayHeader>() };
        if h.magic.load(core::sync::atomic::Ordering::Acquire) != ARRAY_MAGIC || h.nonce.load(ORD) != handle.nonce {
            return Err(HandleError::Stale);
        }
        // A pending token keeps its record alive (refcount invariant), and `take_token` checks
        // that the token is this record's: a token of another array is refused.
        match h.refcount.cancel(token, &self.tokens()) {
            Ok(Released::Last) => {
                self.free_array(handle.meta_segment, handle.header, h);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(RefError::Orphaned) => {
                self.free_array(handle.meta_segment, handle.header, h);
                Err(HandleError::Stale)
            }
            Err(e) => Err(ref_to_handle(e)),
        }
    }

    /// Where a pinned array's data is: inside its header block after the header (small
    /// arrays), or a block of its own in a data segment. `None` if the header's description of
    /// it does not fit its block (a corrupt header).
    fn data_of(&self, header: Block, header_ptr: NonNull<u8>, h: &ArrayHeader, data_len: u64) -> Option<NonNull<u8>> {
        let inline = h.inline_offset.load(ORD);
        if inline != 0 {
            let fits = inline >= crate::header::FIXED as u64
                && inline.checked_add(data_len).is_some_and(|end| end <= header.size());
            return fits.then(|| NonNull::new(header_ptr.as_ptr().wrapping_add(inline as usize)))?;
        }
        let data_seg = h.data_segment.load(ORD) as u16;
        let data_block = Block::from_bits(h.data_block.load(ORD));
        if self.dir().segments().get(data_seg as usize)?.kind.load(ORD) != KIND_DATA {
            return None;
        }
        let p = self.segment(data_seg).ok()?.as_ptr(data_block).ok()?;
        (data_len <= data_block.size()).then_some(p)
    }

    /// Frees a dead array's data block (if it has one of its own), then its header block
    /// (invariant 3).
    fn free_array(&self, meta_seg: u16, header_block: Block, h: &ArrayHeader) {
        // Someone waits for memory: free straight to the shared tree, not into this process's
        // cache, where a waiter in another process could not reach it (found in review).
        let waiting = self.dir().header().freed.has_listeners();
        if h.inline_offset.load(ORD) == 0 {
            let data_seg = h.data_segment.load(ORD) as u16;
            let data_block = Block::from_bits(h.data_block.load(ORD));
            if let Ok(a) = self.segment(data_seg) {
                let _ = a.free(data_block);
                if waiting {
                    a.trim();
                }
            }
        }
        h.magic.store(0, ORD);
        if let Ok(a) = self.segment(meta_seg) {
            let _ = a.free(header_block);
            if waiting {
                a.trim();
            }
        }
        self.dir().header().freed.notify_if_waiting();
    }

    fn release_local(&self, local: &LocalArray) {
        // Take the hold: `leave` may be releasing it at the same time.
        // Under the entry's lock (see `LocalArray::holder`): a load and a store suffice.
        let Some(slot) = held_slot(local.holder.load(ORD)) else {
            return; // inherited across a fork and never re-acquired here, or released by `leave`
        };
        local.holder.store(NOT_HELD, ORD);
        self.release_hold(local, slot);
    }

    fn release_hold(&self, local: &LocalArray, slot: u32) {
        let h = local.header();
        let tokens = self.tokens();
        // A small array's block is renewed for our next one (header invariant 4) unless someone
        // waits for memory: then it, and every block renewed before, goes back to the pool.
        let waiting = self.dir().header().freed.has_listeners();
        if waiting && !self.renewed.is_empty() {
            self.give_back_renewed(slot);
        }
        // Renew only under the slot this process holds now: a block parked under a slot it has
        // given up would be held by nobody it knows of (found in review, session 4).
        let renewable = h.inline_offset.load(ORD) != 0
            && Renewed::caches(local.meta_segment, local.header_block)
            && self.fast_slot.load(ORD) == fork_generation() << 16 | u64::from(slot + 1);
        let result = if renewable && !waiting {
            h.refcount.release_or_renew(slot, &tokens, self.next_nonce())
        } else {
            h.refcount.release(slot, &tokens)
        };
        match result {
            Ok(Released::Renewed) => {
                // Only a marker for sweeps and a first filter for attaches: the target, changed
                // under the lock, is what stops a stale attach (header invariant 2).
                h.nonce.store(RENEWED, ORD);
                if !self.renewed.push(local.meta_segment, local.header_block) {
                    // Full: release it after all.
                    self.release_renewed(slot, local.meta_segment, local.header_block, h);
                }
            }
            Ok(Released::Last) | Err(RefError::Orphaned) => self.free_array(local.meta_segment, local.header_block, h),
            _ => {}
        }
    }

    /// A renewed block of `size` bytes of this process, if one is cached (recycle invariant 1):
    /// (segment, block, address).
    #[inline]
    fn take_renewed(&self, size: u64) -> Option<(u16, Block, NonNull<u8>)> {
        let (seg, block) = self.renewed.pop(size.max(1).trailing_zeros().max(7))?;
        Some((seg, block, self.renewed_ptr(seg, block)?))
    }

    /// Where a renewed block of this process is. Always found: we pushed a block of a segment
    /// this process had open, and segments stay open while the pool lives.
    fn renewed_ptr(&self, seg: u16, block: Block) -> Option<NonNull<u8>> {
        self.segments.get(seg as usize).and_then(OnceLock::get)?.held_ptr(block).ok()
    }

    /// Releases our hold on a renewed block (it is freed: we were its one reference).
    fn release_renewed(&self, slot: u32, seg: u16, block: Block, h: &ArrayHeader) {
        match h.refcount.release(slot, &self.tokens()) {
            Ok(Released::Last) | Err(RefError::Orphaned) => self.free_array(seg, block, h),
            _ => {}
        }
    }

    /// Gives every renewed block back to the pool (recycle invariant 4). `slot` is the slot
    /// that holds them: ours, before we leave.
    fn give_back_renewed(&self, slot: u32) {
        self.renewed.drain(|seg, block| {
            if let Some(ptr) = self.renewed_ptr(seg, block) {
                // SAFETY: a header block of a metadata segment that our slot holds (recycle
                // invariant 1), mapped while the pool lives.
                let h = unsafe { &*ptr.as_ptr().cast::<ArrayHeader>() };
                self.release_renewed(slot, seg, block, h);
            }
        });
    }

    /// The array headers in use in metadata segment `seg` (invariant 1: every block there but
    /// the directory starts with a header's magic or is skipped).
    fn headers<'a>(&self, seg: u16, arena: &'a Arena) -> Vec<(Block, &'a ArrayHeader)> {
        arena
            .blocks_in_use()
            .into_iter()
            .filter(|b| !(seg == 0 && *b == self.dir_block) && b.size() >= crate::header::FIXED as u64)
            .filter_map(|b| {
                let ptr = arena.as_ptr(b).ok()?;
                // SAFETY: a block in use in a metadata segment (invariant 1), at least a header
                // long, mapped while `arena` lives: a header, or nothing read past its magic.
                let h = unsafe { &*ptr.as_ptr().cast::<ArrayHeader>() };
                (h.magic.load(core::sync::atomic::Ordering::Acquire) == ARRAY_MAGIC).then_some((b, h))
            })
            .collect()
    }

    fn collect(&self) -> CollectReport {
        let mut report = CollectReport::default();
        let table = self.processes();
        let tokens = self.tokens();
        let segments = self.open_segments();
        let dead: Vec<_> = table.find_dead().into_iter().filter_map(|i| table.claim_dead(i)).collect();
        for (i, arena, kind) in &segments {
            report.blocks_recovered += arena.recover_dead_owners().blocks_freed;
            if *kind != KIND_META {
                continue;
            }
            for (block, h) in self.headers(*i, arena) {
                let mut freed = false;
                for d in &dead {
                    match h.refcount.drop_holder(d.index, &tokens) {
                        Ok(Released::Last) | Err(RefError::Orphaned) => freed = true,
                        _ => {}
                    }
                }
                // A header that is DEAD but not freed is left alone: its freer may be alive and
                // inside `free_array`, and freeing it here could free a reused header's data
                // (found in review). Only the one caller that learned of the death frees.
                if freed {
                    self.free_array(*i, block, h);
                    report.arrays_freed += 1;
                }
            }
        }
        tokens.free_dead_reservations();
        // Recycle the slots only if every segment was swept: a new process must not inherit a
        // dead one's holder bits in a segment we could not open (found in review).
        let count =
            self.dir().header().segment_count.load(core::sync::atomic::Ordering::Acquire).min(MAX_SEGMENTS as u64);
        if segments.len() as u64 == count {
            for d in dead {
                table.release_dead(d);
                report.dead_processes += 1;
            }
        }
        report
    }

    fn reclaim_tokens(&self, age: Duration) -> usize {
        let tokens = self.tokens();
        let mut cancelled = 0;
        'token: for p in tokens.pending() {
            if p.age_ns < age.as_nanos() as u64 {
                continue;
            }
            // Find the header the token keeps alive: a sweep of the metadata segments. Stop at
            // the first cancel: a token is cancelled once.
            for (i, arena, kind) in self.open_segments() {
                if kind != KIND_META {
                    continue;
                }
                for (block, h) in self.headers(i, arena) {
                    if h.nonce.load(ORD) == p.target {
                        match h.refcount.cancel(p.token, &tokens) {
                            Ok(Released::Last) | Err(RefError::Orphaned) => {
                                cancelled += 1;
                                self.free_array(i, block, h);
                                continue 'token;
                            }
                            Ok(_) => {
                                cancelled += 1;
                                continue 'token;
                            }
                            Err(_) => {}
                        }
                    }
                }
            }
        }
        cancelled
    }

    fn stats(&self) -> PoolStats {
        let mut s = PoolStats { processes: self.processes().occupied(), ..PoolStats::default() };
        for (i, arena, kind) in self.open_segments() {
            s.segments += 1;
            let a = arena.stats();
            if kind == KIND_DATA {
                s.capacity += a.capacity;
                s.used += a.in_use_bytes;
                s.free += a.free_bytes + a.cached_bytes;
                s.largest_free = s.largest_free.max(a.largest_free_block);
            } else {
                // Headers with their magic: a freed header parked in a cache is not an array,
                // nor is a renewed one (header invariant 4).
                for (block, h) in self.headers(i, arena) {
                    if h.nonce.load(ORD) == RENEWED {
                        s.reserved += block.size();
                        continue;
                    }
                    s.arrays += 1;
                    if h.inline_offset.load(ORD) != 0 {
                        s.used += block.size();
                    }
                }
            }
        }
        s
    }

    fn name_lock(&self) -> shm_sync::MutexGuard<'_> {
        let h = self.dir().header();
        loop {
            match h.lock.lock() {
                Ok(Locked::Acquired(g)) => return g,
                Ok(Locked::OwnerDied(mut g)) => {
                    // Name entries are written before they are marked used: nothing to repair.
                    g.mark_consistent();
                    return g;
                }
                Err(_) => {
                    h.lock.reset_poison();
                }
            }
        }
    }

    fn publish(self: &Arc<Self>, name: &str, array: &SharedArray) -> Result<(), NameError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('/') {
            return Err(NameError::Invalid(name.to_owned()));
        }
        // Before the name lock: this may pin the array again, which takes other locks.
        array.ensure_held()?;
        let _guard = self.name_lock();
        let dir = self.dir();
        if dir.names().iter().any(|e| e.state.load(ORD) == 1 && load_name(e) == name) {
            return Err(NameError::Exists(name.to_owned()));
        }
        let entry = dir.names().iter().find(|e| e.state.load(ORD) == 0).ok_or(NameError::Full)?;
        let local = &array.local;
        match local.header().refcount.acquire(DIRECTORY_HOLDER, &self.tokens()) {
            Ok(shm_sync::Acquired::First) => {}
            // One name per array: the directory holds one reference (found in review).
            Ok(shm_sync::Acquired::Already) => return Err(NameError::AlreadyNamed),
            Err(e) => return Err(NameError::Handle(ref_to_handle(e))),
        }
        store_name(entry, name);
        entry.meta_segment.store(u64::from(local.meta_segment), ORD);
        entry.header.store(local.header_block.to_bits(), ORD);
        entry.nonce.store(local.nonce, ORD);
        entry.state.store(1, core::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn lookup(self: &Arc<Self>, name: &str) -> Result<SharedArray, NameError> {
        let (seg, header, nonce) = {
            let _guard = self.name_lock();
            let dir = self.dir();
            let e = dir
                .names()
                .iter()
                .find(|e| e.state.load(core::sync::atomic::Ordering::Acquire) == 1 && load_name(e) == name)
                .ok_or_else(|| NameError::NotFound(name.to_owned()))?;
            (e.meta_segment.load(ORD) as u16, Block::from_bits(e.header.load(ORD)), e.nonce.load(ORD))
        };
        let local = self.pin(seg, header, nonce, Pin::Acquire)?;
        Ok(SharedArray::whole(local))
    }

    fn unpublish(&self, name: &str) -> Result<(), NameError> {
        let _guard = self.name_lock();
        let dir = self.dir();
        let e = dir
            .names()
            .iter()
            .find(|e| e.state.load(ORD) == 1 && load_name(e) == name)
            .ok_or_else(|| NameError::NotFound(name.to_owned()))?;
        let seg = e.meta_segment.load(ORD) as u16;
        let header = Block::from_bits(e.header.load(ORD));
        let nonce = e.nonce.load(ORD);
        e.state.store(0, core::sync::atomic::Ordering::Release);
        if let Some(ptr) = self.segment(seg).ok().and_then(|a| a.as_ptr(header).ok()) {
            // SAFETY: the name held a reference, so the header block is live and a header.
            let h = unsafe { &*ptr.as_ptr().cast::<ArrayHeader>() };
            if h.nonce.load(ORD) == nonce {
                if let Ok(Released::Last) | Err(RefError::Orphaned) =
                    h.refcount.release(DIRECTORY_HOLDER, &self.tokens())
                {
                    self.free_array(seg, header, h);
                }
            }
        }
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        self.dir()
            .names()
            .iter()
            .filter(|e| e.state.load(core::sync::atomic::Ordering::Acquire) == 1)
            .map(load_name)
            .collect()
    }

    fn wait(&self) -> Option<Duration> {
        let ns = self.wait_ns.load(ORD);
        (ns != NO_WAIT).then(|| Duration::from_nanos(ns))
    }

    /// Releases this process's holds, unregisters, and lets the last process out tear a pool
    /// down unless it persists (invariant 5).
    fn leave(&self) {
        let mut m = self.membership.lock().unwrap_or_else(|p| p.into_inner());
        let Some(reg) = m.registration else { return };
        if m.fork_generation != fork_generation() {
            return;
        }
        // Release every hold first, under the slot that is still ours. Arrays dropped after
        // this find `NOT_HELD` and do nothing (the slot may belong to another process by then).
        // Each under its entry's lock, which keeps its `LocalArray` alive (locals invariant 2)
        // even if its last reference just went and its owner waits for the lock: that one then
        // finds `NOT_HELD` (skipping it would let it release under a slot we give up; found in
        // review, session 4).
        self.locals.for_each(|p| {
            // SAFETY: the entry is locked and names it (locals invariant 2).
            let local = unsafe { p.as_ref() };
            if held_slot(local.holder.load(ORD)).is_some() {
                local.holder.store(NOT_HELD, ORD);
                self.release_hold(local, reg.index);
            }
        });
        self.give_back_renewed(reg.index);
        m.registration = None;
        self.fast_slot.store(0, ORD);
        let dir = self.dir();
        let h = dir.header();
        self.processes().unregister(reg);
        drop(m);
        // Dead members do not count: recycle their slots first (invariant 4).
        self.collect();
        let guard = self.name_lock();
        let last = self.processes().occupied() == 0;
        let flags = h.flags.load(ORD);
        let persists = flags & FLAG_PERSISTENT != 0 || (flags & FLAG_PERSIST_NAMED != 0 && has_names(&dir));
        if last && !persists {
            self.teardown();
        }
        drop(guard);
    }

    /// Marks the pool torn down and unlinks every segment (invariant 5).
    fn teardown(&self) {
        let dir = self.dir();
        dir.header().flags.fetch_or(FLAG_TORN_DOWN, ORD);
        let count = dir.header().segment_count.load(core::sync::atomic::Ordering::Acquire) as usize;
        for i in 0..count.min(MAX_SEGMENTS) {
            let _ = shm_arena::Arena::open(&segment_name(&self.name, i)).map(|a| a.unlink());
            if let Some(a) = self.segments[i].get() {
                let _ = a.unlink();
            }
        }
    }
}

impl Drop for PoolShared {
    fn drop(&mut self) {
        self.leave();
        // Only our own entry: a pool torn down and made anew under the same name has replaced
        // it (found in review).
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        if reg.get(&self.name).is_some_and(|w| core::ptr::eq(w.as_ptr(), self)) {
            reg.remove(&self.name);
        }
    }
}

/// Where `place_array` put a new array's header.
struct Placed {
    meta_seg: u16,
    header_block: Block,
    header_ptr: NonNull<u8>,
    data: NonNull<u8>,
    nonce: u64,
}

#[derive(Clone, Copy)]
enum Pin {
    Token(shm_sync::Token),
    Acquire,
}

fn ref_to_handle(e: RefError) -> HandleError {
    match e {
        RefError::Dead | RefError::Orphaned | RefError::Token(_) | RefError::ForeignToken => HandleError::Stale,
        RefError::NotHolder { .. } | RefError::HolderOutOfRange { .. } => HandleError::Invalid("bad holder slot"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One array as this process holds it: one shared reference, however many views and clones.
/// Reached through [`LocalRef`]s only.
pub(crate) struct LocalArray {
    /// [`LocalRef`]s to it.
    refs: shm_arena::sync::SharedU64,
    pool: Arc<PoolShared>,
    meta_segment: u16,
    header_block: Block,
    header_ptr: NonNull<u8>,
    nonce: u64,
    data: NonNull<u8>,
    data_len: u64,
    meta: ArrayMeta,
    /// `slot << 32 | fork generation` under which this process holds the array. Changed only
    /// under the array's entry lock in `locals` (drop, leave, re-acquisition, a pin that takes
    /// a hold again), so a load and a store make a transition.
    holder: shm_arena::sync::SharedU64,
    /// Borrows of the data in this process: the number of shared borrows, or `EXCLUSIVE`.
    pub(crate) borrows: shm_arena::sync::SharedU64,
}

/// [`LocalArray::holder`] for a hold under `slot` by this process (this side of any fork).
fn holder_word(slot: u32) -> u64 {
    u64::from(slot) << 32 | fork_generation() & 0xFFFF_FFFF
}

/// [`LocalArray::holder`] once the hold is released (by `Pool::leave`).
const NOT_HELD: u64 = u64::MAX;

/// The slot a [`holder_word`] names, if it was made in this process (not inherited by a fork)
/// and not released yet.
fn held_slot(word: u64) -> Option<u32> {
    (word != NOT_HELD && word & 0xFFFF_FFFF == fork_generation() & 0xFFFF_FFFF).then_some((word >> 32) as u32)
}

// SAFETY: the pointers point into mappings owned by `pool` (its arenas), which live as long as
// the `Arc<PoolShared>` held here; the memory is shared memory that any thread may access; all
// other fields are plain data or atomics.
unsafe impl Send for LocalArray {}
// SAFETY: as for `Send`; `&LocalArray` only reads immutable fields and atomics.
unsafe impl Sync for LocalArray {}

impl LocalArray {
    fn header(&self) -> &ArrayHeader {
        // SAFETY: the header block is pinned by our hold and mapped while `pool` lives.
        unsafe { &*self.header_ptr.as_ptr().cast::<ArrayHeader>() }
    }
}

impl LocalArray {
    /// Never called: it names every field, so adding one fails to compile here until whoever
    /// adds it checks `last_reference_gone`, which drops only `pool` and `meta`.
    #[allow(dead_code)]
    fn fields_needing_drop(self) {
        let LocalArray {
            refs: _,
            pool: _,         // dropped by `last_reference_gone`
            meta_segment: _, // Copy
            header_block: _, // Copy
            header_ptr: _,   // Copy
            nonce: _,        // Copy
            data: _,         // Copy
            data_len: _,     // Copy
            meta: _,         // dropped by `last_reference_gone`
            holder: _,       // an atomic
            borrows: _,      // an atomic
        } = self;
    }

    /// The last [`LocalRef`] to `p` went: release the hold unless it was handed over, then
    /// give the allocation back.
    ///
    /// # Safety
    ///
    /// `p` is a `LocalArray` made by [`LocalRef::new`] whose count just reached zero: no
    /// reference to it exists and none can be taken but through its `locals` entry.
    unsafe fn last_reference_gone(p: NonNull<LocalArray>) {
        // SAFETY: alive until given back below (the caller's guarantee).
        let this = unsafe { p.as_ref() };
        let pool = &this.pool;
        // The table exists: this array's entry was made in it (capacity 0: never made here).
        match pool.locals.lock(this.meta_segment, this.header_block.offset(), || 0) {
            Some(mut entry) => {
                // Between our count reaching zero and this lock, an attach in this process may
                // have pinned the same array anew: it found our holder bit set
                // (`Acquired::Already`) and replaced our entry, so the hold is its now (locals
                // invariant 2). Release only our own.
                if entry.is(p.as_ptr()) {
                    pool.release_local(this);
                    entry.replace(None);
                }
            }
            None => pool.release_local(this),
        }
        // No entry names it now, so nobody can reach it (locals invariant 2): take it apart.
        // Only `pool` and `meta` need dropping (see `fields_needing_drop`); field by
        // field, not by reading the whole value out (a copy of 224 bytes).
        // SAFETY: initialised by `LocalRef`'s constructors; each field read or dropped once,
        // and the memory is given back below without being read again.
        let pool = unsafe { field_of!(p.as_ptr(), LocalArray, pool).read() };
        // SAFETY: as above.
        unsafe { core::ptr::drop_in_place::<ArrayMeta>(field_of!(p.as_ptr(), LocalArray, meta)) };
        // SAFETY: from `pool.spares.take()` (`LocalRef::new`), its value moved out just above.
        unsafe { pool.spares.give(p.cast()) };
        // Last: this may be the pool's last reference, whose drop frees the spares.
        drop(pool);
    }
}

/// A counted reference to this process's `LocalArray` of an array: what an `Arc` would be,
/// with a count of our own, so that `locals` can take a reference unless the count already
/// reached zero (under the entry's lock), and so that the allocation is reused (`Spares`).
pub(crate) struct LocalRef(NonNull<LocalArray>);

// SAFETY: a reference to a `LocalArray`, which is Send + Sync; the count is atomic.
unsafe impl Send for LocalRef {}
// SAFETY: as for `Send`.
unsafe impl Sync for LocalRef {}

impl LocalRef {
    /// The first reference to a new `LocalArray` (whose `refs` is 1).
    fn new(local: LocalArray) -> Self {
        let p = local.pool.spares.take();
        // SAFETY: `take` gives memory for a `LocalArray`, unused.
        unsafe { p.as_ptr().write(core::mem::MaybeUninit::new(local)) };
        // SAFETY: initialised just above, count 1, from `spares`.
        unsafe { Self::from_new(p.cast()) }
    }

    /// The first reference to a `LocalArray` initialised in place.
    ///
    /// # Safety
    ///
    /// `p` came from its pool's `spares`, holds an initialised `LocalArray` whose `refs` is 1,
    /// and nothing else refers to it.
    unsafe fn from_new(p: NonNull<LocalArray>) -> Self {
        // SAFETY: the caller's guarantee.
        debug_assert_eq!(unsafe { p.as_ref() }.refs.load(ORD), 1);
        LocalRef(p)
    }

    /// A new reference to the `LocalArray` at `p`, unless its count already reached zero (it
    /// is being taken apart).
    ///
    /// # Safety
    ///
    /// `p` is alive: its `locals` entry is locked and names it (locals invariant 2).
    unsafe fn from_entry(p: NonNull<LocalArray>) -> Option<Self> {
        // SAFETY: the caller's guarantee.
        let refs = unsafe { &p.as_ref().refs };
        let mut n = refs.load(ORD);
        loop {
            if n == 0 {
                return None;
            }
            // Relaxed: as `Arc`'s increment; the entry's lock orders what we then read.
            match refs.compare_exchange_weak(n, n + 1, ORD, ORD) {
                Ok(_) => return Some(LocalRef(p)),
                Err(now) => n = now,
            }
        }
    }

    fn ptr(&self) -> NonNull<LocalArray> {
        self.0
    }
}

impl core::ops::Deref for LocalRef {
    type Target = LocalArray;
    fn deref(&self) -> &LocalArray {
        // SAFETY: our count keeps it alive.
        unsafe { self.0.as_ref() }
    }
}

impl Clone for LocalRef {
    fn clone(&self) -> Self {
        // Relaxed: as `Arc::clone` (a reference exists, so the count cannot reach zero).
        if self.refs.fetch_add(1, ORD) > i64::MAX as u64 {
            std::process::abort(); // as `Arc`: a count this large means leaked references
        }
        LocalRef(self.0)
    }
}

impl Drop for LocalRef {
    fn drop(&mut self) {
        // Release, then an Acquire fence on the last: as `Arc`, every use through another
        // reference happens before the teardown.
        if self.refs.fetch_sub(1, core::sync::atomic::Ordering::Release) != 1 {
            return;
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        // SAFETY: the count reached zero: no other reference exists, and a new one can only
        // come through the entry, which refuses a zero count.
        unsafe { LocalArray::last_reference_gone(self.0) };
    }
}

/// An array (or a view of one) in a pool, as this process holds it.
#[derive(Clone)]
pub struct SharedArray {
    pub(crate) local: LocalRef,
    /// `None` for the whole array (its geometry is the header's, kept in `local`).
    view: Option<Arc<View>>,
}

/// The geometry of a view that is not the whole array.
struct View {
    offset: u64,
    shape: Vec<u64>,
    strides: Vec<i64>,
}

impl core::fmt::Debug for SharedArray {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedArray")
            .field("dtype", &self.local.meta.dtype.descr())
            .field("shape", &self.shape())
            .field("strides", &self.strides())
            .field("offset", &self.offset())
            .finish()
    }
}

impl SharedArray {
    fn whole(local: LocalRef) -> Self {
        Self { local, view: None }
    }

    fn from_view(local: LocalRef, offset: u64, shape: Vec<u64>, strides: Vec<i64>) -> Self {
        if offset == 0 && *shape == *local.meta.shape && *strides == *local.meta.strides {
            return Self::whole(local);
        }
        Self { local, view: Some(Arc::new(View { offset, shape, strides })) }
    }

    /// The element type.
    pub fn dtype(&self) -> &DType {
        &self.local.meta.dtype
    }

    /// The shape of this view.
    pub fn shape(&self) -> &[u64] {
        self.view.as_ref().map_or(&self.local.meta.shape, |v| &v.shape)
    }

    /// Strides of this view, in bytes.
    pub fn strides(&self) -> &[i64] {
        self.view.as_ref().map_or(&self.local.meta.strides, |v| &v.strides)
    }

    /// Byte offset of this view from the start of the array's data.
    pub fn offset(&self) -> u64 {
        self.view.as_ref().map_or(0, |v| v.offset)
    }

    /// Whether the whole array is Fortran-ordered.
    pub fn base_is_fortran(&self) -> bool {
        self.local.meta.fortran
    }

    /// Bytes of the whole array's data.
    pub fn base_len(&self) -> u64 {
        self.local.data_len
    }

    /// Pointer to the first byte of the whole array's data. Writes from other processes are
    /// theirs to order with yours; within this process, the usual aliasing rules apply to any
    /// slice you make from it.
    pub fn base_ptr(&self) -> NonNull<u8> {
        self.local.data
    }

    /// Pointer to this view's first element.
    pub fn as_ptr(&self) -> *mut u8 {
        self.local.data.as_ptr().wrapping_add(self.offset() as usize)
    }

    /// A view of the same array: `offset` bytes from the data start, with its own shape and
    /// byte strides.
    ///
    /// # Errors
    ///
    /// [`HandleError::Invalid`] when the view would reach outside the array.
    pub fn view(&self, offset: u64, shape: &[u64], strides: &[i64]) -> Result<SharedArray, HandleError> {
        if shape.len() > MAX_DIMS || !view_fits(offset, shape, strides, self.dtype().itemsize(), self.local.data_len) {
            return Err(HandleError::Invalid("the view lies outside its array"));
        }
        Ok(SharedArray::from_view(self.local.clone(), offset, shape.to_vec(), strides.to_vec()))
    }

    pub(crate) fn local(&self) -> &LocalArray {
        &self.local
    }

    /// Makes sure this process holds the array before its header or data is used: if it let
    /// go of it (`Pool::leave`, or inherited across a fork and not re-acquired), pins it again
    /// through every check of a first pin (found in review, session 4: a handle, a name or a
    /// borrow of such an array wrote into, or lent, whatever had replaced it).
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if it is gone; what a pin can fail with otherwise.
    pub(crate) fn ensure_held(&self) -> Result<(), HandleError> {
        let l = &self.local;
        if held_slot(l.holder.load(ORD)).is_some() {
            return Ok(());
        }
        let again = l.pool.pin(l.meta_segment, l.header_block, l.nonce, Pin::Acquire)?;
        // The entry names this `LocalArray` while it lives (no other can replace it but a new
        // array at the same place, and then this one is gone): the pin held it again.
        if again.ptr() == l.ptr() {
            Ok(())
        } else {
            Err(HandleError::Stale)
        }
    }

    /// Whether this view covers its whole array, contiguous in memory order.
    pub fn is_whole(&self) -> bool {
        self.view.is_none()
    }

    /// Whether two arrays (or views) share one allocation.
    pub fn same_array(&self, other: &SharedArray) -> bool {
        self.local.ptr() == other.local.ptr()
    }

    /// A handle to send to another process of the pool: the array stays alive until the
    /// receiver attaches it (or the token is reclaimed), even if this process lets go first.
    ///
    /// # Errors
    ///
    /// [`HandleError::Invalid`] if the pool's token table is full; [`HandleError::Stale`] if
    /// this process let go of the array (`Pool::leave`, or inherited across a fork) and it is
    /// gone.
    pub fn handle(&self) -> Result<Handle, HandleError> {
        self.ensure_held()?;
        let token = self
            .local
            .header()
            .refcount
            .send(&self.local.pool.tokens())
            .map_err(|_| HandleError::Invalid("the pool's transfer token table is full; reclaim old tokens"))?;
        Ok(self.handle_with(Some(token)))
    }

    /// A handle without a transfer token: the receiver can attach it only while some process
    /// still holds the array (for handles stored in files or sent to unrelated programs that
    /// must not pin the array).
    pub fn untracked_handle(&self) -> Handle {
        self.handle_with(None)
    }

    fn handle_with(&self, token: Option<shm_sync::Token>) -> Handle {
        Handle {
            pool: self.local.pool.id,
            meta_segment: self.local.meta_segment,
            header: self.local.header_block,
            nonce: self.local.nonce,
            token,
            offset: self.offset(),
            shape: self.shape().to_vec(),
            strides: self.strides().to_vec(),
        }
    }

    /// The pool the array lives in.
    pub fn pool(&self) -> Pool {
        Pool { shared: self.local.pool.clone() }
    }
}
