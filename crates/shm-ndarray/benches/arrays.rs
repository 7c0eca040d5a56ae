//! shm-ndarray's hot paths beside a heap allocation, in one run: create + drop of a 1 KiB
//! array (target: within 3x of a `Vec` of the same size), and encode + attach of a handle.

use criterion::{criterion_group, criterion_main, Criterion};
use shm_ndarray::{DType, Handle, Pool, PoolOptions, ShmArray};
use std::hint::black_box;

fn create_drop(c: &mut Criterion) {
    let pool = Pool::create(&PoolOptions::new().segment_capacity(64 << 20)).unwrap();
    let f64s = DType::of::<f64>();
    let mut g = c.benchmark_group("create_drop_1KiB");
    g.bench_function("Vec<u8> (heap)", |b| b.iter(|| drop(black_box(vec![0u8; 1024]))));
    g.bench_function("Vec<u8> uninit (heap)", |b| b.iter(|| drop(black_box(Vec::<u8>::with_capacity(1024)))));
    g.bench_function("Pool::empty (128 x f64)", |b| {
        b.iter(|| drop(black_box(pool.empty(&f64s, &[128], false).unwrap())))
    });
    g.bench_function("ShmArray::zeros (128 x f64)", |b| {
        b.iter(|| drop(black_box(ShmArray::<f64>::zeros(&pool, &[128]).unwrap())))
    });
    g.finish();
}

fn handles(c: &mut Criterion) {
    let pool = Pool::create(&PoolOptions::new().segment_capacity(64 << 20)).unwrap();
    let a = pool.empty(&DType::of::<f64>(), &[16, 16], false).unwrap();
    let mut g = c.benchmark_group("handle");
    g.bench_function("make + encode + decode + attach (same process)", |b| {
        b.iter(|| {
            let bytes = a.handle().unwrap().to_bytes();
            black_box(pool.attach(&Handle::from_bytes(&bytes).unwrap()).unwrap())
        })
    });
    let untracked = a.untracked_handle();
    let other = pool.empty(&DType::of::<f64>(), &[4], false).unwrap();
    drop(other);
    g.bench_function("attach untracked, first hold in this process", |b| {
        b.iter_batched(
            || pool.empty(&DType::of::<f64>(), &[16], false).unwrap().untracked_handle(),
            |h| black_box(pool.attach(&h).is_err()),
            criterion::BatchSize::SmallInput,
        )
    });
    drop(untracked);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = create_drop, handles
}
criterion_main!(benches);
