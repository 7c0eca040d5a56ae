//! Segments another user made, or may write: refused before anything is mapped (segment
//! invariant 5). As root (CI), the attacker is a forked child that dropped to uid 65534; as
//! any other user, the files are ours with a mode that lets others in, which is refused too.
#![allow(unsafe_code)] // setresuid, mkfifo and geteuid for the attacker and the checks

use shm_arena::{Arena, ArenaOptions, OpenError, Ownership};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// The attacker's uid and gid (`nobody`).
const NOBODY: u32 = 65534;

/// Unlinks a file of /dev/shm when the test ends, pass or fail (as root, whoever owns it).
struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/dev/shm/{}", self.0));
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Runs `f` in a forked child that has dropped every privilege to uid and gid 65534.
fn as_nobody(f: impl FnOnce() -> i32) -> i32 {
    shm_testkit::wait(shm_testkit::fork(|| {
        // The groups first, while we may still change them.
        // SAFETY: a plain syscall in the forked child; an empty list needs no pointer.
        let groups = unsafe { libc::setgroups(0, std::ptr::null()) };
        // SAFETY: a plain syscall in the forked child.
        let gid = unsafe { libc::setresgid(NOBODY, NOBODY, NOBODY) };
        // SAFETY: as above.
        let uid = unsafe { libc::setresuid(NOBODY, NOBODY, NOBODY) };
        let dropped = groups == 0 && gid == 0 && uid == 0;
        if !dropped {
            return 90;
        }
        f()
    }))
}

/// Whether this process maps anything of /dev/shm/`name`.
fn mapped(name: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().any(|l| l.ends_with(&format!("/dev/shm/{name}")))
}

fn chmod(name: &str, mode: u32) {
    std::fs::set_permissions(format!("/dev/shm/{name}"), std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_valid_segment_owned_by_another_user_is_refused_unmapped() {
    let pid = std::process::id();
    if euid() == 0 {
        let name = format!("pyshm-test.other-{pid}");
        let _g = Unlink(name.clone());
        // A real arena, valid in every other respect, made by the attacker.
        let made = as_nobody(|| match ArenaOptions::new(1 << 20).name(&name).create() {
            Ok(a) => {
                std::mem::forget(a);
                0
            }
            Err(_) => 1,
        });
        assert_eq!(made, 0, "the attacker could not create its segment");
        assert_eq!(std::fs::metadata(format!("/dev/shm/{name}")).unwrap().uid(), NOBODY);
        let listed = shm_arena::list_segments(&name).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].ownership, Ownership::NotOwned { owner_uid: NOBODY });
        assert_eq!(listed[0].owner_uid, NOBODY);
        for mode in [0o600, 0o666] {
            chmod(&name, mode);
            let err = Arena::open(&name).err().expect("a foreign segment was opened");
            assert!(matches!(err, OpenError::NotOwned { owner_uid: NOBODY, euid: 0, .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(&format!("/dev/shm/{name}")) && text.contains("uid 65534"), "{text}");
            assert!(!mapped(&name), "refused, yet mapped");
        }
    }

    // Ours, but opened up to everyone: refused the same way, and accepted again at 0600.
    let a = ArenaOptions::new(1 << 20).create().unwrap();
    let name = a.name().unwrap().to_owned();
    let _g = Unlink(name.clone());
    drop(a);
    assert!(!mapped(&name));
    for mode in [0o666, 0o660, 0o604] {
        chmod(&name, mode);
        let err = Arena::open(&name).err().expect("a segment others may write was opened");
        assert!(matches!(&err, OpenError::Permissions { mode: m, .. } if m & 0o777 == mode), "{err:?}");
        assert!(err.to_string().contains(&format!("/dev/shm/{name}")), "{err}");
        assert!(!mapped(&name), "refused, yet mapped");
        let listed = shm_arena::list_segments(&name).unwrap();
        assert_eq!(listed[0].ownership, Ownership::Permissions { mode });
    }
    chmod(&name, 0o600);
    let again = Arena::open(&name).expect("our own 0600 segment");
    assert!(mapped(&name));
    assert_eq!(shm_arena::list_segments(&name).unwrap()[0].ownership, Ownership::Ours);
    drop(again);
}

#[test]
fn a_fifo_planted_under_a_segment_name_is_refused() {
    let name = format!("pyshm-test.fifo-{}", std::process::id());
    let _g = Unlink(name.clone());
    let path = std::ffi::CString::new(format!("/dev/shm/{name}")).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
    let err = Arena::open(&name).err().expect("a FIFO was opened as a segment");
    assert!(matches!(err, OpenError::NotAFile { .. }), "{err:?}");
    assert!(matches!(shm_arena::list_segments(&name).unwrap()[0].ownership, Ownership::NotAFile { .. }));
}

#[test]
fn a_symlink_another_user_planted_under_a_segment_name_is_refused_naming_its_owner() {
    // O_NOFOLLOW makes the open fail with ELOOP before the descriptor can be checked: the
    // caller gets a bare system-call error (Python: PoolOSError errno ELOOP, not the
    // PoolPermissionError every other planted file gives), with no owner named (review).
    let pid = std::process::id();
    let target = format!("pyshm-test.target-{pid}");
    let name = format!("pyshm-test.link-{pid}");
    let _g = Unlink(name.clone());
    let _t = Unlink(target.clone());
    let arena = ArenaOptions::new(1 << 16).name(&target).create().unwrap();
    let planted = as_nobody(|| {
        i32::from(std::os::unix::fs::symlink(format!("/dev/shm/{target}"), format!("/dev/shm/{name}")).is_err())
    });
    assert_eq!(planted, 0, "could not plant the symlink");
    let err = Arena::open(&name).err().expect("a symlink was followed");
    assert!(matches!(err, OpenError::NotAFile { .. }), "{err:?}");
    drop(arena);
    let _ = shm_arena::unlink(&target);
}
