//! Decoding and attaching handles made of arbitrary or mutated bytes (shm-ndarray).
//!
//! One pool per fuzzing process holds a few arrays of different dtypes and shapes, and handles
//! to them and to views of them (untracked, so attaching never consumes anything). An input is
//! either raw handle bytes, or a template handle with input bytes XORed over it (so most inputs
//! keep a valid magic and reach the deep checks).
//!
//! Invariants (a panic names the number):
//! 1. Decoding and attaching any bytes returns a value or an error; it never panics or crashes.
//! 2. An attached view is a view of one of the pool's arrays (never other memory), and every
//!    element it names lies inside that array's data: reading each element's bytes is fine.
//! 3. The pool's arrays keep their contents.

use std::sync::OnceLock;

use shm_ndarray::{DType, Handle, Pool, PoolOptions, ShmArray};

use crate::Observer;

struct Fixture {
    pool: Pool,
    arrays: Vec<ShmArray<u8>>,
    others: Vec<shm_ndarray::SharedArray>,
    templates: Vec<Vec<u8>>,
}

// The fixture lives for the whole fuzzing process; its segments are unlinked at once.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pool =
            Pool::create(&PoolOptions::new().segment_capacity(1 << 20).max_size(4 << 20)).expect("harness: pool");
        let arrays: Vec<_> = (0..3u8)
            .map(|i| {
                let data: Vec<u8> = (0..(64 << i)).map(|j| (j as u8) ^ (i * 85)).collect();
                ShmArray::<u8>::from_slice(&pool, &[data.len() as u64], &data).expect("harness: array")
            })
            .collect();
        let f64s = pool.empty(&DType::of::<f64>(), &[4, 6], false).expect("harness: f64 array");
        let structured =
            pool.empty(&DType::new("[('x', '<f8'), ('n', '<i2')]", 10).unwrap(), &[3], true).expect("harness");
        let mut templates: Vec<Vec<u8>> = arrays.iter().map(|a| a.as_shared().untracked_handle().to_bytes()).collect();
        templates.push(f64s.untracked_handle().to_bytes());
        templates.push(f64s.view(8 * 23, &[4, 3], &[-48, -16]).unwrap().untracked_handle().to_bytes());
        templates.push(structured.untracked_handle().to_bytes());
        // A static is never dropped: take the pool's names out of /dev/shm now. Every segment is
        // mapped already (nothing here grows the pool), so attaching keeps working.
        pool.unlink();
        Fixture { pool, arrays, others: vec![f64s, structured], templates }
    })
}

/// Runs one iteration (see the module doc).
pub fn run(data: &[u8], seen: &mut dyn Observer) {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut t = f.templates[(mode as usize >> 1) % f.templates.len()].clone();
        let len = t.len().max(1);
        for (i, b) in rest.iter().enumerate() {
            if let Some(x) = t.get_mut(i % len) {
                *x ^= b;
            }
        }
        if rest.len() > t.len() {
            t.truncate(rest.len() % (t.len() + 1));
        }
        t
    };
    let handle = match Handle::from_bytes(&bytes) {
        Ok(h) => h,
        Err(_) => {
            seen.reached(1);
            return;
        }
    };
    seen.reached(2);
    let view = match f.pool.attach(&handle) {
        Ok(v) => v,
        Err(e) => {
            seen.reached(10 + (e.to_string().len() % 16) as u32);
            return;
        }
    };
    seen.reached(3);
    let owner = f
        .arrays
        .iter()
        .map(|a| a.as_shared())
        .chain(&f.others)
        .find(|a| a.same_array(&view))
        .unwrap_or_else(|| panic!("2: attached to memory that is none of the pool's arrays: {view:?}"));
    // Invariant 2: every element lies inside the owner's data.
    let base = owner.base_ptr().as_ptr() as usize;
    let end = base + owner.base_len() as usize;
    let itemsize = view.dtype().itemsize() as usize;
    let mut index = vec![0u64; view.shape().len()];
    if view.shape().iter().all(|n| *n > 0) {
        let mut visited = 0;
        loop {
            let offset: i64 = index.iter().zip(view.strides()).map(|(i, s)| *i as i64 * s).sum();
            let at = (view.as_ptr() as i64 + offset) as usize;
            assert!(
                at >= base && at + itemsize <= end,
                "2: element {index:?} at {at:#x} outside [{base:#x}, {end:#x})"
            );
            visited += 1;
            if visited > 4096 {
                break; // enough: the bounds check covers the extremes below
            }
            let mut d = index.len();
            loop {
                if d == 0 {
                    break;
                }
                d -= 1;
                index[d] += 1;
                if index[d] < view.shape()[d] {
                    break;
                }
                index[d] = 0;
            }
            if d == 0 && index.iter().all(|i| *i == 0) {
                break;
            }
        }
    }
    // Invariant 3.
    for (i, a) in f.arrays.iter().enumerate() {
        let expect = (0..(64usize << i)).map(|j| (j as u8) ^ (i as u8 * 85));
        assert!(a.as_slice().is_some_and(|s| s.iter().copied().eq(expect)), "3: array {i} changed");
    }
}
