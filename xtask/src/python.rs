//! The Python virtual environments that `test`, `wheel`, `bench` and `demo` use.
//!
//! 1. The main environment is `.venv` at the workspace root (ignored by git), made by the
//!    system's `python3`; nothing is installed outside the project's environments.
//! 2. The tools (maturin, ziglang and auditwheel to build and check wheels, numpy, pytest,
//!    hypothesis, joblib for its vendored loky and the `pyshm` joblib backend, ray, dask and
//!    distributed for the scale-out tests, tqdm for progress bars, anyio for the asyncio
//!    front-end's tests, mypy for the stubs' and types' tests, cloudpickle, and nbclient with
//!    ipykernel to run the notebook tests in a real Jupyter kernel) are installed only when one of
//!    them cannot be imported, so a warm run does not touch the network.
//! 3. `bench` and `demo` rebuild pyshm into `.venv` with `maturin develop --release`; `test`
//!    installs the wheel that `cargo xtask wheel` builds instead, so the tests run against the
//!    file users install, and one build serves every interpreter.
//! 4. `test` also runs the tests on the oldest and the newest CPython 3.9+ found on the machine
//!    ([`find_interpreters`]), each in its own `.venv-pyX.Y`, when they differ from `.venv`'s.

use std::collections::BTreeMap;
use std::env;
use std::path::{Path, PathBuf};

use crate::util::{list_dir, workspace_root, Cmd, Error, Result, Steps};

/// The file whose presence means the Python package exists (it arrives with a later issue).
pub(crate) const PYPROJECT: &str = "crates/pyshm/pyproject.toml";

/// The virtual environment's interpreter and scripts, relative to the workspace root.
pub(crate) const PYTHON: &str = ".venv/bin/python";
pub(crate) const VENV_BIN: &str = ".venv/bin";

/// The interpreter that makes new environments.
pub(crate) const BASE_PYTHON: &str = "python3";

/// What the tests import besides pyshm (numpy arrives as pyshm's dependency too).
const TEST_TOOLS: [&str; 13] = [
    "numpy",
    "pytest",
    "hypothesis",
    "joblib",
    "tqdm",
    "anyio",
    "mypy",
    "cloudpickle",
    "nbclient",
    "ipykernel",
    "ray",
    "dask",
    "distributed",
];

/// What builds and checks the package, in `.venv` only.
const BUILD_TOOLS: [&str; 3] = ["maturin", "ziglang", "auditwheel"];

/// The oldest Python the package supports (`requires-python` in pyproject.toml).
const OLDEST: (u32, u32) = (3, 9);

/// The newest `python3.N` looked for on PATH.
const NEWEST_MINOR: u32 = 14;

/// Whether the Python package exists yet.
pub(crate) fn package_present() -> bool {
    Path::new(PYPROJECT).exists()
}

/// Creates `.venv` if needed and installs the tools if needed.
pub(crate) fn prepare_tools(steps: &mut Steps) -> Result<()> {
    if Path::new(PYTHON).exists() {
        steps.skip("python: venv", ".venv exists");
    } else {
        let venv = Cmd::new(BASE_PYTHON).args(["-m", "venv", ".venv"]);
        steps.run("python: venv", || {
            venv.run().map_err(|e| {
                Error::Check(format!("{e}\n(on Debian or Ubuntu, `python3 -m venv` needs the python3-venv package)"))
            })
        })?;
    }

    let tools: Vec<&str> = BUILD_TOOLS.iter().chain(&TEST_TOOLS).copied().collect();
    let import = Cmd::new(PYTHON).args(["-c", &format!("import {}", tools.join(", "))]);
    if import.probe() {
        steps.skip("python: pip install", "tools already installed");
        Ok(())
    } else {
        let pip = Cmd::new(PYTHON).args(["-m", "pip", "install", "-q"]).args(tools);
        steps.cmd("python: pip install", &pip)
    }
}

/// [`prepare_tools`], then builds pyshm into `.venv` from this checkout (`maturin develop`).
pub(crate) fn prepare(steps: &mut Steps) -> Result<()> {
    prepare_tools(steps)?;
    let virtual_env = workspace_root().join(".venv");
    let develop = Cmd::new(format!("{VENV_BIN}/maturin"))
        .args(["develop", "--release", "-m", "crates/pyshm/Cargo.toml"])
        .env("VIRTUAL_ENV", virtual_env.display().to_string());
    steps.cmd("python: maturin develop", &develop)
}

/// Installs `wheel` and the test tools into the environment of `python`, replacing any pyshm
/// there (also one `maturin develop` installed) even when the version number is the same.
pub(crate) fn install_wheel(steps: &mut Steps, label: &str, python: &str, wheel: &Path) -> Result<()> {
    let wheel = wheel.display().to_string();
    steps.run(format!("python: install wheel{label}"), || {
        // First whatever pyshm and the tests need (a no-op once there), then pyshm itself.
        Cmd::new(python).args(["-m", "pip", "install", "-q", &format!("{wheel}[test]")]).args(TEST_TOOLS).run()?;
        Cmd::new(python).args(["-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", &wheel]).run()
    })
}

/// A CPython found on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interpreter {
    /// Major and minor version.
    pub(crate) version: (u32, u32),
    /// The program to run.
    pub(crate) program: String,
}

