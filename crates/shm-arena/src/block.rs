//! [`Block`]: a block named by offset, size and generation, never by a pointer.

/// A block of an arena: where it starts, how big it is, and which allocation of that place it is.
///
/// A `Block` is plain data that means the same thing in every process mapping the arena; it
/// becomes memory only through [`crate::Arena::as_ptr`], which validates it first. A `Block`
/// read from an untrusted source ([`Block::from_bits`]) is checked by every arena method that
/// takes it: bounds, alignment, that the tree holds a block there, and its generation.
///
/// # Examples
///
/// ```
/// use shm_arena::Block;
///
/// let b = Block::from_parts(4096, 1024, 7);
/// assert_eq!(Block::from_bits(b.to_bits()), b);
/// assert_eq!((b.offset(), b.size(), b.generation()), (4096, 1024, 7));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    offset: u64,
    size_log2: u8,
    generation: u16,
}

const SIZE_BITS: u32 = 6;
const GEN_BITS: u32 = 14;
const OFFSET_SHIFT: u32 = SIZE_BITS + GEN_BITS;
/// Offsets are stored in 16-byte units (the smallest minimum block).
const OFFSET_UNIT_LOG2: u32 = 4;

impl Block {
    /// A block reference from its parts (unvalidated). `size` is rounded down to a power of two.
    pub fn from_parts(offset: u64, size: u64, generation: u16) -> Self {
        Self {
            offset: offset & !((1 << OFFSET_UNIT_LOG2) - 1),
            size_log2: (63 - size.max(1).leading_zeros()) as u8,
            generation: generation & ((1 << GEN_BITS) - 1),
        }
    }

    pub(crate) fn from_raw(offset: u64, size_log2: u32, generation: u32) -> Self {
        Self { offset, size_log2: size_log2 as u8, generation: generation as u16 }
    }

    /// Byte offset of the block from the start of the arena's data region.
    pub const fn offset(&self) -> u64 {
        self.offset
    }

    /// Size in bytes (a power of two).
    pub const fn size(&self) -> u64 {
        1 << self.size_log2
    }

    /// `log2` of the size.
    pub const fn size_log2(&self) -> u32 {
        self.size_log2 as u32
    }

    /// Generation of the allocation (14 bits).
    pub const fn generation(&self) -> u16 {
        self.generation
    }

    /// Packs the reference into 64 bits: size (6 bits), generation (14), offset / 16 (44).
    pub const fn to_bits(self) -> u64 {
        (self.size_log2 as u64)
            | ((self.generation as u64) << SIZE_BITS)
            | ((self.offset >> OFFSET_UNIT_LOG2) << OFFSET_SHIFT)
    }

    /// Unpacks [`Block::to_bits`]. Any `u64` gives some `Block`; arena methods validate it.
    pub const fn from_bits(bits: u64) -> Self {
        Self {
            size_log2: (bits & ((1 << SIZE_BITS) - 1)) as u8,
            generation: ((bits >> SIZE_BITS) & ((1 << GEN_BITS) - 1)) as u16,
            offset: (bits >> OFFSET_SHIFT) << OFFSET_UNIT_LOG2,
        }
    }
}
