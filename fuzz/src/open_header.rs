//! `open_header`: opening a segment whose bytes are arbitrary, or a real segment mutated.
//!
//! # Invariants checked
//!
//! 1. Opening any bytes, through a name in `/dev/shm` or a memfd, returns (an arena or an
//!    [`OpenError`]) without panicking, crashing or waiting: the open waits 0 ms for a creator.
//! 2. An arena opened from mutated bytes can be used (allocate, free, validate, touch the
//!    bytes of its blocks, disown, adopt, check, recover, drop) without panicking or crashing.
//!    Results do not matter: a corrupt tree may refuse or misplace blocks, but every block
//!    pointer stays inside the mapping.
//!
//! # Inputs
//!
//! - `Raw`: the whole content of the object is fuzzer bytes, zero-extended to a chosen number
//!   of pages, optionally with the header checksum recomputed so the fuzzer can get past it.
//! - `Mutated`: the bytes of a real small arena (a cached template per geometry, with a few
//!   blocks allocated and some freed), then optionally a new geometry written consistently
//!   into the header (the object resized to match), then patches anywhere in the header page
//!   or anywhere in the metadata (owner slots, search hints, tree words), then optionally the
//!   checksum recomputed, then the length changed. If the open succeeds, a short list of uses
//!   runs on the arena.
//!
//! The header offsets below mirror shm-arena's private `ImmutableHeader`; each template is
//! checked against them, so a change of the header layout fails loudly ("harness: ...")
//! instead of silently no longer reaching past the checksum.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use shm_arena::layout::{Layout, HEADER_SIZE};
use shm_arena::{Arena, ArenaOptions, Block, OpenError, OpenOptions};

use crate::shm_file::ScratchFile;
use crate::{MinBlock, Observer};

/// Most patches applied to one template.
const MAX_PATCHES: usize = 16;
/// Most bytes in one patch.
const MAX_PATCH_LEN: usize = 64;
/// Most uses of an opened arena.
const MAX_USES: usize = 32;
/// A rewritten geometry is applied only when its segment is at most this big (the uses walk
/// the whole tree).
const MAX_SEGMENT: u64 = 4 << 20;

// Offsets in the header (shm-arena's `ImmutableHeader`, `repr(C)`, little-endian).
const MIN_BLOCK_SHIFT_AT: usize = 40;
const DEPTH_AT: usize = 44;
const CAPACITY_AT: usize = 48;
const OWNER_SLOTS_AT: usize = 56;
const OWNERS_OFFSET_AT: usize = 64;
const SEARCH_OFFSET_AT: usize = 72;
const TREE_OFFSET_AT: usize = 80;
const DATA_OFFSET_AT: usize = 88;
const SEGMENT_SIZE_AT: usize = 96;
/// The checksum is FNV-1a over every byte before it (the fields have no padding).
const CHECKSUM_AT: usize = 104;

/// One input.
#[derive(Arbitrary, Debug)]
enum Case {
    /// The object holds `bytes`, zero-extended to `pages % 64` pages.
    Raw { named: bool, pages: u8, fix_checksum: bool, bytes: Vec<u8> },
    /// A real segment, mutated.
    Mutated(Mutation),
}

#[derive(Arbitrary, Debug)]
struct Mutation {
    template: TemplateSpec,
    named: bool,
    geometry: Option<Geometry>,
    patches: Vec<Patch>,
    fix_checksum: bool,
    length: Length,
    uses: Vec<Use>,
}

