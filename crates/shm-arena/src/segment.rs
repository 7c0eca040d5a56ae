//! A segment: a named POSIX shared-memory object or an anonymous memfd, reserved, mapped once.
//!
//! Invariants:
//! 1. A named segment is created exclusively, mode 0600, under a caller-chosen prefix plus 128
//!    random bits unless the caller names it. It is a sparse file (`ftruncate`): address space
//!    is free, memory is not. The metadata pages (header, owner table, tree, reserved-page
//!    bitmap) are reserved with `fallocate` at creation; data pages are reserved when a block
//!    is handed out (`crate::pages`), or all at creation when the header's `WHOLE_RESERVED`
//!    flag is set. Either way a full `/dev/shm` is an error (at creation or at allocation),
//!    never a `SIGBUS` on a page a block owns.
//! 2. Nothing in a segment is trusted before the header validates: the opener checks the size
//!    of the object, then the magic, version, checksum and a recomputed [`Layout`], and only then
//!    maps the whole segment. Every later access stays inside that layout.
//! 3. A segment is usable once its init word reads `READY` (`Acquire`, pairing with the
//!    creator's `Release` store after it wrote the header and the tree's tail). An opener waits
//!    on that word (a shared futex) for a bounded time.
//! 4. The immutable header is read once, with a volatile copy, and validated as a copy: another
//!    process writing to it later cannot change what this process believes.
//! 5. Another user is never trusted. A named segment is opened with `O_NOFOLLOW`, and before a
//!    byte of it is mapped, the open descriptor (`fstat`, not the name) must be a regular file
//!    owned by this process's effective uid with no group or other permission bits
//!    ([`Ownership::Ours`]); anything else is an [`OpenError`] naming the file and its owner.
//!    Checking the descriptor leaves no window: the name can be replaced afterwards, the file
//!    we hold cannot. A memfd received by descriptor is not checked (it has no name to plant).
//!
//! The header page:
//!
//! ```text
//! 0    ImmutableHeader (magic, version, id, creator, geometry, derived offsets, checksum)
//! 512  init word (u32): 0 while being built, READY once usable
//! 520  root word (u64): free for the layer above (e.g. the block holding its own directory)
//! 528  trim epoch (u32): bumped by an allocation that failed; every handle empties its cache
//!      when it sees a new value (zero in a new segment)
//! 536  reserved-page count (u64): the bitmap's set bits, counted as they flip (zero in a new
//!      segment; a hint for give-back policy, the bitmap stays the truth: `pages` invariant 5)
//! 544  trim state (u32): the tag of the arena running `release_free` (0: none), the
//!      allocations waiting for it and a release sequence (`crate::trim`; zero in a new
//!      segment, and never written by earlier versions of this layout, which read it as "no trim")
//! ```

use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{CreateError, OpenError, SysOp};
use crate::layout::{Layout, HEADER_SIZE};
use crate::sys::{self, FileStat};
use shm_platform::futex;
use shm_platform::process::ProcessIdentity;
use shm_platform::sync::{SharedU32, SharedU64};

/// Magic at offset 0.
pub const MAGIC: [u8; 8] = *b"PYSHMSEG";
/// Version of the layout described in this module and in `layout`.
pub const LAYOUT_VERSION: u32 = 2;
/// Header flag: every page of the segment was reserved at creation (no per-block reservation).
pub(crate) const FLAG_WHOLE_RESERVED: u32 = 1;
/// Header flag: a memfd whose data pages are never reserved with `fallocate` (it is not in
/// /dev/shm's tmpfs: its pages are charged to the memory cgroup when touched, and running out
/// is the cgroup's OOM path, not `ENOSPC`). The bitmap still marks the pages handed out.
pub(crate) const FLAG_LAZY_PAGES: u32 = 2;
const READY: u32 = 0x5245_4459; // "READY" in spirit: any non-zero value other than garbage zero
const INIT_OFFSET: usize = 512;
const ROOT_OFFSET: usize = 520;
const TRIM_OFFSET: usize = 528;
const RESERVED_OFFSET: usize = 536;
const TRIM_STATE_OFFSET: usize = 544;
/// Longest name: `NAME_MAX`, the longest file name in `/dev/shm`.
const MAX_NAME_LEN: usize = 255;

