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

// Review (session 7): the freer of an operation without a holder, and rescuers that die too.

#[test]
fn a_forked_child_whose_first_operation_is_an_unpublish_that_kills_the_array_is_finished() {
    // The name is the array's last reference; the child's unpublish frees it, and the child,
    // forked and not yet registered again, dies at the first step of the free.
    let pool = Pool::create(&PoolOptions::new().keep(0)).unwrap();
    let a = full(&pool, 70_000, 7);
    pool.publish("review-named", a.as_shared()).unwrap();
    drop(a);
    assert_eq!(pool.stats().arrays, 1);
    let pid = fork(|| {
        arm(KillPoint::FreeStart);
        let _ = pool.unpublish("review-named");
        0
    });
    assert_eq!(wait(pid), -libc::SIGKILL, "the child did not die freeing");
    assert_whole(&pool, 70_000, "a child killed freeing in its first unpublish");
}

#[test]
fn a_forked_child_whose_first_operation_is_a_cancel_that_kills_the_array_is_finished() {
    // A pending token is the array's last reference; the child's cancel frees it.
    let pool = Pool::create(&PoolOptions::new().keep(0)).unwrap();
    let a = full(&pool, 70_000, 7);
    let handle = a.handle().unwrap();
    drop(a);
    assert_eq!(pool.stats().arrays, 1);
    let pid = fork(|| {
        arm(KillPoint::FreeStart);
        let _ = pool.cancel(&handle);
        0
    });
    assert_eq!(wait(pid), -libc::SIGKILL, "the child did not die freeing");
    assert_whole(&pool, 70_000, "a child killed freeing in its first cancel");
}

/// A child makes an array and dies holding it (exits without dropping it).
fn die_holding(pool: &Pool, len: u64) {
    let pid = fork(|| {
        std::mem::forget(full(pool, len, 3));
        0
    });
    assert_eq!(wait(pid), 0);
}

#[test]
fn a_collector_killed_while_freeing_a_dead_holders_array_is_followed_by_the_next() {
    // The record dies in the collector's drop of the dead holder and names that dead slot;
    // the collector dies inside the free; the next collector re-claims the slot and finishes.
    for point in POINTS {
        let pool = Pool::create(&PoolOptions::new().keep(0)).unwrap();
        die_holding(&pool, 70_000);
        let pid = fork(|| {
            arm(point);
            pool.collect();
            0
        });
        assert_eq!(wait(pid), -libc::SIGKILL, "the collector did not die at {point:?}");
        assert_whole(&pool, 70_000, &format!("a collector killed at {point:?}"));
    }
}

#[test]
fn a_finisher_killed_at_each_step_is_followed_by_the_next() {
    // The freer dies at its first step; the rescuer of its slot dies at `point` inside the
    // finish; a third process finishes.
    for point in POINTS {
        let pool = Pool::create(&PoolOptions::new().keep(0)).unwrap();
        die_freeing(&pool, 70_000, KillPoint::FreeStart);
        let pid = fork(|| {
            arm(point);
            pool.collect();
            0
        });
        assert_eq!(wait(pid), -libc::SIGKILL, "the finisher did not die at {point:?}");
        assert_whole(&pool, 70_000, &format!("a finisher killed at {point:?}"));
    }
}
