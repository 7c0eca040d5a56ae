//! Aggregate throughput of shm-arena under a mixed workload, with threads and with processes,
//! against the same buddy tree behind a mutex and against the system allocator.
//!
//! Each worker keeps a window of `WINDOW` live blocks whose sizes follow `SIZE_CLASSES`
//! (64 B to 64 KiB, mostly small). It repeatedly frees a random block of the window, allocates a
//! new one of a random size in its place and writes one byte into it. One allocation and one
//! free count as two operations. Every worker warms up first, then counts for a fixed time; the
//! aggregate is the sum of the workers' rates. Each variant runs `--repeat` times, rounds
//! interleaved, and the median is reported.
//!
//! | label | what |
//! |---|---|
//! | `arena-1t`, `arena-2t` | one anonymous [`Arena`] value (default options), shared by 1 or 2 threads |
//! | `arena-2p` | a named arena, this process and one child process (this program, re-run with `--child`) |
//! | `arena_nocache-1t`, `-2t` | as `arena`, with `cache_max_block(0)` |
//! | `tree_mutex-1t`, `-2t` | the same buddy tree over heap words, every call under one `Mutex<()>` |
//! | `malloc-1t`, `-2t` | `std::alloc::alloc` / `dealloc` (the system allocator), settled first (`settle_malloc`) |
//!
//! Each round first measures two controls of the machine, not of the allocators: a compute loop
//! on 2 threads against 1 (`two_core_control`) and the round trip of one cache line between two
//! threads (`cache_line_round_trip`). On a shared VM both move, and the two-worker figures of
//! the shared-memory variants move with the second.
//!
//! ```text
//! cargo run --release -p shm-arena --example bench_throughput -- \
//!     [--only LABEL[,LABEL...]] [--duration SECS] [--warmup SECS] [--repeat N] [--seed N]
//! ```
//!
//! `--only` keeps the variants whose label contains one of the given strings. With
//! `--duration 0 --warmup 0` the workers fill and empty their windows but run no iteration,
//! which is the baseline to subtract when counting syscalls of the loop (see
//! docs/performance.md).

use std::alloc::Layout;
use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use shm_arena::sync::words::heap_words;
use shm_arena::sync::SharedU32;
use shm_arena::tree::{BuddyTree, NodeRef};
use shm_arena::{Arena, ArenaOptions, Block};

type BoxError = Box<dyn Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

/// Live blocks each worker keeps.
const WINDOW: usize = 64;
/// Block sizes and their weights (percent).
const SIZE_CLASSES: [(u64, u32); 7] =
    [(64, 40), (128, 15), (256, 15), (1 << 10, 12), (4 << 10, 10), (16 << 10, 5), (64 << 10, 3)];
/// Capacity of every arena and of the heap tree's memory.
const CAPACITY: u64 = 64 << 20;
/// Minimum block of the arenas and the heap tree (the default).
const MIN_BLOCK: u64 = shm_arena::DEFAULT_MIN_BLOCK;
/// Owner tag the heap tree allocates under.
const HEAP_OWNER: u16 = 1;
/// Replacements between two looks at the clock.
const BATCH: u64 = 64;

const _: () = {
    let mut sum = 0;
    let mut i = 0;
    while i < SIZE_CLASSES.len() {
        sum += SIZE_CLASSES[i].1;
        i += 1;
    }
    assert!(sum == 100, "the weights of SIZE_CLASSES are percentages");
};

/// A small, fast, deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11
    }

    fn size(&mut self) -> u64 {
        let mut pick = (self.next() % 100) as u32;
        for (size, weight) in SIZE_CLASSES {
            if pick < weight {
                return size;
            }
            pick -= weight;
        }
        SIZE_CLASSES[SIZE_CLASSES.len() - 1].0
    }
}

