//! Pools seen from outside: listing and cleaning them in /dev/shm without joining any.
//!
//! # Invariants
//!
//! 1. Nothing here registers in a pool or maps more than its directory (and its data
//!    segments' trees, to count usage): a foreign or truncated file cannot fault the caller.
//! 2. A pool with a live process is never removed; a persistent one only when asked (pool
//!    invariant 5's rule, applied from outside).
//! 3. /dev/shm is read through shm-arena's `list_segments` only, and `pool_files` parses names
//!    with `parse_segment_name`, the inverse of how segments are named (pool invariant 1).
//! 4. Another user's file is never opened, mapped or removed, even by root: only files that
//!    `list_segments` judged [`Ownership::Ours`] (regular, ours, no group or other bits) are
//!    inspected or unlinked, and every other one that looks like a pool's is reported as
//!    skipped, with why. /dev/shm is sticky, so a file judged ours stays ours until we remove
//!    it: no other user can swap the name between the check and the unlink.
//!
//! Protocol: `list_pools` groups our files by pool and reads each pool's directory
//! (`inspect`); `clean_pools` removes the pools whose processes are all dead, then our growth
//! segments whose segment 0 is gone, and reports what it removed and what it left alone.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use shm_arena::{Arena, OpenError, OpenOptions, Ownership};
use shm_sync::ProcessTable;

use super::backend::Backend;
use super::names::has_names;
use super::open::{read_directory, DirectoryFault};
use super::{growth_segment_name, parse_segment_name, root_segment_name, SegmentFileName, ORD};
use crate::directory::{Directory, FLAG_PERSISTENT, FLAG_PERSIST_NAMED, KIND_DATA, MAX_SEGMENTS};

/// A pool found in /dev/shm by [`list_pools`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    /// The pool's name.
    pub name: String,
    /// Bytes of its segments' files (address space: segments are sparse, see `held`).
    pub bytes: u64,
    /// Bytes its segments hold from /dev/shm (metadata and reserved pages).
    pub held: u64,
    /// Bytes of data pages held beyond what live arrays use (the warm reserve, by the pool's
    /// counts).
    pub warm: u64,
    /// The warm reserve's bound (`PoolOptions::keep`).
    pub keep: u64,
    /// Bytes of data blocks in use (0 if it could not be read).
    pub used: u64,
    /// Processes registered that are alive.
    pub live_processes: usize,
    /// Whether it outlives its processes.
    pub persistent: bool,
    /// The pid namespace it was made in, when it is not this process's (its processes cannot
    /// be judged from here: `live_processes` is 0 and means nothing then).
    pub other_namespace: Option<u64>,
    /// Where its growth segments live.
    pub backend: Backend,
    /// How many of its segments are memfds (not in /dev/shm: neither `bytes` nor `used`
    /// counts them, and they vanish with the last process that holds them).
    pub memfd_segments: usize,
}

/// What [`clean_pools`] did: the pools it removed, and every pool file it left alone, with why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// Names of the pools removed (every file of theirs that was ours).
    pub removed: Vec<String>,
    /// Pool files left in place, sorted by file name.
    pub skipped: Vec<SkippedFile>,
}

/// A file of /dev/shm that [`clean_pools`] did not remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedFile {
    /// The file's name in /dev/shm.
    pub file: String,
    /// The pool it belongs to by its name.
    pub pool: String,
    /// Why it was left.
    pub reason: SkipReason,
}

/// Why [`clean_pools`] left a file in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Another user's file: never opened or removed (its owner, or root by hand, can).
    NotOwned {
        /// The file's owner.
        owner_uid: u32,
    },
    /// Our file, but with group or other permission bits: someone changed its mode (pools
    /// create every segment 0600), so it is not trusted enough to read whether it is in use.
    Permissions {
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file (a symlink, directory, FIFO, socket or device).
    NotAFile {
        /// The file's owner.
        owner_uid: u32,
    },
    /// Segment 0 of a pool with live processes.
    Live {
        /// How many.
        processes: usize,
    },
    /// Segment 0 of a persistent pool whose processes are all dead (removed only when asked).
    Persistent,
    /// Segment 0 of a pool made in another pid namespace (another container sharing /dev/shm):
    /// its processes' pids mean nothing here, so whether they live cannot be told, and the pool
    /// is never removed from here (directory invariant 5).
    OtherNamespace {
        /// The pool's pid namespace (inode number).
        namespace: u64,
    },
    /// Segment 0 of a pool made by another version of pyshm: its process table cannot be read
    /// here, so whether its processes live is judged by who maps its files (`/proc/*/maps`, the
    /// processes this one can see). Left while a process maps it; otherwise removed only with
    /// `include_persistent` (it may hold another installation's named arrays).
    OtherVersion {
        /// Which layout differs: `"directory"` or `"segment layout"`.
        what: &'static str,
        /// The version found.
        found: u64,
        /// Processes seen mapping one of its files.
        mapped_by: usize,
    },
    /// Our file, named as a pool's segment 0, that cannot be read as a pool: a pool being
    /// created right now, a corrupt one, or an arena that only shares the prefix (or one of
    /// another version where /proc cannot show who maps it). Whether a process uses it cannot
    /// be told, so it is left; remove it by hand if you know it is garbage.
    NotAPool {
        /// What is wrong with it.
        why: &'static str,
    },
}

