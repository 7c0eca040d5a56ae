//! `arena_ops`: a sequence of operations on one anonymous arena, checked against a model.
//!
//! # Invariants checked
//!
//! A panic message starts with the number of the invariant that broke.
//!
//! 1. A successful allocation returns a block whose size is the request rounded up (to the
//!    alignment, the minimum block, then a power of two), aligned to its size within the
//!    arena and to `min(size, page)` in memory, inside the capacity, overlapping no live block.
//! 2. An allocation fails only as the model predicts: `BadAlignment` for an alignment that is
//!    not a power of two, `TooLarge` above the largest block, and `Exhausted` only when no
//!    aligned range of the block size inside the capacity is free of live blocks and of blocks
//!    parked in the other handle's cache (a handle empties only its own cache before it gives
//!    up; a parked block is a freed reference that `validate` reports as `Cached`).
//! 3. A live block keeps the pattern written into it until it is freed: every live block is
//!    checked after each free and at the end (this catches overlap and double allocation).
//! 4. Freeing or validating a live block succeeds through either handle; freeing or validating
//!    a freed (stale) reference fails. Disown succeeds exactly on blocks the handle owns, adopt
//!    exactly on disowned ones.
//! 5. A reference decoded from arbitrary bits ([`Block::from_bits`]) is freed only if it is
//!    exactly a live block, and a live block named exactly is freed.
//! 6. `check` passes whenever it runs and its counts agree with the model (blocks and leaves
//!    in use, leaves per owner, live owners). After everything is freed, nothing is in use and
//!    the largest block can be allocated again.
//! 7. Dropping a handle frees exactly the blocks it owns (its cache included) and gives its
//!    owner slot back; nobody is found dead while both handles live.
//!
//! # The model
//!
//! The first handle creates the anonymous arena; a second one may be opened from its
//! descriptor and dropped again, and operations act on the current handle (`Switch`). The
//! model is a list of live blocks (block, pattern byte, owner: a handle or nobody) and the list
//! of every freed reference. Indices in operations are taken modulo the list length.
//! At most [`MAX_OPS`] operations run, far fewer than the 2^14 generations a node goes through
//! before a stale reference could become valid again, so an accepted stale reference is a bug.

use arbitrary::{Arbitrary, Unstructured};
use shm_arena::{AllocError, Arena, ArenaOptions, Block, BlockError, OpenOptions};

use crate::{MinBlock, Observer};

/// Most operations decoded from one input.
pub const MAX_OPS: usize = 1000;
/// The page size the arena aligns blocks to in memory.
const PAGE: u64 = 4096;

/// The arena an input runs on.
#[derive(Arbitrary, Debug)]
struct Config {
    min_block: MinBlock,
    /// Capacity is `2^(12 + capacity_log2 % 9)` plus up to as much again, at most 1 MiB.
    capacity_log2: u8,
    capacity_extra: u32,
    cache: CacheChoice,
}

/// The largest block size a handle caches after a free.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum CacheChoice {
    /// The arena's default (4 KiB, or capacity / 4096 when smaller).
    Default,
    /// No cache.
    Off,
    /// Every block size.
    All,
}

impl Config {
    fn capacity(&self) -> u64 {
        let base = 1u64 << (12 + u32::from(self.capacity_log2 % 9));
        (base + u64::from(self.capacity_extra) % base).min(1 << 20)
    }

    fn cache_max_block(&self) -> Option<u64> {
        match self.cache {
            CacheChoice::Default => None,
            CacheChoice::Off => Some(0),
            CacheChoice::All => Some(1 << 20),
        }
    }
}

/// One operation. `index` fields pick from the live list (or the freed list) modulo its length.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    /// Allocate a small block. `align_log2` below 32 means `1 << align_log2`; from 32 on, the
    /// value itself is the alignment (mostly not a power of two).
    Alloc { size: u16, align_log2: u8 },
    /// Allocate a block of any size up to 4 GiB.
    AllocLarge { size: u32, align_log2: u8 },
    /// Allocate an absurd size.
    AllocHuge { size: u64 },
    /// Free a live block.
    Free { index: u16 },
    /// Free a freed block again: must fail.
    FreeStale { index: u16 },
    /// Free an arbitrary reference.
    FreeBits { bits: u64 },
    /// Free a live block's reference with some bits flipped.
    FreeNear { index: u16, flip: u64 },
    /// Validate a live block: must succeed.
    Validate { index: u16 },
    /// Validate a freed block: must fail.
    ValidateStale { index: u16 },
    /// Disown a live block.
    Disown { index: u16 },
    /// Adopt a live block.
    Adopt { index: u16 },
    /// Run the arena's full check.
    Check,
    /// Act through the other handle from now on, opening it first if needed.
    Switch,
    /// Drop the second handle, if open: the blocks it owns are freed.
    DropSecond,
    /// Look for dead owners: there are none.
    Recover,
}

