//! Pools seen from outside: listing and cleaning them in /dev/shm without joining any.
//!
//! # Invariants
//!
//! 1. Nothing here registers in a pool or maps more than its directory (and its data
//!    segments' trees, to count usage): a foreign or truncated file cannot fault the caller.
//! 2. A pool with a live process is never removed; a persistent one only when asked (pool
//!    invariant 5's rule, applied from outside).
//! 3. /dev/shm is read through shm-arena's `list_segments` only, and `pool_files` is the
//!    inverse of `segment_name`.
//!
//! Protocol: `list_pools` groups the files by pool and reads each pool's directory
//! (`inspect`); `clean_dead_pools` removes the pools whose processes are all dead, then data
//! segments whose segment 0 is gone.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use shm_arena::{Arena, OpenOptions};
use shm_sync::ProcessTable;

use super::names::has_names;
use super::open::read_directory;
use super::{segment_name, ORD};
use crate::directory::{Directory, FLAG_PERSISTENT, FLAG_PERSIST_NAMED, KIND_DATA, MAX_SEGMENTS};

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
