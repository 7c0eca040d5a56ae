//! A memfd arena reserves no data pages with `fallocate` (`FLAG_LAZY_PAGES`): it is not in
//! /dev/shm, so a block's pages cost nothing until they are touched, and giving them back
//! (punching) still works.
#![allow(unsafe_code)] // writing the block

use shm_arena::ArenaOptions;

/// Bytes of memory the descriptor's file holds (`st_blocks` is in 512-byte units).
fn allocated(arena: &shm_arena::Arena) -> u64 {
    rustix::fs::fstat(arena.fd()).unwrap().st_blocks as u64 * 512
}

#[test]
fn a_memfd_block_costs_nothing_until_touched_and_is_given_back() {
    let a = ArenaOptions::new(256 << 20).min_block(1 << 20).create_anonymous().unwrap();
    let before = allocated(&a);
    let (block, ptr) = a.alloc_with_ptr(64 << 20).unwrap();
    assert_eq!(allocated(&a), before, "no fallocate for a memfd block");
    assert_eq!(a.stats().reserved_data_bytes, 64 << 20, "the bitmap marks the pages handed out");
    // SAFETY: the block is ours, 64 MiB, mapped while `a` lives.
    unsafe { std::ptr::write_bytes(ptr.as_ptr(), 1, 8 << 20) };
    assert!(allocated(&a) >= before + (8 << 20), "touched pages are memory");
    a.free_and_release(block).unwrap();
    assert!(allocated(&a) <= before, "punched back");
    assert_eq!(a.stats().reserved_data_bytes, 0);
    a.check().unwrap();
}