impl Op {
    fn kind(&self) -> u32 {
        match self {
            Op::Alloc { .. } => 0,
            Op::AllocLarge { .. } => 1,
            Op::AllocHuge { .. } => 2,
            Op::Free { .. } => 3,
            Op::FreeStale { .. } => 4,
            Op::FreeBits { .. } => 5,
            Op::FreeNear { .. } => 6,
            Op::Validate { .. } => 7,
            Op::ValidateStale { .. } => 8,
            Op::Disown { .. } => 9,
            Op::Adopt { .. } => 10,
            Op::Check => 11,
            Op::Switch => 12,
            Op::DropSecond => 13,
            Op::Recover => 14,
        }
    }
}

/// Who owns a live block: a handle (0 or 1), or nobody after a disown.
type Owner = Option<usize>;

/// A live block of the model.
#[derive(Clone, Copy, Debug)]
struct Live {
    block: Block,
    pattern: u8,
    owner: Owner,
}

/// A handle on the arena and its owner tag.
struct Handle {
    arena: Arena,
    tag: u16,
}

/// The handles under test and the model.
struct Harness {
    /// The creating handle, then the second one if open.
    handles: [Option<Handle>; 2],
    /// Index of the handle operations act through.
    current: usize,
    config: Config,
    live: Vec<Live>,
    /// Every block freed so far (at most [`MAX_OPS`]), oldest first.
    freed: Vec<Block>,
    next_pattern: u8,
}

/// Runs one input; see the module doc for what is checked.
///
/// # Panics
///
/// When an invariant of the module doc breaks, or the anonymous arena cannot be created.
pub fn run(data: &[u8], observer: &mut impl Observer) {
    let mut u = Unstructured::new(data);
    let Ok(config) = Config::arbitrary(&mut u) else { return };
    let mut options = ArenaOptions::new(config.capacity()).min_block(config.min_block.bytes());
    if let Some(bytes) = config.cache_max_block() {
        options = options.cache_max_block(bytes);
    }
    let arena = options
        .create_anonymous()
        .unwrap_or_else(|e| panic!("harness: creating an anonymous arena for {config:?} failed: {e}"));
    let first = Handle::new(arena);
    let mut h = Harness {
        handles: [Some(first), None],
        current: 0,
        config,
        live: Vec::new(),
        freed: Vec::new(),
        next_pattern: 1,
    };
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        let outcome = h.apply(op);
        observer.reached(op.kind() << 8 | outcome);
    }
    h.finish();
}

impl Handle {
    fn new(arena: Arena) -> Self {
        let tag = arena.owner_tag().unwrap_or_else(|e| panic!("7: a new handle has no owner tag: {e}"));
        Handle { arena, tag }
    }
}

impl Harness {
    /// The handle operations act through.
    fn arena(&self) -> &Arena {
        &self.handles[self.current].as_ref().expect("the current handle is open").arena
    }

