//! Process identity that survives pid reuse, and fork detection.
//!
//! Invariants:
//!
//! 1. A [`ProcessIdentity`] names one process for the life of the machine's boot: its pid plus
//!    its start time (clock ticks after boot, field 22 of `/proc/<pid>/stat`), because pids
//!    are reused and the pair is not.
//! 2. Every process that compares identities shares one pid namespace (and so one `/proc`
//!    view): a pid means the same process to all of them.
//! 3. A pid fits in [`PID_BITS`] bits: Linux caps `pid_max` at 2^22.
//! 4. The start time is kept masked to [`START_TIME_BITS`] bits, at construction and before
//!    every comparison, so an identity survives [`ProcessIdentity::to_bits`] unchanged.
//! 5. Liveness is conservative: [`Liveness::Dead`] is only answered with proof, and a live
//!    process is never declared dead.
//!
//! # Deciding liveness
//!
//! [`ProcessIdentity::liveness`] asks `kill(pid, 0)` first: no such pid proves death. Then it
//! reads `/proc/<pid>/stat`: a zombie or dead state proves death, and so does a different
//! start time (the pid was reused by another process). When the file cannot be read (`/proc`
//! mounted with `hidepid`, `EACCES`), death cannot be proven and the answer is
//! [`Liveness::Alive`] (invariant 5). A caller that waits on a holder therefore waits with a
//! timeout and re-asks, rather than relying on a single answer.
//!
//! # The 64-bit encoding
//!
//! A slot in shared memory records a holder as one `u64`, so a claim publishes the whole
//! identity with one atomic store or compare-and-swap:
//!
//! | bits    | content                                          |
//! |---------|--------------------------------------------------|
//! | 0..22   | pid, never 0 (so 0 can mean "no holder")         |
//! | 22..62  | start time, masked to 40 bits (invariant 4)      |
//! | 62..64  | free for the caller's state tags; 0 in an identity |
//!
//! At 100 ticks per second (Linux's fixed `USER_HZ`), 40 bits of ticks last 348 years of
//! uptime, so the mask never changes a real start time.
//!
//! # Fork detection
//!
//! [`fork_generation`] counts the forks made through libc that led to the current process.
//! A caller caches it beside anything that belongs to one process (a pending-operation slot,
//! the cached [`ProcessIdentity::current`]) and compares on use, to notice that it now runs
//! in a forked child.
//!
//! # Examples
//!
//! The whole lifecycle of an identity: take it, store it in a word, read it back, ask
//! whether the process lives.
//!
//! ```
//! use shm_platform::process::{Liveness, ProcessIdentity};
//!
//! # fn main() -> Result<(), shm_platform::process::IdentityError> {
//! let me = ProcessIdentity::current()?;
//! let word: u64 = me.to_bits();
//! let holder = ProcessIdentity::from_bits(word).expect("a valid identity");
//! assert_eq!(holder, me);
//! assert_eq!(holder.liveness(), Liveness::Alive);
//! # Ok(())
//! # }
//! ```

use std::sync::Once;

use crate::sys;

/// Bits of a [`ProcessIdentity::to_bits`] word that hold the pid (Linux's `pid_max` is at most
/// 2^22).
pub const PID_BITS: u32 = 22;

/// Bits of a [`ProcessIdentity::to_bits`] word that hold the start time (348 years of uptime
/// at 100 ticks per second).
pub const START_TIME_BITS: u32 = 40;

const PID_MASK: u64 = (1 << PID_BITS) - 1;
const START_TIME_MASK: u64 = (1 << START_TIME_BITS) - 1;
/// The high bits left free for callers' state tags.
const TAG_MASK: u64 = !((1 << (PID_BITS + START_TIME_BITS)) - 1);

/// One process, named by pid and start time so that a reused pid does not alias it.
///
/// See the [module docs](self) for the invariants and the encoding.
///
/// # Examples
///
/// ```
/// use shm_platform::process::ProcessIdentity;
///
/// # fn main() -> Result<(), shm_platform::process::IdentityError> {
/// let me = ProcessIdentity::current()?;
/// assert_eq!(me.pid(), std::process::id());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessIdentity {
    /// Non-zero and below 2^[`PID_BITS`] (invariant 3).
    pid: u32,
    /// Clock ticks after boot, masked to [`START_TIME_BITS`] bits (invariant 4).
    start_time: u64,
}

