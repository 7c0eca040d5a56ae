//! The pool directory: the block in metadata segment 0 that every process of the pool shares.
//!
//! Invariants:
//! 1. Its layout is a pure function of three counts (segments, process slots, token slots)
//!    recorded at its start; an opener recomputes the offsets and checks the block is large
//!    enough before it touches any of them.
//! 2. The directory is created once, before the root word of segment 0 publishes it, and lives
//!    as long as the pool; only its atomics change afterwards.
//! 3. Segment entries are appended under the directory lock and published by `segment_count`
//!    (`Release` after the entry is written, `Acquire` by readers): an index below the count
//!    names a segment that exists (or existed, until teardown).
//! 4. A growth segment's file name is recorded in its entry (`suffix`, 64 random bits), written
//!    with the rest of the entry before the count publishes it: processes open it by what the
//!    directory says, never by a name they compute, so a name another user guessed and
//!    pre-created is never used (version 2; a version-1 reader refuses this directory).
//! 5. `pid_namespace` is the pid namespace of the pool's creator (the inode number of its
//!    `/proc/self/ns/pid`, 0 if unknown), written before the directory is published and never
//!    changed. Only processes of that namespace join the pool, so every identity the pool keeps
//!    (process slots, lock words, token senders, arena owners) is judged in the namespace it
//!    was taken in: a process of another namespace is never declared dead here (version 3).
//! 6. The name table is not in the directory: the directory holds only its root ([`NameRoot`],
//!    128 bytes), which names a hash index in a block of a metadata segment, and each name is
//!    an entry block of its own there (`pool::name_index`; version 4: a version-3 reader, which
//!    would look for 256 fixed entries here, refuses).
//!
//! ```text
//! DirHeader (256 bytes): magic, version, id, flags, config, counts, lock, freed event, pid ns,
//!            keep, live data, backend
//! segments   MAX_SEGMENTS x SegmentEntry (kind, capacity, suffix, memfd_ino)
//! processes  process_slots x ProcessSlot (64 bytes)
//! tokens     token_slots x TokenSlot (32 bytes)
//! names      NameRoot (128 bytes): the name index's place, counts and intent record
//! ```

use shm_sync::{Event, ProcessSlot, RobustMutex, TokenSlot};

use crate::sync::SharedU64;

pub(crate) const DIR_MAGIC: u64 = u64::from_le_bytes(*b"PYSHMPOL");
/// Version 2: segment entries record their file's random suffix (invariant 4). Version 3: the
/// creator's pid namespace (invariant 5); a version-2 reader, which would not check it, refuses.
/// Version 4: the growable name table (invariant 6). Version 5: array headers keep twelve
/// holders inline and the rest in overflow blocks of the metadata segments (`pool::overflow`),
/// for up to 4,096 process slots; an older reader, which would read the lanes as a bitmap,
/// refuses.
pub(crate) const DIR_VERSION: u64 = 5;
/// Most segments a pool can have.
pub const MAX_SEGMENTS: usize = 256;
/// Most bytes of an array name.
pub const MAX_NAME_LEN: usize = 88;

pub(crate) const FLAG_PERSISTENT: u64 = 1;
pub(crate) const FLAG_TORN_DOWN: u64 = 2;
/// The pool outlives its processes while at least one name is registered.
pub(crate) const FLAG_PERSIST_NAMED: u64 = 4;

pub(crate) const KIND_META: u64 = 1;
pub(crate) const KIND_DATA: u64 = 2;