    /// Applies `op`, checks its outcome against the model, returns an outcome code.
    fn apply(&mut self, op: Op) -> u32 {
        match op {
            Op::Alloc { size, align_log2 } => self.alloc(u64::from(size), alignment(align_log2)),
            Op::AllocLarge { size, align_log2 } => self.alloc(u64::from(size), alignment(align_log2)),
            Op::AllocHuge { size } => self.alloc(size, 1),
            Op::Free { index } => {
                let Some(i) = pick(index, self.live.len()) else { return 0 };
                let Live { block, .. } = self.live[i];
                self.arena().free(block).unwrap_or_else(|e| panic!("4: freeing live block {block:?} failed: {e}"));
                self.forget(i);
                self.verify_patterns("after a free");
                1
            }
            Op::FreeStale { index } => {
                let Some(i) = pick(index, self.freed.len()) else { return 0 };
                let block = self.freed[i];
                match self.arena().free(block) {
                    Ok(()) => panic!("4: freeing stale block {block:?} succeeded; live: {:?}", self.live),
                    Err(e) => 1 + error_code(&e),
                }
            }
            Op::FreeBits { bits } => self.free_reference(Block::from_bits(bits)),
            Op::FreeNear { index, flip } => {
                let Some(i) = pick(index, self.live.len()) else { return 0 };
                self.free_reference(Block::from_bits(self.live[i].block.to_bits() ^ flip))
            }
            Op::Validate { index } => {
                let Some(i) = pick(index, self.live.len()) else { return 0 };
                let block = self.live[i].block;
                self.arena()
                    .validate(block)
                    .unwrap_or_else(|e| panic!("4: validating live block {block:?} failed: {e}"));
                1
            }
            Op::ValidateStale { index } => {
                let Some(i) = pick(index, self.freed.len()) else { return 0 };
                let block = self.freed[i];
                match self.arena().validate(block) {
                    Ok(()) => panic!("4: stale block {block:?} validates; live: {:?}", self.live),
                    Err(e) => 1 + error_code(&e),
                }
            }
            Op::Disown { index } => {
                let Some(i) = pick(index, self.live.len()) else { return 0 };
                let Live { block, owner, .. } = self.live[i];
                let current = self.current;
                match (self.arena().disown(block), owner == Some(current)) {
                    (Ok(()), true) => {
                        self.live[i].owner = None;
                        1
                    }
                    (Err(e), false) => 2 + error_code(&e),
                    (r, _) => panic!("4: disown of {block:?} (owner {owner:?}) through handle {current} gave {r:?}"),
                }
            }
            Op::Adopt { index } => {
                let Some(i) = pick(index, self.live.len()) else { return 0 };
                let Live { block, owner, .. } = self.live[i];
                let current = self.current;
                match (self.arena().adopt(block), owner) {
                    (Ok(()), None) => {
                        self.live[i].owner = Some(current);
                        1
                    }
                    (Err(e), Some(_)) => 2 + error_code(&e),
                    (r, _) => panic!("4: adopt of {block:?} (owner {owner:?}) through handle {current} gave {r:?}"),
                }
            }
            Op::Check => {
                self.check("on request");
                1
            }
            Op::Switch => {
                if self.handles[1].is_none() {
                    let fd = self.arena().fd().try_clone().unwrap_or_else(|e| panic!("harness: dup: {e}"));
                    let mut options = OpenOptions::new();
                    if let Some(bytes) = self.config.cache_max_block() {
                        options = options.cache_max_block(bytes);
                    }
                    let second = Arena::open_fd(fd, &options)
                        .unwrap_or_else(|e| panic!("7: opening a second handle on a valid arena failed: {e}"));
                    self.handles[1] = Some(Handle::new(second));
                }
                self.current = 1 - self.current;
                1 + self.current as u32
            }
            Op::DropSecond => {
                let Some(second) = self.handles[1].take() else { return 0 };
                self.current = 0;
                drop(second);
                // Invariant 7: what the second handle owned is gone, everything else stays.
                let mut i = 0;
                while i < self.live.len() {
                    if self.live[i].owner == Some(1) {
                        self.forget(i);
                    } else {
                        i += 1;
                    }
                }
                self.verify_patterns("after dropping the second handle");
                self.check("after dropping the second handle");
                1
            }
            Op::Recover => {
                let r = self.arena().recover_dead_owners();
                assert_eq!(r.owners, 0, "7: dead owners found while every handle lives: {r:?}");
                1
            }
        }
    }

