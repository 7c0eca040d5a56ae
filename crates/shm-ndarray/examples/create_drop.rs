//! Create + drop of a 1 KiB array beside a heap `Vec` of the same size, interleaved in rounds
//! and reported as each one's fastest round (a noisy machine slows rounds down, never speeds
//! them up, so the minimum is the steadiest figure; the criterion bench `arrays` gives medians).
//!
//! `cargo run --release -p shm-ndarray --example create_drop`

use std::hint::black_box;
use std::time::Instant;

use shm_ndarray::{DType, Pool, PoolOptions, ShmArray};

const ROUNDS: usize = 15;
const PER_ROUND: u32 = 200_000;

fn fastest(mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..PER_ROUND {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(PER_ROUND)
}

fn main() {
    let pool = Pool::create(&PoolOptions::new().segment_capacity(64 << 20)).unwrap();
    let f64s = DType::of::<f64>();
    let mut best = [f64::MAX; 4];
    let names = ["vec![0u8; 1024]", "Vec::with_capacity(1024)", "Pool::empty 128 x f64", "ShmArray::zeros 128 x f64"];
    for _ in 0..ROUNDS {
        let times = [
            fastest(|| drop(black_box(vec![0u8; 1024]))),
            fastest(|| drop(black_box(Vec::<u8>::with_capacity(1024)))),
            fastest(|| drop(black_box(pool.empty(&f64s, &[128], false).unwrap()))),
            fastest(|| drop(black_box(ShmArray::<f64>::zeros(&pool, &[128]).unwrap()))),
        ];
        for (b, t) in best.iter_mut().zip(times) {
            *b = b.min(t);
        }
    }
    for (name, t) in names.iter().zip(best) {
        println!("{name:<28} {t:>7.1} ns  {:>5.2}x vec![0u8; 1024]", t / best[0]);
    }
}