/// Whether the process an identity names is still running.
///
/// # Examples
///
/// ```
/// use shm_platform::process::{Liveness, ProcessIdentity};
///
/// # fn main() -> Result<(), shm_platform::process::IdentityError> {
/// match ProcessIdentity::current()?.liveness() {
///     Liveness::Alive => {}
///     Liveness::Dead => unreachable!("we are running"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// The process may still run: it exists, or its death could not be proven (invariant 5).
    Alive,
    /// The process is gone: no such pid, a zombie, or the pid now names another process.
    Dead,
}

/// Why a process identity could not be read.
///
/// # Examples
///
/// ```
/// use shm_platform::process::{IdentityError, ProcessIdentity};
///
/// match ProcessIdentity::of_pid(1) {
///     Ok(_) => {}
///     Err(IdentityError::ReadStat { pid, source }) => eprintln!("pid {pid}: {source}"),
///     Err(other) => eprintln!("{other}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading `/proc/<pid>/stat` failed while the process exists (for example `/proc` is
    /// mounted with `hidepid`, or is not mounted at all).
    #[error("reading /proc/{pid}/stat failed")]
    ReadStat {
        /// The process whose stat file was read.
        pid: u32,
        /// The error from opening or reading the file.
        #[source]
        source: std::io::Error,
    },
    /// `/proc/<pid>/stat` did not have the expected layout.
    #[error("malformed /proc/{pid}/stat: {what}")]
    MalformedStat {
        /// The process whose stat file was read.
        pid: u32,
        /// What was wrong with it.
        what: &'static str,
    },
}

/// The fields of `/proc/<pid>/stat` that an identity needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StatFields {
    /// Field 3, the scheduler state (`R`, `S`, `D`, `Z`, ...).
    state: u8,
    /// Field 22, clock ticks after boot, not yet masked.
    start_time: u64,
}

impl StatFields {
    /// Whether the state proves the process will never run again: `Z` (zombie), `X` (dead),
    /// or `x` (dead, kernels 3.9 to 3.13).
    fn is_dead(self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }
}

/// Parses the contents of `/proc/<pid>/stat` read for `pid` (which only labels errors).
///
/// Field 2 (`comm`) is in parentheses and can itself contain spaces, parentheses and any
/// byte but NUL (a process names itself with `prctl(PR_SET_NAME)`), so the fields after it
/// start after the *last* `)`. The input is bytes because `comm` need not be UTF-8. Nothing
/// after that `)` can contain one.
fn parse_stat(pid: u32, text: &[u8]) -> Result<StatFields, IdentityError> {
    let malformed = |what| IdentityError::MalformedStat { pid, what };
    let close = text.iter().rposition(|&b| b == b')').ok_or_else(|| malformed("no ')' closing the comm field"))?;
    let rest =
        std::str::from_utf8(&text[close + 1..]).map_err(|_| malformed("bytes after the comm field are not UTF-8"))?;
    // `fields.next()` yields field 3, then 4, ...
    let mut fields = rest.split_ascii_whitespace();
    let state = match fields.next().map(str::as_bytes) {
        Some(&[state]) => state,
        Some(_) => return Err(malformed("field 3 (state) is not one character")),
        None => return Err(malformed("field 3 (state) is missing")),
    };
    // Field 22 is 19 fields after field 3.
    let start_time = fields
        .nth(18)
        .ok_or_else(|| malformed("field 22 (starttime) is missing"))?
        .parse::<u64>()
        .map_err(|_| malformed("field 22 (starttime) is not a number"))?;
    Ok(StatFields { state, start_time })
}

/// Reads `/proc/<pid>/stat` (or `/proc/self/stat` for `None`).
fn read_stat(pid: u32, path_pid: Option<u32>) -> Result<StatFields, ReadStatError> {
    let path = match path_pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read(path).map_err(ReadStatError::Io)?;
    parse_stat(pid, &text).map_err(ReadStatError::Malformed)
}