    /// Allocates and checks invariants 1 and 2; writes the block's pattern.
    fn alloc(&mut self, size: u64, align: u64) -> u32 {
        let result = self.arena().alloc_aligned(size, align);
        if !align.is_power_of_two() {
            assert_eq!(result, Err(AllocError::BadAlignment(align)), "2: alignment {align}");
            return 1;
        }
        let min_block = self.arena().min_block();
        let expected = size.max(align).max(min_block).checked_next_power_of_two();
        let expected = match expected {
            Some(b) if b <= self.arena().max_block() => b,
            _ => {
                assert!(
                    matches!(result, Err(AllocError::TooLarge { .. })),
                    "2: {size} bytes aligned to {align} exceed the largest block {}, got {result:?}",
                    self.arena().max_block()
                );
                return 2;
            }
        };
        let block = match result {
            Ok(block) => block,
            Err(AllocError::Exhausted { .. }) => {
                if let Some(offset) = self.free_range(expected) {
                    panic!(
                        "2: exhausted for {size} bytes aligned to {align} (block {expected}), but [{offset}, {}) is free; live: {:?}",
                        offset + expected,
                        self.live
                    );
                }
                return 3;
            }
            Err(e) => panic!("2: allocating {size} bytes aligned to {align} failed unexpectedly: {e}"),
        };
        let (offset, bytes) = (block.offset(), block.size());
        assert_eq!(bytes, expected, "1: {size} bytes aligned to {align} gave {block:?}");
        assert!(offset % bytes == 0 && offset + bytes <= self.arena().capacity(), "1: {block:?} misplaced");
        if let Some(other) = self.live.iter().find(|l| overlaps(l.block, block)) {
            panic!("1: new block {block:?} overlaps live block {other:?}");
        }
        let ptr = self.arena().as_ptr(block).unwrap_or_else(|e| panic!("1: pointer to new block {block:?}: {e}"));
        assert_eq!(ptr.as_ptr() as u64 % bytes.min(PAGE), 0, "1: {block:?} at {ptr:p} misaligned in memory");
        let pattern = self.next_pattern;
        self.next_pattern = if pattern == u8::MAX { 1 } else { pattern + 1 };
        // SAFETY: the block was just allocated to this arena, which no other process or thread
        // uses, and no other reference to its bytes exists (invariant 1 checked just above).
        unsafe { self.arena().bytes_mut(block) }
            .unwrap_or_else(|e| panic!("1: bytes of new block {block:?}: {e}"))
            .fill(pattern);
        self.live.push(Live { block, pattern, owner: Some(self.current) });
        4 + bytes.trailing_zeros()
    }

    /// Frees a reference that may or may not name a live block (invariant 5).
    fn free_reference(&mut self, block: Block) -> u32 {
        let live = self.live.iter().position(|l| l.block == block);
        match (self.arena().free(block), live) {
            (Ok(()), Some(i)) => {
                self.forget(i);
                self.verify_patterns("after freeing a reference from bits");
                1
            }
            (Ok(()), None) => panic!("5: freeing {block:?}, which is not live, succeeded; live: {:?}", self.live),
            (Err(e), Some(_)) => panic!("5: freeing live block {block:?} from its bits failed: {e}"),
            (Err(e), None) => 2 + error_code(&e),
        }
    }

    /// Moves live block `i` to the freed list.
    fn forget(&mut self, i: usize) {
        let gone = self.live.swap_remove(i);
        self.freed.push(gone.block);
    }

    /// The first offset of an aligned range of `size` bytes inside the capacity that no live
    /// block and no block parked in a cache touches (invariant 2; blocks never overlap).
    fn free_range(&self, size: u64) -> Option<u64> {
        let parked = self.freed.iter().filter(|b| {
            matches!(
                self.arena().validate(**b),
                Err(BlockError::State(shm_arena::tree::BlockStateError::Cached { .. }))
            )
        });
        let live = self.live.iter().map(|l| &l.block);
        let mut taken: Vec<(u64, u64)> = live.chain(parked).map(|b| (b.offset(), b.size())).collect();
        taken.sort_unstable();
        let mut cursor = 0u64;
        for (start, len) in taken {
            let candidate = cursor.next_multiple_of(size);
            if candidate + size <= start {
                break;
            }
            cursor = cursor.max(start + len);
        }
        let candidate = cursor.next_multiple_of(size);
        (candidate + size <= self.arena().capacity()).then_some(candidate)
    }

    /// Invariant 3.
    fn verify_patterns(&self, when: &str) {
        for l in &self.live {
            // SAFETY: the block is live in the model, so allocated and not freed; this thread is
            // the only user of the arena and holds no mutable slice of it while this one lives.
            let bytes = unsafe { self.arena().bytes(l.block) }
                .unwrap_or_else(|e| panic!("4: live block {:?} no longer validates {when}: {e}", l.block));
            if let Some(at) = bytes.iter().position(|b| *b != l.pattern) {
                panic!(
                    "3: live block {:?} lost its pattern {:#04x} {when}: byte {at} is {:#04x}",
                    l.block, l.pattern, bytes[at]
                );
            }
        }
    }