/// An allocator under test, shared by the workers of one variant.
trait Heap: Sync {
    /// What the allocator hands out.
    type Handle: Copy;
    /// Allocates `size` bytes.
    fn alloc(&self, size: u64) -> Result<Self::Handle>;
    /// Frees a block of `size` bytes.
    fn free(&self, handle: Self::Handle, size: u64) -> Result<()>;
    /// Writes `byte` into the first byte of the block.
    fn touch(&self, handle: Self::Handle, byte: u8) -> Result<()>;
}

impl Heap for Arena {
    type Handle = Block;

    #[inline]
    fn alloc(&self, size: u64) -> Result<Block> {
        Ok(Arena::alloc(self, size)?)
    }

    #[inline]
    fn free(&self, block: Block, _size: u64) -> Result<()> {
        Ok(Arena::free(self, block)?)
    }

    #[inline]
    fn touch(&self, block: Block, byte: u8) -> Result<()> {
        let p = self.as_ptr(block)?;
        // SAFETY: the block is allocated by this worker and not yet freed, and `as_ptr`
        // validated that its bytes lie inside this process's mapping.
        unsafe { p.as_ptr().write_volatile(byte) };
        Ok(())
    }
}

/// Heap memory the tree's blocks point into, so that the mutex variant also touches memory.
struct Region {
    base: NonNull<u8>,
    layout: Layout,
}

/// `Region` is `Sync`: workers write only into blocks they allocated, which the tree keeps
/// disjoint, so sharing the base pointer between threads is sound.
// SAFETY: the region is only ever written through disjoint blocks (see the doc line above), and
// it is freed only by `Drop`, after every worker borrowing it has ended.
unsafe impl Sync for Region {}

