//! Thin, typed wrappers over the Linux syscalls that `shm-arena` needs.
//!
//! Invariants:
//!
//! 1. This module is the only place in the crate that calls rustix or libc functions, so every
//!    syscall the crate makes can be found, reviewed and faked here (house style 9).
//! 2. Every wrapper returns [`rustix::io::Result`] (an [`Errno`]) untouched, except where the
//!    doc says an errno is an expected outcome and is mapped to a value; callers add context
//!    (segment name, size, pid) when they wrap it in their own error enum.
//! 3. Every file descriptor is created close-on-exec, so a worker started with `exec` inherits
//!    no segment.
//!
//! The wrappers fall into three groups: naming and sizing shared-memory files (`shm_*`,
//! [`memfd_create`], [`seal_size`], [`set_len`], [`reserve`], [`punch`], [`file_len`], [`file_mode`],
//! [`shm_free_bytes`], [`list_shm_objects`]), who owns them ([`file_stat`], [`effective_uid`]),
//! and randomness for segment names ([`fill_random`]). The shared futex and process identity are the platform layer's
//! (`shm_platform::futex`, `shm_platform::process`).
//!
//! Names of POSIX shared-memory objects are passed in *without* the leading slash
//! (`"pyshm-abc"`), and are the file names that appear in [`shm_dir`].

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::fs::{FallocateFlags, MemfdFlags, Mode, SealFlags};
use rustix::io::{self, Errno};
use rustix::rand::GetRandomFlags;
use rustix::shm;

/// The tmpfs mount where Linux keeps POSIX shared-memory objects.
const SHM_DIR: &str = "/dev/shm";

/// Turns a segment name without a leading slash into the name `shm_open(3)` expects.
///
/// rustix's raw-syscall backend (the default on Linux) does not call glibc's `shm_open`: it
/// opens `/dev/shm/` followed by the name it is given, slashes included, and glibc strips
/// leading slashes itself. A leading slash therefore works with both backends, and is what
/// POSIX asks for. A name that already contains a slash is refused here, so that `"a"` and
/// `"/a"` can never silently name the same object.
fn shm_object_name(name: &str) -> io::Result<String> {
    if name.contains('/') {
        return Err(Errno::INVAL);
    }
    Ok(format!("/{name}"))
}

/// `O_NOFOLLOW` as a `shm_open` flag.
///
/// glibc's `shm_open` always adds `O_NOFOLLOW`; rustix's raw-syscall backend does not, so it is
/// added here to keep a symlink planted in the world-writable `/dev/shm` from redirecting an
/// open to another file.
fn shm_nofollow() -> shm::OFlags {
    shm::OFlags::from_bits_retain(rustix::fs::OFlags::NOFOLLOW.bits())
}

/// `shm_open(3)` with `O_CREAT | O_EXCL | O_RDWR | O_NOFOLLOW | O_CLOEXEC`, mode `0600`:
/// creates a new shared-memory object and fails if the name is taken.
///
/// `name` has no leading slash (`"pyshm-abc"`). The process umask applies to the mode, as with
/// `open(2)`; it can only narrow `0600`.
///
/// # Errors
///
/// `EEXIST` if the name is taken, `EINVAL` if `name` is empty or contains `/`, `ENAMETOOLONG`
/// if it is longer than 254 bytes, and the errors of `open(2)` on `/dev/shm` (`EACCES`,
/// `EMFILE`, `ENOSPC`, ...).
///
/// # References
///
/// - `shm_open(3)`, `open(2)`, `shm_overview(7)`
pub(crate) fn shm_create_exclusive(name: &str) -> io::Result<OwnedFd> {
    let name = shm_object_name(name)?;
    shm::open(
        name.as_str(),
        shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR | shm_nofollow(),
        Mode::RUSR | Mode::WUSR,
    )
}

/// `shm_open(3)` with `O_RDWR | O_NOFOLLOW | O_CLOEXEC`: opens an existing shared-memory
/// object for reading and writing.
///
/// # Errors
///
/// `ENOENT` if no object has that name, `EACCES` if it belongs to someone else, `ELOOP` if
/// the name is a symlink, `EINVAL` if `name` is empty or contains `/`, and the other errors of
/// `open(2)`.
///
/// # References
///
/// - `shm_open(3)`, `open(2)`
pub(crate) fn shm_open_existing(name: &str) -> io::Result<OwnedFd> {
    let name = shm_object_name(name)?;
    shm::open(name.as_str(), shm::OFlags::RDWR | shm_nofollow(), Mode::empty())
}

