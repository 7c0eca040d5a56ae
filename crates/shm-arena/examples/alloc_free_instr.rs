//! A fixed number of alloc + free rounds of one block size in an anonymous 64 MiB arena with
//! 64-byte minimum blocks (the arena of `benches/alloc.rs`), for counting instructions with
//! callgrind (load-independent, unlike wall time):
//!
//! ```text
//! cargo build --release -p shm-arena --example alloc_free_instr
//! valgrind --tool=callgrind target/release/examples/alloc_free_instr 1048576 10200 [nocache]
//! valgrind --tool=callgrind target/release/examples/alloc_free_instr 1048576 200 [nocache]
//! ```
//!
//! (the first count minus the second, divided by 10,000: instructions per alloc + free).
//! With `noslot` as the third argument, a second handle that holds no owner slot frees each
//! block (through a transient slot, straight to the tree).

use std::hint::black_box;

use shm_arena::{Arena, ArenaOptions, OpenOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let size: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1 << 20);
    let rounds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_200);
    let mut options = ArenaOptions::new(64 << 20).min_block(64);
    let mode = args.next();
    if mode.as_deref() == Some("nocache") {
        options = options.cache_max_block(0);
    }
    let arena = options.create_anonymous().expect("an arena");
    let other = (mode.as_deref() == Some("noslot"))
        .then(|| Arena::open_fd(arena.fd().try_clone().expect("a descriptor"), &OpenOptions::new()).expect("a handle"));
    let freer = other.as_ref().unwrap_or(&arena);
    for _ in 0..rounds {
        let block = arena.alloc(black_box(size)).expect("a block");
        freer.free(black_box(block)).expect("ours");
    }
}
