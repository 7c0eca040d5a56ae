//! `cargo xtask bench`: every benchmark the project has, one after the other.
//!
//! 1. The criterion benchmarks of shm-arena always run.
//! 2. The throughput harness (`crates/shm-arena/examples/bench_throughput.rs`, threads and
//!    processes hammering one segment), the Python core benchmarks (`benchmarks/run.py`) and the
//!    front-end benchmarks (the package `benchmarks/frontends/`, pyshm against the stdlib and its
//!    peers) run when their files exist, the Python ones once the Python package exists, and are
//!    skipped with a note otherwise.
//! 3. Only `bench` installs the peers that the front-end benchmarks compare with (npshmex,
//!    SharedArray, pasha, joblib), into `.venv` with pip, each one only when it cannot be
//!    imported. A peer that fails to install is noted in the summary and does not fail the run:
//!    the front-end benchmarks report it as missing. `cargo xtask test` installs none of them
//!    beyond its own tools.
//! 4. `benchmarks/frontends` writes its figures to `target/bench/frontends.json`, and
//!    `benchmarks/plot.py` draws them to `target/bench/frontends.svg`; the chart in
//!    `docs/img/frontends.svg` is replaced by hand, from a run on a quiet machine.
//! 5. `benchmarks/footprint.py` measures what pools hold in /dev/shm beside the stdlib's
//!    `SharedMemory` in the same run (issue 12's Targets), into `target/bench/footprint.json`.
//!
//! Benchmarks report; they do not judge. The figures worth keeping go to docs/performance.md,
//! with the machine and the date, because this project's machines are shared and noisy.

use std::path::Path;

use crate::python;
use crate::util::{Cmd, Result, Steps};

const THROUGHPUT_EXAMPLE: &str = "crates/shm-arena/examples/bench_throughput.rs";
const PYTHON_BENCHMARKS: &str = "benchmarks/run.py";
/// What pools cost /dev/shm against the stdlib (issue 12's Targets).
const FOOTPRINT: &str = "benchmarks/footprint.py";
const FOOTPRINT_JSON: &str = "target/bench/footprint.json";
/// A directory with a `__main__.py`: `python benchmarks/frontends` runs it.
const FRONTEND_BENCHMARKS: &str = "benchmarks/frontends";
const PLOT: &str = "benchmarks/plot.py";
const FRONTENDS_JSON: &str = "target/bench/frontends.json";
const FRONTENDS_SVG: &str = "target/bench/frontends.svg";

/// The peers the front-end benchmarks measure pyshm against: (pip package, module to import).
/// SharedArray comes before npshmex, which is built on it.
const PEERS: [(&str, &str); 4] =
    [("joblib", "joblib"), ("SharedArray", "SharedArray"), ("npshmex", "npshmex"), ("pasha", "pasha")];

/// Runs the benchmarks; see the module doc.
pub(crate) fn run(steps: &mut Steps) -> Result<()> {
    steps.cmd("bench shm-arena (criterion)", &Cmd::cargo().args(["bench", "-p", "shm-arena"]))?;

    if Path::new(THROUGHPUT_EXAMPLE).exists() {
        let example = ["run", "--release", "-p", "shm-arena", "--example", "bench_throughput"];
        steps.cmd("bench_throughput", &Cmd::cargo().args(example))?;
    } else {
        steps.skip("bench_throughput", format!("{THROUGHPUT_EXAMPLE} does not exist yet"));
    }

    if python::package_present() {
        python::prepare(steps)?;
        if Path::new(PYTHON_BENCHMARKS).exists() {
            steps.cmd("python benchmarks", &Cmd::new(python::PYTHON).arg(PYTHON_BENCHMARKS))?;
        } else {
            steps.skip("python benchmarks", format!("{PYTHON_BENCHMARKS} does not exist yet"));
        }
        steps.cmd("footprint", &Cmd::new(python::PYTHON).args([FOOTPRINT, "--json", FOOTPRINT_JSON]))?;
        if Path::new(FRONTEND_BENCHMARKS).exists() {
            install_peers(steps)?;
            let bench = Cmd::new(python::PYTHON).args([FRONTEND_BENCHMARKS, "--json", FRONTENDS_JSON]);
            steps.cmd("front-end benchmarks", &bench)?;
            let plot = Cmd::new(python::PYTHON).args([PLOT, FRONTENDS_JSON, "-o", FRONTENDS_SVG]);
            steps.cmd("front-end chart", &plot)?;
        } else {
            steps.skip("front-end benchmarks", format!("{FRONTEND_BENCHMARKS} does not exist yet"));
        }
    } else {
        steps.skip("python benchmarks", "python package not present yet");
    }

    println!("\n==> criterion's reports are in target/criterion/ (report/index.html);");
    if Path::new(FRONTENDS_JSON).exists() {
        println!("    the front-end figures are in {FRONTENDS_JSON}, drawn in {FRONTENDS_SVG}");
        println!("    (`{} {PLOT} {FRONTENDS_JSON}` replaces docs/img/frontends.svg);", python::PYTHON);
    }
    println!("    record the figures worth keeping, with machine and date, in docs/performance.md");
    Ok(())
}

/// Installs into `.venv` each peer that cannot be imported, one pip call per peer so that one
/// failure does not keep the others out. Failures are noted, not returned (module doc, point 3).
fn install_peers(steps: &mut Steps) -> Result<()> {
    let importable = |module: &str| Cmd::new(python::PYTHON).args(["-c", &format!("import {module}")]).probe();
    let missing: Vec<&str> =
        PEERS.iter().filter(|(_, module)| !importable(module)).map(|(package, _)| *package).collect();
    if missing.is_empty() {
        steps.skip("python: benchmark peers", "already installed");
        return Ok(());
    }
    let mut failed = Vec::new();
    steps.run("python: benchmark peers", || {
        for package in &missing {
            if let Err(e) = Cmd::new(".venv/bin/pip").args(["install", "-q", package]).run() {
                println!("==> {e}; tolerated: the front-end benchmarks report {package} as missing");
                failed.push(*package);
            }
        }
        Ok(())
    })?;
    if !failed.is_empty() {
        steps.note(format!("not installed (tolerated): {}", failed.join(", ")));
    }
    Ok(())
}
