//! `shm-arena`: inspect, check, recover and stress arenas from the command line.
//!
//! ```text
//! shm-arena ls [PREFIX]                          list segments in /dev/shm whose name starts
//!                                                with PREFIX (default `pyshm-`)
//! shm-arena info <name>                          geometry, usage and owner slots
//! shm-arena check <name>                         check every invariant (exit 1 if broken)
//! shm-arena recover <name>                       free what dead owners held
//! shm-arena stress <name> [--seconds S] [--seed N] [--live K] [--max-size B]
//!                                                random allocs and frees (some giving pages
//!                                                back, some trims), every block filled with
//!                                                a pattern and verified (exit 3 on a pattern
//!                                                broken by someone else); prints `started`
//!                                                once its first block is allocated
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use shm_arena::{AllocError, Arena, Block};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ls") => ls(args.get(1).map_or(shm_arena::DEFAULT_NAME_PREFIX, String::as_str)),
        Some("info") => with_name(&args, info),
        Some("check") => with_name(&args, check),
        Some("recover") => with_name(&args, recover),
        Some("stress") => with_name(&args, |name| stress(name, &args[2..])),
        _ => {
            eprintln!("usage: shm-arena ls [PREFIX] | info NAME | check NAME | recover NAME | stress NAME [--seconds S] [--seed N] [--live K] [--max-size B]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shm-arena: {e}");
            ExitCode::from(1)
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn with_name(args: &[String], f: impl FnOnce(&str) -> Result<ExitCode>) -> Result<ExitCode> {
    match args.get(1) {
        Some(name) => f(name),
        None => Err("missing segment name".into()),
    }
}

fn ls(prefix: &str) -> Result<ExitCode> {
    for file in shm_arena::list_segments(prefix)? {
        println!("{}\t{}", file.name, file.len);
    }
    Ok(ExitCode::SUCCESS)
}

fn info(name: &str) -> Result<ExitCode> {
    let a = Arena::open(name)?;
    let s = a.stats();
    println!("name            {name}");
    println!("segment id      {}", a.segment_id().iter().map(|b| format!("{b:02x}")).collect::<String>());
    println!("creator         {:?}", a.creator());
    println!("capacity        {} bytes (segment {} bytes)", s.capacity, s.segment_size);
    println!("blocks          {} bytes minimum, {} bytes maximum", a.min_block(), a.max_block());
    println!("in use          {} bytes in {} blocks", s.in_use_bytes, s.blocks_in_use);
    println!("cached          {} bytes", s.cached_bytes);
    println!("free            {} bytes, largest block {}", s.free_bytes, s.largest_free_block);
    println!("live owners     {} (processes holding an owner slot)", s.live_owners);
    for o in a.owner_slots().iter().filter(|o| !matches!(o.state, shm_arena::SlotState::Free)) {
        println!("  owner {:4}    {:?}, {} bytes", o.tag, o.state, o.owned_bytes);
    }
    Ok(ExitCode::SUCCESS)
}

fn check(name: &str) -> Result<ExitCode> {
    let a = Arena::open(name)?;
    match a.check() {
        Ok(r) => {
            println!(
                "ok: {} blocks in use, {} cached, {} leaves free, {} stale marks",
                r.blocks_in_use,
                r.blocks_cached,
                r.leaves_free,
                r.stale_marks + r.stale_occupancy_marks
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{e}");
            for v in &e.violations {
                println!("  {v}");
            }
            for (tag, says, holds) in &e.owner_mismatches {
                println!("  owner {tag}: slot says {says} bytes, tree holds {holds}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn recover(name: &str) -> Result<ExitCode> {
    let a = Arena::open(name)?;
    let r = a.recover_dead_owners();
    println!(
        "recovered {} dead owners: {} blocks freed, {} frees finished, {} claims undone, {} bytes, {} marks repaired",
        r.owners, r.blocks_freed, r.frees_finished, r.claims_undone, r.bytes_freed, r.marks_repaired
    );
    Ok(ExitCode::SUCCESS)
}

/// xorshift64*: deterministic per seed, good enough to pick sizes and victims.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn flag(args: &[String], name: &str, default: u64) -> Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args.get(i + 1).ok_or(format!("{name} needs a value"))?.parse()?),
        None => Ok(default),
    }
}

fn fill(a: &Arena, b: Block, pattern: u64) -> Result<()> {
    let p = a.as_ptr(b)?.as_ptr().cast::<u64>();
    for i in 0..(b.size() / 8) as usize {
        // SAFETY: the block is ours until we free it, `size` bytes long and at least 16-byte
        // aligned; volatile, because another process maps the same bytes.
        unsafe { p.wrapping_add(i).write_volatile(pattern) };
    }
    Ok(())
}

fn intact(a: &Arena, b: Block, pattern: u64) -> Result<bool> {
    let p = a.as_ptr(b)?.as_ptr().cast::<u64>();
    // SAFETY: as in `fill`; nobody but us may write the block while we hold it.
    Ok((0..(b.size() / 8) as usize).all(|i| unsafe { p.wrapping_add(i).read_volatile() } == pattern))
}

fn stress(name: &str, args: &[String]) -> Result<ExitCode> {
    let seconds = flag(args, "--seconds", 2)?;
    let mut rng = Rng(flag(args, "--seed", u64::from(std::process::id()))? | 1);
    let live_max = flag(args, "--live", 32)? as usize;
    let max_size = flag(args, "--max-size", 16 * 1024)?;
    let a = Arena::open(name)?;
    let me = u64::from(std::process::id()) << 32;
    let mut live: Vec<(Block, u64)> = Vec::new();
    let (mut allocs, mut frees, mut full) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut seq = 0;
    while Instant::now() < deadline {
        for _ in 0..64 {
            if live.len() < live_max && (live.is_empty() || rng.next() % 2 == 0) {
                // The whole block is filled: ask for all of it, so that all its pages are
                // reserved (only the requested bytes are).
                let size = (16 + rng.next() % max_size).next_power_of_two();
                match a.alloc(size) {
                    Ok(b) => {
                        seq += 1;
                        fill(&a, b, me | seq)?;
                        live.push((b, me | seq));
                        allocs += 1;
                        if allocs == 1 {
                            // Registered and working: a test that kills us at a random moment
                            // waits for this line first.
                            println!("started");
                            std::io::Write::flush(&mut std::io::stdout())?;
                        }
                    }
                    Err(AllocError::Exhausted { .. } | AllocError::NoSpace { .. }) => full += 1,
                    Err(e) => return Err(e.into()),
                }
            } else if !live.is_empty() {
                let (b, pattern) = live.swap_remove((rng.next() % live.len() as u64) as usize);
                if !intact(&a, b, pattern)? {
                    eprintln!("block {b:?} of pattern {pattern:#x} was overwritten: two owners of one block");
                    return Ok(ExitCode::from(3));
                }
                // Some frees give the pages back, and now and then everything free is
                // punched: the kill tests cover those protocols too.
                if rng.next() % 4 == 0 {
                    a.free_and_release(b)?;
                } else {
                    a.free(b)?;
                }
                frees += 1;
            }
        }
        if rng.next() % 16 == 0 {
            a.release_free();
        }
    }
    for (b, pattern) in live {
        if !intact(&a, b, pattern)? {
            eprintln!("block {b:?} of pattern {pattern:#x} was overwritten: two owners of one block");
            return Ok(ExitCode::from(3));
        }
        a.free(b)?;
    }
    println!("{allocs} allocs, {frees} frees, {full} times full");
    Ok(ExitCode::SUCCESS)
}
