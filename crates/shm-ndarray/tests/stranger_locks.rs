//! A pool lock word written by hand (as a buggy or hostile process of the same user could) to
//! the pid of a live process that is not a process of the pool: pid 1, or a `sleep` we start.
//! Every operation that takes that lock fails with a typed error within a bounded time instead
//! of waiting forever (pool invariant 7), in this process and in a fresh one that opens the
//! pool by name; once the word is put back, everything works again. Every blocking step runs
//! under a watchdog, so a regression fails the test instead of hanging CI.
#![allow(unsafe_code)] // writing the lock words through the segment's mapping

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shm_arena::sync::SharedU32;
use shm_arena::{Arena, Block};
use shm_ndarray::{ArrayError, DType, HandleError, NameError, Pool, PoolError, PoolOptions, SharedArray};

const TOOL: &str = env!("CARGO_BIN_EXE_shm-ndarray");
/// Far beyond the few `RECHECK`s (20 ms each) a refusal takes; only a hang reaches it.
const WATCHDOG: Duration = Duration::from_secs(30);

/// Offset of the lock word in the pool directory's header (11 words before it).
const DIR_LOCK: usize = 96;
/// Offset of the refcount's lock word in an array header (magic and nonce before it).
const ARRAY_LOCK: usize = 16;

/// Runs `f` on a thread and returns its result, or fails the test if it has not returned after
/// [`WATCHDOG`] (the thread is left behind; the test process ends anyway).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WATCHDOG).unwrap_or_else(|_| panic!("{what} still waits after {WATCHDOG:?}: it hangs"))
}

/// Runs the `shm-ndarray` tool and returns (exit code, stderr), killing it after [`WATCHDOG`].
fn tool(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(TOOL).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > WATCHDOG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shm-ndarray {args:?} still runs after {WATCHDOG:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code().unwrap_or(-1), err)
}

/// The pool's segment 0, mapped a second time, and the directory block.
struct Segment0 {
    arena: Arena,
    dir: Block,
}

impl Segment0 {
    fn of(pool: &Pool) -> Self {
        let arena = Arena::open(&format!("pyshm-{}", pool.name())).unwrap();
        let dir = Block::from_bits(arena.root_word().load(Ordering::Acquire));
        Self { arena, dir }
    }

    /// The headers' blocks in segment 0 (every block in use but the directory).
    fn headers(&self) -> Vec<Block> {
        self.arena.blocks_in_use().into_iter().filter(|b| *b != self.dir).collect()
    }

    /// The lock word `offset` bytes into `block`.
    fn word(&self, block: Block, offset: usize) -> &SharedU32 {
        let base = self.arena.as_ptr(block).unwrap().as_ptr();
        // SAFETY: `offset` (96 or 16) lies inside the block (128 bytes at least).
        let at = unsafe { base.add(offset) }.cast::<SharedU32>();
        // SAFETY: the directory and array headers are `repr(C)` atomics in blocks of at least
        // 128 bytes, 8-aligned, mapped while `self.arena` lives; the offsets are the lock words'
        // (`DirHeader::lock`, `ArrayHeader::refcount.lock`), read and written only as atomics.
        unsafe { &*at }
    }

    fn dir_lock(&self) -> &SharedU32 {
        self.word(self.dir, DIR_LOCK)
    }
}

fn f64s_or(pool: &Pool, n: u64) -> Result<SharedArray, ArrayError> {
    pool.empty(&DType::of::<f64>(), &[n], false)
}