/// `shm_unlink(3)`: removes the name of a shared-memory object. Mappings and descriptors that
/// are already open keep the memory alive until they are closed.
///
/// # Errors
///
/// `ENOENT` if no object has that name, `EACCES`/`EPERM` if the caller may not remove it,
/// `EINVAL` if `name` is empty or contains `/`.
///
/// # References
///
/// - `shm_unlink(3)`, `unlink(2)`
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    let name = shm_object_name(name)?;
    shm::unlink(name.as_str())
}

/// `memfd_create(2)` with `MFD_CLOEXEC | MFD_ALLOW_SEALING`: an anonymous shared-memory file
/// with no name in any directory, freed when its last descriptor and mapping go away.
///
/// `debug_name` only shows up in `/proc/<pid>/fd` and `/proc/<pid>/maps` (prefixed with
/// `memfd:`).
///
/// # Errors
///
/// `EINVAL` if `debug_name` is longer than 249 bytes or contains a NUL, `EMFILE`/`ENFILE`,
/// `ENOMEM`.
///
/// # References
///
/// - `memfd_create(2)`
pub(crate) fn memfd_create(debug_name: &str) -> io::Result<OwnedFd> {
    rustix::fs::memfd_create(debug_name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
}

/// `fcntl(2)` `F_ADD_SEALS` with `F_SEAL_SHRINK | F_SEAL_GROW`: freezes the size of a memfd.
///
/// After this no process can shrink the file under another's mapping (which would turn its
/// accesses into `SIGBUS`) or grow it. Writes stay allowed (no `F_SEAL_WRITE`).
///
/// # Errors
///
/// `EINVAL` if `fd` is not a memfd created with `MFD_ALLOW_SEALING` (or not a tmpfs file),
/// `EPERM` if `F_SEAL_SEAL` is already set.
///
/// # References
///
/// - `fcntl(2)` ("File Sealing"), `memfd_create(2)`
pub(crate) fn seal_size(fd: BorrowedFd<'_>) -> io::Result<()> {
    rustix::fs::fcntl_add_seals(fd, SealFlags::SHRINK | SealFlags::GROW)
}

/// `ftruncate(2)`: sets the file's size to `len` bytes.
///
/// On tmpfs this reserves nothing: pages are allocated on first touch, and when `/dev/shm` is
/// full that first touch is a `SIGBUS`. Follow it with [`reserve`].
///
/// # Errors
///
/// `EINVAL` if `len` is too large, `EPERM` if a size seal forbids the change, `EFBIG`.
///
/// # References
///
/// - `ftruncate(2)`
pub(crate) fn set_len(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    rustix::fs::ftruncate(fd, len)
}

/// `fallocate(2)` with mode 0 over `[offset, offset + len)`: allocates those pages now.
///
/// This is what turns a full `/dev/shm` (Docker's default is 64 MB) into `ENOSPC` at creation
/// or allocation instead of a `SIGBUS` at the first write to an unbacked page. It also extends
/// the file if it is shorter. `len == 0` is a no-op (the syscall itself rejects it). Pages
/// already allocated are kept (but walked: about 50 us per MiB, so callers skip them).
///
/// # Errors
///
/// `ENOSPC` if the filesystem cannot back `len` bytes, `EPERM` if a seal forbids growing,
/// `EFBIG`, `EINTR` (the allocation can be retried).
///
/// # References
///
/// - `fallocate(2)`, `posix_fallocate(3)`
pub(crate) fn reserve(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    rustix::fs::fallocate(fd, FallocateFlags::empty(), offset, len)
}

/// `fallocate(2)` with `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE` over
/// `[offset, offset + len)`: gives those pages back to the system (tmpfs frees them and every
/// mapping of them reads zeros, or faults in fresh unreserved pages, afterwards).
///
/// # Errors
///
/// `EPERM` if a write seal forbids it, `EOPNOTSUPP` where holes are not supported, `EINTR`.
///
/// # References
///
/// - `fallocate(2)` ("Deallocating file space")
pub(crate) fn punch(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    rustix::fs::fallocate(fd, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len)
}

/// `fstat(2)` `st_size`: the file's current size in bytes.
///
/// # Errors
///
/// `EBADF`, and `EOVERFLOW` if the kernel reported a negative size.
///
/// # References
///
/// - `fstat(2)`, `inode(7)`
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let stat = rustix::fs::fstat(fd)?;
    u64::try_from(stat.st_size).map_err(|_| Errno::OVERFLOW)
}

/// What `fstat(2)` says about who may trust a file: its size, owner and mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileStat {
    /// `st_size`.
    pub(crate) len: u64,
    /// `st_uid`.
    pub(crate) uid: u32,
    /// `st_mode`: file type and permission bits.
    pub(crate) mode: u32,
    /// `st_ino`: the inode, which `/proc/<pid>/maps` names a mapped file by.
    pub(crate) inode: u64,
}

