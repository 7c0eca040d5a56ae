//! The node word: one `u32` per node of the buddy tree.
//!
//! Bit layout (least significant first):
//!
//! | bits   | name        | meaning |
//! |--------|-------------|---------|
//! | 0      | `OCC_RIGHT` | some block lies in the right subtree (or this node is a block) |
//! | 1      | `OCC_LEFT`  | some block lies in the left subtree (or this node is a block) |
//! | 2      | `COAL_RIGHT`| a free in the right subtree is coalescing upward through here |
//! | 3      | `COAL_LEFT` | a free in the left subtree is coalescing upward through here |
//! | 4      | `OCC`       | this node is a block: allocated as a whole |
//! | 5      | `FREEING`   | with `OCC`: the owner named below is freeing it (phase 1 runs) |
//! | 6      | `CACHED`    | with `OCC`: parked in the owner's process-local cache, not in use |
//! | 7      | spare       | always zero |
//! | 8..18  | owner       | with `OCC`: owner tag (0 = shared, [`RESERVED_OWNER`] = tail) |
//! | 18..32 | generation  | bumped each time the node becomes a block; survives frees |
//!
//! State table of the node's own block state (`OCC`, `FREEING`, `CACHED`):
//!
//! | OCC | FREEING | CACHED | state |
//! |-----|---------|--------|-------|
//! | 0   | 0       | 0      | not a block; bits 0-3 describe the subtrees |
//! | 1   | 0       | 0      | a block in use, owned by `owner` |
//! | 1   | 0       | 1      | a block in `owner`'s cache: free for the user, held by the tree |
//! | 1   | 1       | 0      | a block that `owner` is returning to the tree |
//! | 1   | 1       | 1      | never |
//!
//! A block's word is `BUSY` (= `OCC | OCC_LEFT | OCC_RIGHT`), as in NBBS, so that a block also
//! reads as "both subtrees occupied" to anyone looking at it as an inner node.
//! The generation lets a stale reference be told from the block now at the same place.

/// Bit 0: the right subtree holds a block.
pub const OCC_RIGHT: u32 = 1 << 0;
/// Bit 1: the left subtree holds a block.
pub const OCC_LEFT: u32 = 1 << 1;
/// Bit 2: a free in the right subtree coalesces upward through this node.
pub const COAL_RIGHT: u32 = 1 << 2;
/// Bit 3: a free in the left subtree coalesces upward through this node.
pub const COAL_LEFT: u32 = 1 << 3;
/// Bit 4: this node is a block.
pub const OCC: u32 = 1 << 4;
/// Bit 5: the block is being freed by its owner.
pub const FREEING: u32 = 1 << 5;
/// Bit 6: the block sits in its owner's local cache.
pub const CACHED: u32 = 1 << 6;
/// Bit 7: never set.
pub const SPARE: u32 = 1 << 7;
/// The word bits of a block.
pub const BUSY: u32 = OCC | OCC_LEFT | OCC_RIGHT;
/// Bits 0-4, the NBBS status of the node.
pub const STATUS_MASK: u32 = 0x1F;
/// Bits 0-7.
pub const FLAGS_MASK: u32 = 0xFF;

/// First bit of the owner tag.
pub const OWNER_SHIFT: u32 = 8;
/// Width of the owner tag.
pub const OWNER_BITS: u32 = 10;
/// Mask of the owner tag, shifted down.
pub const OWNER_MAX: u32 = (1 << OWNER_BITS) - 1;
/// Owner tag of blocks nobody in particular owns: they live until freed explicitly.
pub const SHARED_OWNER: u16 = 0;
/// Owner tag of the tail of the tree that lies beyond the arena's capacity.
pub const RESERVED_OWNER: u16 = OWNER_MAX as u16;
/// Largest owner tag a registered owner may have.
pub const MAX_OWNER_TAG: u16 = (OWNER_MAX - 1) as u16;

/// First bit of the generation.
pub const GEN_SHIFT: u32 = OWNER_SHIFT + OWNER_BITS;
/// Width of the generation.
pub const GEN_BITS: u32 = 32 - GEN_SHIFT;
/// Mask of the generation, shifted down.
pub const GEN_MAX: u32 = (1 << GEN_BITS) - 1;

const _: () = assert!(GEN_SHIFT + GEN_BITS == 32);
const _: () = assert!(GEN_BITS >= 14, "a generation narrower than 14 bits repeats too often");

/// A decoded node word. Cheap to copy; all methods are pure bit manipulation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NodeWord(pub u32);

impl NodeWord {
    /// The word of a block owned by `owner` with generation `generation`.
    #[inline]
    pub const fn block(owner: u16, generation: u32) -> Self {
        Self(BUSY | ((owner as u32 & OWNER_MAX) << OWNER_SHIFT) | ((generation & GEN_MAX) << GEN_SHIFT))
    }

    /// The word of a node that is not a block and has nothing below it, keeping `generation`.
    #[inline]
    pub const fn empty(generation: u32) -> Self {
        Self((generation & GEN_MAX) << GEN_SHIFT)
    }