fn f64s(pool: &Pool, n: u64) -> SharedArray {
    f64s_or(pool, n).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A live process that is not a process of any pool.
struct Stranger(Child);
impl Stranger {
    fn start() -> Self {
        Self(Command::new("sleep").arg("120").spawn().unwrap())
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}
impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn a_planted_directory_lock_is_refused(pid: u32) {
    let pool = Pool::create(&PoolOptions::new().segment_capacity(1 << 20).max_size(8 << 20)).unwrap();
    let seg0 = Segment0::of(&pool);
    let small = f64s(&pool, 4);
    let handle = small.handle().unwrap();
    assert_eq!(seg0.dir_lock().load(Ordering::Relaxed), 0);
    seg0.dir_lock().store(pid, Ordering::Relaxed);

    // Publishing and looking up a name take the directory lock.
    let (p, s) = (pool.clone(), small.clone());
    let published = within("publish", move || p.publish("x", &s));
    assert!(
        matches!(published, Err(NameError::Handle(HandleError::Stranger { pid: p, .. })) if p == pid),
        "{published:?}"
    );
    let p = pool.clone();
    let found = within("lookup", move || p.lookup("x").map(|_| ()));
    assert!(matches!(found, Err(NameError::Handle(HandleError::Stranger { .. }))), "{found:?}");
    // Listing says so too, rather than answer "no names".
    let p = pool.clone();
    let listed = within("names", move || p.names());
    assert!(matches!(listed, Err(NameError::Handle(HandleError::Stranger { .. }))), "{listed:?}");
    // Growing the pool takes it too: a 2 MiB array needs a new data segment.
    let p = pool.clone();
    let grown = within("create a big array", move || f64s_or(&p, 1 << 18).map(|_| ()));
    assert!(matches!(grown, Err(ArrayError::Grow(PoolError::NotAPool { .. }))), "{grown:?}");
    // What takes no directory lock still works: attaching a handle.
    let p = pool.clone();
    let h = handle.clone();
    within("attach", move || p.attach(&h).map(|_| ())).unwrap();

    // A fresh process opens the pool by name, attaches and sums, and leaves without
    // hanging on the lock when it exits (it leaves the pool in place instead of tearing down).
    let (code, err) = tool(&["sum", pool.name(), &hex(&small.untracked_handle().to_bytes())]);
    assert_eq!(code, 0, "{err}");

    // Put back, everything works again, and the pool is torn down by its last process.
    seg0.dir_lock().store(0, Ordering::Relaxed);
    pool.publish("x", &small).unwrap();
    assert_eq!(pool.lookup("x").unwrap().shape(), &[4]);
    pool.unpublish("x").unwrap();
    drop((small, seg0));
    pool.check().unwrap();
}

#[test]
fn a_directory_lock_set_to_pid_1_is_refused_not_waited_for() {
    a_planted_directory_lock_is_refused(1);
}

#[test]
fn a_directory_lock_set_to_a_live_non_member_is_refused_not_waited_for() {
    let stranger = Stranger::start();
    a_planted_directory_lock_is_refused(stranger.pid());
}

fn a_planted_array_lock_is_refused(pid: u32) {
    let pool = Pool::create(&PoolOptions::new()).unwrap();
    let seg0 = Segment0::of(&pool);
    let before = seg0.headers();
    let a = f64s(&pool, 3);
    let header = seg0.headers().into_iter().find(|b| !before.contains(b)).expect("the new array's header");
    let handle = a.untracked_handle();
    let lock = seg0.word(header, ARRAY_LOCK);
    assert_eq!(lock.load(Ordering::Relaxed), 0);
    lock.store(pid, Ordering::Relaxed);

    // Sending a handle and attaching one take the array's refcount lock.
    let b = a.clone();
    let sent = within("handle", move || b.handle().map(|_| ()));
    assert!(matches!(sent, Err(HandleError::Stranger { pid: p, .. }) if p == pid), "{sent:?}");
    // A fresh process that opens the pool and attaches is refused too (this process holds
    // the array already, so its own attach would not go through the lock).
    let (code, err) = tool(&["sum", pool.name(), &hex(&handle.to_bytes())]);
    assert_eq!(code, 1, "a fresh process must be refused: {err}");
    assert!(err.contains("not a process of the pool"), "{err}");

    // Put back: handles work again, and the array is freed when dropped.
    lock.store(0, Ordering::Relaxed);
    let h = a.handle().unwrap();
    let (code, err) = tool(&["sum", pool.name(), &hex(&h.to_bytes())]);
    assert_eq!(code, 0, "{err}");
    pool.reclaim_tokens_older_than(Duration::ZERO);
    drop((a, seg0));
    assert_eq!(pool.stats().arrays, 0);
    pool.check().unwrap();
}

#[test]
fn an_array_lock_set_to_pid_1_is_refused_not_waited_for() {
    a_planted_array_lock_is_refused(1);
}

#[test]
fn an_array_lock_set_to_a_live_non_member_is_refused_not_waited_for() {
    let stranger = Stranger::start();
    a_planted_array_lock_is_refused(stranger.pid());
}
