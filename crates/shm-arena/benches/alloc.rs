//! One allocation and its free, on one thread: shm-arena against the same buddy tree behind a
//! mutex and against the system allocator, all measured in the same run.
//!
//! Groups `alloc_free/64B`, `alloc_free/4KiB` and `alloc_free/1MiB`; in each, one benchmark per
//! variant, each iteration being one allocation followed by the free of that block:
//!
//! | variant | what |
//! |---|---|
//! | `arena` | [`Arena::alloc`] + [`Arena::free`], anonymous 64 MiB arena, default options (blocks up to 4 KiB go through the process-local cache) |
//! | `arena_nocache` | the same with `cache_max_block(0)`: every operation goes through the lock-free tree |
//! | `arena_warm` | `arena`, with `WARM_NEIGHBOURS` blocks of the same size held around the one measured |
//! | `arena_nocache_warm` | `arena_nocache`, with the same neighbours: the free's coalescing stops at the first level |
//! | `tree_mutex` | the same [`BuddyTree`] over heap words, every call inside a `std::sync::Mutex<()>` |
//! | `tree_lockfree_heap` | the same heap tree, no mutex |
//! | `malloc` | `std::alloc::alloc` + `dealloc` with the same `Layout` (the system allocator) |
//!
//! In the `*_warm` variants the neighbours are allocated first (offsets `0..WARM_NEIGHBOURS` in
//! units of the block size) and the last one is freed again, so the measured block reuses that
//! place and its buddy stays allocated: the free marks one parent and stops there. In the cold
//! variants the tree is otherwise empty, so every free coalesces up to the root.
//!
//! Run with `cargo bench -p shm-arena --bench alloc`; medians are in
//! `target/criterion/alloc_free_<size>/<variant>/new/estimates.json`.

use std::alloc::Layout;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use shm_arena::sync::words::heap_words;
use shm_arena::sync::SharedU32;
use shm_arena::tree::BuddyTree;
use shm_arena::{Arena, ArenaOptions, Block};

/// Capacity of every arena and heap tree.
const CAPACITY: u64 = 64 << 20;
/// Minimum block of every arena and heap tree (the default).
const MIN_BLOCK: u64 = shm_arena::DEFAULT_MIN_BLOCK;
/// Blocks of the measured size held around the measured block in the `*_warm` variants.
const WARM_NEIGHBOURS: usize = 8;
/// Owner tag the heap-tree variants allocate under (any registered-looking tag).
const HEAP_OWNER: u16 = 1;
/// Block sizes measured, with their group labels.
const SIZES: [(u64, &str); 3] = [(64, "64B"), (4 << 10, "4KiB"), (1 << 20, "1MiB")];

type HeapTree<'a> = BuddyTree<'a, [SharedU32]>;

/// An anonymous arena of [`CAPACITY`] bytes; `cache` false disables the local cache.
fn arena(cache: bool) -> Arena {
    let options = ArenaOptions::new(CAPACITY);
    let options = if cache { options } else { options.cache_max_block(0) };
    options.create_anonymous().expect("create an anonymous 64 MiB arena")
}

/// Allocates [`WARM_NEIGHBOURS`] blocks of `size` and frees the last: the next block of that
/// size lands beside held ones. Returns the blocks held.
fn hold_neighbours(arena: &Arena, size: u64) -> Vec<Block> {
    let mut held: Vec<Block> = (0..WARM_NEIGHBOURS).map(|_| arena.alloc(size).expect("neighbour")).collect();
    arena.free(held.pop().expect("at least one neighbour")).expect("free the last neighbour");
    held
}

/// Node and search words of a heap tree as deep as the arena's.
struct HeapStores {
    nodes: Box<[SharedU32]>,
    search: Box<[SharedU32]>,
    depth: u32,
}

impl HeapStores {
    fn new() -> Self {
        let depth = (CAPACITY / MIN_BLOCK).trailing_zeros();
        Self {
            nodes: heap_words(HeapTree::node_words(depth)),
            search: heap_words(HeapTree::search_words(depth)),
            depth,
        }
    }

    fn tree(&self) -> HeapTree<'_> {
        let tree = BuddyTree::new(&self.nodes[..], &self.search[..], self.depth).expect("stores sized for the depth");
        tree.reserve_tail(CAPACITY / MIN_BLOCK);
        tree
    }
}

/// Tree level of blocks of `size` bytes.
fn level_of(tree: &HeapTree<'_>, size: u64) -> u32 {
    tree.level_for_order((size / MIN_BLOCK).trailing_zeros()).expect("size within the tree")
}

fn bench_arena(c: &mut Criterion, group: &str, size: u64, variant: &str, cache: bool, warm: bool) {
    let arena = arena(cache);
    let _held = if warm { hold_neighbours(&arena, size) } else { Vec::new() };
    c.benchmark_group(group).bench_function(variant, |b| {
        b.iter(|| {
            let block = arena.alloc(black_box(size)).expect("alloc");
            arena.free(black_box(block)).expect("free");
        })
    });
}

fn bench_size(c: &mut Criterion, size: u64, label: &str) {
    let group = format!("alloc_free/{label}");

    bench_arena(c, &group, size, "arena", true, false);
    bench_arena(c, &group, size, "arena_nocache", false, false);
    bench_arena(c, &group, size, "arena_warm", true, true);
    bench_arena(c, &group, size, "arena_nocache_warm", false, true);

    {
        let stores = HeapStores::new();
        let tree = stores.tree();
        let level = level_of(&tree, size);
        let lock = Mutex::new(());
        c.benchmark_group(&group).bench_function("tree_mutex", |b| {
            b.iter(|| {
                let block = {
                    let _guard = lock.lock().expect("bench lock");
                    tree.alloc(black_box(level), HEAP_OWNER).expect("alloc")
                };
                let _guard = lock.lock().expect("bench lock");
                tree.free(black_box(block), HEAP_OWNER).expect("free");
            })
        });
    }

    {
        let stores = HeapStores::new();
        let tree = stores.tree();
        let level = level_of(&tree, size);
        c.benchmark_group(&group).bench_function("tree_lockfree_heap", |b| {
            b.iter(|| {
                let block = tree.alloc(black_box(level), HEAP_OWNER).expect("alloc");
                tree.free(black_box(block), HEAP_OWNER).expect("free");
            })
        });
    }

    let layout = Layout::from_size_align(size as usize, 16).expect("valid layout");
    c.benchmark_group(&group).bench_function("malloc", |b| {
        b.iter(|| {
            // SAFETY: `layout` has a non-zero size.
            let p = unsafe { std::alloc::alloc(black_box(layout)) };
            assert!(!p.is_null(), "malloc failed");
            // SAFETY: `p` came from `alloc` with this same layout and is freed once.
            unsafe { std::alloc::dealloc(black_box(p), layout) };
        })
    });
}

fn alloc_free(c: &mut Criterion) {
    for (size, label) in SIZES {
        bench_size(c, size, label);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    targets = alloc_free
}
criterion_main!(benches);