impl core::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SkipReason::NotOwned { owner_uid } => write!(f, "owned by uid {owner_uid}, not by us"),
            SkipReason::Permissions { mode } => write!(f, "mode {mode:04o} lets other users in (pyshm makes 0600)"),
            SkipReason::NotAFile { owner_uid } => write!(f, "not a regular file (owner uid {owner_uid})"),
            SkipReason::Live { processes } => write!(f, "in use by {processes} live process(es)"),
            SkipReason::Persistent => f.write_str("persistent (clean it with include_persistent)"),
            SkipReason::OtherNamespace { namespace } => {
                write!(f, "made in another pid namespace (pid:[{namespace}]): clean it from there")
            }
            SkipReason::OtherVersion { what, found, mapped_by: 0 } => write!(
                f,
                "made by another version of pyshm ({what} version {found}), mapped by no process; \
                 it may hold that version's named arrays, so it goes only with the persistent pools"
            ),
            SkipReason::OtherVersion { what, found, mapped_by } => write!(
                f,
                "made by another version of pyshm ({what} version {found}), in use: mapped by {mapped_by} live process(es)"
            ),
            SkipReason::NotAPool { why } => write!(f, "not a pool this pyshm can read: {why}"),
        }
    }
}

/// Every pool of ours in /dev/shm, without joining any of them. Pools made by other users are
/// not opened (invariant 4), so not listed; pools of ours it cannot read are listed by
/// [`list_unreadable_pools`].
pub fn list_pools() -> Vec<PoolInfo> {
    let files: Vec<PoolFile> = pool_files().into_iter().filter(|f| f.ownership == Ownership::Ours).collect();
    let mut sizes: HashMap<&str, u64> = HashMap::new();
    for f in &files {
        *sizes.entry(f.pool.as_str()).or_default() += f.len;
    }
    files.iter().filter(|f| f.is_root).filter_map(|f| inspect(&f.pool, sizes[f.pool.as_str()]).ok()).collect()
}

/// A file of a pool in /dev/shm, as [`parse_segment_name`] reads its name.
struct PoolFile {
    /// The segment's file name.
    name: String,
    /// The pool's name (the part after `pyshm-`).
    pool: String,
    /// Metadata segment 0 (`pyshm-<pool>`), not a growth segment (`pyshm-<pool>-<suffix>`).
    is_root: bool,
    len: u64,
    /// Its inode, as listed.
    inode: u64,
    /// Whose file it is (invariant 4).
    ownership: Ownership,
}

/// Every file in /dev/shm whose name a pool's segment could have (invariant 3), whoever owns
/// it, sorted by name. A snapshot: empty if /dev/shm cannot be read.
fn pool_files() -> Vec<PoolFile> {
    let files = shm_arena::list_segments(crate::NAME_PREFIX).unwrap_or_default();
    files
        .into_iter()
        .filter_map(|f| {
            let (pool, is_root) = match parse_segment_name(&f.name)? {
                SegmentFileName::Root(p) => (p.to_owned(), true),
                SegmentFileName::Growth(p) => (p.to_owned(), false),
            };
            Some(PoolFile { pool, is_root, len: f.len, inode: f.inode, ownership: f.ownership, name: f.name })
        })
        .collect()
}