/// Which real arena the bytes come from.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TemplateSpec {
    min_block: MinBlock,
    capacity: CapacityChoice,
    slots: SlotsChoice,
    /// `blocks % 8` blocks are allocated, and every third freed again.
    blocks: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum CapacityChoice {
    /// One page.
    Page,
    /// 12345 bytes: not a power of two, so the tree has a reserved tail.
    Odd,
    /// 64 KiB.
    Large,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SlotsChoice {
    One,
    Four,
    Default,
}

/// A geometry written into the header with every derived field consistent (when the arena
/// accepts it), or as given (when it does not).
#[derive(Arbitrary, Debug)]
struct Geometry {
    min_block_shift: u8,
    capacity: u32,
    owner_slots: u16,
}

/// Bytes written at `offset` modulo the header page, or modulo the metadata when `deep`.
#[derive(Arbitrary, Debug)]
struct Patch {
    deep: bool,
    offset: u32,
    bytes: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Length {
    Exact,
    /// This many bytes fewer.
    Shorter(u16),
    /// This many times 64 bytes more.
    Longer(u16),
}

/// Something to do with an opened arena; `index` picks one of the blocks allocated so far.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Use {
    Alloc { size: u16 },
    Free { index: u8 },
    FreeBits { bits: u64 },
    Touch { index: u8 },
    Disown { index: u8 },
    Adopt { index: u8 },
    Check,
    Stats,
    Recover,
}

/// The bytes of a real arena.
struct Template {
    bytes: Vec<u8>,
    layout: Layout,
}

thread_local! {
    static TEMPLATES: RefCell<HashMap<TemplateSpec, Rc<Template>>> = RefCell::new(HashMap::new());
}

/// Runs one input; see the module doc.
///
/// # Panics
///
/// When shm-arena panics (the finding), or when the harness cannot create a memfd, a scratch
/// file or a template arena (the message then starts with "harness:").
pub fn run(data: &[u8], observer: &mut impl Observer) {
    let mut u = Unstructured::new(data);
    let Ok(case) = Case::arbitrary(&mut u) else { return };
    match case {
        Case::Raw { named, pages, fix_checksum, mut bytes } => {
            if fix_checksum {
                write_checksum(&mut bytes);
            }
            let len = (bytes.len() as u64).max(u64::from(pages % 64) * HEADER_SIZE);
            let opened = open(&bytes, len, named);
            observer.reached(outcome_code(&opened));
        }
        Case::Mutated(m) => {
            let (bytes, len) = m.apply(&template(m.template));
            let opened = open(&bytes, len, m.named);
            observer.reached(1 << 16 | outcome_code(&opened));
            if let Ok(arena) = opened {
                exercise(&arena, &m.uses, observer);
            }
        }
    }
}

impl Mutation {
    /// The mutated bytes and the length of the object.
    fn apply(&self, template: &Template) -> (Vec<u8>, u64) {
        let mut bytes = template.bytes.clone();
        let mut data_offset = template.layout.data_offset;
        if let Some(g) = &self.geometry {
            let min_block = 1u64.checked_shl(u32::from(g.min_block_shift)).unwrap_or(0);
            match Layout::new(min_block, u64::from(g.capacity), u32::from(g.owner_slots)) {
                Ok(layout) if layout.segment_size <= MAX_SEGMENT => {
                    write_layout(&mut bytes, &layout);
                    bytes.resize(layout.segment_size as usize, 0);
                    data_offset = layout.data_offset;
                }
                _ => {
                    put_u32(&mut bytes, MIN_BLOCK_SHIFT_AT, u32::from(g.min_block_shift));
                    put_u64(&mut bytes, CAPACITY_AT, u64::from(g.capacity));
                    put_u32(&mut bytes, OWNER_SLOTS_AT, u32::from(g.owner_slots));
                }
            }
        }
        let metadata = (data_offset as usize).min(bytes.len());
        for p in self.patches.iter().take(MAX_PATCHES) {
            let region = if p.deep { metadata } else { HEADER_SIZE as usize };
            let start = p.offset as usize % region;
            let n = p.bytes.len().min(MAX_PATCH_LEN).min(region - start);
            bytes[start..start + n].copy_from_slice(&p.bytes[..n]);
        }
        if self.fix_checksum {
            write_checksum(&mut bytes);
        }
        let len = bytes.len() as u64;
        let len = match self.length {
            Length::Exact => len,
            Length::Shorter(n) => len.saturating_sub(u64::from(n)),
            Length::Longer(n) => len + 64 * u64::from(n),
        };
        (bytes, len)
    }
}

/// Writes `bytes` (cut or zero-extended to `len`) into a fresh object and opens it without
/// waiting (invariant 1). A named object is removed before this returns.
fn open(bytes: &[u8], len: u64, named: bool) -> Result<Arena, OpenError> {
    let options = OpenOptions::new().wait(Duration::ZERO);
    let content = &bytes[..bytes.len().min(len as usize)];
    if named {
        let file = ScratchFile::create(content, len).unwrap_or_else(|e| panic!("harness: scratch file: {e}"));
        Arena::open_with(file.name(), &options)
        // `file` is removed here; the mapping, if any, stays valid.
    } else {
        let fd = rustix::fs::memfd_create("pyshm-fuzz", rustix::fs::MemfdFlags::CLOEXEC)
            .unwrap_or_else(|e| panic!("harness: memfd_create: {e}"));
        let mut file = File::from(fd);
        file.write_all(content).and_then(|()| file.set_len(len)).unwrap_or_else(|e| panic!("harness: memfd: {e}"));
        Arena::open_fd(OwnedFd::from(file), &options)
    }
}

/// Uses an arena opened from mutated bytes (invariant 2); every result is acceptable.
fn exercise(arena: &Arena, uses: &[Use], observer: &mut impl Observer) {
    let _ = (arena.capacity(), arena.max_block(), arena.segment_id(), arena.creator(), arena.owner_slots());
    let _ = arena.root_word().load(std::sync::atomic::Ordering::Relaxed);
    let mut blocks: Vec<Block> = Vec::new();
    let pick = |blocks: &[Block], index: u8| (!blocks.is_empty()).then(|| blocks[usize::from(index) % blocks.len()]);
    for (i, u) in uses.iter().take(MAX_USES).enumerate() {
        let ok = match *u {
            Use::Alloc { size } => arena.alloc(u64::from(size)).map(|b| blocks.push(b)).is_ok(),
            Use::Free { index } => pick(&blocks, index).is_some_and(|b| arena.free(b).is_ok()),
            Use::FreeBits { bits } => arena.free(Block::from_bits(bits)).is_ok(),
            Use::Touch { index } => pick(&blocks, index).is_some_and(|b| touch(arena, b)),
            Use::Disown { index } => pick(&blocks, index).is_some_and(|b| arena.disown(b).is_ok()),
            Use::Adopt { index } => pick(&blocks, index).is_some_and(|b| arena.adopt(b).is_ok()),
            Use::Check => arena.check().is_ok(),
            Use::Stats => arena.stats().blocks_in_use > 0,
            Use::Recover => arena.recover_dead_owners().owners > 0,
        };
        observer.reached(2 << 16 | (i as u32) << 5 | u32::from(ok) << 4 | use_kind(u));
    }
}

/// Writes the first and last byte of `block`, if it validates.
fn touch(arena: &Arena, block: Block) -> bool {
    // SAFETY: the arena maps a scratch object that only this thread of this process uses, and
    // no other reference to its bytes exists while this slice lives (a corrupt tree may hand
    // out overlapping blocks, but only one slice is ever alive at a time).
    let Ok(bytes) = (unsafe { arena.bytes_mut(block) }) else { return false };
    if let Some(first) = bytes.first_mut() {
        *first = 0xA5;
    }
    if let Some(last) = bytes.last_mut() {
        *last = 0x5A;
    }
    true
}

/// The template for `spec`, built once per thread.
fn template(spec: TemplateSpec) -> Rc<Template> {
    // At most 3 * 3 * 3 * 8 templates of at most ~100 KiB each.
    let spec = TemplateSpec { blocks: spec.blocks % 8, ..spec };
    TEMPLATES.with(|t| Rc::clone(t.borrow_mut().entry(spec).or_insert_with(|| Rc::new(build_template(spec)))))
}

fn build_template(spec: TemplateSpec) -> Template {
    let capacity = match spec.capacity {
        CapacityChoice::Page => 4096,
        CapacityChoice::Odd => 12345,
        CapacityChoice::Large => 64 << 10,
    };
    let slots = match spec.slots {
        SlotsChoice::One => 1,
        SlotsChoice::Four => 4,
        SlotsChoice::Default => shm_arena::DEFAULT_OWNER_SLOTS,
    };
    let min_block = spec.min_block.bytes();
    let arena = ArenaOptions::new(capacity)
        .min_block(min_block)
        .owner_slots(slots)
        .create_anonymous()
        .unwrap_or_else(|e| panic!("harness: template arena {spec:?}: {e}"));
    let mut blocks = Vec::new();
    for i in 0..u64::from(spec.blocks) {
        if let Ok(b) = arena.alloc(min_block << (i % 3)) {
            blocks.push(b);
        }
    }
    for b in blocks.iter().step_by(3) {
        let _ = arena.free(*b);
    }
    let mut bytes = vec![0u8; arena.segment_size() as usize];
    let fd = arena.fd().try_clone().unwrap_or_else(|e| panic!("harness: dup of a template fd: {e}"));
    File::from(fd).read_exact_at(&mut bytes, 0).unwrap_or_else(|e| panic!("harness: reading a template: {e}"));
    let layout = Layout::new(min_block, capacity, slots).unwrap_or_else(|e| panic!("harness: layout: {e}"));
    check_mirror(&bytes, &layout);
    Template { bytes, layout }
}

/// Checks that the header offsets of this module still match shm-arena's header.
fn check_mirror(bytes: &[u8], layout: &Layout) {
    let mut expected = bytes[..CHECKSUM_AT + 8].to_vec();
    write_layout(&mut expected, layout);
    write_checksum(&mut expected);
    assert!(
        expected == bytes[..CHECKSUM_AT + 8],
        "harness: the header layout changed; update the offsets in fuzz/src/open_header.rs"
    );
}

/// Writes every geometry field of `layout` into the header.
fn write_layout(bytes: &mut [u8], layout: &Layout) {
    put_u32(bytes, MIN_BLOCK_SHIFT_AT, layout.min_block_shift);
    put_u32(bytes, DEPTH_AT, layout.depth);
    put_u64(bytes, CAPACITY_AT, layout.capacity);
    put_u32(bytes, OWNER_SLOTS_AT, layout.owner_slots);
    put_u64(bytes, OWNERS_OFFSET_AT, layout.owners_offset);
    put_u64(bytes, SEARCH_OFFSET_AT, layout.search_offset);
    put_u64(bytes, TREE_OFFSET_AT, layout.tree_offset);
    put_u64(bytes, DATA_OFFSET_AT, layout.data_offset);
    put_u64(bytes, SEGMENT_SIZE_AT, layout.segment_size);
}

/// Recomputes the header checksum (FNV-1a over the bytes before it), if the bytes reach it.
fn write_checksum(bytes: &mut [u8]) {
    if bytes.len() < CHECKSUM_AT + 8 {
        return;
    }
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for b in &bytes[..CHECKSUM_AT] {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    put_u64(bytes, CHECKSUM_AT, hash);
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A small code per open outcome (a feature for the stable runner).
fn outcome_code(r: &Result<Arena, OpenError>) -> u32 {
    match r {
        Ok(_) => 0,
        Err(OpenError::NotFound { .. }) => 1,
        Err(OpenError::Foreign { .. }) => 2,
        Err(OpenError::Version { .. }) => 3,
        Err(OpenError::Truncated { .. }) => 4,
        Err(OpenError::Corrupt { what, .. }) => 5 | (what.len() as u32) << 4,
        Err(OpenError::NotInitialized { .. }) => 6,
        Err(OpenError::Sys { .. }) => 7,
        Err(OpenError::Map { .. }) => 8,
        Err(OpenError::Register(_)) => 9,
    }
}

fn use_kind(u: &Use) -> u32 {
    match u {
        Use::Alloc { .. } => 0,
        Use::Free { .. } => 1,
        Use::FreeBits { .. } => 2,
        Use::Touch { .. } => 3,
        Use::Disown { .. } => 4,
        Use::Adopt { .. } => 5,
        Use::Check => 6,
        Use::Stats => 7,
        Use::Recover => 8,
    }
}
