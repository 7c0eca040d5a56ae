//! A pool's life: the last process out removes it unless it persists (or persists while
//! named), leaving releases what this process holds, and listing and cleaning /dev/shm never
//! remove a live pool (nor one being created) and survive a corrupt directory.
#![allow(unsafe_code)] // kill, and writing a corrupt directory

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use shm_arena::ArenaOptions;
use shm_ndarray::{Pool, PoolError, PoolOptions, ShmArray};
use shm_testkit::{fork, wait};

const TOOL: &str = env!("CARGO_BIN_EXE_shm-ndarray");

/// 4 MiB data segments, up to 16 MiB.
fn small() -> PoolOptions {
    PoolOptions::new().segment_capacity(4 << 20).max_size(16 << 20)
}

/// 1 MiB data segments, up to 8 MiB.
fn one_mib_segments() -> PoolOptions {
    PoolOptions::new().segment_capacity(1 << 20).max_size(8 << 20)
}

fn leftovers(pool: &str) -> Vec<String> {
    shm_testkit::shm_files(&format!("pyshm-{pool}"))
}

#[test]
fn the_last_process_out_of_an_unnamed_pool_removes_it() {
    let pool = Pool::create(&small()).unwrap();
    let name = pool.name().to_owned();
    let _a = ShmArray::<u8>::zeros(&pool, &[100]).unwrap();
    assert!(!leftovers(&name).is_empty());
    drop(_a);
    drop(pool);
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
    assert!(matches!(Pool::open(&name), Err(PoolError::NotFound { .. })));
}

#[test]
fn leaving_releases_what_this_process_holds_and_the_last_one_out_removes_the_pool() {
    let pool = Pool::create(&small()).unwrap();
    let name = pool.name().to_owned();
    // A child holds an array of its own, and stays registered until it exits.
    let (mut parent_end, mut child_end) = std::os::unix::net::UnixStream::pair().unwrap();
    let pid = fork(|| {
        use std::io::{Read, Write};
        let _b = ShmArray::<u8>::zeros(&pool, &[1000]).unwrap();
        child_end.write_all(b"x").unwrap();
        child_end.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 1];
        let _ = child_end.read(&mut buf); // until the parent says go
        0
    });
    let mut buf = [0u8; 1];
    std::io::Read::read_exact(&mut parent_end, &mut buf).unwrap();
    let a = ShmArray::<u8>::zeros(&pool, &[1000]).unwrap(); // after the fork: the child has none of it
    assert_eq!(pool.stats().arrays, 2);
    pool.leave();
    assert_eq!(pool.stats().arrays, 1, "our array was released; the child's stays");
    assert!(
        !leftovers(&name).is_empty(),
        "the child is still a member: {} processes, child {:?}",
        pool.live_processes(),
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.split(' ').nth(2).map(str::to_owned))
    );
    drop(a); // after leaving: nothing to release, and nothing else released by mistake
    assert_eq!(pool.stats().arrays, 1);
    std::io::Write::write_all(&mut parent_end, b"x").unwrap();
    assert_eq!(wait(pid), 0);
    // Using the pool again registers anew; leaving again as the last live process removes it.
    let c = ShmArray::<u8>::zeros(&pool, &[10]).unwrap();
    pool.leave();
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
    drop(c);
    drop(pool);
}

#[test]
fn a_pool_that_persists_while_named_outlives_its_processes_only_while_it_has_names() {
    let name = format!("testpnamed{}", std::process::id());
    let opts = small().name(&name).persistent(false).persist_while_named(true);
    let pool = Pool::create(&opts).unwrap();
    let a = ShmArray::<i32>::from_slice(&pool, &[2], &[4, 5]).unwrap();
    pool.publish("kept", a.as_shared()).unwrap();
    drop(a);
    pool.leave();
    assert!(!leftovers(&name).is_empty(), "a name keeps the pool");
    let listed = shm_ndarray::list_pools().into_iter().find(|p| p.name == name).unwrap();
    assert!(listed.persistent && listed.live_processes == 0);
    assert!(!shm_ndarray::clean_dead_pools(false).contains(&name), "clean keeps a named pool");
    let found = ShmArray::<i32>::try_from(pool.lookup("kept").unwrap()).unwrap();
    assert_eq!(found.to_vec(), vec![4, 5]);
    drop(found);
    pool.unpublish("kept").unwrap();
    pool.leave();
    assert!(leftovers(&name).is_empty(), "without names it goes with its last process");
}