/// The part of the header written once by the creator.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ImmutableHeader {
    pub(crate) magic: [u8; 8],
    pub(crate) layout_version: u32,
    pub(crate) header_size: u32,
    pub(crate) segment_id: [u8; 16],
    pub(crate) creator: u64,
    pub(crate) min_block_shift: u32,
    pub(crate) depth: u32,
    pub(crate) capacity: u64,
    pub(crate) owner_slots: u32,
    /// [`FLAG_WHOLE_RESERVED`], [`FLAG_LAZY_PAGES`] or 0; any other bit is refused as corrupt.
    pub(crate) flags: u32,
    pub(crate) owners_offset: u64,
    pub(crate) search_offset: u64,
    pub(crate) tree_offset: u64,
    pub(crate) data_offset: u64,
    pub(crate) segment_size: u64,
    pub(crate) checksum: u64,
}

const _: () = assert!(std::mem::size_of::<ImmutableHeader>() <= INIT_OFFSET);
const _: () = assert!(std::mem::size_of::<ImmutableHeader>() == 112);
const _: () =
    assert!(ROOT_OFFSET % 8 == 0 && ROOT_OFFSET + 8 <= TRIM_OFFSET && TRIM_OFFSET + 4 <= HEADER_SIZE as usize);
const _: () = assert!(RESERVED_OFFSET % 8 == 0 && TRIM_OFFSET + 4 <= RESERVED_OFFSET);
const _: () = assert!(RESERVED_OFFSET + 8 <= TRIM_STATE_OFFSET && TRIM_STATE_OFFSET + 4 <= HEADER_SIZE as usize);

impl ImmutableHeader {
    fn new(layout: &Layout, segment_id: [u8; 16], creator: u64, flags: u32) -> Self {
        let mut h = Self {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            header_size: HEADER_SIZE as u32,
            segment_id,
            creator,
            min_block_shift: layout.min_block_shift,
            depth: layout.depth,
            capacity: layout.capacity,
            owner_slots: layout.owner_slots,
            flags,
            owners_offset: layout.owners_offset,
            search_offset: layout.search_offset,
            tree_offset: layout.tree_offset,
            data_offset: layout.data_offset,
            segment_size: layout.segment_size,
            checksum: 0,
        };
        h.checksum = h.compute_checksum();
        h
    }

    /// FNV-1a over every field before the checksum, field by field (no padding is hashed).
    fn compute_checksum(&self) -> u64 {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                hash ^= u64::from(*b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(&self.magic);
        eat(&self.layout_version.to_le_bytes());
        eat(&self.header_size.to_le_bytes());
        eat(&self.segment_id);
        eat(&self.creator.to_le_bytes());
        eat(&self.min_block_shift.to_le_bytes());
        eat(&self.depth.to_le_bytes());
        eat(&self.capacity.to_le_bytes());
        eat(&self.owner_slots.to_le_bytes());
        eat(&self.flags.to_le_bytes());
        for v in [self.owners_offset, self.search_offset, self.tree_offset, self.data_offset, self.segment_size] {
            eat(&v.to_le_bytes());
        }
        hash
    }

    /// Validates a header copy against invariant 2 and returns its layout.
    fn validate(&self, name: &str, object_len: u64) -> Result<Layout, OpenError> {
        let corrupt = |what: &'static str| OpenError::Corrupt { name: name.to_owned(), what };
        if self.magic != MAGIC {
            return Err(OpenError::Foreign { name: name.to_owned(), magic: self.magic });
        }
        if self.layout_version != LAYOUT_VERSION {
            return Err(OpenError::Version {
                name: name.to_owned(),
                found: self.layout_version,
                expected: LAYOUT_VERSION,
            });
        }
        if self.checksum != self.compute_checksum() {
            return Err(corrupt("header checksum does not match"));
        }
        if self.header_size != HEADER_SIZE as u32 {
            return Err(corrupt("header size"));
        }
        if self.flags & !(FLAG_WHOLE_RESERVED | FLAG_LAZY_PAGES) != 0 {
            return Err(corrupt("unknown header flags"));
        }
        let min_block = 1u64.checked_shl(self.min_block_shift).unwrap_or(0);
        let layout =
            Layout::new(min_block, self.capacity, self.owner_slots).map_err(|_| corrupt("geometry out of range"))?;
        let recorded = Layout {
            min_block_shift: self.min_block_shift,
            capacity: self.capacity,
            depth: self.depth,
            owner_slots: self.owner_slots,
            owners_offset: self.owners_offset,
            search_offset: self.search_offset,
            tree_offset: self.tree_offset,
            pages_offset: layout.pages_offset,
            data_offset: self.data_offset,
            segment_size: self.segment_size,
        };
        if recorded != layout {
            return Err(corrupt("recorded layout differs from the one its geometry implies"));
        }
        if object_len < layout.segment_size {
            return Err(OpenError::Truncated {
                name: name.to_owned(),
                size: object_len,
                expected: layout.segment_size,
            });
        }
        Ok(layout)
    }
}

/// What a segment is called, or that it has no name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentName {
    /// A POSIX shared-memory object, `/dev/shm/<name>`.
    Named(String),
    /// An anonymous memfd, shared by inheritance (fork) or by passing its descriptor.
    Anonymous,
}

