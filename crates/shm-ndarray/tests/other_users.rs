//! Another user on the machine (pool invariant 1, admin invariant 4): a pool it pre-created
//! under our pool's name is refused, names it pre-created do not stop a pool from growing, and
//! `clean` leaves its files alone. As root (CI), the attacker is a forked child that dropped to
//! uid 65534; as any other user, it is a child of ours whose files are made 0666 afterwards,
//! which is refused the same way (a file others may write is not trusted).
#![allow(unsafe_code)] // setresuid and geteuid for the attacker

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

use shm_arena::OpenError;
use shm_ndarray::{Pool, PoolError, PoolOptions, ShmArray, SkipReason};
use shm_testkit::{fork, shm_files, wait};

/// The attacker's uid and gid (`nobody`).
const NOBODY: u32 = 65534;

fn root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    (unsafe { libc::geteuid() }) == 0
}

/// Runs `f` in a forked child as the attacker: uid and gid 65534 as root, else ourselves.
fn as_attacker(f: impl FnOnce() -> i32) -> i32 {
    wait(fork(|| {
        if root() {
            // SAFETY: a plain syscall in the forked child; an empty list needs no pointer.
            let groups = unsafe { libc::setgroups(0, std::ptr::null()) };
            // SAFETY: a plain syscall in the forked child.
            let gid = unsafe { libc::setresgid(NOBODY, NOBODY, NOBODY) };
            // SAFETY: as above.
            let uid = unsafe { libc::setresuid(NOBODY, NOBODY, NOBODY) };
            if groups != 0 || gid != 0 || uid != 0 {
                return 90;
            }
        }
        f()
    }))
}

/// What the attacker's files look like to us: owned by 65534 as root, else made 0666.
fn attackers(file: &str) -> SkipReason {
    let meta = std::fs::metadata(format!("/dev/shm/{file}")).unwrap();
    if root() {
        assert_eq!(meta.uid(), NOBODY, "{file}");
        SkipReason::NotOwned { owner_uid: NOBODY }
    } else {
        SkipReason::Permissions { mode: meta.mode() & 0o7777 }
    }
}