/// `fstat(2)` on an open descriptor: size, owner and mode of the file it refers to, read from
/// the descriptor itself, so that no rename or replacement of the name in `/dev/shm` between
/// the open and the check can change the answer.
///
/// # Errors
///
/// `EBADF`, and `EOVERFLOW` if the kernel reported a negative size.
///
/// # References
///
/// - `fstat(2)`, `inode(7)`
pub(crate) fn file_stat(fd: BorrowedFd<'_>) -> io::Result<FileStat> {
    let stat = rustix::fs::fstat(fd)?;
    Ok(FileStat {
        len: u64::try_from(stat.st_size).map_err(|_| Errno::OVERFLOW)?,
        uid: stat.st_uid,
        mode: stat.st_mode,
        inode: stat.st_ino,
    })
}

/// `geteuid(2)`: the effective user id of this process, the one files are created under and
/// checked against.
///
/// # References
///
/// - `geteuid(2)`, `credentials(7)`
pub(crate) fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `fstat(2)` `st_mode & 0o7777`: the file's permission bits (with setuid, setgid, sticky),
/// without the file type.
///
/// # Errors
///
/// `EBADF`.
///
/// # References
///
/// - `fstat(2)`, `inode(7)`
#[cfg(test)]
pub(crate) fn file_mode(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let stat = rustix::fs::fstat(fd)?;
    Ok(stat.st_mode & 0o7777)
}

/// `statvfs(3)` on `/dev/shm`: bytes an unprivileged process can still allocate there
/// (`f_bavail * f_frsize`).
///
/// Only a hint: other processes allocate concurrently. [`reserve`] is the real check.
///
/// # Errors
///
/// `ENOENT` if `/dev/shm` does not exist, `EACCES`.
///
/// # References
///
/// - `statvfs(3)`, `statfs(2)`
pub(crate) fn shm_free_bytes() -> io::Result<u64> {
    let vfs = rustix::fs::statvfs(SHM_DIR)?;
    Ok(vfs.f_bavail.saturating_mul(vfs.f_frsize))
}

/// The directory where POSIX shared-memory objects appear as files: `/dev/shm`.
///
/// # References
///
/// - `shm_overview(7)`
#[cfg(test)]
pub(crate) fn shm_dir() -> &'static std::path::Path {
    std::path::Path::new(SHM_DIR)
}

/// `getdents64(2)` (through [`std::fs::read_dir`]) and `lstat(2)` on `/dev/shm`: the names,
/// sizes, owners and modes of the shared-memory objects that start with `prefix`, sorted by name.
///
/// Names that are not UTF-8 cannot be ours and are skipped; so are objects removed between
/// the listing and the `stat`. The listing is a snapshot: objects can be created or removed
/// while it is taken.
///
/// # Errors
///
/// The errors of opening and reading `/dev/shm` (`ENOENT`, `EACCES`).
///
/// # References
///
/// - `getdents64(2)`, `readdir(3)`, `lstat(2)`, `shm_overview(7)`
pub(crate) fn list_shm_objects(prefix: &str) -> std::io::Result<Vec<(String, FileStat)>> {
    use std::os::unix::fs::MetadataExt;
    let mut objects = Vec::new();
    for entry in std::fs::read_dir(SHM_DIR)? {
        let entry = entry?;
        if let Ok(name) = entry.file_name().into_string() {
            if name.starts_with(prefix) {
                // `DirEntry::metadata` is an `lstat`: a symlink is described, not followed.
                if let Ok(meta) = entry.metadata() {
                    objects.push((
                        name,
                        FileStat { len: meta.len(), uid: meta.uid(), mode: meta.mode(), inode: meta.ino() },
                    ));
                }
            }
        }
    }
    objects.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(objects)
}

/// `lstat(2)` of `/dev/shm/<name>`: the entry itself, a symlink described rather than
/// followed. Only for saying what a refused name is; nothing is opened or trusted from it.
///
/// # Errors
///
/// The errors of `lstat` (`ENOENT`, `EACCES`).
///
/// # References
///
/// - `lstat(2)`
pub(crate) fn entry_stat(name: &str) -> std::io::Result<FileStat> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(std::path::Path::new(SHM_DIR).join(name))?;
    Ok(FileStat { len: meta.len(), uid: meta.uid(), mode: meta.mode(), inode: meta.ino() })
}

