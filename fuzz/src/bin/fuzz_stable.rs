//! `fuzz-stable`: the fuzz targets without cargo-fuzz, for when it cannot run at all.
//!
//! Invariants:
//! 1. A target's run is reproducible from its seed: inputs come from one xorshift generator,
//!    and the only feedback is the set of features (operation and outcome codes) that
//!    [`shm_arena_fuzz::Observer`] reports, not timing.
//! 2. A failing input is saved before anything else happens: a panic is caught and its input
//!    written to `fuzz/artifacts/<target>/crash-<hash>`, and an input that runs longer than
//!    the hang limit is written to `timeout-<hash>` by a watchdog thread, which then exits.
//!    These are the names cargo-fuzz uses, so `cargo xtask fuzz` and `cargo fuzz run <target>
//!    <file>` treat them alike.
//! 3. Every chosen target runs for its full time even after another failed; the exit status is
//!    1 if any target failed.
//!
//! Inputs start from the cargo-fuzz corpus (`fuzz/corpus/<target>/`, when it exists) and a
//! few random ones. Each new input mutates one from the pool (bit flips, byte sets, inserts,
//! deletes, copies, splices); an input that reaches a feature no earlier input reached joins
//! the pool. Without coverage instrumentation this finds less than libFuzzer does, but it
//! still runs every invariant check on millions of operation sequences.
//!
//! ```text
//! fuzz-stable [--time SECS] [--seed N] [TARGET]       fuzz TARGET (default: every target)
//! fuzz-stable TARGET FILE...                          run saved inputs once (replay a crash)
//! ```

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use std::{env, fs, thread};

/// A target: its name (as in `fuzz_targets/`) and its function.
type Target = (&'static str, fn(&[u8], &mut HashSet<u32>));

const TARGETS: [Target; 3] = [
    ("arena_ops", |data, seen| shm_arena_fuzz::arena_ops::run(data, seen)),
    ("open_header", |data, seen| shm_arena_fuzz::open_header::run(data, seen)),
    ("handle_attach", |data, seen| shm_arena_fuzz::handle_attach::run(data, seen)),
];
/// Longest input generated (libFuzzer's default `-max_len` for a new corpus).
const MAX_LEN: usize = 4096;
/// An input running longer than this is a hang (invariant 2).
const HANG_LIMIT: Duration = Duration::from_secs(30);
/// An input running longer than this is reported and saved as `slow-unit-<hash>`, as
/// libFuzzer does (not a failure).
const SLOW_LIMIT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    match parse(env::args().skip(1).collect()) {
        Ok(Command::Fuzz { seconds, seed, targets }) => {
            let mut failed = false;
            for target in targets {
                failed |= !fuzz(target, Duration::from_secs(seconds), seed);
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Ok(Command::Replay { target, files }) => {
            for file in files {
                let data = fs::read(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
                println!("==> {} {}", target.0, file.display());
                (target.1)(&data, &mut HashSet::new());
            }
            ExitCode::SUCCESS
        }
        Err(usage) => {
            eprintln!("{usage}");
            eprintln!("usage: fuzz-stable [--time SECS] [--seed N] [TARGET]  |  fuzz-stable TARGET FILE...");
            eprintln!("targets: {}", TARGETS.map(|t| t.0).join(", "));
            ExitCode::from(2)
        }
    }
}

enum Command {
    Fuzz { seconds: u64, seed: u64, targets: Vec<Target> },
    Replay { target: Target, files: Vec<PathBuf> },
}

fn parse(args: Vec<String>) -> Result<Command, String> {
    let mut seconds = 60;
    let mut seed = None;
    let mut rest = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = args.next().ok_or(format!("{name} needs a value"))?;
            v.parse().map_err(|_| format!("{name}: not a number: {v}"))
        };
        match arg.as_str() {
            "--time" => seconds = value("--time")?,
            "--seed" => seed = Some(value("--seed")?),
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}")),
            _ => rest.push(arg),
        }
    }
    let find = |name: &str| TARGETS.into_iter().find(|t| t.0 == name).ok_or(format!("no target {name}"));
    match rest.as_slice() {
        [] => Ok(Command::Fuzz { seconds, seed: seed.unwrap_or_else(clock_seed), targets: TARGETS.to_vec() }),
        [name] => Ok(Command::Fuzz { seconds, seed: seed.unwrap_or_else(clock_seed), targets: vec![find(name)?] }),
        [name, files @ ..] => {
            Ok(Command::Replay { target: find(name)?, files: files.iter().map(PathBuf::from).collect() })
        }
    }
}

fn clock_seed() -> u64 {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    now.as_nanos() as u64 | 1
}

/// What the watchdog watches: the input running now and since when.
struct Running {
    target: &'static str,
    input: Vec<u8>,
    since: Option<Instant>,
}

