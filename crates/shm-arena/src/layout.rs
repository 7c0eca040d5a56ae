//! Where everything sits in a segment, computed from three numbers.
//!
//! Invariants:
//! 1. The layout is a pure function of (minimum block, capacity, owner slots): the creator
//!    computes it and writes it into the header, and every opener computes it again and refuses
//!    a header that disagrees. A corrupt or crafted header therefore never makes us read outside
//!    the segment.
//! 2. Every region is aligned for its contents: owner slots and search words to 128 bytes, the
//!    tree and the data to the page (the data also to the minimum block when that is larger).
//!
//! ```text
//! 0                 header (one page; immutable part, then init state and root word)
//! owners_offset     owner_slots x 128-byte owner slots
//! search_offset     search words of the tree (u32)
//! tree_offset       node words of the tree (u32), 2^(depth+1) of them
//! pages_offset      reserved-page bitmap (u32 words), one bit per page of the data region
//! data_offset       capacity bytes of blocks, then padding up to the tree's full width
//! segment_size      end
//! ```

use crate::tree::{BuddyTree, MAX_DEPTH};

/// Bytes of the header page.
pub const HEADER_SIZE: u64 = 4096;
/// Bytes of one owner slot.
pub const OWNER_SLOT_SIZE: u64 = 128;
/// Smallest supported minimum block (so that a block offset fits a handle with room to spare).
pub const MIN_BLOCK_MIN: u64 = 16;
/// Largest supported minimum block.
pub const MIN_BLOCK_MAX: u64 = 1 << 20;
/// Most owner slots a segment may have (owner tags are 10 bits; two values are reserved).
pub const OWNER_SLOTS_MAX: u32 = crate::tree::node::MAX_OWNER_TAG as u32;
/// Bytes of a page: the unit of reservation and of giving memory back.
pub const PAGE: u64 = 4096;

/// The computed layout of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `log2` of the minimum block.
    pub min_block_shift: u32,
    /// Usable bytes (a multiple of the minimum block).
    pub capacity: u64,
    /// Depth of the buddy tree.
    pub depth: u32,
    /// Number of owner slots.
    pub owner_slots: u32,
    /// Offset of the owner table.
    pub owners_offset: u64,
    /// Offset of the search words.
    pub search_offset: u64,
    /// Offset of the node words.
    pub tree_offset: u64,
    /// Offset of the reserved-page bitmap (`pages_words` u32 words; derived, not recorded).
    pub pages_offset: u64,
    /// Offset of the first block.
    pub data_offset: u64,
    /// Total bytes of the segment.
    pub segment_size: u64,
}

/// Why a layout cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The minimum block is not a power of two in the supported range.
    #[error("minimum block {0} is not a power of two between {MIN_BLOCK_MIN} and {MIN_BLOCK_MAX}")]
    MinBlock(u64),
    /// The capacity is zero or needs a tree deeper than supported.
    #[error("capacity {capacity} bytes is not between one minimum block and {max} bytes")]
    Capacity {
        /// Requested capacity.
        capacity: u64,
        /// Largest capacity for this minimum block.
        max: u64,
    },
    /// The owner slot count is out of range.
    #[error("owner slots {0} is not between 1 and {OWNER_SLOTS_MAX}")]
    OwnerSlots(u32),
}

const fn align_up(x: u64, to: u64) -> u64 {
    (x + to - 1) & !(to - 1)
}

impl Layout {
    /// Computes the layout for `capacity` bytes (rounded up to the minimum block).
    ///
    /// # Errors
    ///
    /// [`LayoutError`] for parameters out of range.
    pub fn new(min_block: u64, capacity: u64, owner_slots: u32) -> Result<Self, LayoutError> {
        if !min_block.is_power_of_two() || !(MIN_BLOCK_MIN..=MIN_BLOCK_MAX).contains(&min_block) {
            return Err(LayoutError::MinBlock(min_block));
        }
        if owner_slots == 0 || owner_slots > OWNER_SLOTS_MAX {
            return Err(LayoutError::OwnerSlots(owner_slots));
        }
        let min_block_shift = min_block.trailing_zeros();
        // Block offsets travel in 44 bits of 16-byte units (`Block::to_bits`): at most 256 TiB.
        let max = (min_block << MAX_DEPTH).min(1 << 48);
        if capacity == 0 || capacity > max {
            return Err(LayoutError::Capacity { capacity, max });
        }
        let capacity = align_up(capacity, min_block);
        let leaves = capacity >> min_block_shift;
        let depth = leaves.next_power_of_two().trailing_zeros();
        let owners_offset = HEADER_SIZE;
        let search_offset = align_up(owners_offset + u64::from(owner_slots) * OWNER_SLOT_SIZE, 128);
        let search_bytes = BuddyTree::<[crate::sync::SharedU32]>::search_words(depth) as u64 * 4;
        let tree_offset = align_up(search_offset + search_bytes, PAGE);
        let tree_bytes = BuddyTree::<[crate::sync::SharedU32]>::node_words(depth) as u64 * 4;
        let pages_offset = align_up(tree_offset + tree_bytes, 128);
        let pages_bytes = (align_up(capacity, PAGE) / PAGE / 32 + 1) * 4;
        let data_offset = align_up(pages_offset + pages_bytes, PAGE.max(min_block));
        let segment_size = align_up(data_offset + capacity, PAGE);
        Ok(Self {
            min_block_shift,
            capacity,
            depth,
            owner_slots,
            owners_offset,
            search_offset,
            tree_offset,
            pages_offset,
            data_offset,
            segment_size,
        })
    }