/// Makes every file of `pool` world-writable (the attacker's last step when it is not root).
fn open_up(pool: &str) {
    for f in shm_files(&format!("pyshm-{pool}")) {
        let path = format!("/dev/shm/{f}");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
}

/// Removes every file of `pool` when the test ends, pass or fail.
struct RemoveFiles(String);
impl Drop for RemoveFiles {
    fn drop(&mut self) {
        for f in shm_files(&format!("pyshm-{}", self.0)) {
            let _ = std::fs::remove_file(format!("/dev/shm/{f}"));
        }
    }
}

/// The attacker makes a pool `name` and leaves it behind (a dead pool: its process exits
/// without leaving), world-writable: what a hostile user plants under a well-known name.
fn plant_pool(name: &str, persistent: bool) {
    let made = as_attacker(|| {
        let Ok(p) = Pool::create(&PoolOptions::new().name(name).persistent(persistent).segment_capacity(1 << 20))
        else {
            return 1;
        };
        let Ok(a) = ShmArray::<u8>::zeros(&p, &[10_000]) else { return 2 }; // a growth segment too
        open_up(name);
        // Exit without leaving: the pool stays, registered to a dead process.
        std::mem::forget(a);
        std::mem::forget(p);
        0
    });
    assert_eq!(made, 0, "the attacker could not plant its pool");
    assert_eq!(shm_files(&format!("pyshm-{name}")).len(), 2);
}

#[test]
fn a_pool_another_user_planted_under_our_name_is_refused_not_joined() {
    let name = format!("planted{}", std::process::id());
    let _rm = RemoveFiles(name.clone());
    plant_pool(&name, true);
    for result in [Pool::create(&PoolOptions::new().name(&name)), Pool::open(&name)] {
        let err = result.err().expect("joined a pool another user planted");
        let text = err.to_string();
        match err {
            PoolError::Open(OpenError::NotOwned { owner_uid, .. }) => assert!(root() && owner_uid == NOBODY),
            PoolError::Open(OpenError::Permissions { mode, .. }) => assert!(!root() && mode & 0o777 == 0o666),
            other => panic!("expected a refusal naming the owner, got {other:?}"),
        }
        assert!(text.contains(&format!("/dev/shm/pyshm-{name}")), "names the file: {text}");
    }
    assert!(!shm_ndarray::list_pools().iter().any(|p| p.name == name), "listed by opening it");
}

#[test]
fn names_another_user_pre_created_do_not_stop_a_pool_from_growing() {
    let pool = Pool::create(&PoolOptions::new().segment_capacity(1 << 20).max_size(8 << 20)).unwrap();
    let name = pool.name().to_owned();
    // Every name the pool used to grow into (`pyshm-<pool>-<n>`), taken first by the attacker.
    let planted: Vec<String> = (1..=8).map(|i| format!("pyshm-{name}-{i}")).collect();
    let made = as_attacker(|| {
        for p in &planted {
            let file =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o666).open(format!("/dev/shm/{p}"));
            if file.is_err() {
                return 1;
            }
        }
        0
    });
    assert_eq!(made, 0, "the attacker could not plant its files");
    let _rm = RemoveFiles(name.clone());
    let arrays: Vec<_> = (0..3).map(|_| ShmArray::<u8>::zeros(&pool, &[1 << 20]).expect("growth")).collect();
    let stats = pool.stats();
    assert!(stats.segments >= 4, "three data segments: {stats:?}");
    for p in &planted {
        let meta = std::fs::metadata(format!("/dev/shm/{p}")).expect("the attacker's file was removed");
        assert_eq!(meta.len(), 0, "{p} was used");
        assert_eq!(attackers(p), attackers(&planted[0]));
    }
    // The pool grew into names of its own: 16 random hex digits, recorded in its directory.
    let grown: Vec<String> =
        shm_files(&format!("pyshm-{name}-")).into_iter().filter(|f| !planted.contains(f)).collect();
    assert_eq!(grown.len(), stats.segments - 1, "{grown:?}");
    for f in &grown {
        let suffix = f.rsplit('-').next().unwrap();
        assert!(suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit()), "{f}");
        assert_eq!(std::fs::metadata(format!("/dev/shm/{f}")).unwrap().mode() & 0o777, 0o600);
    }
    assert_eq!(arrays.iter().map(ShmArray::len).sum::<usize>(), 3 << 20);
    drop(arrays);
    pool.unlink();
}

#[test]
fn clean_leaves_another_users_files_alone_and_says_so() {
    let pid = std::process::id();
    let theirs = format!("theirdead{pid}");
    let _rm = RemoveFiles(theirs.clone());
    plant_pool(&theirs, false);
    // A dead pool of ours beside it, which clean does remove.
    let ours = format!("ourdead{pid}");
    let _rm2 = RemoveFiles(ours.clone());
    let made = wait(fork(|| {
        let p = Pool::create(&PoolOptions::new().name(&ours).persistent(false)).unwrap();
        std::mem::forget(p);
        0
    }));
    assert_eq!(made, 0);
    assert_eq!(shm_files(&format!("pyshm-{ours}")).len(), 1);
    // A file of ours under a pool's name that is no pool (garbage): left, and said so.
    let garbage = format!("ourgarbage{pid}");
    let _rm3 = RemoveFiles(garbage.clone());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(format!("/dev/shm/pyshm-{garbage}"))
        .unwrap();
    std::io::Write::write_all(&mut file, &[0x41; 8192]).unwrap();

    let report = shm_ndarray::clean_pools(false);
    let files = shm_files(&format!("pyshm-{theirs}"));
    assert_eq!(files.len(), 2, "another user's files were removed: {report:?}");
    for f in &files {
        let skipped = report.skipped.iter().find(|s| &s.file == f).unwrap_or_else(|| panic!("{f} not reported"));
        assert_eq!(skipped.pool, theirs);
        assert_eq!(skipped.reason, attackers(f));
        assert!(skipped.reason.to_string().contains(if root() { "uid 65534" } else { "0666" }), "{}", skipped.reason);
    }
    assert!(!report.removed.contains(&theirs));
    let left = report.skipped.iter().find(|s| s.pool == garbage).expect("the garbage file is reported");
    assert_eq!(left.reason, SkipReason::NotAPool { why: "not a pyshm segment" });
    assert_eq!(shm_files(&format!("pyshm-{garbage}")).len(), 1, "a file that is no pool is never removed");
    // Another test binary may clean at the same time and be the one that removes ours.
    assert!(shm_files(&format!("pyshm-{ours}")).is_empty(), "{report:?}");
}

