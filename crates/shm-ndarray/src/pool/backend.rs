//! Segment backends: where the segments after segment 0 live, and how a process reaches them.
//!
//! With [`Backend::Shm`] (the default) every segment is a file in /dev/shm, opened by the name
//! its directory entry records. With [`Backend::Memfd`] segment 0 (the directory, the pool's
//! name) stays a small file in /dev/shm, and every segment the pool grows into is an anonymous
//! memfd: it does not count against /dev/shm's size, has no name anyone could open or plant, is
//! sealed against shrinking and growing, and is freed by the kernel when the last descriptor
//! and mapping of it are gone.
//!
//! # Invariants
//!
//! 1. The backend is chosen by the creator and recorded in the directory (`backend`); a
//!    process that opens the pool follows the directory, never its own options.
//! 2. A memfd segment's directory entry records its inode number (`memfd_ino`, non-zero),
//!    written with the rest of the entry before `segment_count` publishes it (segments
//!    invariant 2). An entry with `memfd_ino == 0` is a named segment.
//! 3. Every process that has mapped a memfd segment holds a descriptor of it for as long as
//!    it has the pool open (the `Arena` owns it; `PoolShared::segments` keeps the arena
//!    mapped, segments invariant 3). So a memfd segment is reachable while any member that
//!    mapped it is alive.
//! 4. A process reaches a memfd segment it did not inherit through `/proc/<pid>/fd/<n>` of a
//!    live member named by the process table (same uid: the access check is ptrace's
//!    `PTRACE_MODE_READ`, which Yama's `ptrace_scope` 1 does not restrict). A descriptor is
//!    taken only if it is a memfd whose inode is the one the entry records and whose owner is
//!    our effective uid; the arena then validates the segment's header as for any open. Opening
//!    the link makes a new open file description of the same memfd: the member that served it
//!    may die right after, the opener's descriptor and mapping stay valid.
//! 5. A forked child inherits the parent's descriptors and mappings (the arenas are in its
//!    copy of `PoolShared`), so it never needs a member.
//!
//! What does not hold: a memfd segment that no live member has mapped is gone (its creator left
//! before anyone else mapped it). Its arrays are lost with it; a handle into it fails with
//! [`PoolError::SegmentUnreachable`]. Within a program this happens only when the process that
//! created arrays there exits while handles to them are still in flight.

use std::os::fd::{AsFd, OwnedFd};

use shm_arena::{Arena, ArenaOptions, CreateError, OpenOptions};
use shm_sync::SlotState;

use super::{growth_segment_name, PoolShared, ORD};
use crate::directory::KIND_DATA;
use crate::error::{HandleError, PoolError};

/// Where the segments a pool grows into live (segment 0 is always a file in /dev/shm).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Files in /dev/shm (`pyshm-<pool>-<suffix>`), opened by name.
    #[default]
    Shm,
    /// Anonymous memfds, reached by inheritance or through a live member's descriptors: they
    /// do not count against /dev/shm.
    Memfd,
}

impl Backend {
    /// The word the directory records (invariant 1).
    pub(crate) fn to_word(self) -> u64 {
        match self {
            Backend::Shm => 0,
            Backend::Memfd => 1,
        }
    }

    /// The backend a directory word names; an unknown word is read as `Shm` (its segments are
    /// then opened by name, and a memfd entry's own `memfd_ino` still says how to open it).
    pub(crate) fn from_word(word: u64) -> Self {
        if word == 1 {
            Backend::Memfd
        } else {
            Backend::Shm
        }
    }

    /// `"shm"` or `"memfd"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Shm => "shm",
            Backend::Memfd => "memfd",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = PoolError;

    fn from_str(s: &str) -> Result<Self, PoolError> {
        match s {
            "shm" => Ok(Backend::Shm),
            "memfd" => Ok(Backend::Memfd),
            _ => Err(PoolError::Options("backend must be \"shm\" or \"memfd\"")),
        }
    }
}

/// A segment the pool grows into: its arena, the suffix of its file name (0 for a memfd) and the
/// inode of its memfd (0 for a named segment).
pub(super) struct NewSegment {
    pub(super) arena: Arena,
    pub(super) suffix: u64,
    pub(super) memfd_ino: u64,
}

impl super::Pool {
    /// Where the pool's growth segments live (as its creator chose: invariant 1).
    pub fn backend(&self) -> Backend {
        self.shared.backend()
    }
}

impl PoolShared {
    /// The pool's backend, as its directory records it (invariant 1).
    pub(super) fn backend(&self) -> Backend {
        Backend::from_word(self.dir().header().backend.load(ORD))
    }

