//! Two processes share blocks through one arena: the producer fills blocks with numbers and
//! sends 8-byte block references over a pipe; the consumer, a separately started process that
//! opens the arena by name, sums each block in place and frees it. Then a third process
//! allocates and is killed with SIGKILL, and the producer gets every byte back.
//!
//! Run with `cargo run --release -p shm-arena --example two_process` (or `cargo xtask demo`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shm_arena::{Arena, ArenaOptions, Block};

const BLOCKS: usize = 2_000;
const VALUES: usize = 512; // 4 KiB of f64 per block

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--consumer") => consumer(&args[2]),
        Some("--crasher") => crasher(&args[2]),
        _ => producer(),
    }
}

#[allow(clippy::mut_from_ref)] // the arena hands out shared memory; exclusivity is by protocol (see SAFETY)
fn values(block: Block, arena: &Arena) -> Result<&mut [f64]> {
    let p = arena.as_ptr(block)?.as_ptr().cast::<f64>();
    // SAFETY: the block is VALUES * 8 bytes, 64-byte aligned, and only one process uses it at
    // a time in this program (the producer until it sends the reference, then the consumer).
    Ok(unsafe { std::slice::from_raw_parts_mut(p, VALUES) })
}

fn producer() -> Result<()> {
    let arena = ArenaOptions::new(64 << 20).create()?;
    let name = arena.name().unwrap().to_owned();
    let _unlink = Unlink(&arena);
    println!(
        "producer {}: created arena {name}: {} MiB usable, {} KiB of metadata",
        std::process::id(),
        arena.capacity() >> 20,
        (arena.segment_size() - arena.capacity()) >> 10
    );

    let exe = std::env::current_exe()?;
    let mut consumer =
        Command::new(&exe).args(["--consumer", &name]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    let mut to_consumer = consumer.stdin.take().unwrap();
    let started = Instant::now();
    let mut expected = 0.0;
    for i in 0..BLOCKS {
        let block = arena.alloc((VALUES * 8) as u64)?;
        for (j, v) in values(block, &arena)?.iter_mut().enumerate() {
            *v = (i * VALUES + j) as f64;
            expected += *v;
        }
        arena.disown(block)?; // the consumer frees it, whatever happens to us
        writeln!(to_consumer, "{}", block.to_bits())?;
    }
    drop(to_consumer);
    let mut line = String::new();
    BufReader::new(consumer.stdout.take().unwrap()).read_line(&mut line)?;
    consumer.wait()?;
    let elapsed = started.elapsed();
    let total: f64 = line.trim().parse()?;
    println!(
        "consumer {}: summed {BLOCKS} blocks of {VALUES} f64 in place: {total} (expected {expected}) {}",
        consumer.id(),
        if total == expected { "ok" } else { "MISMATCH" }
    );
    println!(
        "          {:.1} µs per block handed over (fill + send 8 bytes + sum + free)",
        elapsed.as_secs_f64() * 1e6 / BLOCKS as f64
    );
    let s = arena.stats();
    println!(
        "producer: after the consumer freed them: {} bytes in use, largest free block {} MiB",
        s.in_use_bytes,
        s.largest_free_block >> 20
    );

    let mut crasher = Command::new(&exe).args(["--crasher", &name]).stdout(Stdio::piped()).spawn()?;
    let mut line = String::new();
    BufReader::new(crasher.stdout.take().unwrap()).read_line(&mut line)?;
    std::thread::sleep(Duration::from_millis(20));
    crasher.kill()?; // SIGKILL, in the middle of its allocation loop
    crasher.wait()?;
    let before = arena.stats();
    let r = arena.recover_dead_owners();
    let after = arena.stats();
    println!(
        "crasher {}: {} and was killed with SIGKILL; {} bytes were held",
        crasher.id(),
        line.trim(),
        before.in_use_bytes + before.cached_bytes
    );
    println!("producer: recovered {} dead owner(s): {} blocks, {} frees finished, {} claims undone, {} bytes back; now {} bytes in use", r.owners, r.blocks_freed, r.frees_finished, r.claims_undone, r.bytes_freed, after.in_use_bytes + after.cached_bytes);
    match arena.check() {
        Ok(_) => println!("producer: check() passes: the tree is consistent"),
        Err(e) => {
            println!("producer: check() FAILED: {e}");
            std::process::exit(1);
        }
    }
    if total != expected || r.owners != 1 || after.in_use_bytes + after.cached_bytes != 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn consumer(name: &str) -> Result<()> {
    let arena = Arena::open(name)?;
    let mut total = 0.0;
    for line in std::io::stdin().lock().lines() {
        let block = Block::from_bits(line?.trim().parse()?);
        total += values(block, &arena)?.iter().sum::<f64>();
        arena.free(block)?;
    }
    println!("{total}");
    Ok(())
}

fn crasher(name: &str) -> Result<()> {
    let arena = Arena::open(name)?;
    let mut held = Vec::new();
    for i in 0..1000u64 {
        held.push(arena.alloc(1 + (i * 7919) % 20_000)?);
    }
    println!("allocated {} blocks", held.len());
    loop {
        // Churn until killed: the kill lands in the middle of an allocation or a free.
        let b = held.swap_remove(0);
        arena.free(b)?;
        held.push(arena.alloc(1 + (b.offset() % 20_000))?);
    }
}

struct Unlink<'a>(&'a Arena);
impl Drop for Unlink<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlink();
    }
}