impl SegmentName {
    /// Checks a caller-chosen name: any valid POSIX shared-memory name without its leading
    /// slash, that is 1 to 255 printable ASCII characters (no space, no control), no `/`, and
    /// neither `.` nor `..`.
    ///
    /// # Errors
    ///
    /// [`CreateError::InvalidName`] naming the rule broken.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_arena::SegmentName;
    ///
    /// assert!(SegmentName::validate("myapp-arena").is_ok());
    /// assert!(SegmentName::validate("a/b").is_err());
    /// ```
    pub fn validate(name: &str) -> Result<(), CreateError> {
        let bad = |why: &'static str| CreateError::InvalidName { name: name.to_owned(), why };
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(bad("length must be 1..=255 characters"));
        }
        if name.contains('/') {
            return Err(bad("'/' is not allowed"));
        }
        if !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("only printable ASCII characters other than space are allowed"));
        }
        if name == "." || name == ".." {
            return Err(bad("\".\" and \"..\" name directories"));
        }
        Ok(())
    }

    /// A fresh unguessable name: `prefix` and 32 hex digits from the kernel's random source.
    /// The name is checked when a segment is created under it.
    ///
    /// # Errors
    ///
    /// [`CreateError::Sys`] if `getrandom` fails.
    pub fn random(prefix: &str) -> Result<String, CreateError> {
        let mut bytes = [0u8; 16];
        sys::fill_random(&mut bytes).map_err(|e| CreateError::Sys {
            op: SysOp::GetRandom,
            name: String::new(),
            source: e,
        })?;
        Ok(format!("{prefix}{}", hex(&bytes)))
    }
}

/// 64 bits from the kernel's random source, for names that another user must not guess (such
/// as the suffix of a pool's growth segment).
///
/// # Errors
///
/// [`CreateError::Sys`] if `getrandom` fails.
pub fn random_u64() -> Result<u64, CreateError> {
    let mut bytes = [0u8; 8];
    sys::fill_random(&mut bytes).map_err(|e| CreateError::Sys {
        op: SysOp::GetRandom,
        name: String::new(),
        source: e,
    })?;
    Ok(u64::from_le_bytes(bytes))
}

/// Whether this process may trust a file in `/dev/shm` (invariant 5): who owns it and who else
/// may write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// A regular file owned by this process's effective uid, with no group or other permission
    /// bits: the only kind of file that is mapped or removed.
    Ours,
    /// A regular file owned by another uid.
    NotOwned {
        /// The file's owner.
        owner_uid: u32,
    },
    /// Our file, but with group or other permission bits: someone changed its mode (pyshm
    /// creates segments 0600), so its contents are not trusted.
    Permissions {
        /// The file's permission bits (`st_mode & 0o7777`).
        mode: u32,
    },
    /// Not a regular file (a symlink, directory, FIFO, socket or device).
    NotAFile {
        /// The file's owner.
        owner_uid: u32,
    },
}