/// Fuzzes one target for `time`; false if it found a failing input.
fn fuzz((name, run): Target, time: Duration, seed: u64) -> bool {
    println!("==> {name}: fuzzing for {} s without coverage instrumentation, seed {seed}", time.as_secs());
    let mut rng = XorShift(seed | 1);
    let mut pool = initial_pool(name, &mut rng);
    let mut features = HashSet::new();
    let running = Arc::new(Mutex::new(Running { target: name, input: Vec::new(), since: None }));
    let done = Arc::new(Mutex::new(false));
    let watchdog = {
        let (running, done) = (Arc::clone(&running), Arc::clone(&done));
        thread::spawn(move || watch(&running, &done))
    };
    let (start, mut runs, mut failures, mut last_report) = (Instant::now(), 0u64, 0u64, Instant::now());
    let mut queue = pool.clone();
    while start.elapsed() < time {
        let input = queue.pop().unwrap_or_else(|| mutate(&pool, &mut rng));
        {
            let mut r = running.lock().unwrap_or_else(|p| p.into_inner());
            r.input.clone_from(&input);
            r.since = Some(Instant::now());
        }
        let mut seen = HashSet::new();
        let began = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| run(&input, &mut seen)));
        running.lock().unwrap_or_else(|p| p.into_inner()).since = None;
        runs += 1;
        if began.elapsed() > SLOW_LIMIT {
            let path = save(name, "slow-unit", &input);
            println!("    slow input: {:.1} s, saved as {}", began.elapsed().as_secs_f64(), path.display());
        }
        if result.is_err() {
            failures += 1;
            let path = save(name, "crash", &input);
            eprintln!("==> {name}: failing input saved as {}", path.display());
            continue;
        }
        let new = seen.difference(&features).count();
        if new > 0 {
            features.extend(seen);
            pool.push(input);
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let rate = runs as f64 / start.elapsed().as_secs_f64();
            println!("#{runs} {rate:.0} runs/s, {} features, pool {}", features.len(), pool.len());
        }
    }
    *done.lock().unwrap_or_else(|p| p.into_inner()) = true;
    let _ = watchdog.join();
    let secs = start.elapsed().as_secs();
    println!("==> {name}: {} features, pool {}, {failures} failing inputs", features.len(), pool.len());
    // The line libFuzzer ends with, which `cargo xtask fuzz` reads.
    println!("Done {runs} runs in {secs} second(s)");
    failures == 0
}

/// The watchdog of invariant 2: saves and exits when one input runs past the hang limit.
fn watch(running: &Mutex<Running>, done: &Mutex<bool>) {
    while !*done.lock().unwrap_or_else(|p| p.into_inner()) {
        thread::sleep(Duration::from_millis(200));
        let r = running.lock().unwrap_or_else(|p| p.into_inner());
        if r.since.is_some_and(|s| s.elapsed() > HANG_LIMIT) {
            let path = save(r.target, "timeout", &r.input);
            eprintln!("==> {}: an input ran over {} s; saved as {}", r.target, HANG_LIMIT.as_secs(), path.display());
            std::process::exit(1);
        }
    }
}

/// The cargo-fuzz corpus of `name` if there is one, plus a few random inputs.
fn initial_pool(name: &str, rng: &mut XorShift) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(name);
    let mut pool: Vec<Vec<u8>> = fs::read_dir(&dir)
        .map(|entries| entries.flatten().filter_map(|e| fs::read(e.path()).ok()).collect())
        .unwrap_or_default();
    if !pool.is_empty() {
        println!("    {} inputs from {}", pool.len(), dir.display());
    }
    for len in [0, 8, 64, 512, MAX_LEN] {
        pool.push((0..len).map(|_| rng.byte()).collect());
    }
    pool
}

/// A new input: one from the pool with one to eight mutations, or a fresh random one.
fn mutate(pool: &[Vec<u8>], rng: &mut XorShift) -> Vec<u8> {
    if rng.below(20) == 0 {
        let len = rng.below(MAX_LEN as u64) as usize;
        return (0..len).map(|_| rng.byte()).collect();
    }
    // Recent entries reached something new last: favour them.
    let recent = pool.len().min(32);
    let i = if rng.below(2) == 0 { pool.len() - 1 - rng.below(recent as u64) as usize } else { rng.index(pool.len()) };
    let mut data = pool[i].clone();
    for _ in 0..=rng.below(8) {
        let at = rng.index(data.len() + 1);
        match rng.below(7) {
            0 if at < data.len() => data[at] ^= 1 << rng.below(8),
            1 if at < data.len() => data[at] = rng.byte(),
            2 if at < data.len() => data[at] = [0, 1, 0x7F, 0x80, 0xFF][rng.index(5)],
            3 => {
                let n = 1 + rng.index(16);
                data.splice(at..at, (0..n).map(|_| rng.byte()));
            }
            4 if at < data.len() => {
                let end = (at + 1 + rng.index(16)).min(data.len());
                data.drain(at..end);
            }
            5 if at < data.len() => {
                let end = (at + 1 + rng.index(32)).min(data.len());
                let chunk = data[at..end].to_vec();
                let to = rng.index(data.len() + 1);
                data.splice(to..to, chunk);
            }
            _ => {
                let other = &pool[rng.index(pool.len())];
                let from = rng.index(other.len() + 1);
                let end = (from + rng.index(64)).min(other.len());
                data.splice(at..at, other[from..end].iter().copied());
            }
        }
    }
    data.truncate(MAX_LEN);
    data
}

/// Writes a failing input to `fuzz/artifacts/<target>/<kind>-<hash>`.
fn save(target: &str, kind: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts").join(target);
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    let path = dir.join(format!("{kind}-{hash:016x}"));
    if let Err(e) = fs::create_dir_all(&dir).and_then(|()| fs::write(&path, input)) {
        eprintln!("cannot save {}: {e}", path.display());
    }
    path
}

/// Marsaglia's xorshift64: small, seedable, good enough to pick mutations.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An index into a collection of `len` elements, 0 when it is empty.
    fn index(&mut self, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            self.below(len as u64) as usize
        }
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 32) as u8
    }
}
