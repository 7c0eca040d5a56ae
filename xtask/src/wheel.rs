//! `cargo xtask wheel`: the files a user installs, built and checked the way a user gets them.
//!
//! 1. One abi3 wheel (`cp39-abi3`: one file for every CPython from 3.9 on) and one sdist go to
//!    [`WHEEL_DIR`], after the previous pyshm files there are removed.
//! 2. The wheel is linked against glibc 2.17 with `maturin build --zig` (zig from the `ziglang`
//!    package on PyPI, installed into `.venv` like maturin), so its platform tag is
//!    `manylinux_2_17` (manylinux2014) whatever glibc the building machine has; docs/guide.md's
//!    Install section says why this tag. `auditwheel show` must find the wheel consistent with
//!    exactly that tag, which it is not when the wheel needs newer glibc symbols or links any
//!    library outside the manylinux policy; otherwise the command fails.
//! 3. The native module unwinds with the system's unwinder, `libgcc_s.so.1` (part of every
//!    manylinux policy), not the static one zig links by default: glibc drives a forced unwind
//!    (`pthread_exit`, which CPython up to 3.13 uses on daemon threads at exit) through
//!    `libgcc_s`, and a module with an unwinder of its own then crashes in it (measured: 8 exits
//!    of 8). The link argument goes to the module's rustc only (after `--`), never to build
//!    scripts, and the check below refuses a wheel whose module does not need `libgcc_s.so.1`.
//! 4. The wheel is installed into a fresh virtual environment outside `.venv`, by a pip that
//!    cannot build anything (`--only-binary :all:`) and runs without Rust (no PATH entry holding
//!    cargo, rustc or rustup; no `CARGO*` or `RUSTUP*` variables), and a smoke test runs there:
//!    import, a pooled array sent to a spawn child, `python -m pyshm --version`.
//!
//! `cargo xtask test` runs the same build, check and smoke test as its "python: wheel" steps and
//! installs the wheel into `.venv` and the other interpreters' environments for the pytest runs.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use crate::python;
use crate::util::{io_error, list_dir, workspace_root, Cmd, Error, Result, Steps};

/// Where the wheel and the sdist go (under cargo's target directory, so ignored by git).
pub(crate) const WHEEL_DIR: &str = "target/wheels";

/// maturin's name for the platform policy the wheel is built for.
const COMPATIBILITY: &str = "manylinux2014";

/// The oldest glibc the wheel runs on, as PEP 600 spells it in the tag (`manylinux_2_17_<arch>`).
const GLIBC: &str = "2_17";

/// The abi3 tag: one wheel for CPython 3.9 and every later version.
const ABI_TAG: &str = "cp39-abi3";

/// The scratch folder of the smoke test: its virtual environment and script.
const SMOKE_DIR: &str = "target/wheel-smoke";

/// What the smoke test runs in the fresh environment: the installed pyshm (not this checkout),
/// a pooled array written by a spawn child that received it through multiprocessing, and the
/// command line's `--version`.
const SMOKE_SCRIPT: &str = r#"import multiprocessing as mp
import os
import subprocess
import sys

import numpy as np
import pyshm


def fill(a):
    a[:] = 7
    return int(a.sum())


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(pyshm.__file__))
    assert here.startswith(sys.prefix), f"pyshm imported from {here}, not from {sys.prefix}"
    a = pyshm.zeros(1000, dtype=np.int64)
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.apply(fill, (a,)) == 7000
    assert int(a.sum()) == 7000, "the child's writes are not visible: the array was copied"
    del a
    out = subprocess.run([sys.executable, "-m", "pyshm", "--version"], check=True,
                         capture_output=True, text=True, timeout=60).stdout.strip()
    assert out.endswith(pyshm.__version__), out
    print(f"smoke test passed: pyshm {pyshm.__version__} on Python {sys.version.split()[0]} ({out})")
"#;

/// The built files.
#[derive(Debug, Clone)]
pub(crate) struct Built {
    /// The abi3 manylinux wheel.
    pub(crate) wheel: PathBuf,
    /// The source distribution.
    pub(crate) sdist: PathBuf,
}

/// `cargo xtask wheel`: prepares `.venv`'s tools, then builds, checks and smoke-tests.
pub(crate) fn run(steps: &mut Steps) -> Result<()> {
    python::prepare_tools(steps)?;
    let built = build(steps)?;
    smoke_test(steps, &built.wheel)?;
    println!("==> wheel: {}\n==> sdist: {}", built.wheel.display(), built.sdist.display());
    Ok(())
}

/// The platform tag the wheel must carry, for this machine's architecture.
pub(crate) fn platform_tag() -> String {
    format!("manylinux_{GLIBC}_{}", env::consts::ARCH)
}