    /// Invariant 6: the full check agrees with the model.
    fn check(&self, when: &str) {
        let report = self.arena().check().unwrap_or_else(|e| panic!("6: check {when} failed: {e}; {e:?}"));
        let shift = self.arena().min_block().trailing_zeros();
        let leaves = |owner: Option<Owner>| -> u64 {
            let of = self.live.iter().filter(|l| owner.is_none_or(|o| l.owner == o));
            of.map(|l| l.block.size() >> shift).sum()
        };
        assert_eq!(report.blocks_in_use, self.live.len() as u64, "6: blocks in use {when}: {report:?}");
        assert_eq!(report.leaves_in_use, leaves(None), "6: leaves in use {when}: {report:?}");
        assert_eq!(report.blocks_freeing, 0, "6: blocks being freed {when}: {report:?}");
        let by_owner = |tag: u16| report.leaves_by_owner.get(&tag).copied().unwrap_or(0);
        // A handle's cached blocks stay tagged with its tag; disowned blocks carry tag 0.
        let mut tagged = 0;
        for (i, h) in self.handles.iter().enumerate() {
            let Some(h) = h else { continue };
            let (found, owned) = (by_owner(h.tag), leaves(Some(Some(i))));
            assert!(found >= owned, "6: handle {i} (tag {}) holds {found} leaves, owns {owned} {when}", h.tag);
            tagged += found;
        }
        assert_eq!(
            tagged,
            leaves(None) - leaves(Some(None)) + report.leaves_cached,
            "6: tagged leaves {when}: {report:?}"
        );
        assert_eq!(by_owner(0), leaves(Some(None)), "6: disowned leaves {when}: {report:?}");
        let stats = self.arena().stats();
        assert_eq!(stats.in_use_bytes, leaves(None) << shift, "6: stats {when}: {stats:?}");
        let open = self.handles.iter().flatten().count();
        assert_eq!(stats.live_owners, open, "7: live owners {when}: {stats:?}");
    }

    /// Frees everything, then checks invariant 6's end state.
    fn finish(mut self) {
        self.verify_patterns("at the end");
        self.check("at the end");
        self.apply(Op::DropSecond);
        while let Some(l) = self.live.pop() {
            let block = l.block;
            self.arena().free(block).unwrap_or_else(|e| panic!("4: freeing live block {block:?} at the end: {e}"));
        }
        self.check("after freeing everything");
        let max = self.arena().max_block();
        let all = self
            .arena()
            .alloc(max)
            .unwrap_or_else(|e| panic!("6: the largest block ({max} bytes) is not free after freeing everything: {e}"));
        self.arena().free(all).unwrap_or_else(|e| panic!("4: freeing the largest block {all:?}: {e}"));
        self.check("after allocating and freeing the largest block");
    }
}

/// The alignment an operation asks for (see [`Op::Alloc`]).
fn alignment(align_log2: u8) -> u64 {
    if align_log2 < 32 {
        1 << align_log2
    } else {
        u64::from(align_log2)
    }
}

/// `index` modulo `len`, `None` for an empty list.
fn pick(index: u16, len: usize) -> Option<usize> {
    (len > 0).then(|| usize::from(index) % len)
}

fn overlaps(a: Block, b: Block) -> bool {
    a.offset() < b.offset() + b.size() && b.offset() < a.offset() + a.size()
}

/// A small code for the kind of a refusal (a feature for the stable runner).
fn error_code(e: &BlockError) -> u32 {
    use shm_arena::tree::BlockStateError as S;
    match e {
        BlockError::OutOfBounds { .. } => 1,
        BlockError::Misaligned { .. } => 2,
        BlockError::State(S::OutOfRange { .. }) => 3,
        BlockError::State(S::NotAllocated { .. }) => 4,
        BlockError::State(S::StaleGeneration { .. }) => 5,
        BlockError::State(S::BeingFreed { .. }) => 6,
        BlockError::State(S::Cached { .. }) => 7,
        BlockError::State(S::NotParked { .. }) => 8,
        BlockError::State(S::WrongOwner { .. }) => 9,
    }
}
