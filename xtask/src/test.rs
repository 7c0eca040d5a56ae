//! `cargo xtask test`: everything CI checks, in the order CI checks it.
//!
//! 1. The steps run in a fixed order and the first failure stops the run: formatting, clippy,
//!    the workspace's tests, the loom models, the Python steps, the shared-memory leak check.
//!    The Python steps build and check the wheel (`wheel`), run pytest against it in `.venv`,
//!    install it without Rust in a fresh environment for a smoke test ("python: wheel"), and run
//!    pytest again on the oldest and the newest other CPython 3.9+ on the machine.
//! 2. Nothing is listed by hand: loom models are the files `crates/*/tests/loom_*.rs`, and the
//!    Python step runs once `crates/pyshm/pyproject.toml` exists.
//! 3. A run leaves `/dev/shm` as it found it: any `pyshm*` entry that appears while the tests
//!    run and is still there at the end fails the run.
//!
//! CI runs it with no options; `--no-loom` and `--no-python` only shorten local runs.

use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::path::Path;

use crate::python;
use crate::util::{ensure_tool, list_dir, Cmd, Error, Result, Steps};
use crate::wheel;

/// What `cargo xtask test` runs besides the steps that always run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    /// Run the loom models (`--no-loom` turns this off).
    pub(crate) loom: bool,
    /// Run the Python tests (`--no-python` turns this off).
    pub(crate) python: bool,
}

/// Loom's bound on preemptions per execution. With 2, loom still explores every interleaving
/// that needs at most two preemptions (a thread switched out where it did not block), which is
/// where concurrency bugs nearly always show up, and each model stays under a few minutes on 2
/// cores; unbounded, a model with 3 or 4 threads runs for hours. crossbeam
/// (`ci/crossbeam-epoch-loom.sh`) and tokio (its loom CI workflow) fix the same bound for the
/// same reason.
const LOOM_MAX_PREEMPTIONS: &str = "2";

/// Where `/dev/shm` is, and the prefix of every name pyshm creates there.
const SHM_DIR: &str = "/dev/shm";
const SHM_PREFIX: &str = "pyshm";

/// Runs every step; see the module doc.
pub(crate) fn run(options: &Options, steps: &mut Steps) -> Result<()> {
    // A minimal rustup profile has neither; install them rather than fail a newcomer.
    let rustup_add = |component: &str| Cmd::new("rustup").args(["component", "add", component]);
    ensure_tool(steps, "rustfmt", Cmd::cargo().args(["fmt", "--version"]), rustup_add("rustfmt"))?;
    ensure_tool(steps, "clippy", Cmd::cargo().args(["clippy", "--version"]), rustup_add("clippy"))?;

    steps.cmd("fmt", &Cmd::cargo().args(["fmt", "--all", "--", "--check"]))?;

    // `--locked` checks that Cargo.lock is up to date, which is only possible when there is one.
    let locked = Path::new("Cargo.lock").exists().then_some("--locked");
    let clippy = Cmd::cargo()
        .args(["clippy", "--workspace", "--all-targets", "--all-features"])
        .args(locked)
        .args(["--", "-D", "warnings"]);
    steps.cmd("clippy", &clippy)?;

    let shm_before = shm_entries(Path::new(SHM_DIR))?;

    steps.cmd("test", &Cmd::cargo().args(["test", "--workspace", "--all-features"]).args(locked))?;

    if options.loom {
        run_loom_models(steps)?;
    } else {
        steps.skip("loom models", "--no-loom");
    }

    if !options.python {
        steps.skip("python tests", "--no-python");
    } else if !python::package_present() {
        steps.skip("python tests", "python package not present yet");
    } else {
        run_python(steps)?;
    }

    steps.run("shm leak check", || {
        let leaked = new_entries(&shm_before, &shm_entries(Path::new(SHM_DIR))?);
        if leaked.is_empty() {
            return Ok(());
        }
        let list: String = leaked.iter().map(|name| format!("\n  {SHM_DIR}/{name}")).collect();
        Err(Error::Check(format!(
            "a test leaks shared memory; these appeared during the run and are still there:{list}"
        )))
    })
}

