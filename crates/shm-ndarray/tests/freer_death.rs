//! A process killed while it frees an array, after its release learned it was the last
//! reference and before the free was done: the rescuer of its slot finishes the free (shm-sync
//! refcount invariant 7, release invariant 5). Each step of the free is a kill point
//! (`shm_ndarray::kill_points`, feature `kill-points`), so every window is hit on every run, not 1 run in 50.

use shm_ndarray::kill_points::{arm, KillPoint};
use shm_ndarray::{Pool, PoolOptions, ShmArray};
use shm_testkit::{fork, wait};

/// Every step of a free where a death leaves work behind.
const POINTS: [KillPoint; 4] =
    [KillPoint::FreeStart, KillPoint::FreeDataMarked, KillPoint::FreeDataFreed, KillPoint::FreeHeaderAdopted];

fn full(pool: &Pool, len: u64, value: u8) -> ShmArray<u8> {
    let mut a = ShmArray::<u8>::zeros(pool, &[len]).unwrap();
    a.as_slice_mut().unwrap().fill(value);
    a
}

/// A child makes an array of `len` bytes and drops it, dying at `point` inside the free.
fn die_freeing(pool: &Pool, len: u64, point: KillPoint) {
    let pid = fork(|| {
        arm(point);
        drop(full(pool, len, 9));
        0 // not reached: the free passes every point
    });
    assert_eq!(wait(pid), -libc::SIGKILL, "the child did not die at {point:?}");
}

/// After `collect`, nothing of the dead freer's array is left, and the memory is whole: every
/// block handed out again is distinct (no block freed twice) and keeps its data.
fn assert_whole(pool: &Pool, len: u64, what: &str) {
    pool.collect();
    pool.check().unwrap();
    let s = pool.stats();
    assert_eq!((s.arrays, s.live), (0, 0), "{what}: the dead freer's array is left: {s:?}");
    let arrays: Vec<_> = (0..24u8).map(|i| full(pool, len, i)).collect();
    for (i, a) in arrays.iter().enumerate() {
        assert!(a.as_slice().unwrap().iter().all(|x| *x == i as u8), "{what}: array {i} was overwritten");
    }
    drop(arrays);
    pool.collect();
    let s = pool.stats();
    assert_eq!((s.arrays, s.live), (0, 0), "{what}: {s:?}");
    pool.check().unwrap();
}

#[test]
fn a_freer_killed_at_any_step_is_finished_by_the_rescuer_of_its_slot() {
    // keep 0: the data block is parked and given back (the punching path); the default keep:
    // it goes to the freer's cache or the tree (the warm path). 70,000 bytes: a data block of
    // its own; 3 MiB: a block beyond the caches.
    for keep in [Some(0), None] {
        for len in [70_000u64, 3 << 20] {
            for point in POINTS {
                let options = match keep {
                    Some(k) => PoolOptions::new().keep(k),
                    None => PoolOptions::new(),
                };
                let pool = Pool::create(&options).unwrap();
                die_freeing(&pool, len, point);
                assert_whole(&pool, len, &format!("keep {keep:?}, {len} bytes, killed at {point:?}"));
            }
        }
    }
}

#[test]
fn a_freer_killed_while_another_process_holds_nothing_leaves_no_slot_behind() {
    // Two freers die one after the other at the first step; the slots are recycled only once
    // their frees are finished, and a third process can still join and make arrays.
    let pool = Pool::create(&PoolOptions::new().keep(0)).unwrap();
    for point in [KillPoint::FreeStart, KillPoint::FreeDataMarked] {
        die_freeing(&pool, 70_000, point);
    }
    let report = pool.collect();
    assert_eq!(report.dead_processes, 2, "{report:?}");
    assert_eq!(report.arrays_freed, 2, "both frees are finished: {report:?}");
    assert_whole(&pool, 70_000, "two dead freers");
}
