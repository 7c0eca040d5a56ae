//! A producer process fills arrays in a pool; a consumer process, started separately, receives
//! their handles over a pipe and sums them in place. Nothing but handles crosses the pipe.
//!
//! Run with `cargo run --release -p shm-ndarray --example producer_consumer`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use shm_ndarray::{Handle, Pool, PoolOptions, ShmArray};

const ARRAYS: usize = 200;
const ROWS: u64 = 256;
const COLS: u64 = 512; // 1 MiB of f64 per array

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--consumer") => consumer(&args[2]),
        _ => producer(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn producer() -> Result<()> {
    let pool = Pool::create(&PoolOptions::new().segment_capacity(64 << 20))?;
    println!("producer {}: pool {}", std::process::id(), pool.name());
    let mut consumer = Command::new(std::env::current_exe()?)
        .args(["--consumer", pool.name()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_consumer = consumer.stdin.take().unwrap();
    let mut from_consumer = BufReader::new(consumer.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let mut handle_bytes = 0;
    let mut mismatches = 0;
    for i in 0..ARRAYS {
        let mut a = ShmArray::<f64>::zeros(&pool, &[ROWS, COLS])?;
        let expected: f64 = {
            let mut s = a.as_slice_mut().ok_or("borrowed")?;
            for (j, v) in s.iter_mut().enumerate() {
                *v = ((i + j) % 7) as f64;
            }
            s.iter().sum()
        };
        let h = a.handle()?.to_bytes();
        handle_bytes = h.len();
        writeln!(to_consumer, "{}", hex(&h))?;
        drop(a); // the handle in flight keeps it alive until the consumer attaches
        let got: f64 = from_consumer.next().ok_or("consumer gone")??.trim().parse()?;
        if got != expected {
            mismatches += 1;
        }
    }
    drop(to_consumer);
    consumer.wait()?;
    let elapsed = started.elapsed();
    let s = pool.stats();
    println!(
        "consumer {}: summed {ARRAYS} arrays of {ROWS}x{COLS} f64 (1 MiB each) in place; {mismatches} mismatches",
        consumer.id()
    );
    println!(
        "          {handle_bytes} bytes per handle; {:.1} µs per array (fill 1 MiB, send, attach, sum, free)",
        elapsed.as_secs_f64() * 1e6 / ARRAYS as f64
    );
    println!("producer: pool after: {} bytes in use, {} arrays, {} segments", s.used, s.arrays, s.segments);
    if mismatches != 0 || s.used != 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn consumer(pool: &str) -> Result<()> {
    let pool = Pool::open(pool)?;
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let bytes: Vec<u8> = {
            let l = line?;
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16))
                .collect::<std::result::Result<_, _>>()?
        };
        let a = ShmArray::<f64>::attach(&pool, &Handle::from_bytes(&bytes)?)?;
        let sum: f64 = a.as_slice().ok_or("borrowed")?.iter().sum();
        writeln!(out, "{sum}")?;
        out.flush()?;
    }
    Ok(())
}