/// Runs each loom model in its own step (see [`LOOM_MAX_PREEMPTIONS`]).
fn run_loom_models(steps: &mut Steps) -> Result<()> {
    let models = loom_models(Path::new("crates"))?;
    if models.is_empty() {
        steps.skip("loom models", "no crates/*/tests/loom_*.rs yet");
    }
    // Appended, so flags the caller set still apply.
    let rustflags = match env::var("RUSTFLAGS") {
        Ok(existing) if !existing.trim().is_empty() => {
            format!("{} --cfg shm_loom", existing.trim())
        }
        _ => "--cfg shm_loom".to_string(),
    };
    for model in models {
        let cmd = Cmd::cargo()
            .args(["test", "--release", "-p", &model.package, "--features", "loom"])
            .args(["--test", &model.test])
            .env("RUSTFLAGS", rustflags.as_str())
            .env("LOOM_MAX_PREEMPTIONS", LOOM_MAX_PREEMPTIONS)
            // Its own target dir: changing RUSTFLAGS would otherwise throw away the normal
            // build cache, and the next plain build would throw away this one.
            .env("CARGO_TARGET_DIR", "target/loom");
        steps.cmd(format!("loom {}/{}", model.package, model.test), &cmd)?;
    }
    Ok(())
}

/// Builds and checks the wheel once, runs the tests against it in `.venv`, smoke-tests it in a
/// fresh environment without Rust, then runs the tests on the other interpreters.
fn run_python(steps: &mut Steps) -> Result<()> {
    python::prepare_tools(steps)?;
    let built = wheel::build(steps)?;
    python::install_wheel(steps, "", python::PYTHON, &built.wheel)?;
    run_pytest(steps, "python tests", python::PYTHON)?;
    wheel::smoke_test(steps, &built.wheel)?;

    let found = python::find_interpreters();
    let (extra, note) = python::extra_interpreters(&found, python::venv_version()?);
    println!("==> python versions: {note}");
    if extra.is_empty() {
        steps.skip("python tests (other versions)", note);
    }
    for interpreter in extra {
        let version = interpreter.version_text();
        let python = python::prepare_interpreter_venv(steps, &interpreter)?;
        python::install_wheel(steps, &format!(" ({version})"), &python, &built.wheel)?;
        run_pytest(steps, &format!("python tests ({version})"), &python)?;
    }
    Ok(())
}

/// The tests that, run as root, start `sys.executable` as uid 65534 (the other user a named
/// pool must be safe from), as pytest names them: relative to its root, `crates/pyshm` (the
/// folder of pyproject.toml), where `--deselect` looks them up.
const OTHER_USER_TESTS: [&str; 2] = [
    "tests/test_named.py::test_another_user_cannot_capture_named_arrays",
    "tests/test_named.py::test_clean_leaves_another_users_files_alone_and_says_so",
];

/// Whether [`OTHER_USER_TESTS`] can run with `python`: not as root, or uid 65534 can start it.
/// pyenv's interpreters live under `/root` (mode 0700), so uid 65534 cannot load their library
/// and standard library; those tests then only fail on the machine, not on pyshm.
fn other_user_can_run(python: &str) -> bool {
    let root = Cmd::new("id").arg("-u").probe_output().is_some_and(|uid| uid.trim() == "0");
    !root
        || Cmd::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", "import numpy"])
            .probe()
}

/// Runs pytest over the package's tests; "no tests collected" is a failure, not a pass.
fn run_pytest(steps: &mut Steps, name: &str, python: &str) -> Result<()> {
    let mut pytest = Cmd::new(python).args(["-m", "pytest", "-q", "crates/pyshm/tests"]);
    let deselect = !other_user_can_run(python);
    if deselect {
        println!("==> uid 65534 cannot run {python} (its files are out of its reach): deselecting the tests that run it as another user");
        for test in OTHER_USER_TESTS {
            pytest = pytest.args(["--deselect", test]);
        }
    }
    let result = steps.run(name, || {
        let status = pytest.status()?;
        if status.code() == Some(5) {
            return Err(Error::Check(format!(
                "`{}` collected no tests (exit status 5): crates/pyshm/tests must hold tests",
                pytest.command_line()
            )));
        }
        pytest.check(status)
    });
    if deselect {
        steps.note(format!("{} other-user tests deselected: uid 65534 cannot run {python}", OTHER_USER_TESTS.len()));
    }
    result
}

/// One loom model: `cargo test -p <package> --test <test>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LoomModel {
    package: String,
    test: String,
}

