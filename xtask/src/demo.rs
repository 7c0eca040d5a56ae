//! `cargo xtask demo`: run the project's main job once and show what it did.
//!
//! 1. Once the Python package exists (`crates/pyshm/pyproject.toml`), the demo is
//!    `python -m pyshm demo` in the project's virtual environment, built first.
//! 2. Until then it is the Rust layers' examples: shm-arena's `two_process` (two processes
//!    share blocks through one segment, and a third is killed and recovered), then
//!    shm-ndarray's `producer_consumer` (arrays handed to another process by handle).
//! 3. If neither exists, the command fails and says so rather than pretending.

use std::path::Path;

use crate::python;
use crate::util::{Cmd, Error, Result, Steps};

const ARENA_EXAMPLE: &str = "crates/shm-arena/examples/two_process.rs";
const NDARRAY_EXAMPLE: &str = "crates/shm-ndarray/examples/producer_consumer.rs";

/// Runs the demo; see the module doc.
pub(crate) fn run(steps: &mut Steps) -> Result<()> {
    if python::package_present() {
        python::prepare(steps)?;
        steps.cmd("demo (python -m pyshm demo)", &Cmd::new(python::PYTHON).args(["-m", "pyshm", "demo"]))
    } else if Path::new(ARENA_EXAMPLE).exists() {
        let example = ["run", "--release", "-p", "shm-arena", "--example", "two_process"];
        steps.cmd("demo (shm-arena two_process)", &Cmd::cargo().args(example))?;
        if Path::new(NDARRAY_EXAMPLE).exists() {
            let example = ["run", "--release", "-p", "shm-ndarray", "--example", "producer_consumer"];
            steps.cmd("demo (shm-ndarray producer_consumer)", &Cmd::cargo().args(example))?;
        }
        Ok(())
    } else {
        Err(Error::Check(format!(
            "there is no demo yet: neither {ARENA_EXAMPLE} nor the Python package ({}) exists",
            python::PYPROJECT
        )))
    }
}