/// Why [`inspect`] could not read a pool.
enum Unreadable {
    /// Its segment 0 was removed meanwhile.
    Gone,
    /// Made by another version of pyshm: which layout, and the version found.
    OtherVersion(&'static str, u64),
    /// What is wrong with it.
    Why(&'static str),
}

/// Reads a pool's directory without registering in it.
fn inspect(name: &str, bytes: u64) -> Result<PoolInfo, Unreadable> {
    // Invariant 4: shm-arena refuses a file that is not ours before mapping it.
    let seg0 = Arena::open_with(&root_segment_name(name), &OpenOptions::new().wait(Duration::from_millis(10)))
        .map_err(|e| match e {
            OpenError::NotFound { .. } => Unreadable::Gone,
            OpenError::Foreign { .. } => Unreadable::Why("not a pyshm segment"),
            OpenError::Version { found, .. } => Unreadable::OtherVersion("segment layout", found.into()),
            OpenError::Truncated { .. } | OpenError::Corrupt { .. } => Unreadable::Why("truncated or corrupt"),
            OpenError::NotInitialized { .. } => {
                Unreadable::Why("not initialised (being created, or its creator died doing so)")
            }
            _ => Unreadable::Why("cannot be opened"),
        })?;
    let root = seg0.root_word().load(core::sync::atomic::Ordering::Acquire);
    let (_, base, layout) = read_directory(&seg0, root).map_err(|fault| match fault {
        DirectoryFault::OtherVersion { found } => Unreadable::OtherVersion("directory", found),
        DirectoryFault::Bad(why) => Unreadable::Why(why),
    })?;
    // SAFETY: `read_directory` validated the block, its size and the layout.
    let dir = unsafe { Directory::new(base.as_ptr(), layout) };
    let h = dir.header();
    let namespace = h.pid_namespace.load(ORD);
    let other_namespace = (namespace != shm_arena::process::pid_namespace().unwrap_or(0)).then_some(namespace);
    let table = ProcessTable::new(dir.processes());
    // A pool of another pid namespace: its slots' pids mean other processes here, never judged.
    let live = if other_namespace.is_some() {
        0
    } else {
        (0..layout.process_slots as u32)
            .filter(|i| {
                matches!(table.state(*i), Some(shm_sync::SlotState::Live(_) | shm_sync::SlotState::Recovering(_)))
            })
            .count()
            .saturating_sub(table.find_dead().len())
    };
    let mut used = 0;
    let mut held = seg0.metadata_bytes() + seg0.stats().reserved_data_bytes;
    let mut data_reserved = 0;
    let mut memfd_segments = 0;
    let count = h.segment_count.load(core::sync::atomic::Ordering::Acquire).min(MAX_SEGMENTS as u64);
    for i in 1..count as usize {
        let entry = &dir.segments()[i];
        // A memfd segment is not in /dev/shm and cannot be opened from outside the pool: its
        // bytes are in the memory of the processes that hold it (backend invariant 3).
        if entry.memfd_ino.load(ORD) != 0 {
            memfd_segments += 1;
            continue;
        }
        let file = growth_segment_name(name, entry.suffix.load(ORD));
        if let Ok(a) = Arena::open_with(&file, &OpenOptions::new().wait(Duration::from_millis(10))) {
            let s = a.stats();
            held += s.metadata_bytes + s.reserved_data_bytes;
            if entry.kind.load(ORD) == KIND_DATA {
                used += s.in_use_bytes;
                data_reserved += s.reserved_data_bytes;
            }
        }
    }
    Ok(PoolInfo {
        name: name.to_owned(),
        bytes,
        held,
        warm: data_reserved.saturating_sub(h.live_data.load(ORD)),
        keep: super::reserve::keep_of(h.keep.load(ORD)),
        used,
        live_processes: live,
        other_namespace,
        backend: Backend::from_word(h.backend.load(ORD)),
        memfd_segments,
        persistent: h.flags.load(ORD) & FLAG_PERSISTENT != 0
            || (h.flags.load(ORD) & FLAG_PERSIST_NAMED != 0 && has_names(&dir)),
    })
}

/// Removes every non-persistent pool of ours whose processes are all dead (and, with
/// `include_persistent`, persistent ones too), and our segments left of pools that are gone.
/// Never touches a pool with a live process, nor another user's file (invariant 4). Returns
/// the names removed; [`clean_pools`] also says what it left alone.
pub fn clean_dead_pools(include_persistent: bool) -> Vec<String> {
    clean_pools(include_persistent).removed
}

/// [`clean_dead_pools`], reporting every pool file it did not remove and why: another user's
/// ([`SkipReason::NotOwned`]), opened up to others ([`SkipReason::Permissions`]), not a file,
/// segment 0 of a live or persistent pool, one of another pyshm version still mapped (or any
/// without `include_persistent`: [`SkipReason::OtherVersion`]), or one of ours that cannot be
/// read as a pool ([`SkipReason::NotAPool`]).
pub fn clean_pools(include_persistent: bool) -> CleanReport {
    let mut report = CleanReport::default();
    let ours: Vec<PoolFile> = pool_files().into_iter().filter(|f| f.ownership == Ownership::Ours).collect();
    for f in ours.iter().filter(|f| f.is_root) {
        let info = match inspect(&f.pool, 0) {
            Ok(info) => info,
            Err(Unreadable::Gone) => continue,
            Err(Unreadable::Why(why)) => {
                report.skip(f, SkipReason::NotAPool { why });
                continue;
            }
            Err(Unreadable::OtherVersion(what, found)) => {
                match judge_other_version(&f.pool, what, found) {
                    (SkipReason::OtherVersion { mapped_by: 0, .. }, files) if include_persistent => {
                        remove_judged(&files);
                        report.removed.push(f.pool.clone());
                    }
                    (reason, _) => report.skip(f, reason),
                }
                continue;
            }
        };
        let reason = if let Some(namespace) = info.other_namespace {
            Some(SkipReason::OtherNamespace { namespace })
        } else if info.live_processes > 0 {
            Some(SkipReason::Live { processes: info.live_processes })
        } else if info.persistent && !include_persistent {
            Some(SkipReason::Persistent)
        } else {
            None
        };
        match reason {
            Some(reason) => {
                report.skipped.push(SkippedFile { file: root_segment_name(&info.name), pool: info.name, reason })
            }
            None => {
                remove_segments(&info.name);
                report.removed.push(info.name);
            }
        }
    }
    // Growth segments of ours whose segment 0 is gone (whoever's that was).
    let files = pool_files();
    let roots: HashSet<&str> =
        files.iter().filter(|f| f.is_root && f.ownership == Ownership::Ours).map(|f| f.pool.as_str()).collect();
    for f in &files {
        match f.ownership {
            Ownership::Ours => {
                if !f.is_root && !roots.contains(f.pool.as_str()) {
                    // Only its name says it is a pool's: an arena a program made under a
                    // name of this form is no orphan (found in review). Removed only if it
                    // is an arena whose creator and owners are all provably dead.
                    match orphan_in_use(&f.name) {
                        Some(reason) => report.skip(f, reason),
                        None => {
                            let _ = shm_arena::unlink(&f.name);
                            if !report.removed.contains(&f.pool) {
                                report.removed.push(f.pool.clone());
                            }
                        }
                    }
                }
            }
            Ownership::NotOwned { owner_uid } => report.skip(f, SkipReason::NotOwned { owner_uid }),
            Ownership::Permissions { mode } => report.skip(f, SkipReason::Permissions { mode }),
            Ownership::NotAFile { owner_uid } => report.skip(f, SkipReason::NotAFile { owner_uid }),
        }
    }
    report.skipped.sort_by(|a, b| a.file.cmp(&b.file));
    report
}

/// Why a growth segment whose segment 0 is gone must stay, if it must: it is not a readable
/// arena, or a process that created it or owns blocks in it may still run (liveness says
/// `Dead` only when death is proven). Opening it is safe: it is ours (checked again on the
/// open descriptor, invariant 4) and validated before more than its header is mapped.
fn orphan_in_use(file: &str) -> Option<SkipReason> {
    use shm_arena::process::{Liveness, ProcessIdentity};
    use shm_arena::SlotState;
    let arena = match Arena::open_with(file, &OpenOptions::new().wait(Duration::from_millis(10))) {
        Ok(a) => a,
        Err(OpenError::NotFound { .. }) => return None,
        Err(_) => return Some(SkipReason::NotAPool { why: "not a readable arena" }),
    };
    let alive = |id: &ProcessIdentity| id.liveness() == Liveness::Alive;
    let owners = arena.owner_slots();
    let live = owners
        .iter()
        .filter(|o| matches!(&o.state, SlotState::Live(id) | SlotState::Recovering(id) if alive(id)))
        .count();
    if arena.creator().as_ref().is_some_and(alive) || live > 0 {
        return Some(SkipReason::Live { processes: live.max(1) });
    }
    None
}

/// Why pool `pool` of another version (`what` layout, version `found`) is left, judged on its
/// files as they are now, which are returned: not as first listed, since a pool replaced
/// meanwhile by a program of that version has new files, which that program maps (found in
/// review). Only those files may be removed.
fn judge_other_version(pool: &str, what: &'static str, found: u64) -> (SkipReason, Vec<PoolFile>) {
    let files: Vec<PoolFile> =
        pool_files().into_iter().filter(|g| g.pool == pool && g.ownership == Ownership::Ours).collect();
    let reason = match processes_mapping(&files) {
        Some(mapped_by) => SkipReason::OtherVersion { what, found, mapped_by },
        None => SkipReason::NotAPool { why: OTHER_VERSION_UNSEEN },
    };
    (reason, files)
}

/// Our pools in /dev/shm that [`list_pools`] cannot read, each with why (as `clean_pools`
/// would leave it without `include_persistent`): one of another pyshm version (and who maps
/// it), one being created, a corrupt one. Nothing is removed.
pub fn list_unreadable_pools() -> Vec<SkippedFile> {
    let ours: Vec<PoolFile> = pool_files().into_iter().filter(|f| f.ownership == Ownership::Ours).collect();
    let mut unreadable = Vec::new();
    for f in ours.iter().filter(|f| f.is_root) {
        let reason = match inspect(&f.pool, 0) {
            Ok(_) | Err(Unreadable::Gone) => continue,
            Err(Unreadable::Why(why)) => SkipReason::NotAPool { why },
            Err(Unreadable::OtherVersion(what, found)) => judge_other_version(&f.pool, what, found).0,
        };
        unreadable.push(SkippedFile { file: f.name.clone(), pool: f.pool.clone(), reason });
    }
    unreadable
}

/// Why a pool of another version is left when [`processes_mapping`] cannot tell.
const OTHER_VERSION_UNSEEN: &str =
    "made by another version of pyshm, and /proc cannot be read here to tell whether a process maps it";

/// How many processes this one can see map one of `files` (matched by inode: a process of
/// another mount namespace names the file differently; a file of another filesystem with the
/// same inode number counts too, which errs on the side of leaving the pool). Processes whose
/// maps cannot be read (another user's, without privilege) are not counted, and another pid
/// namespace's are not seen: hence removal only when asked (`include_persistent`). `None` when
/// /proc does not even show this process (not mounted, or not procfs: a sandbox that shares
/// /dev/shm): seeing no process there says nothing (found in review).
fn processes_mapping(files: &[PoolFile]) -> Option<usize> {
    std::fs::read("/proc/self/maps").ok().filter(|maps| !maps.is_empty())?;
    let inodes: HashSet<u64> = files.iter().map(|f| f.inode).collect();
    let procs = std::fs::read_dir("/proc").ok()?;
    let mapping = procs
        .filter_map(Result::ok)
        .filter(|p| p.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|p| {
            // Bytes, not text: a mapped file's name need not be UTF-8, and a process that maps
            // one was not counted (its pool removed under it; found in review).
            std::fs::read(p.path().join("maps")).is_ok_and(|maps| {
                // "address perms offset dev inode path": the fifth field.
                maps.split(|b| *b == b'\n')
                    .filter_map(|l| {
                        let field = l.split(u8::is_ascii_whitespace).filter(|f| !f.is_empty()).nth(4)?;
                        std::str::from_utf8(field).ok()?.parse::<u64>().ok()
                    })
                    .any(|ino| ino != 0 && inodes.contains(&ino))
            })
        })
        .count();
    Some(mapping)
}

impl CleanReport {
    fn skip(&mut self, f: &PoolFile, reason: SkipReason) {
        self.skipped.push(SkippedFile { file: f.name.clone(), pool: f.pool.clone(), reason });
    }
}

/// Unlinks those of `judged` still in /dev/shm as they were judged (same name and inode, ours):
/// not a file that replaced one meanwhile (without opening any; invariant 4).
fn remove_judged(judged: &[PoolFile]) {
    for f in pool_files().iter().filter(|f| f.ownership == Ownership::Ours) {
        if judged.iter().any(|j| j.name == f.name && j.inode == f.inode) {
            let _ = shm_arena::unlink(&f.name);
        }
    }
}

/// Unlinks every file of ours named as a segment of `pool` (without opening any; invariant 4).
fn remove_segments(pool: &str) {
    for f in pool_files().iter().filter(|f| f.pool == pool && f.ownership == Ownership::Ours) {
        let _ = shm_arena::unlink(&f.name);
    }
}