    /// The minimum block in bytes.
    pub const fn min_block(&self) -> u64 {
        1 << self.min_block_shift
    }

    /// Capacity in minimum blocks (leaves of the tree).
    pub const fn capacity_leaves(&self) -> u64 {
        self.capacity >> self.min_block_shift
    }

    /// Largest block the tree can hand out, in bytes (the largest power of two within capacity).
    pub const fn max_block(&self) -> u64 {
        let leaves = self.capacity_leaves();
        (1u64 << (63 - leaves.leading_zeros())) << self.min_block_shift
    }

    /// Pages of the data region (each has a bit in the reserved-page bitmap).
    pub const fn data_pages(&self) -> u64 {
        align_up(self.capacity, PAGE) / PAGE
    }

    /// Words of the reserved-page bitmap.
    pub const fn pages_words(&self) -> usize {
        (self.data_pages() / 32 + 1) as usize
    }

    /// Bytes of metadata pages from the start (header to bitmap, rounded up to a page): what
    /// a sparse segment reserves at creation. The padding up to `data_offset` is never used.
    pub const fn metadata_bytes(&self) -> u64 {
        align_up(self.pages_offset + self.pages_words() as u64 * 4, PAGE)
    }

    /// Bytes spent on metadata (everything but the data region).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // for the fuzz targets and tests
    pub const fn overhead(&self) -> u64 {
        self.segment_size - self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_ordered_aligned_and_sized() {
        let l = Layout::new(64, 64 << 20, 128).unwrap();
        assert_eq!(l.depth, 20);
        assert!(l.owners_offset >= HEADER_SIZE);
        assert!(l.search_offset >= l.owners_offset + 128 * OWNER_SLOT_SIZE);
        assert!(l.tree_offset % PAGE == 0 && l.tree_offset > l.search_offset);
        assert_eq!(l.pages_offset, l.tree_offset + (4u64 << 21));
        assert!(l.data_offset >= l.pages_offset + l.pages_words() as u64 * 4);
        assert_eq!(l.data_pages(), (64 << 20) / PAGE);
        assert_eq!(l.segment_size, l.data_offset + (64 << 20));
        assert_eq!(l.max_block(), 64 << 20);
    }

    #[test]
    fn odd_capacities_round_up_and_keep_a_power_of_two_tree() {
        let l = Layout::new(64, 1000, 4).unwrap();
        assert_eq!(l.capacity, 1024);
        let l = Layout::new(64, 100 * 64 + 1, 4).unwrap();
        assert_eq!(l.capacity_leaves(), 101);
        assert_eq!(l.depth, 7);
        assert_eq!(l.max_block(), 64 * 64);
        let l = Layout::new(1 << 16, 1 << 20, 1).unwrap();
        assert_eq!(l.data_offset % (1 << 16), 0);
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert_eq!(Layout::new(48, 1 << 20, 1), Err(LayoutError::MinBlock(48)));
        assert_eq!(Layout::new(8, 1 << 20, 1), Err(LayoutError::MinBlock(8)));
        assert!(matches!(Layout::new(64, 0, 1), Err(LayoutError::Capacity { .. })));
        assert!(matches!(Layout::new(16, 1 << 40, 1), Err(LayoutError::Capacity { .. })));
        assert_eq!(Layout::new(64, 1 << 20, 0), Err(LayoutError::OwnerSlots(0)));
        assert_eq!(Layout::new(64, 1 << 20, 5000), Err(LayoutError::OwnerSlots(5000)));
    }
}
