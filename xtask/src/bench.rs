//! `cargo xtask bench`: every benchmark the project has, one after the other.
//!
//! 1. The criterion benchmarks of shm-arena always run.
//! 2. The throughput harness (`crates/shm-arena/examples/bench_throughput.rs`, threads and
//!    processes hammering one segment) and the Python benchmarks (`benchmarks/run.py`, once the
//!    Python package exists) run when their files exist and are skipped with a note otherwise.
//!
//! Benchmarks report; they do not judge. The figures worth keeping go to docs/performance.md,
//! with the machine and the date, because this project's machines are shared and noisy.

use std::path::Path;

use crate::python;
use crate::util::{Cmd, Result, Steps};

const THROUGHPUT_EXAMPLE: &str = "crates/shm-arena/examples/bench_throughput.rs";
const PYTHON_BENCHMARKS: &str = "benchmarks/run.py";

/// Runs the benchmarks; see the module doc.
pub(crate) fn run(steps: &mut Steps) -> Result<()> {
    steps.cmd("bench shm-arena (criterion)", &Cmd::cargo().args(["bench", "-p", "shm-arena"]))?;

    if Path::new(THROUGHPUT_EXAMPLE).exists() {
        let example = ["run", "--release", "-p", "shm-arena", "--example", "bench_throughput"];
        steps.cmd("bench_throughput", &Cmd::cargo().args(example))?;
    } else {
        steps.skip("bench_throughput", format!("{THROUGHPUT_EXAMPLE} does not exist yet"));
    }

    if !python::package_present() {
        steps.skip("python benchmarks", "python package not present yet");
    } else if !Path::new(PYTHON_BENCHMARKS).exists() {
        steps.skip("python benchmarks", format!("{PYTHON_BENCHMARKS} does not exist yet"));
    } else {
        python::prepare(steps)?;
        steps.cmd("python benchmarks", &Cmd::new(python::PYTHON).arg(PYTHON_BENCHMARKS))?;
    }

    println!("\n==> criterion's reports are in target/criterion/ (report/index.html);");
    println!("    record the figures worth keeping, with machine and date, in docs/performance.md");
    Ok(())
}
