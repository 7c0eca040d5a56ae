//! Creating a pool, and opening one by name from any process.
//!
//! # Invariants
//!
//! 1. The creator writes the whole directory, registers itself, and only then publishes the
//!    directory (its magic, then segment 0's root word, both `Release`): nobody sees a pool
//!    with nobody in it (pool invariant 5's teardown and `clean_dead_pools` rely on it).
//! 2. An opener validates the directory block before any arithmetic on what it says
//!    (`read_directory`, the one place it is checked), and refuses a torn-down pool.
//! 3. A process opens a pool once: the registry maps each name to the open pool, unless that
//!    one was torn down (pool invariant 6).
//!
//! Protocol: `Pool::create` makes segment 0 exclusively (if it exists, it opens it instead),
//! allocates and fills the directory, registers, publishes; `Pool::open` waits a little for a
//! creator to publish, validates, and both end in `assemble`, which joins and collects
//! (pool invariant 4).

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::sync::fork_generation;
use shm_arena::{Arena, ArenaOptions, Block, CreateError, OpenError};
use shm_sync::{ProcessTable, Registration};

use super::{root_segment_name, wait_to_ns, Membership, Pool, PoolOptions, PoolShared, MAX_PROCESSES, ORD};
use crate::directory::{
    DirLayout, Directory, DIR_MAGIC, DIR_VERSION, FLAG_PERSISTENT, FLAG_PERSIST_NAMED, FLAG_TORN_DOWN, KEEP_SET,
    KIND_META, MAX_SEGMENTS,
};
use crate::error::PoolError;
use crate::locals::Locals;
use crate::recycle::{Renewed, Spares};

/// Checks a pool name: 1 to 100 of letters, digits, '_' and '.'.
pub(super) fn valid_pool_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 100 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// Pools already open in this process, by name (pool invariant 6).
pub(super) fn registry() -> &'static Mutex<HashMap<String, Weak<PoolShared>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<PoolShared>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Checks the directory block that `root` (segment 0's root word) names: a block of segment 0,
/// the magic and version, counts in range before any arithmetic on them, and a layout that fits
/// the block (directory invariant 1). The one place `Pool::open` and `inspect` validate it.
/// Most owner slots an arena segment can have (shm-arena's 10-bit owner tags; its
/// `OWNER_SLOTS_MAX`, checked by a test below).
pub(super) const ARENA_OWNER_SLOTS_MAX: u32 = 1022;

/// Owner slots of each arena segment of a pool with `process_slots` slots: one per process
/// slot and eight for frees by processes holding none (shm-arena's transient band), up to what
/// an arena can have ([`ARENA_OWNER_SLOTS_MAX`]). A process takes a slot in a segment only when
/// it first allocates there; when more processes allocate than a table holds, allocations move
/// to (or grow) another segment of the kind (segments invariant 5).
pub(super) fn owner_slots(process_slots: u32) -> u32 {
    (process_slots + 8).min(ARENA_OWNER_SLOTS_MAX)
}

/// Why a segment 0 holds no directory this library can use.
pub(super) enum DirectoryFault {
    /// A directory of another version ([`DIR_VERSION`] is ours).
    OtherVersion {
        /// The version it says.
        found: u64,
    },
    /// Not a directory, or a corrupt one.
    Bad(&'static str),
}

impl From<&'static str> for DirectoryFault {
    fn from(why: &'static str) -> Self {
        DirectoryFault::Bad(why)
    }
}

impl DirectoryFault {
    /// The pool error for segment 0 `file`.
    pub(super) fn into_pool_error(self, file: String) -> PoolError {
        match self {
            DirectoryFault::OtherVersion { found } => {
                PoolError::OtherVersion { name: file, what: "directory", found, ours: DIR_VERSION }
            }
            DirectoryFault::Bad(why) => PoolError::NotAPool { name: file, why },
        }
    }
}

