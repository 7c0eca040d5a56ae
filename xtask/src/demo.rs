//! `cargo xtask demo`: run the project's main job once and show what it did.
//!
//! 1. Once the Python package exists (`crates/pyshm/pyproject.toml`), the demo is
//!    `python -m pyshm demo` in the project's virtual environment, built first.
//! 2. Until then it is shm-arena's `two_process` example: two processes share blocks through
//!    one segment.
//! 3. If neither exists, the command fails and says so rather than pretending.

use std::path::Path;

use crate::python;
use crate::util::{Cmd, Error, Result, Steps};

const ARENA_EXAMPLE: &str = "crates/shm-arena/examples/two_process.rs";

/// Runs the demo; see the module doc.
pub(crate) fn run(steps: &mut Steps) -> Result<()> {
    if python::package_present() {
        python::prepare(steps)?;
        steps.cmd("demo (python -m pyshm demo)", &Cmd::new(python::PYTHON).args(["-m", "pyshm", "demo"]))
    } else if Path::new(ARENA_EXAMPLE).exists() {
        let example = ["run", "--release", "-p", "shm-arena", "--example", "two_process"];
        steps.cmd("demo (shm-arena two_process)", &Cmd::cargo().args(example))
    } else {
        Err(Error::Check(format!(
            "there is no demo yet: neither {ARENA_EXAMPLE} nor the Python package ({}) exists",
            python::PYPROJECT
        )))
    }
}