/// The two ways [`read_stat`] fails, kept apart because callers treat them differently.
enum ReadStatError {
    Io(std::io::Error),
    Malformed(IdentityError),
}

/// Whether a read of `/proc/<pid>/stat` failed because the process is gone, or hidden:
/// `ENOENT` at open (no such directory, or `hidepid=2`), `ESRCH` at read (it was reaped after
/// the open).
fn gone_or_hidden(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH)
}

impl ProcessIdentity {
    /// The identity of the calling process.
    ///
    /// Reads `/proc/self/stat` (a few microseconds) on every call; a caller that needs it
    /// often caches it together with [`fork_generation`], and takes it again when the
    /// generation changes.
    ///
    /// # Errors
    ///
    /// [`IdentityError::ReadStat`] if `/proc` is not mounted or unreadable,
    /// [`IdentityError::MalformedStat`] if its stat file has an unknown layout.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_platform::process::ProcessIdentity;
    ///
    /// # fn main() -> Result<(), shm_platform::process::IdentityError> {
    /// let me = ProcessIdentity::current()?;
    /// assert_eq!(me, ProcessIdentity::current()?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn current() -> Result<Self, IdentityError> {
        let pid = sys::current_pid();
        // `/proc/self` rather than `/proc/<pid>`: it is this process even if `/proc` was
        // mounted from another pid namespace.
        match read_stat(pid, None) {
            Ok(fields) => Ok(Self::new(pid, fields.start_time)),
            Err(ReadStatError::Io(source)) => Err(IdentityError::ReadStat { pid, source }),
            Err(ReadStatError::Malformed(err)) => Err(err),
        }
    }

    /// The identity of the running process with this pid, or `None` if there is none.
    ///
    /// `None` also for a zombie (it will never run again) and for pids that Linux never hands
    /// out (0 and those not below 2^[`PID_BITS`]).
    ///
    /// # Errors
    ///
    /// [`IdentityError::ReadStat`] if the process exists but its stat file cannot be read
    /// (`/proc` mounted with `hidepid`, or not mounted), [`IdentityError::MalformedStat`] if
    /// the file has an unknown layout.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_platform::process::ProcessIdentity;
    ///
    /// # fn main() -> Result<(), shm_platform::process::IdentityError> {
    /// let me = ProcessIdentity::of_pid(std::process::id())?;
    /// assert_eq!(me, Some(ProcessIdentity::current()?));
    /// assert_eq!(ProcessIdentity::of_pid(0)?, None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn of_pid(pid: u32) -> Result<Option<Self>, IdentityError> {
        // Invariant 3: no process has such a pid.
        if pid == 0 || u64::from(pid) > PID_MASK {
            return Ok(None);
        }
        match read_stat(pid, Some(pid)) {
            Ok(fields) if fields.is_dead() => Ok(None),
            Ok(fields) => Ok(Some(Self::new(pid, fields.start_time))),
            Err(ReadStatError::Malformed(err)) => Err(err),
            // Gone, or hidden by `hidepid`: only `kill` can tell these apart.
            Err(ReadStatError::Io(source)) if gone_or_hidden(&source) => match sys::process_exists(pid) {
                Ok(false) => Ok(None),
                Ok(true) | Err(_) => Err(IdentityError::ReadStat { pid, source }),
            },
            Err(ReadStatError::Io(source)) => Err(IdentityError::ReadStat { pid, source }),
        }
    }

    /// Builds an identity, applying the start-time mask (invariant 4).
    fn new(pid: u32, start_time: u64) -> Self {
        debug_assert!(pid != 0 && u64::from(pid) <= PID_MASK, "invariant 3: pid {pid}");
        Self { pid, start_time: start_time & START_TIME_MASK }
    }

    /// The process id (in the pid namespace shared by all users of the identity).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), shm_platform::process::IdentityError> {
    /// let me = shm_platform::process::ProcessIdentity::current()?;
    /// assert_eq!(me.pid(), std::process::id());
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The start time in clock ticks after boot, masked to [`START_TIME_BITS`] bits.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_platform::process::{ProcessIdentity, START_TIME_BITS};
    ///
    /// # fn main() -> Result<(), shm_platform::process::IdentityError> {
    /// let me = ProcessIdentity::current()?;
    /// assert!(me.start_time() < 1 << START_TIME_BITS);
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// Whether the process still runs, answered conservatively (invariant 5).
    ///
    /// [`Liveness::Dead`] needs proof: `kill(pid, 0)` finds no such pid, or
    /// `/proc/<pid>/stat` shows a zombie or a different (masked) start time, meaning the pid
    /// was reused. If the stat file cannot be read or parsed while the pid exists (`/proc`
    /// mounted with `hidepid`, `EACCES`), the answer is [`Liveness::Alive`]: never declare a
    /// live process dead. Costs one `kill` and, for a live pid, one small `/proc` read.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_platform::process::{Liveness, ProcessIdentity};
    ///
    /// # fn main() -> Result<(), shm_platform::process::IdentityError> {
    /// assert_eq!(ProcessIdentity::current()?.liveness(), Liveness::Alive);
    /// # Ok(())
    /// # }
    /// ```
    pub fn liveness(&self) -> Liveness {
        match sys::process_exists(self.pid) {
            Ok(false) => return Liveness::Dead,
            Ok(true) => {}
            // Not expected from `kill(pid, 0)`; without an answer, assume alive.
            Err(_) => return Liveness::Alive,
        }
        match read_stat(self.pid, Some(self.pid)) {
            Ok(fields) if fields.is_dead() => Liveness::Dead,
            // Invariant 4: compare masked values.
            Ok(fields) if fields.start_time & START_TIME_MASK != self.start_time => Liveness::Dead,
            Ok(_) => Liveness::Alive,
            // It may have exited between `kill` and the read: ask `kill` again.
            Err(ReadStatError::Io(err)) if gone_or_hidden(&err) => match sys::process_exists(self.pid) {
                Ok(false) => Liveness::Dead,
                Ok(true) | Err(_) => Liveness::Alive,
            },
            // Unreadable or unparseable: death is not proven.
            Err(ReadStatError::Io(_) | ReadStatError::Malformed(_)) => Liveness::Alive,
        }
    }

    /// The identity as one word: pid in bits 0..22, start time in bits 22..62, bits 62 and 63
    /// zero (free for the caller's tags). Never 0, since the pid is not.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_platform::process::{ProcessIdentity, PID_BITS};
    ///
    /// # fn main() -> Result<(), shm_platform::process::IdentityError> {
    /// let me = ProcessIdentity::current()?;
    /// let bits = me.to_bits();
    /// assert_eq!(bits & ((1 << PID_BITS) - 1), u64::from(me.pid()));
    /// assert_eq!(bits >> 62, 0);
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn to_bits(self) -> u64 {
        // Invariants 3 and 4: both fields already fit, the masks only document it.
        (u64::from(self.pid) & PID_MASK) | ((self.start_time & START_TIME_MASK) << PID_BITS)
    }

    /// Decodes a word written by [`ProcessIdentity::to_bits`].
    ///
    /// `None` if the pid bits are 0 (no identity, for example a free slot) or either of the
    /// top two bits is set (the caller must strip its tags first). The word may come from
    /// another process, so anything else decodes; whether that process lives is
    /// [`ProcessIdentity::liveness`]'s question.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_platform::process::ProcessIdentity;
    ///
    /// # fn main() -> Result<(), shm_platform::process::IdentityError> {
    /// let me = ProcessIdentity::current()?;
    /// assert_eq!(ProcessIdentity::from_bits(me.to_bits()), Some(me));
    /// assert_eq!(ProcessIdentity::from_bits(0), None);
    /// assert_eq!(ProcessIdentity::from_bits(me.to_bits() | 1 << 63), None);
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn from_bits(bits: u64) -> Option<Self> {
        let pid = (bits & PID_MASK) as u32;
        if pid == 0 || bits & TAG_MASK != 0 {
            return None;
        }
        Some(Self { pid, start_time: (bits >> PID_BITS) & START_TIME_MASK })
    }
}

