//! Error types: one enum per operation, each variant an outcome the caller can act on.

use crate::layout::LayoutError;
use crate::process::IdentityError;
use crate::tree::BlockStateError;

/// The syscall behind a [`CreateError::Sys`] or [`OpenError::Sys`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysOp {
    /// `shm_open(3)`.
    ShmOpen,
    /// `shm_unlink(3)`.
    ShmUnlink,
    /// `memfd_create(2)`.
    MemfdCreate,
    /// `ftruncate(2)`.
    Ftruncate,
    /// `fallocate(2)`.
    Fallocate,
    /// `fstat(2)`.
    Fstat,
    /// `fcntl(2)` `F_ADD_SEALS`.
    Seal,
    /// `getrandom(2)`.
    GetRandom,
}

impl core::fmt::Display for SysOp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SysOp::ShmOpen => "shm_open",
            SysOp::ShmUnlink => "shm_unlink",
            SysOp::MemfdCreate => "memfd_create",
            SysOp::Ftruncate => "ftruncate",
            SysOp::Fallocate => "fallocate",
            SysOp::Fstat => "fstat",
            SysOp::Seal => "fcntl(F_ADD_SEALS)",
            SysOp::GetRandom => "getrandom",
        })
    }
}

/// Why a segment could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The requested geometry is out of range.
    #[error("invalid arena geometry: {0}")]
    Layout(#[from] LayoutError),
    /// The caller's segment name breaks a naming rule.
    #[error("invalid segment name {name:?}: {why}")]
    InvalidName {
        /// The name given.
        name: String,
        /// The rule broken.
        why: &'static str,
    },
    /// A segment of that name exists already.
    #[error("segment {name:?} already exists")]
    AlreadyExists {
        /// The name given.
        name: String,
    },
    /// `/dev/shm` (or the memfd's tmpfs) has no room for the segment; nothing was left behind.
    #[error("no room in /dev/shm for segment {name:?}: {requested} bytes requested, {} available; free space or lower the capacity", available.map_or_else(|| "unknown".to_owned(), |a| a.to_string()))]
    NoSpace {
        /// Segment name.
        name: String,
        /// Bytes the segment needs (capacity plus metadata).
        requested: u64,
        /// Bytes free in /dev/shm when it failed, if known.
        available: Option<u64>,
    },
    /// A syscall failed.
    #[error("{op} failed for segment {name:?}: {source}")]
    Sys {
        /// The syscall.
        op: SysOp,
        /// Segment name (empty before one was chosen).
        name: String,
        /// Its errno.
        #[source]
        source: rustix::io::Errno,
    },
    /// Mapping the segment failed.
    #[error("mmap failed for segment {name:?}: {source}")]
    Map {
        /// Segment name.
        name: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// This process could not register as an owner of the new arena.
    #[error(transparent)]
    Register(#[from] RegisterError),
}

/// Why a segment could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No segment has that name.
    #[error("no segment named {name:?} (it was never created, or has been unlinked)")]
    NotFound {
        /// The name given.
        name: String,
    },
    /// The object belongs to another user: refused before anything was mapped, since its
    /// owner can read and change everything in it, block its locks, or truncate it under us.
    #[error("segment {name:?} (/dev/shm/{name}) is owned by uid {owner_uid}, not by this process's effective uid {euid}: refusing to map it (another user may have created it to read or block your data); its owner or root can remove it")]
    NotOwned {
        /// The name given.
        name: String,
        /// The file's owner (`st_uid`).
        owner_uid: u32,
        /// This process's effective uid.
        euid: u32,
        /// The file's mode (`st_mode`).
        mode: u32,
    },
    /// The object is ours but other users may read or write it (group or other permission
    /// bits): refused before anything was mapped. pyshm creates every segment 0600.
    #[error("segment {name:?} (/dev/shm/{name}, owner uid {owner_uid}) has mode {:04o}: other users may read or change it, so it is not mapped; pyshm creates segments 0600 (remove it, or chmod 600 if you trust its contents)", mode & 0o7777)]
    Permissions {
        /// The name given.
        name: String,
        /// The file's owner (`st_uid`, this process's effective uid).
        owner_uid: u32,
        /// The file's mode (`st_mode`).
        mode: u32,
    },
    /// The name is not a regular file (a directory, FIFO, socket or device node planted in
    /// `/dev/shm`); refused before anything was mapped.
    #[error("segment {name:?} (/dev/shm/{name}, owner uid {owner_uid}) is not a regular file (mode {mode:o})")]
    NotAFile {
        /// The name given.
        name: String,
        /// The file's owner (`st_uid`).
        owner_uid: u32,
        /// The file's mode (`st_mode`).
        mode: u32,
    },
    /// The object is not a pyshm segment.
    #[error("{name:?} is not a pyshm segment (magic {magic:02x?})")]
    Foreign {
        /// The name given.
        name: String,
        /// The first eight bytes found.
        magic: [u8; 8],
    },
    /// The segment was written by another layout version.
    #[error("segment {name:?} has layout version {found}; this library reads version {expected}")]
    Version {
        /// The name given.
        name: String,
        /// Version found.
        found: u32,
        /// Version this library supports.
        expected: u32,
    },
    /// The object is shorter than its header says.
    #[error("segment {name:?} is truncated: {size} bytes, its header needs {expected}")]
    Truncated {
        /// The name given.
        name: String,
        /// Actual size.
        size: u64,
        /// Size required.
        expected: u64,
    },
    /// The header is inconsistent.
    #[error("segment {name:?} has a corrupt header: {what}")]
    Corrupt {
        /// The name given.
        name: String,
        /// What is wrong.
        what: &'static str,
    },
    /// The creator has not finished initialising it (or died while doing so).
    #[error("segment {name:?} was not initialised in time (its creator is still building it, or died doing so)")]
    NotInitialized {
        /// The name given.
        name: String,
    },
    /// A syscall failed.
    #[error("{op} failed for segment {name:?}: {source}")]
    Sys {
        /// The syscall.
        op: SysOp,
        /// Segment name.
        name: String,
        /// Its errno.
        #[source]
        source: rustix::io::Errno,
    },
    /// Mapping the segment failed.
    #[error("mmap failed for segment {name:?}: {source}")]
    Map {
        /// Segment name.
        name: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// This process could not register as an owner.
    #[error(transparent)]
    Register(#[from] RegisterError),
}

/// Why this process could not take an owner slot.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Every owner slot is held by a live process.
    #[error("all {slots} owner slots of the arena are held by live processes")]
    Full {
        /// Number of slots.
        slots: u32,
    },
    /// This process's identity could not be read.
    #[error("cannot identify this process: {0}")]
    Identity(#[from] IdentityError),
}

/// Why an allocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The request is larger than the largest block the arena has.
    #[error("{requested} bytes requested, but the largest block of this arena is {max_block} bytes")]
    TooLarge {
        /// Bytes requested.
        requested: u64,
        /// Largest block.
        max_block: u64,
    },
    /// The alignment is not a power of two.
    #[error("alignment {0} is not a power of two")]
    BadAlignment(u64),
    /// No free block of that size, even after emptying this handle's cache, repairing the tree
    /// and reclaiming dead owners. Other handles are asked to empty their caches at their next
    /// operation (`cached` says how much they hold), so a retry may succeed.
    #[error("arena exhausted: no free block of {block} bytes for a request of {requested}; {free} bytes free, largest free block {largest_free} bytes, {cached} bytes parked in other handles' caches")]
    Exhausted {
        /// Bytes requested.
        requested: u64,
        /// Block size needed.
        block: u64,
        /// Free bytes in the arena.
        free: u64,
        /// Largest free block.
        largest_free: u64,
        /// Bytes parked in the caches of other handles (given back at their next operation).
        cached: u64,
    },
    /// `/dev/shm` (or the memfd's tmpfs) cannot back the pages the block needs. The block was
    /// given back to the arena; nothing is held for the request.
    #[error("no room in /dev/shm for {requested} bytes ({reserving} bytes of pages to reserve, {} bytes free in /dev/shm); free memory, or enlarge /dev/shm (docker run --shm-size, a memory-backed Kubernetes emptyDir)", available.map_or_else(|| "unknown".to_owned(), |a| a.to_string()))]
    NoSpace {
        /// Bytes requested.
        requested: u64,
        /// Bytes of pages that had to be reserved.
        reserving: u64,
        /// Bytes free in /dev/shm when it failed, if known.
        available: Option<u64>,
    },
    /// The caller's limit refused the pages the block needs (see
    /// [`Arena::alloc_admitting`](crate::Arena::alloc_admitting)); the block was given back.
    #[error("{requested} bytes requested, but reserving {reserving} bytes of pages for them would exceed the caller's limit")]
    OverLimit {
        /// Bytes requested.
        requested: u64,
        /// Bytes of pages that had to be reserved.
        reserving: u64,
    },
    /// Reserving the block's pages failed for another reason (`fallocate(2)`); the block was
    /// given back.
    #[error("fallocate of {bytes} bytes at segment offset {offset} failed: {source}")]
    Reserve {
        /// Segment offset of the range.
        offset: u64,
        /// Bytes of the range.
        bytes: u64,
        /// The error.
        #[source]
        source: rustix::io::Errno,
    },
    /// This process lost its owner registration (after a fork) and could not register again.
    #[error(transparent)]
    Register(#[from] RegisterErrorKind),
}

/// A cloneable summary of a [`RegisterError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterErrorKind {
    /// See [`RegisterError::Full`].
    #[error("all {slots} owner slots of the arena are held by live processes")]
    Full {
        /// Number of slots.
        slots: u32,
    },
    /// See [`RegisterError::Identity`].
    #[error("cannot identify this process: {0}")]
    Identity(String),
}

impl From<RegisterError> for RegisterErrorKind {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::Full { slots } => Self::Full { slots },
            RegisterError::Identity(e) => Self::Identity(e.to_string()),
        }
    }
}

/// Why a block reference was refused (by free, validate, adopt, disown or a data accessor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The block does not fit inside the arena.
    #[error("block at offset {offset} of {size} bytes lies outside the arena's {capacity} bytes")]
    OutOfBounds {
        /// Offset given.
        offset: u64,
        /// Size given.
        size: u64,
        /// Arena capacity.
        capacity: u64,
    },
    /// The offset is not aligned to the block size, or the size is not a block size.
    #[error("no block of {size} bytes can start at offset {offset}")]
    Misaligned {
        /// Offset given.
        offset: u64,
        /// Size given.
        size: u64,
    },
    /// The tree says the block is not there as described.
    #[error(transparent)]
    State(#[from] BlockStateError),
    /// Taking ownership of the block needs an owner slot, and every slot of the arena is
    /// held by a live process (or this process cannot be identified).
    #[error("no owner slot free among the arena's {slots} for this process to take the block")]
    NoOwnerSlot {
        /// Slots of the arena's owner table.
        slots: u32,
    },
}
