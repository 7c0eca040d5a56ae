//! A fixed number of create + drop rounds of one array size, for counting instructions with
//! callgrind (load-independent, unlike wall time; docs/performance.md, "The warm path stays
//! warm"):
//!
//! ```text
//! cargo build --release -p shm-ndarray --example create_drop_instr
//! valgrind --tool=callgrind target/release/examples/create_drop_instr 1048576 5200
//! valgrind --tool=callgrind target/release/examples/create_drop_instr 1048576 200
//! ```
//!
//! (instructions of the first run minus the second, divided by 5,000: the cost per round
//! after 200 warm-up rounds, setup and teardown cancelled out).

use std::hint::black_box;

use shm_ndarray::{DType, Pool, PoolOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let bytes: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1 << 20);
    let rounds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5200);
    let pool = Pool::create(&PoolOptions::new()).expect("a pool");
    let u8s = DType::of::<u8>();
    for _ in 0..rounds {
        drop(black_box(pool.empty(&u8s, &[bytes], false).expect("an array")));
    }
}