#[repr(C)]
pub(crate) struct DirHeader {
    pub(crate) magic: SharedU64,
    pub(crate) version: SharedU64,
    pub(crate) id: [SharedU64; 2],
    pub(crate) flags: SharedU64,
    pub(crate) data_segment_capacity: SharedU64,
    pub(crate) max_size: SharedU64,
    pub(crate) data_min_block: SharedU64,
    pub(crate) process_slots: SharedU64,
    pub(crate) token_slots: SharedU64,
    /// The fixed name table's slot count up to version 3; 0 since version 4 (invariant 6).
    pub(crate) name_slots: SharedU64,
    pub(crate) segment_count: SharedU64,
    pub(crate) lock: RobustMutex,
    pub(crate) freed: Event,
    /// The creator's pid namespace (invariant 5).
    pub(crate) pid_namespace: SharedU64,
    /// The warm reserve's bound, `KEEP_SET | bytes` (zero in a directory made before `keep`
    /// existed: the default applies). Written by the creator.
    pub(crate) keep: SharedU64,
    /// Bytes of data pages that live arrays use: each array outside a metadata segment adds its
    /// data length rounded up to a page when it is made and takes it off when it is freed. A
    /// count for the give-back policy (pool invariant 8), not for safety: a process killed
    /// between allocating and counting leaves it off.
    pub(crate) live_data: SharedU64,
    /// The segment backend (`pool::backend`, invariant 1): 0 files in /dev/shm, 1 memfds.
    /// Formerly reserved (always 0), so older pools read as the /dev/shm backend.
    pub(crate) backend: SharedU64,
    pub(crate) reserved: [SharedU64; 12],
}

/// Marks the `keep` word as written.
pub(crate) const KEEP_SET: u64 = 1 << 63;

const _: () = assert!(core::mem::size_of::<DirHeader>() <= 256);

#[repr(C)]
pub(crate) struct SegmentEntry {
    pub(crate) kind: SharedU64,
    pub(crate) capacity: SharedU64,
    /// The random part of a growth segment's file name, `pyshm-<pool>-<suffix as 16 hex
    /// digits>` (invariant 4); unused for segment 0, which is `pyshm-<pool>`.
    pub(crate) suffix: SharedU64,
    /// The inode of a memfd segment (`pool::backend`, invariant 2); 0 for a named segment
    /// (formerly reserved, always 0).
    pub(crate) memfd_ino: SharedU64,
}

const _: () = assert!(core::mem::size_of::<SegmentEntry>() == 32);

/// A name: an entry block of its own (128 bytes) in a metadata segment (invariant 6), found
/// through the name index (`pool::name_index`).
#[repr(C)]
pub(crate) struct NameEntry {
    /// [`NAME_ENTRY_MAGIC`] while the entry is in use (header invariant 1: every block of a
    /// metadata segment starts with a kind magic, and this one is not an array header's).
    pub(crate) state: SharedU64,
    pub(crate) meta_segment: SharedU64,
    pub(crate) header: SharedU64,
    pub(crate) nonce: SharedU64,
    pub(crate) name_len: SharedU64,
    pub(crate) name: [SharedU64; MAX_NAME_LEN / 8],
}

const _: () = assert!(core::mem::size_of::<NameEntry>() == 128);

/// The magic at the start of a name entry block.
pub(crate) const NAME_ENTRY_MAGIC: u64 = u64::from_le_bytes(*b"PYSHMNAM");

/// The name table's root in the directory (invariant 6; the protocol and its invariants are
/// `pool::name_index`'s). Every word changes only under the directory lock.
#[repr(C)]
pub(crate) struct NameRoot {
    /// Where the index is: `segment << 56 | block bits`, 0 for no index (no name).
    pub(crate) index: SharedU64,
    /// Names in the index.
    pub(crate) count: SharedU64,
    /// Deleted slots of the index not yet reused.
    pub(crate) tombstones: SharedU64,
    /// The operation in progress (an intent record): 0 for none.
    pub(crate) op: SharedU64,
    /// The intent's arguments (which ones depends on `op`).
    pub(crate) args: [SharedU64; 4],
    pub(crate) reserved: [SharedU64; 8],
}

const _: () = assert!(core::mem::size_of::<NameRoot>() == 128);