pub(super) fn read_directory(seg0: &Arena, root: u64) -> Result<(Block, NonNull<u8>, DirLayout), DirectoryFault> {
    let block = Block::from_bits(root);
    let base = seg0.as_ptr(block).map_err(|_| "its root word names no block")?;
    if block.size() < 256 {
        return Err("its directory block is too small".into());
    }
    // SAFETY: a validated block of at least 256 bytes (the header), mapped while `seg0` lives;
    // only the header, all atomics, is read through this view.
    let probe = unsafe { Directory::new(base.as_ptr(), DirLayout::new(0, 0)) };
    let h = probe.header();
    if h.magic.load(core::sync::atomic::Ordering::Acquire) != DIR_MAGIC {
        return Err("no directory magic".into());
    }
    let version = h.version.load(ORD);
    if version != DIR_VERSION {
        return Err(DirectoryFault::OtherVersion { found: version });
    }
    let counts = (h.process_slots.load(ORD), h.token_slots.load(ORD));
    if counts.0 == 0 || counts.0 > u64::from(MAX_PROCESSES) || counts.1 > 1 << 24 {
        return Err("directory counts out of range".into());
    }
    let layout = DirLayout::new(counts.0 as usize, counts.1 as usize);
    if layout.size as u64 > block.size() {
        return Err("directory larger than its block".into());
    }
    Ok((block, base, layout))
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
            return Err(PoolError::Options("process_slots must be 1..=4096"));
        }
        if options.token_slots == 0 {
            return Err(PoolError::Options("token_slots must be positive"));
        }
        let layout = DirLayout::new(options.process_slots as usize, options.token_slots as usize);
        let meta_capacity = options.meta_capacity.max((layout.size as u64 * 2).next_power_of_two());
        let owner_slots = owner_slots(options.process_slots);
        let seg0 = match ArenaOptions::new(meta_capacity)
            .min_block(128)
            .owner_slots(owner_slots)
            .name(root_segment_name(&name))
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
        h.max_size.store(options.effective_max_size(), ORD);
        h.data_min_block.store(options.min_block, ORD);
        h.keep.store(KEEP_SET | options.keep, ORD);
        h.process_slots.store(u64::from(options.process_slots), ORD);
        h.token_slots.store(u64::from(options.token_slots), ORD);
        // Directory invariant 6: no fixed name table (a fresh root: no index, no intent).
        h.name_slots.store(0, ORD);
        h.pid_namespace.store(shm_arena::process::pid_namespace().unwrap_or(0), ORD);
        h.backend.store(options.backend.to_word(), ORD);
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
    /// [`PoolError::NotFound`], [`PoolError::NotAPool`], [`PoolError::OtherVersion`], [`PoolError::Gone`],
    /// [`PoolError::Full`].
    pub fn open(name: &str) -> Result<Pool, PoolError> {
        if !valid_pool_name(name) {
            return Err(PoolError::InvalidName { name: name.to_owned() });
        }
        if let Some(existing) = Self::from_registry(name) {
            return Ok(existing);
        }
        let seg0 = Arena::open(&root_segment_name(name)).map_err(|e| match e {
            OpenError::NotFound { .. } => PoolError::NotFound { name: name.to_owned() },
            OpenError::Version { name, found, expected } => {
                PoolError::OtherVersion { name, what: "segment layout", found: found.into(), ours: expected.into() }
            }
            e => PoolError::Open(e),
        })?;
        let not_a_pool = |why| PoolError::NotAPool { name: root_segment_name(name), why };
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
        let (dir_block, base, layout) =
            read_directory(&seg0, root).map_err(|fault| fault.into_pool_error(root_segment_name(name)))?;
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
            .map_err(|_| PoolError::NotAPool { name: root_segment_name(&name), why: "directory block" })?;
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
            open_lock: Mutex::new(Default::default()),
            membership: Mutex::new(Membership { registration, fork_generation: fork_generation() }),
            fast_slot: crate::sync::SharedU64::new(
                registration.map_or(0, |r| fork_generation() << 16 | u64::from(r.index + 1)),
            ),
            locals: Locals::new(MAX_SEGMENTS),
            wait_ns: crate::sync::SharedU64::new(wait_to_ns(wait)),
            renewed: Renewed::new(),
            spares: Spares::new(),
            name_shrink_failed: crate::sync::SharedU64::new(0),
        });
        let pool = Pool { shared };
        pool.shared.slot()?;
        pool.collect();
        registry().lock().unwrap_or_else(|p| p.into_inner()).insert(name, Arc::downgrade(&pool.shared));
        Ok(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_slots_stop_at_the_arenas_limit() {
        assert_eq!((owner_slots(255), owner_slots(4096)), (263, ARENA_OWNER_SLOTS_MAX));
        assert!(ArenaOptions::new(1 << 20).owner_slots(ARENA_OWNER_SLOTS_MAX).held_at_creation().is_ok());
        assert!(ArenaOptions::new(1 << 20).owner_slots(ARENA_OWNER_SLOTS_MAX + 1).held_at_creation().is_err());
    }
}
