//! Scratch segments in `/dev/shm` that never outlive their iteration.
//!
//! Invariants:
//! 1. Every name is `pyshm-fuzz-<pid>-<n>`: unique within the process, and tied to its pid so
//!    that a later run can tell the leftovers of a fuzzer that was killed (a timeout, where no
//!    code of ours runs) and remove them.
//! 2. A [`ScratchFile`] removes its file when dropped, and the panic hook removes every
//!    scratch file still registered before the previous hook runs (libFuzzer's hook aborts, so
//!    no destructor would).
//! 3. Only files with this prefix are ever removed: our own, and those of pids that no longer
//!    exist (or that are ours now but were not when the file was made).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once, TryLockError};

/// Directory of POSIX shared-memory objects on Linux.
const SHM_DIR: &str = "/dev/shm";
/// Prefix of every scratch name (invariant 1); inside shm-arena's `pyshm-` namespace.
const PREFIX: &str = "pyshm-fuzz-";

/// The scratch files that exist right now (invariant 2), and the next number to use.
static SCRATCH: Mutex<Scratch> = Mutex::new(Scratch { next: 0, live: Vec::new() });
static SETUP: Once = Once::new();

struct Scratch {
    next: u64,
    live: Vec<String>,
}

/// A file `/dev/shm/pyshm-fuzz-<pid>-<n>`, removed when dropped.
pub(crate) struct ScratchFile {
    name: String,
}

impl ScratchFile {
    /// Creates a fresh scratch file holding `contents`, zero-extended (or cut) to `len` bytes.
    pub(crate) fn create(contents: &[u8], len: u64) -> io::Result<Self> {
        SETUP.call_once(setup);
        let name = {
            let mut scratch = SCRATCH.lock().unwrap_or_else(|p| p.into_inner());
            scratch.next += 1;
            let name = format!("{PREFIX}{}-{}", std::process::id(), scratch.next);
            // Registered before it exists: the panic hook knows of the file from its first byte.
            scratch.live.push(name.clone());
            name
        };
        let file = Self { name };
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file.path())?;
        f.write_all(contents)?;
        f.set_len(len)?;
        Ok(file)
    }

    /// The name to pass to `Arena::open` (no leading slash).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> PathBuf {
        Path::new(SHM_DIR).join(&self.name)
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.path());
        let mut scratch = SCRATCH.lock().unwrap_or_else(|p| p.into_inner());
        scratch.live.retain(|n| *n != self.name);
    }
}

/// Installs the panic hook (invariant 2) and sweeps the leftovers of dead fuzzers.
fn setup() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // `try_lock`: a panic while the list is locked must still reach the previous hook.
        let scratch = match SCRATCH.try_lock() {
            Ok(s) => Some(s),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        for name in scratch.iter().flat_map(|s| s.live.iter()) {
            let _ = fs::remove_file(Path::new(SHM_DIR).join(name));
        }
        previous(info);
    }));
    sweep_dead();
}

/// Removes `pyshm-fuzz-<pid>-*` files whose pid no longer runs (invariant 3).
fn sweep_dead() {
    let Ok(entries) = fs::read_dir(SHM_DIR) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else { continue };
        let Some(Ok(pid)) = rest.split('-').next().map(str::parse::<u32>) else { continue };
        // Our own pid too: this runs before our first file, so such a file is the leftover of
        // an earlier process that had the same pid.
        if pid == std::process::id() || !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}