/// Offsets of the directory's regions, from the block start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DirLayout {
    pub(crate) segments: usize,
    pub(crate) processes: usize,
    pub(crate) tokens: usize,
    pub(crate) names: usize,
    pub(crate) size: usize,
    pub(crate) process_slots: usize,
    pub(crate) token_slots: usize,
}

impl DirLayout {
    pub(crate) fn new(process_slots: usize, token_slots: usize) -> Self {
        let segments = 256;
        let processes = (segments + MAX_SEGMENTS * core::mem::size_of::<SegmentEntry>()).next_multiple_of(64);
        let tokens = processes + process_slots * 64;
        let names = tokens + token_slots * 32;
        let size = names + core::mem::size_of::<NameRoot>();
        Self { segments, processes, tokens, names, size, process_slots, token_slots }
    }
}

/// A typed view of a directory block.
pub(crate) struct Directory<'a> {
    base: *const u8,
    layout: DirLayout,
    _lifetime: core::marker::PhantomData<&'a u8>,
}

impl<'a> Directory<'a> {
    /// A view of the directory at `base`.
    ///
    /// # Safety
    ///
    /// - `base` points to a mapped block of at least `layout.size` bytes, 64-byte aligned, that
    ///   stays mapped for `'a`;
    /// - every process accesses its words only atomically (they are all atomics or shm-sync
    ///   primitives).
    pub(crate) unsafe fn new(base: *const u8, layout: DirLayout) -> Self {
        Self { base, layout, _lifetime: core::marker::PhantomData }
    }

    fn at<T>(&self, offset: usize) -> &'a T {
        // SAFETY: `new`'s contract: offsets within `layout.size` of a live, aligned block of
        // atomics; callers pass offsets computed from the layout.
        unsafe { &*self.base.wrapping_add(offset).cast::<T>() }
    }

    fn slice<T>(&self, offset: usize, count: usize) -> &'a [T] {
        // SAFETY: as in `at`, for `count` consecutive values.
        unsafe { core::slice::from_raw_parts(self.base.wrapping_add(offset).cast::<T>(), count) }
    }

    pub(crate) fn header(&self) -> &'a DirHeader {
        self.at(0)
    }

    pub(crate) fn segments(&self) -> &'a [SegmentEntry] {
        self.slice(self.layout.segments, MAX_SEGMENTS)
    }

    pub(crate) fn processes(&self) -> &'a [ProcessSlot] {
        self.slice(self.layout.processes, self.layout.process_slots)
    }

    pub(crate) fn tokens(&self) -> &'a [TokenSlot] {
        self.slice(self.layout.tokens, self.layout.token_slots)
    }

    pub(crate) fn names(&self) -> &'a NameRoot {
        self.at(self.layout.names)
    }
}

/// Packs a name into words (zero padded).
pub(crate) fn store_name(entry: &NameEntry, name: &str) {
    let bytes = name.as_bytes();
    for (i, w) in entry.name.iter().enumerate() {
        let mut chunk = [0u8; 8];
        let start = (i * 8).min(bytes.len());
        let end = (start + 8).min(bytes.len());
        chunk[..end - start].copy_from_slice(&bytes[start..end]);
        w.store(u64::from_le_bytes(chunk), core::sync::atomic::Ordering::Relaxed);
    }
    entry.name_len.store(bytes.len() as u64, core::sync::atomic::Ordering::Relaxed);
}

/// Reads a name back (lossy for invalid UTF-8, which only a foreign writer could leave).
pub(crate) fn load_name(entry: &NameEntry) -> String {
    let len = (entry.name_len.load(core::sync::atomic::Ordering::Relaxed) as usize).min(MAX_NAME_LEN);
    let mut bytes = Vec::with_capacity(MAX_NAME_LEN);
    for w in &entry.name {
        bytes.extend_from_slice(&w.load(core::sync::atomic::Ordering::Relaxed).to_le_bytes());
    }
    bytes.truncate(len);
    String::from_utf8_lossy(&bytes).into_owned()
}
