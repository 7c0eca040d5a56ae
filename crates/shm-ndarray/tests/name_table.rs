//! The growable name table (`pool::name_index`): tens of thousands of names, processes killed at
//! every point of publishing, deleting and resizing, and concurrent creators killed mid-way.
#![allow(unsafe_code)] // waitpid and kill on our forked children

use std::collections::HashSet;
use std::time::{Duration, Instant};

use shm_arena::sync::SharedU64;
use shm_arena::{Arena, Block};
use shm_ndarray::kill_points::{arm, KillPoint};
use shm_ndarray::{NameError, Pool, PoolOptions, ShmArray};
use shm_testkit::fork;

/// 4 MiB data segments (small arrays live in metadata segments anyway).
fn options() -> PoolOptions {
    PoolOptions::new().segment_capacity(4 << 20)
}

/// Waits for child `pid` with a watchdog: its exit code, or minus the signal that killed it.
fn wait_or_kill(pid: libc::pid_t) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid({pid})");
        if r == pid {
            return if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -libc::WTERMSIG(status) };
        }
        if Instant::now() > deadline {
            // SAFETY: our child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("watchdog: child {pid} still running after 120 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Publishes a one-element array holding `value` under `name`.
fn publish(pool: &Pool, name: &str, value: u64) -> Result<(), NameError> {
    let a = ShmArray::<u64>::from_slice(pool, &[1], &[value]).unwrap();
    pool.publish(name, a.as_shared())
}

/// The value every test stores under `n<i>`.
fn value_of(name: &str) -> u64 {
    name.trim_start_matches(|c: char| !c.is_ascii_digit()).replace('_', "").parse().unwrap()
}

/// Every listed name once, each attaching to its own value; returns them.
fn consistent_names(pool: &Pool) -> HashSet<String> {
    let names = pool.names().unwrap();
    let set: HashSet<String> = names.iter().cloned().collect();
    assert_eq!(set.len(), names.len(), "a name listed twice");
    for n in &names {
        let a = ShmArray::<u64>::try_from(pool.lookup(n).unwrap_or_else(|e| panic!("{n}: {e}"))).unwrap();
        assert_eq!(a.to_vec(), vec![value_of(n)], "{n} attached another array");
    }
    set
}

/// Deletes every name and checks that the table and the arrays are all gone.
fn delete_all(pool: &Pool) {
    for n in pool.names().unwrap() {
        pool.unpublish(&n).unwrap();
    }
    pool.collect();
    let s = pool.stats();
    assert_eq!((s.arrays, s.name_table), (0, 0), "arrays or name table left: {s:?}");
    assert!(pool.names().unwrap().is_empty());
    pool.check().unwrap();
}

#[test]
fn the_table_grows_past_256_names_and_goes_with_the_last() {
    let pool = Pool::create(&options()).unwrap();
    let fresh = pool.stats();
    assert_eq!(fresh.name_table, 0, "a pool without names has no name table");
    let mut held_after = Vec::new();
    for round in 0..2 {
        for i in 0..1000 {
            publish(&pool, &format!("n{i}"), i).unwrap();
        }
        assert!(matches!(publish(&pool, "n999", 0), Err(NameError::Exists(_))));
        let s = pool.stats();
        assert_eq!(s.arrays, 1000);
        // 2048 slots of 16 bytes, and an entry of 128 bytes per name.
        assert_eq!(s.name_table, 2048 * 16 + 1000 * 128, "round {round}");
        let names = consistent_names(&pool);
        assert_eq!(names, (0..1000).map(|i| format!("n{i}")).collect());
        // Deleting most of them shrinks the index; the rest stay reachable.
        for i in 10..1000 {
            pool.unpublish(&format!("n{i}")).unwrap();
        }
        assert_eq!(pool.stats().name_table, 64 * 16 + 10 * 128, "shrunk to the smallest index");
        assert_eq!(consistent_names(&pool).len(), 10);
        delete_all(&pool);
        held_after.push(pool.stats().held);
    }
    // What the arrays' headers took stays reserved for reuse (pool invariant 8), so the second
    // round reuses it: the name table leaks nothing.
    assert_eq!(held_after[0], held_after[1], "a second round held more");
}

#[test]
fn sixty_five_thousand_names_are_created_listed_attached_and_deleted() {
    const N: u64 = 65_536;
    let pool = Pool::create(&options()).unwrap();
    let t = Instant::now();
    for i in 0..N {
        publish(&pool, &format!("n{i}"), i).unwrap();
    }
    let created = t.elapsed();
    let t = Instant::now();
    let names = pool.names().unwrap();
    let listed = t.elapsed();
    assert_eq!(names.len() as u64, N);
    let t = Instant::now();
    let set = consistent_names(&pool);
    let attached = t.elapsed();
    assert_eq!(set, (0..N).map(|i| format!("n{i}")).collect());
    let s = pool.stats();
    assert_eq!(s.name_table, 131_072 * 16 + N * 128);
    let t = Instant::now();
    delete_all(&pool);
    eprintln!(
        "{N} names: create {created:?}, list {listed:?}, attach all {attached:?}, delete {:?}; table {} bytes",
        t.elapsed(),
        s.name_table
    );
}

/// Runs `work` in a child armed to die at `point`, and checks it died by SIGKILL.
fn killed_at(pool: &Pool, point: KillPoint, work: impl FnOnce(&Pool)) {
    let pid = fork(|| {
        arm(point);
        work(pool);
        0
    });
    assert_eq!(wait_or_kill(pid), -libc::SIGKILL, "the child did not reach {point:?}");
    pool.collect();
}

#[test]
fn a_process_killed_at_any_point_of_a_publish_or_delete_leaves_a_consistent_table() {
    use KillPoint::*;
    let pool = Pool::create(&options()).unwrap();
    for i in 0..20 {
        publish(&pool, &format!("n{i}"), i).unwrap();
    }
    let before: HashSet<String> = pool.names().unwrap().into_iter().collect();
    for point in [PublishIntent, PublishDisowned, PublishReferenced, PublishInserted] {
        killed_at(&pool, point, |p| {
            let _ = publish(p, "n100", 100);
        });
        let names = consistent_names(&pool);
        let published = names.contains("n100");
        // Before the directory's reference is taken the publish is undone, after it finished.
        assert_eq!(published, matches!(point, PublishReferenced | PublishInserted), "{point:?}");
        assert_eq!(names.len(), before.len() + usize::from(published), "{point:?}");
        assert_eq!(pool.stats().arrays as usize, names.len(), "{point:?}: an array without a name was kept");
        if published {
            pool.unpublish("n100").unwrap();
        }
    }
    for point in [DeleteIntent, DeleteRemoved, DeleteFreed, DeleteReleased] {
        killed_at(&pool, point, |p| {
            let _ = p.unpublish("n5");
        });
        // A delete that started is finished.
        let names = consistent_names(&pool);
        assert!(!names.contains("n5"), "{point:?}");
        assert_eq!(names.len(), before.len() - 1, "{point:?}");
        assert_eq!(pool.stats().arrays as usize, names.len(), "{point:?}: the deleted array was kept");
        publish(&pool, "n5", 5).unwrap();
    }
    delete_all(&pool);
}

#[test]
fn a_process_killed_at_any_point_of_a_resize_or_a_repair_leaves_a_consistent_table() {
    use KillPoint::*;
    let pool = Pool::create(&options()).unwrap();
    for point in [ResizeIntent, ResizeFilled, ResizeCommitted, ResizeFreed] {
        // The 49th name grows the 64-slot index: the child dies in that growth.
        killed_at(&pool, point, |p| {
            // Armed only for the growth: the first name makes the index, a resize too.
            arm(Never);
            for i in 0..48 {
                publish(p, &format!("n{i}"), i).unwrap();
            }
            arm(point);
            for i in 48..60 {
                let _ = publish(p, &format!("n{i}"), i);
            }
        });
        let names = consistent_names(&pool);
        assert_eq!(names, (0..48).map(|i| format!("n{i}")).collect(), "{point:?}");
        // The table works on: it grows, and shrinks back to nothing.
        for i in 48..300 {
            publish(&pool, &format!("n{i}"), i).unwrap();
        }
        assert_eq!(consistent_names(&pool).len(), 300, "{point:?}");
        delete_all(&pool);
    }
    // A repairer killed in its repair leaves the intent for the next taker (invariant 2).
    publish(&pool, "n1", 1).unwrap();
    killed_at(&pool, PublishReferenced, |p| {
        let _ = publish(p, "n2", 2);
    });
    killed_at(&pool, Repairing, |p| {
        let _ = p.names();
    });
    assert_eq!(consistent_names(&pool), ["n1", "n2"].map(String::from).into());
    delete_all(&pool);
}

#[test]
fn concurrent_creators_some_killed_mid_way_leave_every_name_once() {
    const PER_CHILD: u64 = 3000;
    let pool = Pool::create(&options()).unwrap();
    let children: Vec<_> = (0..4u64)
        .map(|k| {
            fork(|| {
                for i in 0..PER_CHILD {
                    let name = format!("p{k}_{i:05}");
                    publish(&pool, &name, value_of(&name)).unwrap();
                    if i % 2 == 1 {
                        // Deletes, and so shrinks and tombstones, interleave with the creates.
                        pool.unpublish(&format!("p{k}_{:05}", i - 1)).unwrap();
                    }
                }
                0
            })
        })
        .collect();
    // Two of them are killed mid-way, at whatever point they are.
    shm_testkit::until("the creators to publish", || pool.names().unwrap().len() > 200);
    for pid in &children[..2] {
        // SAFETY: our child.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let codes: Vec<i32> = children.iter().map(|pid| wait_or_kill(*pid)).collect();
    assert_eq!(&codes[2..], &[0, 0], "the creators left alive finish");
    pool.collect();
    let names = consistent_names(&pool);
    for k in 2..4 {
        let theirs = names.iter().filter(|n| n.starts_with(&format!("p{k}_"))).count() as u64;
        assert_eq!(theirs, PER_CHILD / 2, "every name of a creator that finished");
    }
    assert_eq!(pool.stats().arrays as usize, names.len(), "an array without a name was kept");
    delete_all(&pool);
}

/// The blocks of segment 0 that hold no array header: name entries, an index, or a block left
/// behind with its magic cleared. Everything of the table is there in these small pools.
fn name_table_blocks(pool: &Pool) -> Vec<(Block, u64)> {
    use std::sync::atomic::Ordering;
    let seg0 = Arena::open(&format!("pyshm-{}", pool.name())).unwrap();
    let dir = Block::from_bits(seg0.root_word().load(Ordering::Acquire));
    let array_magic = u64::from_le_bytes(*b"PYSHMARR");
    seg0.blocks_in_use()
        .into_iter()
        .filter(|b| *b != dir)
        .filter_map(|b| {
            let ptr = seg0.as_ptr(b).ok()?;
            // SAFETY: a block in use of at least 128 bytes, 8-aligned, mapped while `seg0` lives;
            // its first word is an atomic of every block kind of a metadata segment.
            let magic = unsafe { &*ptr.as_ptr().cast::<SharedU64>() }.load(Ordering::Relaxed);
            (magic != array_magic).then_some((b, magic))
        })
        .collect()
}

#[test]
fn a_process_killed_inside_the_free_of_a_name_block_leaks_no_block() {
    use KillPoint::*;
    let pool = Pool::create(&options()).unwrap();
    publish(&pool, "n0", 0).unwrap();
    delete_all(&pool);
    assert_eq!(name_table_blocks(&pool), vec![], "the control: no name, no name table block");
    for i in 1..4 {
        publish(&pool, &format!("n{i}"), i).unwrap();
    }
    // The deleter dies between clearing the entry's magic and freeing it.
    killed_at(&pool, NameBlockCleared, |p| {
        let _ = p.unpublish("n1");
    });
    assert_eq!(consistent_names(&pool), ["n2", "n3"].map(String::from).into());
    // A repairer dies the same way: the delete stopped before the entry's free, and the
    // repairer freeing it in turn dies between the two steps.
    killed_at(&pool, DeleteRemoved, |p| {
        let _ = p.unpublish("n2");
    });
    killed_at(&pool, NameBlockCleared, |p| {
        let _ = p.names();
    });
    assert_eq!(consistent_names(&pool), ["n3"].map(String::from).into());
    delete_all(&pool);
    assert_eq!(name_table_blocks(&pool), vec![], "entry blocks leaked (magic 0: a free cut short)");
}

const SMALL_SHM_CHILD: &str = "PYSHM_NAME_TABLE_SMALL_SHM_CHILD";

#[test]
fn names_running_out_of_a_64_mib_dev_shm_fail_with_an_error_and_the_table_works_on() {
    if std::env::var_os(SMALL_SHM_CHILD).is_none() {
        shm_testkit::run_in_small_dev_shm(
            "names_running_out_of_a_64_mib_dev_shm_fail_with_an_error_and_the_table_works_on",
            SMALL_SHM_CHILD,
        );
        return;
    }
    // 44 MiB of the 64 taken first, so that /dev/shm fills after some 35,000 names, not 150,000.
    let filler = std::fs::File::create("/dev/shm/filler").unwrap();
    // SAFETY: a valid fd of a file we own; reserves its blocks (tmpfs pages).
    assert_eq!(unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&filler), 0, 44 << 20) }, 0);
    let pool = Pool::create(&options()).unwrap();
    let mut made = 0u64;
    let mut arrays = Vec::new();
    let error = loop {
        let a = match ShmArray::<u64>::from_slice(&pool, &[1], &[made]) {
            Ok(a) => a,
            Err(e) => break format!("array: {e}"),
        };
        match pool.publish(&format!("n{made}"), a.as_shared()) {
            Ok(()) => made += 1,
            Err(NameError::Memory(e)) => break format!("name: {e}"),
            Err(e) => panic!("after {made} names: {e}"),
        }
        arrays.push(a);
    };
    eprintln!("{made} names in a 64 MiB /dev/shm, then {error}");
    drop(arrays);
    assert!(made > 1000, "{made} names");
    assert_eq!(pool.names().unwrap().len() as u64, made);
    for i in [0, made / 2, made - 1] {
        let a = ShmArray::<u64>::try_from(pool.lookup(&format!("n{i}")).unwrap()).unwrap();
        assert_eq!(a.to_vec(), vec![i]);
    }
    // Deleting them all: /dev/shm is still full (metadata pages stay reserved), so a smaller
    // index cannot be had. Each delete below an eighth retried the shrink through the
    // allocator's slow path (150 ms each at 150,000 names): the watchdog's 60 s ran out (found
    // in review).
    delete_all(&pool);
    for i in 0..1000 {
        publish(&pool, &format!("n{i}"), i).unwrap();
    }
    delete_all(&pool);
}