/// Builds the wheel and the sdist into [`WHEEL_DIR`] and checks the wheel's tags with auditwheel.
pub(crate) fn build(steps: &mut Steps) -> Result<Built> {
    let dir = Path::new(WHEEL_DIR);
    for stale in list_dir(dir, is_pyshm_dist)? {
        fs::remove_file(&stale).map_err(|e| io_error(format!("removing {}", stale.display()), e))?;
    }
    let maturin = format!("{}/maturin", python::VENV_BIN);
    let manifest = "crates/pyshm/Cargo.toml";
    // maturin finds zig through the `ziglang` module of the first `python3` on PATH: .venv's.
    let venv_bin = workspace_root().join(python::VENV_BIN);
    let path = env::var_os("PATH").unwrap_or_default();
    let path = env::join_paths(std::iter::once(venv_bin.clone()).chain(env::split_paths(&path)))
        .map_err(|e| Error::Check(format!("PATH cannot hold {}: {e}", venv_bin.display())))?;
    let unwinder = system_unwinder()?;
    let build = Cmd::new(&maturin)
        .args(["build", "--release", "--strip", "--zig", "--compatibility", COMPATIBILITY])
        .args(["-m", manifest, "--out", WHEEL_DIR])
        .args(["--", "-C", &format!("link-arg={}", unwinder.display())])
        .env("PATH", path.to_string_lossy().into_owned());
    steps.cmd("python: wheel build", &build)?;
    let sdist = Cmd::new(&maturin).args(["sdist", "-m", manifest, "--out", WHEEL_DIR]);
    steps.cmd("python: sdist", &sdist)?;

    let wheel = only_file(dir, ".whl")?;
    let sdist = only_file(dir, ".tar.gz")?;
    let tag = platform_tag();
    steps.run("python: wheel check", || {
        let name = file_name(&wheel);
        if !name.contains(&format!("-{ABI_TAG}-")) || !name.contains(&tag) {
            return Err(Error::Check(format!("{name}: expected the tags {ABI_TAG} and {tag}")));
        }
        let report = Cmd::new(format!("{}/auditwheel", python::VENV_BIN))
            .arg("show")
            .arg(wheel.display().to_string())
            .output()?;
        check_audit(&report, &tag).map_err(|why| Error::Check(format!("{name}: {why}")))
    })?;
    Ok(Built { wheel, sdist })
}

/// Whether a file name is one of pyshm's wheels or sdists.
fn is_pyshm_dist(name: &str) -> bool {
    name.starts_with("pyshm-") && (name.ends_with(".whl") || name.ends_with(".tar.gz"))
}

/// The one pyshm file in `dir` whose name ends with `suffix`.
fn only_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let found = list_dir(dir, |name| is_pyshm_dist(name) && name.ends_with(suffix))?;
    match <[PathBuf; 1]>::try_from(found) {
        Ok([file]) => Ok(file),
        Err(found) => {
            Err(Error::Check(format!("expected one pyshm-*{suffix} in {}, found {}", dir.display(), found.len())))
        }
    }
}

/// Checks `auditwheel show`'s report: the wheel must be consistent with `tag` itself. auditwheel
/// names the most compatible tag the wheel is consistent with as it is (without repair), so a
/// newer glibc symbol gives a newer tag and a library outside the policy gives `linux_<arch>`.
fn check_audit(report: &str, tag: &str) -> Result<(), String> {
    let words = report.split_whitespace().collect::<Vec<_>>().join(" ");
    let consistent = "is consistent with the following platform tag:";
    let Some(rest) = words.split_once(consistent).map(|(_, rest)| rest.trim_start()) else {
        return Err(format!(
            "auditwheel's report does not say which platform tag the wheel is consistent with:\n{report}"
        ));
    };
    let found = rest.split_whitespace().next().unwrap_or_default().trim_matches(|c| c == '"' || c == '.');
    if found != tag {
        return Err(format!("auditwheel finds it consistent with {found}, not {tag}:\n{report}"));
    }
    if words.contains("external shared libraries are required") {
        return Err(format!("it needs shared libraries outside the manylinux policy:\n{report}"));
    }
    if !words.contains("libgcc_s.so.1") {
        return Err(format!("its module does not unwind with the system's libgcc_s.so.1 (see invariant 3):\n{report}"));
    }
    Ok(())
}

/// The system's `libgcc_s.so.1`, which the native module links for its unwinder (invariant 3):
/// in the multiarch folder of Debian and Ubuntu, or the `lib64` of Red Hat's family.
fn system_unwinder() -> Result<PathBuf> {
    let multiarch = format!("{}-linux-gnu", env::consts::ARCH);
    let candidates = [
        format!("/lib/{multiarch}/libgcc_s.so.1"),
        format!("/usr/lib/{multiarch}/libgcc_s.so.1"),
        "/lib64/libgcc_s.so.1".to_owned(),
        "/usr/lib64/libgcc_s.so.1".to_owned(),
    ];
    candidates.iter().map(PathBuf::from).find(|p| p.exists()).ok_or_else(|| {
        Error::Check(format!(
            "no libgcc_s.so.1 in {} (GCC's runtime library, which every glibc system has): the wheel's \
             module must link the system's unwinder",
            candidates.join(", ")
        ))
    })
}