#[test]
fn clean_removes_pools_of_dead_processes_and_never_a_live_one() {
    let live = Pool::create(&small()).unwrap();
    // A pool whose only process was SIGKILLed: its segments stay behind.
    let mut child = Command::new(TOOL).args(["hold", live.name(), "1"]).stdout(Stdio::piped()).spawn().unwrap();
    let _ = std::io::BufReader::new(child.stdout.take().unwrap()).lines().next();
    child.kill().unwrap();
    child.wait().unwrap();
    let orphan = {
        let name = format!("testorphan{}", std::process::id());
        let pid = fork(|| {
            let p = Pool::create(&small().name(&name).persistent(false)).unwrap();
            let _a = ShmArray::<u8>::zeros(&p, &[10_000]).unwrap(); // a data segment of its own
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        while leftovers(&name).len() < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: our child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait(pid);
        name
    };
    let removed = shm_ndarray::clean_dead_pools(false);
    // Another test of this binary cleans at the same time and may be the one that removes the
    // orphan: what must hold is that it is gone, by this call or that one (if cleaning did not
    // remove dead pools, nobody would).
    assert!(leftovers(&orphan).is_empty(), "{removed:?}");
    assert!(!removed.contains(&live.name().to_owned()), "a live pool is never touched");
    assert!(ShmArray::<u8>::zeros(&live, &[10]).is_ok());
}

#[test]
#[allow(clippy::disallowed_types)] // a test-local flag between two threads, not shared memory
fn clean_never_removes_a_pool_that_is_being_created() {
    // A pool used to be published with no process registered in it, for an instant: a dead
    // pool to `clean_dead_pools` running in another process (found when two tests raced).
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                shm_ndarray::clean_dead_pools(false);
            }
        });
        // Stops the cleaner however this thread ends (a failed assertion must not hang).
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        for _ in 0..300 {
            let pool = Pool::create(&one_mib_segments()).unwrap();
            let root = format!("/dev/shm/pyshm-{}", pool.name());
            assert!(std::path::Path::new(&root).exists(), "a live pool was cleaned");
        }
    });
}

#[test]
fn list_pools_survives_a_corrupt_directory() {
    let name = format!("reviewcorrupt{}", std::process::id());
    let seg0 = ArenaOptions::new(1 << 20).min_block(128).name(format!("pyshm-{name}")).create().unwrap();
    let b = seg0.alloc(8192).unwrap();
    let p = seg0.as_ptr(b).unwrap().as_ptr().cast::<u64>();
    // SAFETY: the block is ours and 8192 bytes long; words 0 and 8-10 are inside it.
    unsafe { p.write(u64::from_le_bytes(*b"PYSHMPOL")) };
    // SAFETY: as above.
    unsafe { p.wrapping_add(8).write(1) }; // process slots
                                           // SAFETY: as above.
    unsafe { p.wrapping_add(9).write(1 << 59) }; // token slots: * 32 wraps
                                                 // SAFETY: as above.
    unsafe { p.wrapping_add(10).write(1) };
    seg0.root_word().store(b.to_bits(), std::sync::atomic::Ordering::Release);
    let listed = std::panic::catch_unwind(shm_ndarray::list_pools);
    let _ = seg0.unlink();
    assert!(listed.is_ok_and(|pools| pools.iter().all(|p| p.name != name)), "refused, not read");
}

