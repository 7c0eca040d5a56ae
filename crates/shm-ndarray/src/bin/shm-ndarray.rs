//! `shm-ndarray`: list and clean pools, and act as a separate process in tests and demos.
//!
//! ```text
//! shm-ndarray ls                          pools in /dev/shm (name, bytes, used, live processes)
//! shm-ndarray clean [--all]               remove pools whose processes are all dead
//! shm-ndarray sum POOL HANDLE_HEX         attach an f64 array by handle, print its sum
//! shm-ndarray fill POOL HANDLE_HEX VALUE  attach an f64 array, set every element to VALUE
//! shm-ndarray hold POOL N                 make N arrays of 1 MiB, print a handle of each, sleep
//! ```

use std::process::ExitCode;

use shm_ndarray::{clean_dead_pools, list_pools, Handle, Pool, ShmArray};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["ls"] => ls(),
        ["clean"] => clean(false),
        ["clean", "--all"] => clean(true),
        ["sum", pool, handle] => sum(pool, handle),
        ["fill", pool, handle, value] => fill(pool, handle, value),
        ["hold", pool, n] => hold(pool, n),
        _ => {
            eprintln!("usage: shm-ndarray ls | clean [--all] | sum POOL HANDLE | fill POOL HANDLE VALUE | hold POOL N");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shm-ndarray: {e}");
            ExitCode::from(1)
        }
    }
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    if s.len() % 2 != 0 {
        return Err("odd hex length".into());
    }
    (0..s.len()).step_by(2).map(|i| Ok(u8::from_str_radix(&s[i..i + 2], 16)?)).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ls() -> Result<()> {
    for p in list_pools() {
        println!(
            "{}\t{}\t{}\t{}{}{}",
            p.name,
            p.bytes,
            p.used,
            p.live_processes,
            if p.persistent { "\tpersistent" } else { "" },
            if p.memfd_segments > 0 { format!("\t+{} memfd segments", p.memfd_segments) } else { String::new() }
        );
    }
    Ok(())
}

fn clean(all: bool) -> Result<()> {
    for name in clean_dead_pools(all) {
        println!("removed {name}");
    }
    Ok(())
}

fn sum(pool: &str, handle: &str) -> Result<()> {
    let pool = Pool::open(pool)?;
    let a = ShmArray::<f64>::attach(&pool, &Handle::from_bytes(&unhex(handle)?)?)?;
    println!("{}", a.as_slice().ok_or("borrowed")?.iter().sum::<f64>());
    Ok(())
}

fn fill(pool: &str, handle: &str, value: &str) -> Result<()> {
    let pool = Pool::open(pool)?;
    let mut a = ShmArray::<f64>::attach(&pool, &Handle::from_bytes(&unhex(handle)?)?)?;
    let v: f64 = value.parse()?;
    a.as_slice_mut().ok_or("borrowed")?.fill(v);
    Ok(())
}

fn hold(pool: &str, n: &str) -> Result<()> {
    let pool = Pool::open(pool)?;
    let arrays: Vec<_> = (0..n.parse::<usize>()?)
        .map(|_| ShmArray::<f64>::zeros(&pool, &[131_072]))
        .collect::<std::result::Result<_, _>>()?;
    for a in &arrays {
        println!("{}", hex(&a.handle()?.to_bytes()));
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