#[test]
fn clean_removes_or_reports_our_orphan_growth_segment_whose_root_name_another_user_took() {
    // Our pool died and its segment 0 is gone (removed by hand), leaving a growth segment of
    // ours; then another user plants a file under the pool's segment-0 name. That file is not
    // ours, so it is no root of this segment: clean must still remove the orphan (its creator
    // is dead) or at least report it. Review: any root name, whoever's, hides it silently.
    let name = format!("orphanroot{}", std::process::id());
    let _rm = RemoveFiles(name.clone());
    let made = wait(fork(|| {
        let p = Pool::create(&PoolOptions::new().name(&name).persistent(false).segment_capacity(1 << 20)).unwrap();
        let a = ShmArray::<u8>::zeros(&p, &[10_000]).unwrap(); // a growth segment
        std::mem::forget(a);
        std::mem::forget(p);
        0
    }));
    assert_eq!(made, 0);
    let root_file = format!("pyshm-{name}");
    std::fs::remove_file(format!("/dev/shm/{root_file}")).unwrap();
    let growth = shm_files(&format!("pyshm-{name}-"));
    assert_eq!(growth.len(), 1, "{growth:?}");
    let planted = as_attacker(|| {
        let f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o666).open(format!("/dev/shm/{root_file}"));
        i32::from(f.is_err())
    });
    assert_eq!(planted, 0, "the attacker could not plant the root name");
    if !root() {
        std::fs::set_permissions(format!("/dev/shm/{root_file}"), std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let report = shm_ndarray::clean_pools(false);
    let still_there = std::fs::metadata(format!("/dev/shm/{}", growth[0])).is_ok();
    let reported = report.skipped.iter().any(|s| s.file == growth[0]);
    assert!(!still_there || reported, "our orphan {} was neither removed nor reported: {report:?}", growth[0]);
    assert!(std::fs::metadata(format!("/dev/shm/{root_file}")).is_ok(), "the attacker's file was removed");
}

#[test]
fn a_segment_count_beyond_the_table_is_an_error_not_a_panic_when_growing() {
    // A buggy process of the same uid writes a segment count beyond MAX_SEGMENTS into the
    // directory. Bad input from another process never panics (house style 10): `grow` indexes
    // the 256-entry table with the count unclamped.
    use std::os::unix::fs::FileExt;
    let pool = Pool::create(&PoolOptions::new().segment_capacity(1 << 20).max_size(8 << 20)).unwrap();
    let name = pool.name().to_owned();
    let _rm = RemoveFiles(name.clone());
    let path = format!("/dev/shm/pyshm-{name}");
    let bytes = std::fs::read(&path).unwrap();
    let dir = bytes.windows(8).position(|w| w == b"PYSHMPOL").expect("the directory's magic");
    // DirHeader: magic, version, id[2], flags, 6 config words, then segment_count at +88.
    let count_at = (dir + 88) as u64;
    let mut word = [0u8; 8];
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    file.read_exact_at(&mut word, count_at).unwrap();
    assert_eq!(u64::from_le_bytes(word), 1, "segment_count of a fresh pool");
    file.write_all_at(&1000u64.to_le_bytes(), count_at).unwrap();
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ShmArray::<u8>::zeros(&pool, &[1 << 19]).map(|_| ())));
    assert!(result.is_ok(), "a crafted segment count made growth panic");
    file.write_all_at(&1u64.to_le_bytes(), count_at).unwrap();
}
