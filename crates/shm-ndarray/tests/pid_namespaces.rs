//! Pid namespaces (issue 13 item 7): a pool records its creator's pid namespace, a process of
//! another namespace never joins it (so nobody judges its processes by pids that mean other
//! processes), and `clean` never removes a pool of another namespace. Needs root (CI runs as
//! root), for `unshare --pid` and `unshare(CLONE_NEWPID)`.
#![allow(unsafe_code)] // unshare(2) in a forked child

use std::process::Command;
use std::sync::atomic::Ordering;

use shm_ndarray::{clean_pools, ArrayError, DType, HandleError, Pool, PoolError, PoolOptions, ShmArray, SkipReason};
use shm_testkit::{fork, until, wait, SharedPage};

const TOOL: &str = env!("CARGO_BIN_EXE_shm-ndarray");

fn small() -> PoolOptions {
    PoolOptions::new().segment_capacity(1 << 20).max_size(4 << 20)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_process_in_another_pid_namespace_is_refused_and_leaves_the_pool_alone() {
    let pool = Pool::create(&small()).unwrap();
    let a = ShmArray::<f64>::from_slice(&pool, &[2], &[1.0, 2.5]).unwrap();
    let h = a.handle().unwrap();
    // `--kill-child`: the namespaced process dies with `unshare` if the test is killed.
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", TOOL, "sum", pool.name(), &hex(&h.to_bytes())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "refused: {stderr}");
    assert!(stderr.contains("belongs to another pid namespace"), "{stderr}");
    assert_eq!(pool.stats().processes, 1, "it never joined");
    let c = pool.collect();
    assert_eq!((c.dead_processes, c.arrays_freed), (0, 0));
    // The refused process claimed nothing: the handle is still good here.
    let b = ShmArray::<f64>::attach(&pool, &h).unwrap();
    assert_eq!(b.to_vec(), vec![1.0, 2.5]);
    // The same process in our namespace is accepted.
    let h2 = hex(&a.handle().unwrap().to_bytes());
    let out = Command::new(TOOL).args(["sum", pool.name(), &h2]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_child_forked_into_a_new_pid_namespace_cannot_use_the_pool_it_inherited() {
    let pool = Pool::create(&small()).unwrap();
    let a = ShmArray::<u8>::zeros(&pool, &[8]).unwrap();
    let h = a.handle().unwrap();
    let code = fork(|| {
        // SAFETY: unshare(2) with a valid flag; this forked child is single-threaded.
        if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
            return 10;
        }
        // The grandchild is pid 1 of the new namespace.
        wait(fork(|| {
            let create = matches!(
                pool.empty(&DType::of::<u8>(), &[8], false),
                Err(ArrayError::Grow(PoolError::OtherNamespace { pool_namespace, ours, .. })) if pool_namespace != ours
            );
            let attach = matches!(pool.attach(&h), Err(HandleError::OtherNamespace { .. }));
            i32::from(!create) + 2 * i32::from(!attach)
        }))
    });
    assert_eq!(wait(code), 0, "10: unshare failed (not root?); bit 1: creating, bit 2: attaching was not refused");
    assert_eq!(pool.stats().processes, 1);
    drop(ShmArray::<u8>::attach(&pool, &h).unwrap()); // the token is still there to claim
}

#[test]
fn clean_never_removes_a_pool_of_another_pid_namespace() {
    let name = format!("nstest{}", std::process::id());
    let page = SharedPage::new();
    // SAFETY: an aligned u64 atomic at offset 0 of the zeroed page.
    let ready: &shm_arena::sync::SharedU64 = unsafe { page.at(0) };
    // SAFETY: an aligned u64 atomic at offset 8 of the zeroed page.
    let release: &shm_arena::sync::SharedU64 = unsafe { page.at(8) };
    let outer = fork(|| {
        // SAFETY: unshare(2) with a valid flag; this forked child is single-threaded.
        if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
            return 10;
        }
        wait(fork(|| {
            let pool = Pool::create(&small().name(name.clone()).persistent(false)).unwrap();
            let _a = ShmArray::<u8>::zeros(&pool, &[8]).unwrap();
            ready.store(1, Ordering::Release);
            // Watchdog: at most 30 s, then leave (and tear the pool down) anyway.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while release.load(Ordering::Acquire) == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            0
        }))
    });
    until("the namespaced process made its pool", || ready.load(Ordering::Acquire) == 1);
    let report = clean_pools(false);
    release.store(1, Ordering::Release);
    let opened = Pool::open(&name).map(|_| ());
    assert_eq!(wait(outer), 0, "10: unshare failed (not root?)");
    assert!(!report.removed.contains(&name), "clean removed a live pool of another namespace");
    let skipped = report.skipped.iter().find(|s| s.pool == name).expect("listed as skipped");
    assert!(matches!(skipped.reason, SkipReason::OtherNamespace { .. }), "{:?}", skipped.reason);
    assert!(skipped.reason.to_string().contains("another pid namespace"));
    assert!(matches!(opened, Err(PoolError::OtherNamespace { .. })), "{opened:?}");
    assert!(shm_testkit::shm_files(&format!("pyshm-{name}")).is_empty(), "its last process tore it down");
}