/// Installs `wheel` into a fresh environment without Rust and runs [`SMOKE_SCRIPT`] there.
pub(crate) fn smoke_test(steps: &mut Steps, wheel: &Path) -> Result<()> {
    let dir = Path::new(SMOKE_DIR);
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| io_error(format!("removing {}", dir.display()), e))?;
    }
    fs::create_dir_all(dir).map_err(|e| io_error(format!("creating {}", dir.display()), e))?;
    let script = dir.join("smoke.py");
    fs::write(&script, SMOKE_SCRIPT).map_err(|e| io_error(format!("writing {}", script.display()), e))?;

    let venv = dir.join("venv");
    let python = venv.join("bin/python").display().to_string();
    steps.run("python: wheel", || {
        Cmd::new(python::BASE_PYTHON).args(["-m", "venv"]).arg(venv.display().to_string()).run()?;
        // The wheel is the only way pyshm can arrive: nothing may be built from source.
        without_rust(Cmd::new(&python))
            .args(["-m", "pip", "install", "-q", "--only-binary", ":all:"])
            .arg(wheel.display().to_string())
            .run()?;
        without_rust(Cmd::new(&python)).arg(script.display().to_string()).run()
    })
}

/// `cmd` with no trace of Rust in its environment: PATH without the folders that hold cargo,
/// rustc or rustup, and no `CARGO*` or `RUSTUP*` variables.
fn without_rust(mut cmd: Cmd) -> Cmd {
    let path = env::var_os("PATH").unwrap_or_default();
    let kept: Vec<PathBuf> = env::split_paths(&path)
        .filter(|dir| !["cargo", "rustc", "rustup"].iter().any(|tool| dir.join(tool).exists()))
        .collect();
    let kept = env::join_paths(kept).map_or_else(|_| "/usr/bin:/bin".to_string(), |p| p.to_string_lossy().into_owned());
    let mut rust_vars: Vec<String> = env::vars_os()
        .filter_map(|(key, _)| key.into_string().ok())
        .filter(|key| key.starts_with("CARGO") || key.starts_with("RUSTUP"))
        .collect();
    rust_vars.sort();
    for key in rust_vars {
        cmd = cmd.env_remove(key);
    }
    cmd.env("PATH", kept)
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "
pyshm-0.1.0-cp39-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
is consistent with the following platform tag:
\"manylinux_2_17_x86_64\".

The wheel references external versioned symbols in these
system-provided shared libraries: libgcc_s.so.1 with versions
{'GCC_3.0', 'GCC_3.3', 'GCC_4.2.0'}, libc.so.6 with versions
{'GLIBC_2.2.5', 'GLIBC_2.14', 'GLIBC_2.17'}

This constrains the platform tag to \"manylinux_2_17_x86_64\".
";

    #[test]
    fn audit_accepts_the_intended_tag_only() {
        assert_eq!(check_audit(REPORT, "manylinux_2_17_x86_64"), Ok(()));
        let newer = REPORT.replace("\"manylinux_2_17_x86_64\".\n\nThe", "\"manylinux_2_34_x86_64\".\n\nThe");
        assert!(check_audit(&newer, "manylinux_2_17_x86_64").unwrap_err().contains("manylinux_2_34_x86_64"));
        let external = format!(
            "{}\nThe following external shared libraries are required by the wheel:\n{{\"libfoo.so\": None}}",
            REPORT.replace("\"manylinux_2_17_x86_64\".\n\nThe", "\"linux_x86_64\".\n\nThe")
        );
        assert!(check_audit(&external, "manylinux_2_17_x86_64").unwrap_err().contains("linux_x86_64"));
        assert!(check_audit("nothing useful", "manylinux_2_17_x86_64").is_err());
        let own_unwinder = REPORT.replace("libgcc_s.so.1 with versions\n{'GCC_3.0', 'GCC_3.3', 'GCC_4.2.0'}, ", "");
        assert!(check_audit(&own_unwinder, "manylinux_2_17_x86_64").unwrap_err().contains("libgcc_s"));
    }

    #[test]
    fn the_system_unwinder_is_found() {
        assert!(system_unwinder().unwrap().ends_with("libgcc_s.so.1"));
    }

    #[test]
    fn names_of_dists() {
        assert!(is_pyshm_dist("pyshm-0.1.0-cp39-abi3-manylinux_2_17_x86_64.whl"));
        assert!(is_pyshm_dist("pyshm-0.1.0.tar.gz"));
        assert!(!is_pyshm_dist("numpy-2.0.whl"));
        assert!(!is_pyshm_dist("pyshm-0.1.0.zip"));
    }

    #[test]
    fn without_rust_drops_cargo_from_the_environment() {
        let line = without_rust(Cmd::new("pip")).command_line();
        let path = line.split_whitespace().find_map(|w| w.strip_prefix("PATH=")).unwrap_or_default();
        for dir in env::split_paths(path.trim_matches('\'')) {
            assert!(!dir.join("cargo").exists(), "{} still holds cargo", dir.display());
        }
        // cargo runs the tests, so it set CARGO_* variables: each must be unset.
        assert!(line.contains("-u CARGO_PKG_NAME"), "{line}");
    }
}