impl Interpreter {
    /// `3.9`.
    pub(crate) fn version_text(&self) -> String {
        format!("{}.{}", self.version.0, self.version.1)
    }

    /// Its environment's folder: `.venv-py3.9`.
    pub(crate) fn venv(&self) -> String {
        format!(".venv-py{}", self.version_text())
    }
}

/// The version of the interpreter `program`, if it runs.
fn probe_version(program: &str) -> Option<(u32, u32)> {
    let out = Cmd::new(program).args(["-c", "import sys; print(*sys.version_info[:2])"]).probe_output()?;
    let mut words = out.split_whitespace().map(str::parse::<u32>);
    match (words.next(), words.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Some((major, minor)),
        _ => None,
    }
}

/// Every CPython 3.9+ on the machine, one per minor version, oldest first: `python3.N` on PATH
/// (N from 9 to [`NEWEST_MINOR`]) and pyenv's `$PYENV_ROOT/versions/*/bin/python3` (default
/// `~/.pyenv`). A pyenv shim for a version that is not selected fails to run and is left out.
pub(crate) fn find_interpreters() -> Vec<Interpreter> {
    let mut candidates: Vec<String> = (OLDEST.1..=NEWEST_MINOR).map(|minor| format!("python3.{minor}")).collect();
    let pyenv = env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".pyenv")));
    if let Some(pyenv) = pyenv {
        let versions = list_dir(&pyenv.join("versions"), |_| true).unwrap_or_default();
        candidates.extend(
            versions.iter().map(|v| v.join("bin/python3")).filter(|p| p.exists()).map(|p| p.display().to_string()),
        );
    }
    let mut found = BTreeMap::new();
    for program in candidates {
        if let Some(version) = probe_version(&program).filter(|v| *v >= OLDEST) {
            found.entry(version).or_insert(Interpreter { version, program });
        }
    }
    found.into_values().collect()
}

/// The interpreters to test on besides `.venv`'s (version `main`): the oldest and the newest of
/// `found`, unless they are `main`'s version; and a sentence saying what was found.
pub(crate) fn extra_interpreters(found: &[Interpreter], main: (u32, u32)) -> (Vec<Interpreter>, String) {
    let list = found.iter().map(Interpreter::version_text).collect::<Vec<_>>().join(", ");
    let ends = match (found.first(), found.last()) {
        (Some(oldest), Some(newest)) if oldest != newest => vec![oldest.clone(), newest.clone()],
        (Some(only), _) => vec![only.clone()],
        _ => Vec::new(),
    };
    let extra: Vec<Interpreter> = ends.into_iter().filter(|i| i.version != main).collect();
    let main_text = format!("{}.{}", main.0, main.1);
    let note = match (found.len(), extra.is_empty()) {
        (0 | 1, _) => format!("only one CPython 3.9+ on this machine ({main_text}): the tests run on it only"),
        (_, true) => format!("CPythons found: {list}; .venv's {main_text} is both ends"),
        (_, false) => {
            let extra_list = extra.iter().map(Interpreter::version_text).collect::<Vec<_>>().join(" and ");
            format!("CPythons found: {list}; testing on {extra_list} besides .venv's {main_text}")
        }
    };
    (extra, note)
}

/// `.venv`'s interpreter version.
pub(crate) fn venv_version() -> Result<(u32, u32)> {
    probe_version(PYTHON).ok_or_else(|| Error::Check(format!("`{PYTHON}` does not run")))
}

/// Creates the environment of `interpreter` (`.venv-pyX.Y`) unless one of that version is there.
pub(crate) fn prepare_interpreter_venv(steps: &mut Steps, interpreter: &Interpreter) -> Result<String> {
    let venv = interpreter.venv();
    let python = format!("{venv}/bin/python");
    if probe_version(&python) == Some(interpreter.version) {
        steps.skip(format!("python: {venv}"), format!("{venv} exists"));
    } else {
        let create = Cmd::new(&interpreter.program).args(["-m", "venv", "--clear", &venv]);
        steps.cmd(format!("python: {venv}"), &create)?;
    }
    Ok(python)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interpreter(minor: u32) -> Interpreter {
        Interpreter { version: (3, minor), program: format!("python3.{minor}") }
    }

    #[test]
    fn tests_on_both_ends_besides_the_main_environment() {
        let found: Vec<Interpreter> = [9, 10, 11, 12, 13].map(interpreter).into();
        let (extra, note) = extra_interpreters(&found, (3, 11));
        assert_eq!(extra, [interpreter(9), interpreter(13)]);
        assert!(note.contains("3.9 and 3.13"), "{note}");

        let (extra, _) = extra_interpreters(&found, (3, 13));
        assert_eq!(extra, [interpreter(9)]);

        let (extra, note) = extra_interpreters(&[interpreter(11)], (3, 11));
        assert!(extra.is_empty());
        assert!(note.contains("only one"), "{note}");
        assert_eq!(interpreter(9).venv(), ".venv-py3.9");
    }

    #[test]
    fn finds_this_machines_interpreters_in_order() {
        let found = find_interpreters();
        assert!(found.windows(2).all(|w| w[0].version < w[1].version));
        assert!(found.iter().all(|i| i.version >= OLDEST));
    }
}