/// `getrandom(2)` with no flags: fills `buf` with bytes from the kernel's CSPRNG.
///
/// Loops until the whole buffer is filled (the syscall may return fewer bytes, and large
/// requests can be interrupted) and retries `EINTR`.
///
/// # Errors
///
/// `ENOSYS` on kernels older than 3.17, `EFAULT`.
///
/// # References
///
/// - `getrandom(2)`, `random(7)`
pub(crate) fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], GetRandomFlags::empty()) {
            Ok(written) => filled += written,
            Err(Errno::INTR) => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fd::AsFd;

    /// Unlinks its segment when dropped, so that no test leaves a file in `/dev/shm`, even when
    /// an assertion fails.
    struct UnlinkGuard(String);

    impl UnlinkGuard {
        fn new_name() -> Self {
            let mut bytes = [0u8; 8];
            fill_random(&mut bytes).expect("getrandom");
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            // A '.', not a '-', after "test": `pyshm-test-<16 hex>` would read as a growth segment of
            // a pool named "test" to shm-ndarray's `clean`.
            Self(format!("pyshm-test.{hex}"))
        }
    }

    impl Drop for UnlinkGuard {
        fn drop(&mut self) {
            // ENOENT is fine: the test may have unlinked it already, or never created it.
            let _ = shm_unlink(&self.0);
        }
    }

    #[test]
    fn named_segment_create_open_unlink() {
        let guard = UnlinkGuard::new_name();
        let name = guard.0.as_str();

        let created = shm_create_exclusive(name).expect("create");
        assert_eq!(file_mode(created.as_fd()).unwrap(), 0o600);
        assert_eq!(file_len(created.as_fd()).unwrap(), 0);
        assert!(list_shm_objects("pyshm-test.").unwrap().iter().any(|(n, _)| n == name));
        assert!(shm_dir().join(name).exists());

        assert_eq!(shm_create_exclusive(name).unwrap_err(), Errno::EXIST);

        reserve(created.as_fd(), 0, 3 * 4096).expect("fallocate");
        let opened = shm_open_existing(name).expect("open");
        assert_eq!(file_len(opened.as_fd()).unwrap(), 3 * 4096);
        set_len(opened.as_fd(), 4096).expect("ftruncate");
        assert_eq!(file_len(created.as_fd()).unwrap(), 4096);

        shm_unlink(name).expect("unlink");
        assert_eq!(shm_open_existing(name).unwrap_err(), Errno::NOENT);
        assert_eq!(shm_unlink(name).unwrap_err(), Errno::NOENT);
        assert!(!list_shm_objects("pyshm-test.").unwrap().iter().any(|(n, _)| n == name));
    }

    #[test]
    fn names_with_slashes_are_refused() {
        assert_eq!(shm_create_exclusive("/pyshm-test-x").unwrap_err(), Errno::INVAL);
        assert_eq!(shm_open_existing("a/b").unwrap_err(), Errno::INVAL);
        assert_eq!(shm_unlink("/").unwrap_err(), Errno::INVAL);
    }

    #[test]
    fn open_does_not_follow_symlinks() {
        let guard = UnlinkGuard::new_name();
        std::os::unix::fs::symlink("/dev/null", shm_dir().join(&guard.0)).expect("symlink");
        assert_eq!(shm_open_existing(&guard.0).unwrap_err(), Errno::LOOP);
        assert_eq!(shm_create_exclusive(&guard.0).unwrap_err(), Errno::EXIST);
    }

    #[test]
    fn sealed_memfd_cannot_change_size() {
        let fd = memfd_create("pyshm-test").expect("memfd_create");
        set_len(fd.as_fd(), 2 * 4096).unwrap();
        reserve(fd.as_fd(), 0, 2 * 4096).unwrap();
        seal_size(fd.as_fd()).expect("seal");
        assert_eq!(set_len(fd.as_fd(), 4096).unwrap_err(), Errno::PERM);
        assert_eq!(set_len(fd.as_fd(), 4 * 4096).unwrap_err(), Errno::PERM);
        assert_eq!(file_len(fd.as_fd()).unwrap(), 2 * 4096);
    }

    #[test]
    fn reserve_zero_is_a_no_op() {
        let fd = memfd_create("pyshm-test").unwrap();
        reserve(fd.as_fd(), 0, 0).unwrap();
        assert_eq!(file_len(fd.as_fd()).unwrap(), 0);
    }

    #[test]
    fn free_bytes_is_readable() {
        // The value depends on the machine; the call must work.
        shm_free_bytes().expect("statvfs /dev/shm");
    }

    #[test]
    fn fill_random_fills_large_buffers() {
        let mut buf = vec![0u8; 1 << 20];
        fill_random(&mut buf).unwrap();
        // 1 MiB of zeros from a CSPRNG does not happen.
        assert!(buf.iter().any(|&b| b != 0));
        fill_random(&mut []).unwrap();
    }
}
