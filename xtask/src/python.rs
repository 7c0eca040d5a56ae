//! The Python virtual environment that `test`, `bench` and `demo` share.
//!
//! 1. The environment is `.venv` at the workspace root (ignored by git), made by the system's
//!    `python3`; nothing is installed outside it.
//! 2. The tools (maturin, numpy, pytest, hypothesis, joblib for its vendored loky and the
//!    `pyshm` joblib backend, ray, dask, distributed and cloudpickle for the scale-out tests, tqdm for progress
//!    bars and anyio for the asyncio front-end's tests) are installed only when one of them cannot
//!    be imported, so a warm run does not touch the network.
//! 3. The pyshm package is rebuilt into it with `maturin develop --release` on every run, so the
//!    Python side always runs against this checkout's Rust code.

use std::path::Path;

use crate::util::{workspace_root, Cmd, Error, Result, Steps};

/// The file whose presence means the Python package exists (it arrives with a later issue).
pub(crate) const PYPROJECT: &str = "crates/pyshm/pyproject.toml";

/// The virtual environment's interpreter, relative to the workspace root.
pub(crate) const PYTHON: &str = ".venv/bin/python";

/// Whether the Python package exists yet.
pub(crate) fn package_present() -> bool {
    Path::new(PYPROJECT).exists()
}

/// Creates `.venv` if needed, installs the tools if needed, and builds pyshm into it.
pub(crate) fn prepare(steps: &mut Steps) -> Result<()> {
    if Path::new(PYTHON).exists() {
        steps.skip("python: venv", ".venv exists");
    } else {
        let venv = Cmd::new("python3").args(["-m", "venv", ".venv"]);
        steps.run("python: venv", || {
            venv.run().map_err(|e| {
                Error::Check(format!("{e}\n(on Debian or Ubuntu, `python3 -m venv` needs the python3-venv package)"))
            })
        })?;
    }

    let tools = [
        "maturin",
        "numpy",
        "pytest",
        "hypothesis",
        "joblib",
        "tqdm",
        "anyio",
        "ray",
        "cloudpickle",
        "dask",
        "distributed",
    ];
    let import = Cmd::new(PYTHON).args(["-c", &format!("import {}", tools.join(", "))]);
    if import.probe() {
        steps.skip("python: pip install", "tools already installed");
    } else {
        let pip = Cmd::new(".venv/bin/pip").args(["install", "-q"]).args(tools);
        steps.cmd("python: pip install", &pip)?;
    }

    let virtual_env = workspace_root().join(".venv");
    let develop = Cmd::new(".venv/bin/maturin")
        .args(["develop", "--release", "-m", "crates/pyshm/Cargo.toml"])
        .env("VIRTUAL_ENV", virtual_env.display().to_string());
    steps.cmd("python: maturin develop", &develop)
}