    /// NBBS status bits (0-4).
    #[inline]
    pub const fn status(self) -> u32 {
        self.0 & STATUS_MASK
    }

    /// True when the node is not a block and no block lies below it (bits 0-7 all clear).
    #[inline]
    pub const fn is_vacant(self) -> bool {
        self.0 & FLAGS_MASK == 0
    }

    /// True when the node is a block (in use, cached or being freed).
    #[inline]
    pub const fn is_block(self) -> bool {
        self.0 & OCC != 0
    }

    /// True when the node is a block in use (neither cached nor being freed).
    #[inline]
    pub const fn is_block_in_use(self) -> bool {
        self.0 & (BUSY | FREEING | CACHED) == BUSY
    }

    /// True when the block is being freed.
    #[inline]
    pub const fn is_freeing(self) -> bool {
        self.0 & FREEING != 0
    }

    /// True when the block is parked in its owner's cache.
    #[inline]
    pub const fn is_cached(self) -> bool {
        self.0 & CACHED != 0
    }

    /// Owner tag (meaningful only for blocks).
    #[inline]
    pub const fn owner(self) -> u16 {
        ((self.0 >> OWNER_SHIFT) & OWNER_MAX) as u16
    }

    /// Generation.
    #[inline]
    pub const fn generation(self) -> u32 {
        (self.0 >> GEN_SHIFT) & GEN_MAX
    }

    /// The same word with another owner tag.
    #[inline]
    pub const fn with_owner(self, owner: u16) -> Self {
        Self((self.0 & !(OWNER_MAX << OWNER_SHIFT)) | ((owner as u32 & OWNER_MAX) << OWNER_SHIFT))
    }

    /// The same word with `flags` set.
    #[inline]
    pub const fn with_flags(self, flags: u32) -> Self {
        Self(self.0 | flags)
    }

    /// The same word with `flags` cleared.
    #[inline]
    pub const fn without_flags(self, flags: u32) -> Self {
        Self(self.0 & !flags)
    }
}

impl core::fmt::Debug for NodeWord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut bits = String::new();
        for (bit, name) in [
            (OCC, "OCC"),
            (OCC_LEFT, "L"),
            (OCC_RIGHT, "R"),
            (COAL_LEFT, "cL"),
            (COAL_RIGHT, "cR"),
            (FREEING, "FREEING"),
            (CACHED, "CACHED"),
            (SPARE, "SPARE"),
        ] {
            if self.0 & bit != 0 {
                if !bits.is_empty() {
                    bits.push('|');
                }
                bits.push_str(name);
            }
        }
        write!(f, "NodeWord({bits}; owner {}, gen {})", self.owner(), self.generation())
    }
}

/// The side bits that a child sets in its parent.
///
/// A child with an even heap index is the left child.
#[inline]
pub const fn occ_bit_for(child: usize) -> u32 {
    if child & 1 == 0 {
        OCC_LEFT
    } else {
        OCC_RIGHT
    }
}

/// The coalescing bit that a child sets in its parent.
#[inline]
pub const fn coal_bit_for(child: usize) -> u32 {
    if child & 1 == 0 {
        COAL_LEFT
    } else {
        COAL_RIGHT
    }
}

/// Heap index of the other child of the same parent.
#[inline]
pub const fn buddy(node: usize) -> usize {
    node ^ 1
}

/// Level of a heap index: the root (1) is level 0.
#[inline]
pub const fn level_of(node: usize) -> u32 {
    usize::BITS - 1 - node.leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_word_round_trips_owner_and_generation() {
        let w = NodeWord::block(MAX_OWNER_TAG, GEN_MAX);
        assert!(w.is_block_in_use());
        assert_eq!(w.owner(), MAX_OWNER_TAG);
        assert_eq!(w.generation(), GEN_MAX);
        assert_eq!(w.status(), BUSY);
        let w = w.with_owner(3).with_flags(FREEING);
        assert_eq!(w.owner(), 3);
        assert!(w.is_freeing() && !w.is_block_in_use());
        assert_eq!(NodeWord::block(1, GEN_MAX + 1).generation(), 0, "generation wraps");
    }

    #[test]
    fn empty_word_keeps_generation_and_is_vacant() {
        let w = NodeWord::empty(77);
        assert!(w.is_vacant() && !w.is_block());
        assert_eq!(w.generation(), 77);
        assert_eq!(w.owner(), 0);
    }

    #[test]
    fn sides_and_levels() {
        assert_eq!(occ_bit_for(2), OCC_LEFT);
        assert_eq!(occ_bit_for(3), OCC_RIGHT);
        assert_eq!(coal_bit_for(6), COAL_LEFT);
        assert_eq!(buddy(6), 7);
        assert_eq!(level_of(1), 0);
        assert_eq!(level_of(3), 1);
        assert_eq!(level_of(4), 2);
        assert_eq!(level_of(usize::MAX >> 1), usize::BITS - 2);
    }
}