#[test]
fn clean_never_removes_a_live_arena_that_is_not_a_pool() {
    // shm-arena takes any valid name, and its default prefix is pyshm's: a program using
    // shm-arena alone may name its arena `pyshm-<app>-1`. It is no pool's data segment, and it
    // is alive: cleaning dead pools must leave it alone.
    let name = format!("pyshm-reviewarena{}-1", std::process::id());
    let arena = ArenaOptions::new(1 << 16).name(name.clone()).create().unwrap();
    let removed = shm_ndarray::clean_dead_pools(false);
    let still_there = std::path::Path::new("/dev/shm").join(&name).exists();
    let _ = arena.unlink();
    assert!(still_there, "clean unlinked a live arena's file (reported as {removed:?})");
}

#[test]
fn a_pool_of_another_version_is_refused_clearly_and_cleaned_only_when_asked() {
    use shm_arena::sync::SharedU64;
    use shm_ndarray::{clean_pools, SkipReason};
    use std::sync::atomic::Ordering;
    let name = format!("oldversion{}", std::process::id());
    let pool = Pool::create(&small().name(name.clone()).persistent(true)).unwrap();
    let a = ShmArray::<u8>::zeros(&pool, &[100]).unwrap();
    // What another pyshm would have left: the directory (segment 0's root block) says another
    // version in its second word.
    let seg0 = shm_arena::Arena::open(&format!("pyshm-{name}")).unwrap();
    let dir = shm_arena::Block::from_bits(seg0.root_word().load(Ordering::Acquire));
    let base = seg0.as_ptr(dir).unwrap().as_ptr().cast::<SharedU64>();
    // SAFETY: the directory block is mapped while `seg0` lives, 8-aligned and longer than two
    // words; its words are atomics, and only this test writes the version.
    let version = unsafe { &*base.wrapping_add(1) };
    let ours = version.load(Ordering::Relaxed);
    version.store(ours - 1, Ordering::Relaxed);
    let skipped = |report: &shm_ndarray::CleanReport| {
        report.skipped.iter().find(|s| s.pool == name).map(|s| s.reason).expect("listed as skipped")
    };
    // Mapped (by us): left. (`clean_pools(true)` is not called here: it would remove the dead
    // persistent pools of every other test running now; test_cli.py runs it in a private
    // /dev/shm.)
    let report = clean_pools(false);
    assert!(!report.removed.contains(&name));
    let reason = skipped(&report);
    assert!(
        matches!(reason, SkipReason::OtherVersion { what: "directory", found, mapped_by } if found == ours - 1 && mapped_by >= 1),
        "{reason:?}"
    );
    assert!(reason.to_string().contains("in use"), "{reason}");
    drop((a, pool, seg0));
    // Opening or creating it by name says what it is and what to do.
    for result in [Pool::open(&name), Pool::create(&small().name(name.clone()))] {
        let e = result.map(|_| ()).unwrap_err();
        assert!(
            matches!(e, PoolError::OtherVersion { what: "directory", found, ours: o, .. } if found == ours - 1 && o == ours),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("another version of pyshm") && msg.contains("clean --persistent"), "{msg}");
    }
    // Mapped by nobody: it may hold that version's named arrays, so it goes only when asked.
    let report = clean_pools(false);
    assert!(matches!(skipped(&report), SkipReason::OtherVersion { mapped_by: 0, .. }), "{:?}", skipped(&report));
    // Listing shows it among the pools it cannot read, with the same judgement, not in the table.
    assert!(shm_ndarray::list_pools().iter().all(|p| p.name != name));
    let unreadable = shm_ndarray::list_unreadable_pools();
    let listed = unreadable.iter().find(|s| s.pool == name).expect("listed as unreadable");
    assert_eq!(listed.reason, skipped(&report));
    assert_eq!(listed.file, format!("pyshm-{name}"));
    let files = leftovers(&name);
    assert!(!files.is_empty());
    for f in files {
        shm_arena::unlink(&f).unwrap();
    }
}
