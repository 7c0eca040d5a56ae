//! Encode + attach of handles in another process: the child opens the pool once, then times
//! decoding and attaching each handle it receives (and dropping the array again).
//!
//! Run with `cargo run --release -p shm-ndarray --example attach_latency`; run it under
//! `strace -f -c` to count syscalls during the attach loop (the child prints when it starts
//! and ends its loop).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use shm_ndarray::{DType, Handle, Pool, PoolOptions};

fn n() -> usize {
    std::env::var("ATTACH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let pool = Pool::open(&args[2])?;
        let lines: Vec<Vec<u8>> = std::io::stdin()
            .lock()
            .lines()
            .map(|l| {
                let l = l.unwrap();
                (0..l.len()).step_by(2).map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap()).collect()
            })
            .collect();
        eprintln!("child: attach loop starts");
        let t = Instant::now();
        let mut total = 0u64;
        for bytes in &lines {
            let a = pool.attach(&Handle::from_bytes(bytes)?)?;
            total += a.shape()[0];
        }
        let per = t.elapsed().as_secs_f64() * 1e6 / lines.len() as f64;
        eprintln!("child: attach loop ends");
        println!("{per:.3} {total}");
        return Ok(());
    }
    let pool = Pool::create(&PoolOptions::new().segment_capacity(64 << 20).token_slots(n() as u32 + 16))?;
    let a = pool.empty(&DType::of::<f64>(), &[1024], false)?;
    let t = Instant::now();
    let handles: Vec<Vec<u8>> = (0..n()).map(|_| a.handle().map(|h| h.to_bytes())).collect::<Result<_, _>>()?;
    let make = t.elapsed().as_secs_f64() * 1e6 / n() as f64;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--child", pool.name()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    {
        let mut w = child.stdin.take().unwrap();
        for h in &handles {
            writeln!(w, "{}", h.iter().map(|b| format!("{b:02x}")).collect::<String>())?;
        }
    }
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    child.wait()?;
    let per: f64 = line.split_whitespace().next().ok_or("no answer")?.parse()?;
    println!("{} handles of a 1024 x f64 array ({} bytes each)", n(), handles[0].len());
    println!("make + encode in the sender: {make:.3} µs per handle");
    println!("decode + attach + drop in another process: {per:.3} µs per handle");
    Ok(())
}