/// Finds `<crates_dir>/*/tests/loom_*.rs`, in name order.
fn loom_models(crates_dir: &Path) -> Result<Vec<LoomModel>> {
    let mut models = Vec::new();
    for crate_dir in list_dir(crates_dir, |_| true)? {
        let manifest_path = crate_dir.join("Cargo.toml");
        let Ok(manifest) = fs::read_to_string(&manifest_path) else {
            continue;
        };
        let package = package_name(&manifest).unwrap_or_else(|| file_name(&crate_dir));
        let is_model = |name: &str| name.starts_with("loom_") && name.ends_with(".rs");
        for file in list_dir(&crate_dir.join("tests"), is_model)? {
            let test = file_stem(&file);
            models.push(LoomModel { package: package.clone(), test });
        }
    }
    Ok(models)
}

/// The `name` in a manifest's `[package]` table (a line-based reading, enough for ours).
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            let value = line.strip_prefix("name").and_then(|rest| rest.trim_start().strip_prefix('='));
            if let Some(value) = value {
                return Some(value.trim().trim_matches('"').to_string());
            }
        }
    }
    None
}

fn file_stem(path: &Path) -> String {
    path.file_stem().unwrap_or_default().to_string_lossy().into_owned()
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

/// The names in `dir` that start with [`SHM_PREFIX`]; empty if `dir` does not exist.
fn shm_entries(dir: &Path) -> Result<BTreeSet<String>> {
    let paths = list_dir(dir, |name| name.starts_with(SHM_PREFIX))?;
    Ok(paths.iter().map(|path| file_name(path)).collect())
}

/// The names in `after` that were not in `before`.
fn new_entries(before: &BTreeSet<String>, after: &BTreeSet<String>) -> Vec<String> {
    after.difference(before).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::scratch_dir;

    #[test]
    fn finds_loom_models_by_walking_the_tree() {
        let root = scratch_dir("loom-models");
        let arena = root.join("shm-arena");
        fs::create_dir_all(arena.join("tests")).unwrap();
        fs::write(arena.join("Cargo.toml"), "[package]\nname = \"shm-arena\"\n").unwrap();
        for file in ["loom_buddy.rs", "loom_alloc.rs", "process.rs", "loom_notes.md"] {
            fs::write(arena.join("tests").join(file), "").unwrap();
        }
        // The package name comes from the manifest, not the directory.
        let sync = root.join("sync-dir");
        fs::create_dir_all(sync.join("tests")).unwrap();
        fs::write(sync.join("Cargo.toml"), "[package]\nname = \"shm-sync\"\n").unwrap();
        fs::write(sync.join("tests/loom_lock.rs"), "").unwrap();
        // Not a crate: no manifest.
        fs::create_dir_all(root.join("stray/tests")).unwrap();
        fs::write(root.join("stray/tests/loom_x.rs"), "").unwrap();

        let found: Vec<(String, String)> =
            loom_models(&root).unwrap().into_iter().map(|m| (m.package, m.test)).collect();
        let expected = [("shm-arena", "loom_alloc"), ("shm-arena", "loom_buddy"), ("shm-sync", "loom_lock")];
        assert_eq!(found, expected.map(|(p, t)| (p.to_string(), t.to_string())));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn reads_the_package_name() {
        let manifest = "[workspace]\nname = \"no\"\n\n[package]\nname_x = 1\nversion = \"0.1.0\"\nname = \"shm-sync\"\n\n[dependencies]\nname = \"no\"\n";
        assert_eq!(package_name(manifest).as_deref(), Some("shm-sync"));
        assert_eq!(package_name("[dependencies]\nname = \"x\"\n"), None);
    }

    #[test]
    fn spots_new_shm_entries_only() {
        let dir = scratch_dir("shm");
        fs::write(dir.join("pyshm-old"), "").unwrap();
        fs::write(dir.join("other"), "").unwrap();
        let before = shm_entries(&dir).unwrap();
        fs::write(dir.join("pyshm-new"), "").unwrap();
        fs::write(dir.join("unrelated-new"), "").unwrap();
        let after = shm_entries(&dir).unwrap();
        assert_eq!(new_entries(&before, &after), ["pyshm-new"]);
        fs::remove_dir_all(dir).unwrap();
    }
}
