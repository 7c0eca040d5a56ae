//! loom models of the reserved-page bitmap against the buddy tree (`pages` invariants): a page
//! given back (bits cleared, then punched) while neighbouring and sub-page blocks are allocated,
//! reserved and used. The kernel's page state is modelled as one SeqCst word per page ("backed"),
//! set by the modelled `fallocate` and cleared by the modelled punch (syscalls are fully
//! ordered); the property checked is the one that prevents a `SIGBUS`: whoever uses a page,
//! having passed the bitmap check, finds it backed.
//!
//! Run by `cargo xtask test` as
//! `RUSTFLAGS="--cfg shm_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release -p shm-arena --features loom --test loom_pages`.
//! Each model is one scenario on a tree of depth 1, at most 3 threads.
#![cfg(all(shm_loom, feature = "loom"))]

use loom::sync::atomic::AtomicU32;
use loom::sync::Arc;
use loom::thread;
use shm_arena::pages::PageBits;
use shm_arena::tree::{BuddyTree, NodeRef};
use std::sync::atomic::Ordering::SeqCst;

type Tree<'a> = BuddyTree<'a, [AtomicU32]>;

/// A depth-1 tree whose nodes map to pages by `page_of`, the bitmap, and the kernel's state.
struct World {
    nodes: Vec<AtomicU32>,
    search: Vec<AtomicU32>,
    bits: Vec<AtomicU32>,
    backed: Vec<AtomicU32>,
    /// Leaves per page: 2 when the leaves are sub-page blocks, 1 when they are pages.
    leaves_per_page: u64,
}

impl World {
    fn new(leaves_per_page: u64) -> Arc<Self> {
        let zeros = |n| (0..n).map(|_| AtomicU32::new(0)).collect();
        Arc::new(Self {
            nodes: zeros(Tree::node_words(1)),
            search: zeros(Tree::search_words(1)),
            bits: zeros(1),
            backed: zeros(2),
            leaves_per_page,
        })
    }
    fn tree(&self) -> Tree<'_> {
        BuddyTree::new(&self.nodes[..], &self.search[..], 1).unwrap()
    }
    fn pages(&self, r: NodeRef) -> (u64, u64) {
        let t = self.tree();
        let first = t.first_leaf(r.index) / self.leaves_per_page;
        let leaves = 1u64 << t.order_of(r.index);
        (first, leaves.div_ceil(self.leaves_per_page))
    }
    /// `Arena::reserve_pages`: skip the syscall when the bits say reserved.
    fn reserve(&self, r: NodeRef) {
        let (first, count) = self.pages(r);
        let bits = PageBits::new(&self.bits[..]);
        if !bits.all_set(first, count) {
            for p in first..first + count {
                self.backed[p as usize].store(1, SeqCst); // fallocate
            }
            bits.set(first, count);
        }
    }
    /// Writing the block: every page must be backed.
    fn use_block(&self, r: NodeRef) {
        let (first, count) = self.pages(r);
        for p in first..first + count {
            assert_eq!(self.backed[p as usize].load(SeqCst), 1, "page {p} used unbacked: SIGBUS");
        }
    }
    /// `Arena::free_and_release` of a block we hold: claim (park), clear, punch, free.
    fn give_back(&self, r: NodeRef, tag: u16) {
        let t = self.tree();
        t.park(r, tag).unwrap();
        let (first, count) = self.pages(r);
        PageBits::new(&self.bits[..]).clear(first, count);
        for p in first..first + count {
            self.backed[p as usize].store(0, SeqCst); // punch
        }
        t.free_parked(r, tag).unwrap();
    }
    /// Allocate at `level`, reserve, use, then free (plainly or giving back).
    fn cycle(&self, level: u32, tag: u16, give_back: bool) {
        if let Some(r) = self.tree().alloc(level, tag) {
            self.reserve(r);
            self.use_block(r);
            if give_back {
                self.give_back(r, tag);
            } else {
                self.tree().free(r, tag).unwrap();
            }
        }
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

#[test]
fn a_page_given_back_while_sub_page_blocks_are_allocated_in_it() {
    // Leaves are half pages (they share page 0); the root is the page. The trimmer claims the
    // page and punches it; two allocators of sub-page blocks reserve and use their halves.
    model(|| {
        let w = World::new(2);
        let w1 = w.clone();
        let trimmer = thread::spawn(move || w1.cycle(0, 1, true));
        let w2 = w.clone();
        let small = thread::spawn(move || w2.cycle(1, 2, false));
        w.cycle(1, 3, false);
        trimmer.join().unwrap();
        small.join().unwrap();
        w.tree().check().unwrap();
    });
}

#[test]
fn neighbouring_pages_given_back_and_reserved_share_a_bitmap_word() {
    // Leaves are pages 0 and 1 (bits in one word): one thread gives its page back while the
    // other reserves and uses its own; neither loses the other's bit.
    model(|| {
        let w = World::new(1);
        let w1 = w.clone();
        let a = thread::spawn(move || {
            w1.cycle(1, 1, false); // leaves its page reserved
            w1.cycle(1, 1, true);
        });
        w.cycle(1, 2, false);
        w.cycle(1, 2, false);
        a.join().unwrap();
        w.tree().check().unwrap();
        // Whatever is marked reserved is backed (a bit never outlives its page).
        let bits = PageBits::new(&w.bits[..]);
        for p in 0..2 {
            if bits.all_set(p, 1) {
                assert_eq!(w.backed[p as usize].load(SeqCst), 1, "page {p} marked but punched");
            }
        }
    });
}