    /// Creates a growth segment with `options` in the pool's backend. `Ok(None)`: /dev/shm is
    /// full (the pool cannot grow). A named segment gets a fresh random name, never an existing
    /// one (pool invariant 1).
    pub(super) fn create_segment(&self, options: &ArenaOptions) -> Result<Option<NewSegment>, PoolError> {
        if self.backend() == Backend::Memfd {
            let arena = match options.create_anonymous() {
                Ok(a) => a,
                Err(CreateError::NoSpace { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let stat = rustix::fs::fstat(arena.fd()).map_err(|e| PoolError::SegmentUnreachable {
                pool: self.name.clone(),
                index: usize::MAX,
                why: format!("fstat of a new memfd: {e}"),
            })?;
            // An inode number is never 0 on shmem; keep invariant 2's "0 means named" anyway.
            return Ok(Some(NewSegment { arena, suffix: 0, memfd_ino: stat.st_ino.max(1) }));
        }
        // A name that exists already was pre-created by someone else (or is a 2^-64
        // collision): never open, reuse or remove it, draw another. A grower that died before
        // recording its segment left a name nobody will draw again (`clean` removes it once the
        // pool is gone).
        let mut collisions = 0;
        loop {
            let suffix = shm_arena::random_u64()?;
            match options.clone().name(growth_segment_name(&self.name, suffix)).create() {
                Ok(arena) => return Ok(Some(NewSegment { arena, suffix, memfd_ino: 0 })),
                Err(CreateError::NoSpace { .. }) => return Ok(None),
                Err(CreateError::AlreadyExists { .. }) if collisions < 8 => collisions += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Opens growth segment `index` as its directory entry says: by name, or a memfd through a
    /// live member (invariant 4).
    pub(super) fn open_growth_segment(&self, index: usize) -> Result<Arena, PoolError> {
        let ino = self.dir().segments()[index].memfd_ino.load(ORD);
        if ino == 0 {
            return Ok(Arena::open_with(&self.segment_file_name(index), &OpenOptions::new())?);
        }
        let fd = self.memfd_from_members(index, ino)?;
        Ok(Arena::open_fd(fd, &OpenOptions::new())?)
    }

    /// Why the data segment of a pinned array's header cannot be mapped, if that is why its data
    /// cannot be resolved (a memfd segment nobody holds any more): for the error a first pin
    /// reports.
    pub(super) fn unreachable_data_segment(&self, h: &crate::header::ArrayHeader) -> Option<HandleError> {
        let index = h.data_segment.load(ORD);
        let entry = self.dir().segments().get(usize::try_from(index).ok()?)?;
        if entry.memfd_ino.load(ORD) == 0 || entry.kind.load(ORD) != KIND_DATA {
            return None;
        }
        self.segment(index as u16).err().map(|e| HandleError::Segment(e.to_string()))
    }

    /// How many memfd segments are not among `mapped` (what `open_segments` just returned):
    /// those it could not open, which no live process holds any more.
    pub(super) fn lost_segments(&self, mapped: &[(u16, &Arena, u64)]) -> u64 {
        let count = self.dir().header().segment_count.load(core::sync::atomic::Ordering::Acquire);
        let count = count.min(crate::directory::MAX_SEGMENTS as u64) as u16;
        (0..count)
            .filter(|i| {
                self.dir().segments()[*i as usize].memfd_ino.load(ORD) != 0 && !mapped.iter().any(|(m, ..)| m == i)
            })
            .count() as u64
    }

    /// A descriptor of the memfd with inode `ino`, opened through `/proc/<pid>/fd` of a live
    /// member other than this process (invariant 4).
    fn memfd_from_members(&self, index: usize, ino: u64) -> Result<OwnedFd, PoolError> {
        let table = self.processes();
        let me = std::process::id();
        let mut asked = 0;
        for slot in 0..table.len() as u32 {
            let identity = match table.state(slot) {
                Some(SlotState::Live(bits) | SlotState::Recovering(bits)) => bits,
                _ => continue,
            };
            let Some(member) = shm_platform::process::ProcessIdentity::from_bits(identity) else { continue };
            if member.pid() == me {
                continue;
            }
            asked += 1;
            if let Some(fd) = memfd_of(member.pid(), ino) {
                return Ok(fd);
            }
        }
        Err(PoolError::SegmentUnreachable {
            pool: self.name.clone(),
            index,
            why: format!("no live process of the pool ({asked} asked) holds its memfd any more"),
        })
    }
}

/// Opens the memfd with inode `ino` among the descriptors of process `pid`, if it has one and
/// it is ours (invariant 4). Any failure (the process died, another uid, a descriptor closed
/// while we looked) is `None`: the caller asks the next member.
fn memfd_of(pid: u32, ino: u64) -> Option<OwnedFd> {
    let dir = format!("/proc/{pid}/fd");
    let uid = rustix::process::geteuid().as_raw();
    for entry in std::fs::read_dir(&dir).ok()?.flatten() {
        let path = entry.path();
        // Cheap filter first: the link text of a memfd is "/memfd:<debug name> (deleted)".
        match std::fs::read_link(&path) {
            Ok(target) if target.as_os_str().as_encoded_bytes().starts_with(b"/memfd:") => {}
            _ => continue,
        }
        let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(&path) else { continue };
        let fd: OwnedFd = file.into();
        // Checked on the descriptor we hold, not on the path: no window between check and use.
        match rustix::fs::fstat(fd.as_fd()) {
            Ok(st) if st.st_ino == ino && st.st_uid == uid && is_memfd(&fd) => return Some(fd),
            _ => continue,
        }
    }
    None
}

/// Whether `fd` is a sealable memfd with its size sealed (what `create_anonymous` makes): a
/// regular file of another kind with the same inode number on another device is refused.
fn is_memfd(fd: &OwnedFd) -> bool {
    rustix::fs::fcntl_get_seals(fd.as_fd())
        .is_ok_and(|s| s.contains(rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW))
}

/// The memory this process may use: the machine's (`MemTotal`), or its cgroup v2 limit
/// (`memory.max`) if lower. A memfd's pages are charged to the cgroup of the process that first
/// touches them; past the limit the kernel reclaims, then OOM-kills (no `ENOSPC`, no `SIGBUS`).
pub(super) fn memory_limit() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kib: u64 =
        meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    let total = total_kib * 1024;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|c| {
        let path = c.lines().find_map(|l| l.strip_prefix("0::"))?.trim().to_owned();
        std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).ok()?.trim().parse::<u64>().ok()
    });
    Some(cgroup.map_or(total, |c| c.min(total)))
}