/// Forks (through libc) seen by this process's line of ancestry since the hook was installed.
// Process-local: never placed in shared memory and not part of any loom-modelled protocol,
// so it is the std type rather than the `sync` facade's.
#[allow(clippy::disallowed_types)]
static FORK_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Installs [`on_fork_child`] once per process (the registration is inherited by children).
static FORK_HOOK: Once = Once::new();

/// Runs `fork_generation`'s one-time setup when the library is loaded (before `main` in a
/// program, at `dlopen` in a Python extension), when no other thread can be inside it. Left
/// lazy, a fork made while another thread was inside the setup gave a child that waits forever
/// for a setup no thread of it runs (seen in CI: a forked test child never took its lock).
#[allow(unsafe_code)]
// `link_section` places a function pointer in `.init_array`
// SAFETY: `.init_array` entries are `extern "C" fn()` called once by the loader, in order; this
// one only runs `fork_generation`, which needs nothing from the Rust runtime that is not ready
// at load time (an atomic, a `Once` and `pthread_atfork`).
#[used]
#[link_section = ".init_array"]
static INSTALL_FORK_HOOK_AT_LOAD: extern "C" fn() = {
    extern "C" fn install() {
        let _ = fork_generation();
    }
    install
};

/// The `pthread_atfork` child handler: counts one fork. Async-signal-safe: one atomic add.
extern "C" fn on_fork_child() {
    // Relaxed: the child is single-threaded here and goes on in this same thread, so program
    // order already makes the add visible to its later loads; nothing else is published.
    FORK_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// A counter that changes in a child after every `fork()`, to tell a forked child from its
/// parent.
///
/// Cache the value next to per-process state; when a later call returns something else, the
/// code runs in a forked child and must take its own [`ProcessIdentity::current`] and drop
/// what belonged to the parent. A `pthread_atfork` child handler counts the forks; it is
/// installed when the library is loaded (children inherit it), before any thread could fork.
///
/// Only forks made through libc (`fork(3)`, Python's `os.fork`, `multiprocessing`'s `fork`
/// start method) run the handler. A raw `clone(2)` syscall does not; `vfork` and
/// `posix_spawn` children `exec` at once and never run this code.
///
/// # Panics
///
/// If libc cannot record the handler (`pthread_atfork` fails only with `ENOMEM`): without it,
/// a forked child would silently act with its parent's identity.
///
/// # Examples
///
/// ```
/// use shm_platform::process::fork_generation;
///
/// let cached = fork_generation();
/// // ... later, in the same process:
/// assert_eq!(fork_generation(), cached);
/// ```
#[inline]
pub fn fork_generation() -> u64 {
    FORK_HOOK.call_once(|| {
        if let Err(errno) = sys::install_fork_hook(on_fork_child) {
            panic!("pthread_atfork failed, cannot detect forks: {errno}");
        }
    });
    // Relaxed: the counter only changes in `on_fork_child`, earlier in this same thread
    // (invariant of `fork`: the child starts as one thread), so no ordering is needed.
    FORK_GENERATION.load(std::sync::atomic::Ordering::Relaxed)
}

/// The pid namespace of the calling process, as the inode number of `/proc/self/ns/pid`, or
/// `None` when `/proc` does not show it.
///
/// A pid, and so a [`ProcessIdentity`], means something only in its pid namespace: a process of
/// another namespace has another pid here (or none), so its identity must never be judged here.
/// Layers above record the namespace beside the identities they keep and refuse to judge (or
/// share with) processes of another one. Read on every call (a `stat`, a few microseconds): a
/// child forked after `unshare(CLONE_NEWPID)` is in a new namespace, so it is never cached.
///
/// # Examples
///
/// ```
/// let ns = shm_platform::process::pid_namespace();
/// assert_eq!(ns, shm_platform::process::pid_namespace()); // the same process, the same namespace
/// ```
pub fn pid_namespace() -> Option<u64> {
    sys::pid_namespace_inode().ok()
}

#[cfg(test)]
// `fork`, `waitpid` and `_exit` in the fork test.
#[allow(unsafe_code)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    /// A stat line as Linux 6.x prints it, with `comm` and field 22 replaced.
    fn stat_line(comm: &str, state: char, start_time: &str) -> String {
        format!(
            "4242 ({comm}) {state} 1 4242 4242 0 -1 4194560 1160 0 0 0 3 1 0 0 20 0 1 0 \
             {start_time} 12345678 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 \
             0 0 0 0 0 0 0 0 0 0 0\n"
        )
    }

    #[test]
    fn current_round_trips_through_bits() {
        let me = ProcessIdentity::current().unwrap();
        assert_eq!(me.pid(), std::process::id());
        assert_eq!(ProcessIdentity::from_bits(me.to_bits()), Some(me));
        assert_eq!(me.to_bits() & TAG_MASK, 0);
        assert_eq!(ProcessIdentity::of_pid(me.pid()).unwrap(), Some(me));
    }

    #[test]
    fn current_is_alive() {
        assert_eq!(ProcessIdentity::current().unwrap().liveness(), Liveness::Alive);
    }

    #[test]
    fn exited_child_is_dead() {
        // `cat` blocks on its stdin, so it is surely running while we take its identity.
        let mut child = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn cat");
        let identity = ProcessIdentity::of_pid(child.id()).unwrap().expect("cat is running");
        assert_eq!(identity.liveness(), Liveness::Alive);
        child.stdin.take().unwrap().write_all(b"bye\n").unwrap();
        child.wait().expect("wait");
        assert_eq!(identity.liveness(), Liveness::Dead);
        assert_eq!(ProcessIdentity::of_pid(identity.pid()).unwrap(), None);
    }

    #[test]
    fn reaped_true_is_dead() {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        let identity = ProcessIdentity::new(pid, 0);
        assert_eq!(identity.liveness(), Liveness::Dead);
    }

    #[test]
    fn zombie_is_dead() {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        // Until it is reaped, the exited child stays a zombie: its pid exists.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let identity = loop {
            assert!(std::time::Instant::now() < deadline, "watchdog: child never exited");
            let text = std::fs::read(format!("/proc/{pid}/stat")).unwrap();
            let fields = parse_stat(pid, &text).unwrap();
            if fields.is_dead() {
                break ProcessIdentity::new(pid, fields.start_time);
            }
            std::thread::yield_now();
        };
        assert!(sys::process_exists(pid).unwrap());
        assert_eq!(identity.liveness(), Liveness::Dead);
        assert_eq!(ProcessIdentity::of_pid(pid).unwrap(), None);
        child.wait().expect("wait");
    }

    #[test]
    fn reused_pid_is_dead() {
        let me = ProcessIdentity::current().unwrap();
        let impostor = ProcessIdentity::new(me.pid(), me.start_time() ^ 1);
        assert_eq!(impostor.liveness(), Liveness::Dead);
        // A start time that differs only above the mask is the same masked value.
        let wide = ProcessIdentity::new(me.pid(), me.start_time() | 1 << START_TIME_BITS);
        assert_eq!(wide, me);
        assert_eq!(wide.liveness(), Liveness::Alive);
    }

    #[test]
    fn bits_layout() {
        let id = ProcessIdentity::new((1 << PID_BITS) - 1, START_TIME_MASK);
        assert_eq!(id.to_bits(), !TAG_MASK);
        assert_eq!(ProcessIdentity::from_bits(id.to_bits()), Some(id));
        let id = ProcessIdentity::new(7, 3);
        assert_eq!(id.to_bits(), 7 | 3 << 22);
        // A start time of 0 is real (processes started in the first tick after boot).
        let early = ProcessIdentity::new(1, 0);
        assert_eq!(ProcessIdentity::from_bits(early.to_bits()), Some(early));
        assert_eq!(ProcessIdentity::from_bits(0), None);
        assert_eq!(ProcessIdentity::from_bits(3 << 22), None);
        assert_eq!(ProcessIdentity::from_bits(7 | 1 << 62), None);
        assert_eq!(ProcessIdentity::from_bits(7 | 1 << 63), None);
        assert_eq!(PID_BITS + START_TIME_BITS, 62);
    }

    #[test]
    fn impossible_pids_have_no_identity() {
        assert_eq!(ProcessIdentity::of_pid(0).unwrap(), None);
        assert_eq!(ProcessIdentity::of_pid(1 << PID_BITS).unwrap(), None);
        assert_eq!(ProcessIdentity::of_pid(u32::MAX).unwrap(), None);
    }

    #[test]
    fn parse_stat_plain() {
        let fields = parse_stat(4242, stat_line("bash", 'S', "987654").as_bytes()).unwrap();
        assert_eq!(fields, StatFields { state: b'S', start_time: 987_654 });
        assert!(!fields.is_dead());
    }

    #[test]
    fn parse_stat_tricky_comm() {
        for comm in ["a) b (c", ")", "((", ") Z 1 2 3 (", "x y z", "", "tab\there", "nl\nx)"] {
            let fields = parse_stat(4242, stat_line(comm, 'R', "17").as_bytes()).unwrap();
            assert_eq!(fields.state, b'R', "comm {comm:?}");
            assert_eq!(fields.start_time, 17, "comm {comm:?}");
        }
    }

    #[test]
    fn parse_stat_non_utf8_comm() {
        let line = stat_line("X", 'S', "5");
        let after = line.split_once("(X)").unwrap().1;
        // comm is `bad\xff) \xfe`: not UTF-8, with a ')' inside.
        let text = [&b"99 (bad\xff) \xfe)"[..], after.as_bytes()].concat();
        let fields = parse_stat(99, &text).unwrap();
        assert_eq!(fields.state, b'S');
        assert_eq!(fields.start_time, 5);
    }

    #[test]
    fn parse_stat_dead_states() {
        for state in ['Z', 'X', 'x'] {
            let fields = parse_stat(1, stat_line("zz", state, "1").as_bytes()).unwrap();
            assert!(fields.is_dead(), "state {state}");
        }
        for state in ['R', 'S', 'D', 'T', 't', 'I', 'P'] {
            let fields = parse_stat(1, stat_line("zz", state, "1").as_bytes()).unwrap();
            assert!(!fields.is_dead(), "state {state}");
        }
    }

    #[test]
    fn parse_stat_malformed() {
        let cases: [&[u8]; 6] = [
            b"",
            b"12 (no close paren S 1 2 3",
            b"12 (x)",
            b"12 (x) SS 1 2",
            b"12 (x) S 1 2 3",
            b"12 (x) S 1 4242 4242 0 -1 4194560 1160 0 0 0 3 1 0 0 20 0 1 0 soon 1",
        ];
        for text in cases {
            match parse_stat(12, text) {
                Err(IdentityError::MalformedStat { pid: 12, .. }) => {}
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(text)),
            }
        }
    }

    #[test]
    fn errors_name_the_file() {
        let err = parse_stat(77, b"77 (x)").unwrap_err();
        assert_eq!(err.to_string(), "malformed /proc/77/stat: field 3 (state) is missing");
    }

    #[test]
    fn fork_generation_changes_in_child() {
        // Installs the hook before the fork; from here the child only reads an atomic and
        // exits, which is async-signal-safe in a multithreaded parent.
        let before = fork_generation();
        // SAFETY: the child runs only `fork_generation` (the `Once` is complete, so that is two
        // atomic loads) and `_exit`, both async-signal-safe, so forking a multithreaded test
        // process is sound. The parent continues normally.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = if fork_generation() == before + 1 { 0 } else { 1 };
            // SAFETY: `_exit` ends the child at once without running the parent's atexit
            // handlers or unwinding the copied test-harness state.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our child and `status` is a valid place for the kernel to write.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(libc::WIFEXITED(status), "child did not exit: status {status}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "child saw no new fork generation");
        assert_eq!(fork_generation(), before, "the parent's generation must not change");
    }
}