impl Ownership {
    /// Judges a file's `stat` for a process of effective uid `euid`.
    fn judge(stat: &FileStat, euid: u32) -> Self {
        const S_IFMT: u32 = 0o170_000;
        const S_IFREG: u32 = 0o100_000;
        if stat.mode & S_IFMT != S_IFREG {
            Ownership::NotAFile { owner_uid: stat.uid }
        } else if stat.uid != euid {
            Ownership::NotOwned { owner_uid: stat.uid }
        } else if stat.mode & 0o077 != 0 {
            Ownership::Permissions { mode: stat.mode & 0o7777 }
        } else {
            Ownership::Ours
        }
    }

    /// `Ok` for [`Ownership::Ours`], the matching [`OpenError`] otherwise.
    fn check(stat: &FileStat, name: &str) -> Result<(), OpenError> {
        let euid = sys::effective_uid();
        let name = name.to_owned();
        match Self::judge(stat, euid) {
            Ownership::Ours => Ok(()),
            Ownership::NotOwned { owner_uid } => Err(OpenError::NotOwned { name, owner_uid, euid, mode: stat.mode }),
            Ownership::Permissions { .. } => Err(OpenError::Permissions { name, owner_uid: stat.uid, mode: stat.mode }),
            Ownership::NotAFile { owner_uid } => Err(OpenError::NotAFile { name, owner_uid, mode: stat.mode }),
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A mapped, validated segment.
pub(crate) struct Segment {
    map: MmapRaw,
    fd: OwnedFd,
    name: SegmentName,
    layout: Layout,
    header: ImmutableHeader,
}

impl Segment {
    /// Creates, reserves, maps and initialises a segment; `init` runs before it is published.
    pub(crate) fn create(
        name: SegmentName,
        layout: Layout,
        populate: bool,
        whole_reserved: bool,
        init: impl FnOnce(&Segment),
    ) -> Result<Self, CreateError> {
        let label = match &name {
            SegmentName::Named(n) => n.clone(),
            SegmentName::Anonymous => "(anonymous)".to_owned(),
        };
        let sys_err = |op, source| CreateError::Sys { op, name: label.clone(), source };
        let fd = match &name {
            SegmentName::Named(n) => {
                SegmentName::validate(n)?;
                sys::shm_create_exclusive(n).map_err(|e| {
                    if e == rustix::io::Errno::EXIST {
                        CreateError::AlreadyExists { name: n.clone() }
                    } else {
                        sys_err(SysOp::ShmOpen, e)
                    }
                })?
            }
            SegmentName::Anonymous => sys::memfd_create("pyshm").map_err(|e| sys_err(SysOp::MemfdCreate, e))?,
        };
        // From here on a failure must not leave a named object behind.
        let unlink_on_error = |e: CreateError| {
            if let SegmentName::Named(n) = &name {
                let _ = sys::shm_unlink(n);
            }
            e
        };
        let size = layout.segment_size;
        sys::set_len(fd.as_fd(), size).map_err(|e| unlink_on_error(sys_err(SysOp::Ftruncate, e)))?;
        // Invariant 1: the metadata always, the data pages only when asked to reserve it all.
        let reserved = if whole_reserved { size } else { layout.metadata_bytes() };
        if let Err(e) = sys::reserve(fd.as_fd(), 0, reserved) {
            let err = if e == rustix::io::Errno::NOSPC {
                CreateError::NoSpace { name: label.clone(), requested: reserved, available: shm_free_bytes() }
            } else {
                sys_err(SysOp::Fallocate, e)
            };
            return Err(unlink_on_error(err));
        }
        if name == SegmentName::Anonymous {
            sys::seal_size(fd.as_fd()).map_err(|e| sys_err(SysOp::Seal, e))?;
        }
        let map = map(&fd, size, populate)
            .map_err(|e| unlink_on_error(CreateError::Map { name: label.clone(), source: e }))?;
        let mut segment_id = [0u8; 16];
        sys::fill_random(&mut segment_id).map_err(|e| unlink_on_error(sys_err(SysOp::GetRandom, e)))?;
        let creator = ProcessIdentity::current().map(ProcessIdentity::to_bits).unwrap_or(0);
        let flags = if whole_reserved {
            FLAG_WHOLE_RESERVED
        } else if name == SegmentName::Anonymous {
            FLAG_LAZY_PAGES
        } else {
            0
        };
        let header = ImmutableHeader::new(&layout, segment_id, creator, flags);
        let segment = Segment { map, fd, name, layout, header };
        // SAFETY: the mapping is at least HEADER_SIZE bytes (layout invariant) and page
        // aligned, so the header fits and is aligned; nobody else uses the object before the
        // init word reads READY (invariant 3), so this plain write races with no one.
        unsafe { std::ptr::write_volatile(segment.base().as_ptr().cast::<ImmutableHeader>(), header) };
        init(&segment);
        // Release: pairs with the Acquire in `wait_ready`; publishes the header and `init`'s writes.
        segment.init_word().store(READY, std::sync::atomic::Ordering::Release);
        futex::wake(segment.init_word(), u32::MAX);
        Ok(segment)
    }

    /// Opens and validates the named segment `name` (invariants 5 and 2), waiting up to `wait`
    /// for its creator to finish.
    pub(crate) fn open(name: &str, populate: bool, wait: Duration) -> Result<Self, OpenError> {
        let fd = sys::shm_open_existing(name).map_err(|e| match e {
            rustix::io::Errno::NOENT => OpenError::NotFound { name: name.to_owned() },
            // O_NOFOLLOW refused a symlink planted under the name: say whose it is, as for any
            // entry that is not a regular file (invariant 5; found in review).
            rustix::io::Errno::LOOP => match sys::entry_stat(name) {
                Ok(st) => OpenError::NotAFile { name: name.to_owned(), owner_uid: st.uid, mode: st.mode },
                Err(_) => OpenError::Sys { op: SysOp::ShmOpen, name: name.to_owned(), source: e },
            },
            _ => OpenError::Sys { op: SysOp::ShmOpen, name: name.to_owned(), source: e },
        })?;
        // Invariant 5: the descriptor, not the name, before anything is mapped.
        let stat = sys::file_stat(fd.as_fd()).map_err(|e| OpenError::Sys {
            op: SysOp::Fstat,
            name: name.to_owned(),
            source: e,
        })?;
        Ownership::check(&stat, name)?;
        Self::open_fd(fd, SegmentName::Named(name.to_owned()), populate, wait)
    }

    /// Validates and maps a segment from its descriptor (named or memfd).
    pub(crate) fn open_fd(fd: OwnedFd, name: SegmentName, populate: bool, wait: Duration) -> Result<Self, OpenError> {
        let label = match &name {
            SegmentName::Named(n) => n.clone(),
            SegmentName::Anonymous => "(anonymous)".to_owned(),
        };
        let deadline = Instant::now() + wait;
        // The creator sizes the object right after creating it: a short object may be new.
        let len = loop {
            let len = sys::file_len(fd.as_fd()).map_err(|e| OpenError::Sys {
                op: SysOp::Fstat,
                name: label.clone(),
                source: e,
            })?;
            if len >= HEADER_SIZE {
                break len;
            }
            if Instant::now() >= deadline {
                return Err(OpenError::Truncated { name: label, size: len, expected: HEADER_SIZE });
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let head = map(&fd, HEADER_SIZE, false).map_err(|e| OpenError::Map { name: label.clone(), source: e })?;
        wait_ready(&head, &label, deadline)?;
        // SAFETY: `head` maps HEADER_SIZE bytes, page aligned; ImmutableHeader is plain data of
        // 112 bytes at offset 0. The volatile copy is what invariant 4 validates.
        let header = unsafe { std::ptr::read_volatile(head.as_ptr().cast::<ImmutableHeader>()) };
        drop(head);
        let layout = header.validate(&label, len)?;
        let map = map(&fd, layout.segment_size, populate).map_err(|e| OpenError::Map { name: label, source: e })?;
        Ok(Segment { map, fd, name, layout, header })
    }

    pub(crate) fn base(&self) -> NonNull<u8> {
        NonNull::new(self.map.as_mut_ptr()).expect("a mapping is never at address 0")
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn name(&self) -> &SegmentName {
        &self.name
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Whether every page was reserved at creation (the header's `WHOLE_RESERVED` flag).
    pub(crate) fn whole_reserved(&self) -> bool {
        self.header.flags & FLAG_WHOLE_RESERVED != 0
    }

    /// Whether data pages are handed out without `fallocate` ([`FLAG_LAZY_PAGES`]: a memfd).
    pub(crate) fn lazy_pages(&self) -> bool {
        self.header.flags & FLAG_LAZY_PAGES != 0
    }

    pub(crate) fn segment_id(&self) -> [u8; 16] {
        self.header.segment_id
    }

    pub(crate) fn creator(&self) -> Option<ProcessIdentity> {
        ProcessIdentity::from_bits(self.header.creator)
    }

    fn init_word(&self) -> &SharedU32 {
        // SAFETY: INIT_OFFSET + 4 <= HEADER_SIZE <= mapping length, 4-byte aligned on a page
        // aligned base; the word is only ever accessed atomically (words invariant 1); the
        // reference lives no longer than `self`, which keeps the mapping.
        unsafe { &*self.base().as_ptr().wrapping_add(INIT_OFFSET).cast::<SharedU32>() }
    }

    /// The root word: 64 bits for the layer above, zero in a new segment.
    pub(crate) fn root_word(&self) -> &SharedU64 {
        // SAFETY: as for `init_word`, at ROOT_OFFSET (8-byte aligned, inside the header page).
        unsafe { &*self.base().as_ptr().wrapping_add(ROOT_OFFSET).cast::<SharedU64>() }
    }

    /// The trim epoch (see the module doc's header page).
    pub(crate) fn trim_word(&self) -> &SharedU32 {
        // SAFETY: as for `init_word`, at TRIM_OFFSET (4-byte aligned, inside the header page).
        unsafe { &*self.base().as_ptr().wrapping_add(TRIM_OFFSET).cast::<SharedU32>() }
    }

    /// The reserved-page count (see the module doc's header page).
    pub(crate) fn reserved_pages_word(&self) -> &SharedU64 {
        // SAFETY: as for `init_word`, at RESERVED_OFFSET (8-byte aligned, inside the header page).
        unsafe { &*self.base().as_ptr().wrapping_add(RESERVED_OFFSET).cast::<SharedU64>() }
    }

    /// The trim state (see the module doc's header page and `crate::trim`).
    pub(crate) fn trim_state_word(&self) -> &SharedU32 {
        // SAFETY: as for `init_word`, at TRIM_STATE_OFFSET (4-byte aligned, inside the header page).
        unsafe { &*self.base().as_ptr().wrapping_add(TRIM_STATE_OFFSET).cast::<SharedU32>() }
    }

    /// `count` atomic words of `T` at `offset`.
    ///
    /// # Safety
    ///
    /// - `offset + count * size_of::<T>()` lies within the segment and `offset` is aligned
    ///   for `T`;
    /// - `T` is an atomic type (or a `repr(C)` struct of atomics) that every process accesses
    ///   only atomically at that offset.
    pub(crate) unsafe fn atomics<T>(&self, offset: u64, count: usize) -> &[T] {
        debug_assert!(offset as usize + count * std::mem::size_of::<T>() <= self.layout.segment_size as usize);
        debug_assert_eq!(offset as usize % std::mem::align_of::<T>(), 0);
        // SAFETY: the caller guarantees bounds, alignment and atomic-only access; the mapping
        // outlives the returned slice because the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.base().as_ptr().wrapping_add(offset as usize).cast::<T>(), count) }
    }
}

fn map(fd: &OwnedFd, len: u64, populate: bool) -> std::io::Result<MmapRaw> {
    let mut options = MmapOptions::new();
    options.len(len as usize);
    if populate {
        options.populate();
    }
    options.map_raw(fd)
}

/// Waits for the creator's READY (invariant 3).
fn wait_ready(head: &MmapRaw, label: &str, deadline: Instant) -> Result<(), OpenError> {
    // SAFETY: `head` maps HEADER_SIZE bytes; INIT_OFFSET is 4-byte aligned inside them; the
    // word is only accessed atomically; the reference does not outlive `head`.
    let word = unsafe { &*head.as_ptr().wrapping_add(INIT_OFFSET).cast::<SharedU32>() };
    loop {
        // Acquire: pairs with the creator's Release store of READY.
        let state = word.load(std::sync::atomic::Ordering::Acquire);
        if state == READY {
            return Ok(());
        }
        // SAFETY: as above; the magic is plain bytes at offset 0.
        let magic = unsafe { std::ptr::read_volatile(head.as_ptr().cast::<[u8; 8]>()) };
        if magic != MAGIC && magic != [0; 8] {
            return Err(OpenError::Foreign { name: label.to_owned(), magic });
        }
        if state != 0 {
            return Err(OpenError::Corrupt { name: label.to_owned(), what: "init word holds an unknown value" });
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(OpenError::NotInitialized { name: label.to_owned() });
        }
        let _ = futex::wait(word, state, (deadline - now).min(Duration::from_millis(50)));
    }
}

/// A named segment found in `/dev/shm` by [`list_segments`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    /// Its name, prefix included (what [`Arena::open`](crate::Arena::open) takes).
    pub name: String,
    /// Bytes of the file.
    pub len: u64,
    /// Its owner's uid.
    pub owner_uid: u32,
    /// Its inode number (how `/proc/<pid>/maps` names a process's mapping of it).
    pub inode: u64,
    /// Whether this process may trust it (invariant 5), as `lstat` saw it when listed. Only
    /// [`Ownership::Ours`] files can be opened; only they should be removed.
    pub ownership: Ownership,
}

/// Every object in `/dev/shm` whose name starts with `prefix`, sorted by name, without opening
/// any of them (so a foreign or half-made file is listed too, with its [`Ownership`]). The prefix is the caller's: the
/// one it created its segments under ([`ArenaOptions::name_prefix`](crate::ArenaOptions::name_prefix),
/// or its own naming scheme).
///
/// # Errors
///
/// The errors of reading `/dev/shm`.
pub fn list_segments(prefix: &str) -> std::io::Result<Vec<SegmentFile>> {
    let euid = sys::effective_uid();
    Ok(sys::list_shm_objects(prefix)?
        .into_iter()
        .map(|(name, stat)| SegmentFile {
            name,
            len: stat.len,
            owner_uid: stat.uid,
            inode: stat.inode,
            ownership: Ownership::judge(&stat, euid),
        })
        .collect())
}

/// Bytes an unprivileged process can still allocate in `/dev/shm`, if `statvfs` can say.
/// Only a hint: other processes allocate concurrently.
pub fn shm_free_bytes() -> Option<u64> {
    sys::shm_free_bytes().ok()
}

/// Removes the named segment `name` from `/dev/shm` (mappings stay valid until unmapped),
/// without opening it.
///
/// # Errors
///
/// [`OpenError::NotFound`] if there is no such object, [`OpenError::Sys`] otherwise.
pub fn unlink(name: &str) -> Result<(), OpenError> {
    sys::shm_unlink(name).map_err(|e| {
        if e == rustix::io::Errno::NOENT {
            OpenError::NotFound { name: name.to_owned() }
        } else {
            OpenError::Sys { op: SysOp::ShmUnlink, name: name.to_owned(), source: e }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new(64, 1 << 16, 4).unwrap()
    }

    #[test]
    fn header_round_trips_and_detects_tampering() {
        let l = layout();
        let h = ImmutableHeader::new(&l, [7; 16], 42, 0);
        assert_eq!(h.validate("x", l.segment_size).unwrap(), l);
        let whole = ImmutableHeader::new(&l, [7; 16], 42, FLAG_WHOLE_RESERVED);
        assert_eq!(whole.validate("x", l.segment_size).unwrap(), l);
        let lazy = ImmutableHeader::new(&l, [7; 16], 42, FLAG_LAZY_PAGES);
        assert_eq!(lazy.validate("x", l.segment_size).unwrap(), l);
        let mut bad = h;
        bad.flags = 4;
        bad.checksum = bad.compute_checksum();
        assert!(matches!(bad.validate("x", l.segment_size), Err(OpenError::Corrupt { .. })), "unknown flags");
        let mut bad = h;
        bad.capacity += 64;
        assert!(matches!(bad.validate("x", l.segment_size), Err(OpenError::Corrupt { .. })));
        let mut bad = h;
        bad.magic = *b"NOTPYSHM";
        assert!(matches!(bad.validate("x", l.segment_size), Err(OpenError::Foreign { .. })));
        let mut bad = h;
        bad.layout_version = 1;
        assert!(matches!(bad.validate("x", l.segment_size), Err(OpenError::Version { found: 1, .. })));
        let mut bad = h;
        bad.tree_offset += 4096;
        bad.checksum = bad.compute_checksum();
        assert!(matches!(bad.validate("x", l.segment_size), Err(OpenError::Corrupt { .. })), "layout recomputed");
        assert!(matches!(h.validate("x", l.segment_size - 1), Err(OpenError::Truncated { .. })));
    }

    #[test]
    fn ownership_is_judged_on_type_owner_and_mode() {
        let file = |uid, mode| FileStat { len: 0, uid, mode, inode: 0 };
        assert_eq!(Ownership::judge(&file(1000, 0o100_600), 1000), Ownership::Ours);
        assert_eq!(Ownership::judge(&file(1000, 0o100_400), 1000), Ownership::Ours);
        assert_eq!(Ownership::judge(&file(65534, 0o100_600), 1000), Ownership::NotOwned { owner_uid: 65534 });
        assert_eq!(Ownership::judge(&file(0, 0o100_600), 1000), Ownership::NotOwned { owner_uid: 0 });
        assert_eq!(Ownership::judge(&file(1000, 0o100_666), 1000), Ownership::Permissions { mode: 0o666 });
        assert_eq!(Ownership::judge(&file(1000, 0o100_640), 1000), Ownership::Permissions { mode: 0o640 });
        assert_eq!(Ownership::judge(&file(1000, 0o100_602), 1000), Ownership::Permissions { mode: 0o602 });
        assert_eq!(Ownership::judge(&file(1000, 0o120_777), 1000), Ownership::NotAFile { owner_uid: 1000 });
        assert_eq!(Ownership::judge(&file(1000, 0o040_700), 1000), Ownership::NotAFile { owner_uid: 1000 });
        assert_eq!(Ownership::judge(&file(1000, 0o010_600), 1000), Ownership::NotAFile { owner_uid: 1000 });
        let err = Ownership::check(&file(65534, 0o100_666), "pyshm-x").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, OpenError::NotOwned { owner_uid: 65534, .. }), "{err:?}");
        assert!(text.contains("/dev/shm/pyshm-x") && text.contains("uid 65534"), "{text}");
    }

    #[test]
    fn names_are_checked() {
        assert!(SegmentName::validate("pyshm-abc_1.2-x").is_ok());
        assert!(SegmentName::validate("myapp-arena").is_ok());
        assert!(SegmentName::validate("other").is_ok());
        assert!(SegmentName::validate("x:y+z@1").is_ok());
        assert!(SegmentName::validate(&"a".repeat(255)).is_ok());
        assert!(SegmentName::validate("").is_err());
        assert!(SegmentName::validate("pyshm-a/b").is_err());
        assert!(SegmentName::validate("/pyshm-a").is_err());
        assert!(SegmentName::validate("a b").is_err());
        assert!(SegmentName::validate("a\nb").is_err());
        assert!(SegmentName::validate("caf\u{e9}").is_err());
        assert!(SegmentName::validate(".").is_err());
        assert!(SegmentName::validate("..").is_err());
        assert!(SegmentName::validate(&"a".repeat(256)).is_err());
        assert!(SegmentName::validate(&format!("pyshm-{}", "a".repeat(300))).is_err());
        for prefix in ["pyshm-", "myapp-"] {
            let r = SegmentName::random(prefix).unwrap();
            assert!(SegmentName::validate(&r).is_ok());
            assert!(r.starts_with(prefix));
            assert_eq!(r.len(), prefix.len() + 32);
            assert_ne!(r, SegmentName::random(prefix).unwrap());
        }
    }
}