impl Region {
    fn new(bytes: u64) -> Result<Self> {
        let layout = Layout::from_size_align(bytes as usize, 4096)?;
        // SAFETY: `layout` has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(p).ok_or("out of memory for the heap tree's region")?;
        Ok(Self { base, layout })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc_zeroed` with `layout` and is freed only here.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// The arena's buddy tree over heap words, every call under one lock.
struct TreeMutex<'a> {
    tree: BuddyTree<'a, [SharedU32]>,
    lock: Mutex<()>,
    region: &'a Region,
}

impl Heap for TreeMutex<'_> {
    type Handle = NodeRef;

    #[inline]
    fn alloc(&self, size: u64) -> Result<NodeRef> {
        let order = (size / MIN_BLOCK).trailing_zeros();
        let level = self.tree.level_for_order(order).ok_or("block larger than the tree")?;
        let _guard = self.lock.lock().map_err(|_| "poisoned")?;
        self.tree.alloc(level, HEAP_OWNER).ok_or_else(|| "heap tree exhausted".into())
    }

    #[inline]
    fn free(&self, block: NodeRef, _size: u64) -> Result<()> {
        let _guard = self.lock.lock().map_err(|_| "poisoned")?;
        self.tree.free(block, HEAP_OWNER)?;
        Ok(())
    }

    #[inline]
    fn touch(&self, block: NodeRef, byte: u8) -> Result<()> {
        let offset = self.tree.first_leaf(block.index) * MIN_BLOCK;
        debug_assert!(offset < self.region.layout.size() as u64);
        // SAFETY: the tree covers exactly the region's bytes (depth chosen for CAPACITY), so
        // the block's first byte lies inside the region's allocation.
        let p = unsafe { self.region.base.as_ptr().add(offset as usize) };
        // SAFETY: `p` is in bounds (above), and the block is this worker's alone until freed.
        unsafe { p.write_volatile(byte) };
        Ok(())
    }
}

/// The system allocator.
struct Malloc;

impl Heap for Malloc {
    type Handle = NonNull<u8>;

    #[inline]
    fn alloc(&self, size: u64) -> Result<NonNull<u8>> {
        let layout = Layout::from_size_align(size as usize, 16)?;
        // SAFETY: every size class is non-zero.
        let p = unsafe { std::alloc::alloc(layout) };
        NonNull::new(p).ok_or_else(|| "malloc failed".into())
    }

    #[inline]
    fn free(&self, p: NonNull<u8>, size: u64) -> Result<()> {
        let layout = Layout::from_size_align(size as usize, 16)?;
        // SAFETY: `p` came from `alloc` with this layout (same size, same alignment), once.
        unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
        Ok(())
    }

    #[inline]
    fn touch(&self, p: NonNull<u8>, byte: u8) -> Result<()> {
        // SAFETY: `p` is a live allocation of at least 64 bytes owned by this worker.
        unsafe { p.as_ptr().write_volatile(byte) };
        Ok(())
    }
}

/// How long a worker warms up and then counts.
#[derive(Clone, Copy, Debug)]
struct Timing {
    warmup: Duration,
    duration: Duration,
}

/// What one worker did while counting.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    ops: u64,
    secs: f64,
}

impl Sample {
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// One worker: fill the window, replace blocks until the time is up, empty the window.
fn work<H: Heap>(heap: &H, seed: u64, timing: Timing) -> Result<Sample> {
    let mut rng = Rng::new(seed);
    let mut window = Vec::with_capacity(WINDOW);
    for _ in 0..WINDOW {
        let size = rng.size();
        let h = heap.alloc(size)?;
        heap.touch(h, 1)?;
        window.push((h, size));
    }
    let start = Instant::now();
    let count_from = start + timing.warmup;
    let stop_at = count_from + timing.duration;
    let mut counting_since: Option<(Instant, u64)> = None;
    let mut replacements = 0u64;
    let end = loop {
        let now = Instant::now();
        if now >= stop_at {
            break now;
        }
        if counting_since.is_none() && now >= count_from {
            counting_since = Some((now, replacements));
        }
        for _ in 0..BATCH {
            let victim = (rng.next() % WINDOW as u64) as usize;
            let (h, size) = window[victim];
            heap.free(h, size)?;
            let size = rng.size();
            let h = heap.alloc(size)?;
            heap.touch(h, replacements as u8)?;
            window[victim] = (h, size);
            replacements += 1;
        }
    };
    for (h, size) in window {
        heap.free(h, size)?;
    }
    Ok(match counting_since {
        Some((t0, r0)) => Sample { ops: 2 * (replacements - r0), secs: end.duration_since(t0).as_secs_f64() },
        None => Sample::default(),
    })
}

/// Runs `workers` threads over one shared `heap`, started together; the sum of their rates.
fn threads<H: Heap>(heap: &H, workers: usize, timing: Timing, seed: u64) -> Result<f64> {
    let barrier = Barrier::new(workers);
    let samples: Vec<Result<Sample>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    work(heap, seed + w as u64, timing)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into()))).collect()
    });
    let mut total = 0.0;
    for s in samples {
        total += s?.rate();
    }
    Ok(total)
}

/// A named arena that is unlinked when this value goes away, whatever happened.
struct NamedArena(Arena);

impl Drop for NamedArena {
    fn drop(&mut self) {
        if let Err(e) = self.0.unlink() {
            eprintln!("bench_throughput: unlinking {:?} failed: {e}", self.0.name());
        }
    }
}

/// A child process that is killed (if still running) and waited for when this value goes away.
struct ChildGuard {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl ChildGuard {
    fn spawn(args: &[String]) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("child has no stdout")?;
        Ok(Self { child, stdin, stdout: BufReader::new(stdout) })
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err("child closed its stdout early".into());
        }
        Ok(line.trim().to_owned())
    }

    fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or("child stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for a clean exit.
    fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("child exited with {status}").into());
        }
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The `arena-2p` variant: this process and a child, each with its own handle on one named
/// arena, started together through the child's stdin; the child reports through its stdout.
fn processes(timing: Timing, seed: u64) -> Result<f64> {
    let arena = NamedArena(ArenaOptions::new(CAPACITY).create()?);
    let name = arena.0.name().ok_or("a named arena has a name")?.to_owned();
    let args = [
        "--child".to_owned(),
        name,
        "--warmup".to_owned(),
        timing.warmup.as_secs_f64().to_string(),
        "--duration".to_owned(),
        timing.duration.as_secs_f64().to_string(),
        "--seed".to_owned(),
        (seed + 1).to_string(),
    ];
    let mut child = ChildGuard::spawn(&args)?;
    let ready = child.read_line()?;
    if ready != "ready" {
        return Err(format!("child said {ready:?} instead of \"ready\"").into());
    }
    child.send("go")?;
    let mine = work(&arena.0, seed, timing)?;
    let report = child.read_line()?;
    let theirs = parse_report(&report)?;
    child.finish()?;
    Ok(mine.rate() + theirs.rate())
}

fn parse_report(line: &str) -> Result<Sample> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("result"), Some(ops), Some(secs)) => Ok(Sample { ops: ops.parse()?, secs: secs.parse()? }),
        _ => Err(format!("child reported {line:?}").into()),
    }
}

/// The child side of `arena-2p`.
fn child_main(name: &str, timing: Timing, seed: u64) -> Result<()> {
    let arena = Arena::open(name)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go)?;
    if go.trim() != "go" {
        return Err(format!("parent said {go:?} instead of \"go\"").into());
    }
    let sample = work(&arena, seed, timing)?;
    writeln!(out, "result {} {}", sample.ops, sample.secs)?;
    out.flush()?;
    Ok(())
}

/// Command-line options.
struct Options {
    only: Vec<String>,
    timing: Timing,
    repeat: usize,
    seed: u64,
    child: Option<String>,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        only: Vec::new(),
        timing: Timing { warmup: Duration::from_millis(500), duration: Duration::from_secs(2) },
        repeat: 3,
        seed: 42,
        child: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--only" => o.only.extend(value()?.split(',').map(str::to_owned)),
            "--duration" => o.timing.duration = Duration::try_from_secs_f64(value()?.parse()?)?,
            "--warmup" => o.timing.warmup = Duration::try_from_secs_f64(value()?.parse()?)?,
            "--repeat" => o.repeat = value()?.parse::<usize>()?.max(1),
            "--seed" => o.seed = value()?.parse()?,
            "--child" => o.child = Some(value()?),
            other => return Err(format!("unknown argument {other:?} (see the example's doc)").into()),
        }
    }
    Ok(o)
}

/// One row of the table: a labelled variant and how to run it once.
struct Variant {
    name: &'static str,
    workers: usize,
    kind: &'static str,
    run: fn(Timing, u64) -> Result<f64>,
}

impl Variant {
    fn label(&self) -> String {
        format!("{}-{}{}", self.name, self.workers, self.kind)
    }
}

fn arena_threads(workers: usize, cache: bool, timing: Timing, seed: u64) -> Result<f64> {
    let options = ArenaOptions::new(CAPACITY);
    let options = if cache { options } else { options.cache_max_block(0) };
    let arena = options.create_anonymous()?;
    threads(&arena, workers, timing, seed)
}

fn tree_mutex_threads(workers: usize, timing: Timing, seed: u64) -> Result<f64> {
    let depth = (CAPACITY / MIN_BLOCK).trailing_zeros();
    let nodes = heap_words(BuddyTree::<[SharedU32]>::node_words(depth));
    let search = heap_words(BuddyTree::<[SharedU32]>::search_words(depth));
    let tree = BuddyTree::new(&nodes[..], &search[..], depth)?;
    tree.reserve_tail(CAPACITY / MIN_BLOCK);
    let region = Region::new(CAPACITY)?;
    let heap = TreeMutex { tree, lock: Mutex::new(()), region: &region };
    threads(&heap, workers, timing, seed)
}

/// Puts glibc's malloc into the steady state of a long-running program before a malloc variant.
///
/// Freeing an mmapped block of up to 32 MiB makes glibc raise its mmap and trim thresholds
/// ("dynamic threshold"); after that it stops handing the top of a thread's heap back to the
/// kernel on frees. In a fresh process this workload instead makes ~30,000 `madvise` calls a
/// second and runs about 40% slower. The heap-tree variant frees such a block anyway (its 8 MiB
/// of node words); doing it here makes the malloc rows independent of what ran before them.
fn settle_malloc() -> Result<()> {
    let layout = Layout::from_size_align(8 << 20, 16)?;
    // `black_box`: the compiler may otherwise drop an allocation nobody uses.
    // SAFETY: `layout` has a non-zero size.
    let p = std::hint::black_box(unsafe { std::alloc::alloc(layout) });
    if p.is_null() {
        return Err("out of memory settling malloc".into());
    }
    // SAFETY: `p` came from `alloc` with this layout and is freed once.
    unsafe { std::alloc::dealloc(p, layout) };
    Ok(())
}

fn malloc_threads(workers: usize, timing: Timing, seed: u64) -> Result<f64> {
    settle_malloc()?;
    threads(&Malloc, workers, timing, seed)
}

/// A control for the machine rather than the allocators: the aggregate rate of 2 threads over
/// 1 thread for a loop that shares nothing. Near 2.0 when both CPUs are really ours; on a shared
/// VM it drops (to ~1.0 at times here) when the host gives the VM less than two cores.
fn two_core_control() -> f64 {
    fn spin(d: Duration) -> f64 {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut n = 0u64;
        let t = Instant::now();
        while t.elapsed() < d {
            for _ in 0..1000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            n += 1000;
        }
        std::hint::black_box(x);
        n as f64 / t.elapsed().as_secs_f64()
    }
    let d = Duration::from_millis(200);
    let one = spin(d);
    let two: f64 = std::thread::scope(|s| {
        let h: Vec<_> = (0..2).map(|_| s.spawn(move || spin(d))).collect();
        h.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    two / one
}

/// A second control for the machine: the round trip of one cache line between two threads
/// (each waits for the other's value, then writes its own), in nanoseconds.
///
/// Every workload that shares cache lines between workers depends on this. On this project's
/// VMs it moves between ~70 ns and ~350 ns from one second to the next, presumably as the host
/// places the two vCPUs nearer or farther apart; the shared-memory variants follow it. Gives
/// up after 300 ms (for instance if both threads share one CPU) and reports what it measured.
fn cache_line_round_trip() -> f64 {
    const ROUND_TRIPS: u32 = 50_000;
    let word = SharedU32::new(0);
    let deadline = Instant::now() + Duration::from_millis(300);
    let start = Instant::now();
    let done: u32 = std::thread::scope(|s| {
        let h: Vec<_> = (0..2u32)
            .map(|me| {
                let word = &word;
                s.spawn(move || {
                    let mut turn = me;
                    let mut spins = 0u32;
                    while turn < 2 * ROUND_TRIPS {
                        // Acquire: pairs with the other thread's Release store below; orders
                        // nothing else (the word is the only data).
                        while word.load(Acquire) != turn {
                            spins = spins.wrapping_add(1);
                            if spins % 1024 == 0 && Instant::now() > deadline {
                                return turn / 2;
                            }
                            std::hint::spin_loop();
                        }
                        // Release: pairs with the Acquire load above in the other thread.
                        word.store(turn + 1, Release);
                        turn += 2;
                    }
                    ROUND_TRIPS
                })
            })
            .collect();
        h.into_iter().map(|h| h.join().unwrap_or(0)).min().unwrap_or(0)
    });
    start.elapsed().as_nanos() as f64 / f64::from(done.max(1))
}

fn variants() -> Vec<Variant> {
    vec![
        Variant { name: "arena", workers: 1, kind: "t", run: |t, s| arena_threads(1, true, t, s) },
        Variant { name: "arena", workers: 2, kind: "t", run: |t, s| arena_threads(2, true, t, s) },
        Variant { name: "arena", workers: 2, kind: "p", run: processes },
        Variant { name: "arena_nocache", workers: 1, kind: "t", run: |t, s| arena_threads(1, false, t, s) },
        Variant { name: "arena_nocache", workers: 2, kind: "t", run: |t, s| arena_threads(2, false, t, s) },
        Variant { name: "tree_mutex", workers: 1, kind: "t", run: |t, s| tree_mutex_threads(1, t, s) },
        Variant { name: "tree_mutex", workers: 2, kind: "t", run: |t, s| tree_mutex_threads(2, t, s) },
        Variant { name: "malloc", workers: 1, kind: "t", run: |t, s| malloc_threads(1, t, s) },
        Variant { name: "malloc", workers: 2, kind: "t", run: |t, s| malloc_threads(2, t, s) },
    ]
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    let o = parse_args()?;
    if let Some(name) = &o.child {
        return child_main(name, o.timing, o.seed);
    }
    let chosen: Vec<Variant> = variants()
        .into_iter()
        .filter(|v| o.only.is_empty() || o.only.iter().any(|f| v.label().contains(f.as_str())))
        .collect();
    if chosen.is_empty() {
        return Err("--only matched no variant".into());
    }
    eprintln!(
        "bench_throughput: window {WINDOW}, warm-up {:?}, {:?} counted, {} round(s), {} variant(s)",
        o.timing.warmup,
        o.timing.duration,
        o.repeat,
        chosen.len()
    );
    let mut rates = vec![Vec::with_capacity(o.repeat); chosen.len()];
    let mut controls = Vec::with_capacity(o.repeat);
    let mut lines = Vec::with_capacity(o.repeat);
    for round in 0..o.repeat {
        let control = two_core_control();
        let line = cache_line_round_trip();
        eprintln!("  round {round}: controls: 2-core {control:.2}, cache-line round trip {line:.0} ns");
        controls.push(control);
        lines.push(line);
        for (v, r) in chosen.iter().zip(&mut rates) {
            let rate = (v.run)(o.timing, o.seed + 100 * round as u64)?;
            eprintln!("  round {round}: {:<18} {:>14.0} ops/s", v.label(), rate);
            r.push(rate);
        }
    }
    let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    let find = |name: &str, workers: usize, kind: &str| {
        chosen
            .iter()
            .zip(&medians)
            .find(|(v, _)| v.name == name && v.workers == workers && v.kind == kind)
            .map(|(_, m)| *m)
    };
    // Rates of 0 (no iteration ran, as with `--duration 0`) give no ratio.
    let find = |name: &str, workers: usize, kind: &str| find(name, workers, kind).filter(|m| *m > 0.0);
    let arena_1t = find("arena", 1, "t");
    let fmt_ratio = |x: Option<f64>| x.filter(|r| r.is_finite()).map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
    let fmt_ns =
        |workers: usize, m: f64| if m > 0.0 { format!("{:.1}", 1e9 * workers as f64 / m) } else { "-".to_owned() };

    let control_min = controls.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "2-core control (compute loop sharing nothing, 2 threads / 1 thread; 2.0 = two real cores): \
         median {:.2}, min {:.2} over {} rounds{}\n",
        median(&mut controls),
        control_min,
        o.repeat,
        if control_min < 1.8 { " -- the machine was not giving us two cores for part of the run" } else { "" },
    );
    let line_max = lines.iter().copied().fold(0.0, f64::max);
    println!(
        "cache-line round trip between the two threads (shared-memory variants follow it): median {:.0} ns, \
         max {:.0} ns\n",
        median(&mut lines),
        line_max,
    );
    println!(
        "| variant | workers | ops/s (median of {}) | ns/op per worker | vs arena 1 thread | vs own 1 worker |",
        o.repeat
    );
    println!("|---|---|---|---|---|---|");
    for (v, m) in chosen.iter().zip(&medians) {
        let workers = format!("{} {}", v.workers, if v.kind == "p" { "processes" } else { "threads" });
        let workers = if v.workers == 1 { "1 thread".to_owned() } else { workers };
        let own_1 = if v.workers == 1 { None } else { find(v.name, 1, "t").map(|one| m / one) };
        println!(
            "| {} | {} | {:.2} M | {} | {} | {} |",
            v.name,
            workers,
            m / 1e6,
            fmt_ns(v.workers, *m),
            fmt_ratio(arena_1t.map(|a| m / a)),
            fmt_ratio(own_1),
        );
    }
    Ok(())
}
