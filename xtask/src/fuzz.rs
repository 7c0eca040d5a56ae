//! `cargo xtask fuzz [--time SECS] [TARGET]`: run the cargo-fuzz targets for a fixed time each.
//!
//! 1. The targets are the files `fuzz/fuzz_targets/*.rs`; a target's name is its file stem.
//! 2. A target fails if libFuzzer exits non-zero or if a new crash, leak, timeout or
//!    out-of-memory input appears under `fuzz/artifacts/<target>/` during its run.
//! 3. Every chosen target runs even after one fails; the command fails if any did.
//!
//! With a nightly toolchain the targets run under AddressSanitizer (cargo-fuzz's default). On
//! stable they run without sanitizers, which still finds panics, aborts and failed asserts, but
//! not the memory errors ASan would report. cargo-fuzz is installed when missing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::util::{ensure_tool, list_dir, Cmd, Error, Result, Steps};

/// Seconds each target runs when `--time` is not given.
pub(crate) const DEFAULT_SECONDS: u64 = 60;

/// What `cargo xtask fuzz` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    /// libFuzzer's `-max_total_time` for each target.
    pub(crate) seconds: u64,
    /// Only this target; every target when `None`.
    pub(crate) target: Option<String>,
}

const FUZZ_DIR: &str = "fuzz";

/// Which toolchain the fuzzer is built with, which decides the sanitizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toolchain {
    /// `cargo +nightly fuzz run`, with AddressSanitizer.
    Nightly,
    /// `cargo fuzz run --sanitizer none`: sanitizers need nightly-only rustc flags.
    Stable,
    /// No cargo-fuzz at all (it could not be installed): the crate's own `fuzz-stable` runner,
    /// seeded random inputs with mutation, same artifacts and the same last line.
    Runner,
}

/// Runs the chosen targets; see the module doc.
pub(crate) fn run(options: &Options, steps: &mut Steps) -> Result<()> {
    let all = targets(&Path::new(FUZZ_DIR).join("fuzz_targets"))?;
    if all.is_empty() {
        return Err(Error::Check("no fuzz targets: fuzz/fuzz_targets/*.rs does not exist yet".to_string()));
    }
    let chosen = match &options.target {
        None => all,
        Some(target) if all.contains(target) => vec![target.clone()],
        Some(target) => {
            return Err(Error::Usage(format!("no fuzz target `{target}`; the targets are: {}", all.join(", "))))
        }
    };

    let install = Cmd::cargo().args(["install", "cargo-fuzz", "--locked"]);
    let have_cargo_fuzz = ensure_tool(steps, "cargo-fuzz", Cmd::cargo().args(["fuzz", "--version"]), install).is_ok();

    // The probe runs exactly what the fuzz command will run; RUSTUP_AUTO_INSTALL=0 keeps it
    // from downloading a nightly just to answer the question.
    let nightly = Cmd::cargo().args(["+nightly", "--version"]).env("RUSTUP_AUTO_INSTALL", "0");
    let toolchain = match (have_cargo_fuzz, nightly.probe()) {
        (false, _) => Toolchain::Runner,
        (true, true) => Toolchain::Nightly,
        (true, false) => Toolchain::Stable,
    };
    match toolchain {
        Toolchain::Stable => println!("==> stable toolchain: fuzzing without sanitizers"),
        Toolchain::Runner => println!("==> cargo-fuzz unavailable: fuzzing with the crate's fuzz-stable runner (no coverage guidance, no sanitizers)"),
        Toolchain::Nightly => {}
    }

    let mut failed = Vec::new();
    for target in &chosen {
        let artifact_dir = Path::new(FUZZ_DIR).join("artifacts").join(target);
        let before = failure_artifacts(&artifact_dir)?;
        let cmd = fuzz_command(toolchain, target, options.seconds);
        let mut runs = None;
        let mut new_artifacts = Vec::new();
        let result = steps.run(format!("fuzz {target}"), || {
            let ran = cmd.run_watching_stderr(|line| runs = parse_done(line).or(runs));
            new_artifacts = failure_artifacts(&artifact_dir)?.difference(&before).cloned().collect();
            if !new_artifacts.is_empty() {
                let list = new_artifacts.iter().map(|p| format!("  {}\n", p.display()));
                let list = list.collect::<String>();
                return Err(Error::Check(format!("`{target}` found failing inputs:\n{list}")));
            }
            ran
        });
        let mut note: Vec<String> = runs.map(|(n, secs)| format!("{n} runs in {secs} s")).into_iter().collect();
        note.extend(new_artifacts.iter().map(|p| p.display().to_string()));
        steps.note(note.join("; "));
        if let Err(e) = result {
            eprintln!("error: {e}");
            failed.push(target.as_str());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Check(format!("fuzz targets failed: {}", failed.join(", "))))
    }
}

/// The target names: the stems of `dir/*.rs`, sorted.
fn targets(dir: &Path) -> Result<Vec<String>> {
    let files = list_dir(dir, |name| name.ends_with(".rs"))?;
    let stem = |p: &PathBuf| p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    Ok(files.iter().map(stem).collect())
}

/// The command that fuzzes `target` for `seconds`, run from the workspace root. An input that
/// runs longer than 30 s is a failure (libFuzzer's default would wait 20 minutes).
fn fuzz_command(toolchain: Toolchain, target: &str, seconds: u64) -> Cmd {
    let cmd = match toolchain {
        Toolchain::Nightly => Cmd::cargo().arg("+nightly").args(["fuzz", "run", "--fuzz-dir", FUZZ_DIR, "--release"]),
        Toolchain::Stable => {
            Cmd::cargo().args(["fuzz", "run", "--fuzz-dir", FUZZ_DIR, "--release", "--sanitizer", "none"])
        }
        Toolchain::Runner => {
            let manifest = format!("{FUZZ_DIR}/Cargo.toml");
            return Cmd::cargo()
                .args(["run", "--release", "--manifest-path", &manifest, "--features", "stable-runner", "--bin"])
                .args(["fuzz-stable", "--", "--time"])
                .arg(seconds.to_string())
                .arg(target);
        }
    };
    cmd.args([target, "--"]).arg(format!("-max_total_time={seconds}")).arg("-timeout=30")
}

/// The inputs libFuzzer saved because they failed (`slow-unit-*` files are only reports).
fn failure_artifacts(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let failing = |name: &str| ["crash-", "leak-", "timeout-", "oom-"].iter().any(|prefix| name.starts_with(prefix));
    Ok(list_dir(dir, failing)?.into_iter().collect())
}

/// libFuzzer's last line, `Done 123456 runs in 60 second(s)`, as (runs, seconds).
fn parse_done(line: &str) -> Option<(u64, u64)> {
    let mut words = line.strip_prefix("Done ")?.split_whitespace();
    let runs = words.next()?.parse().ok()?;
    let seconds = match (words.next()?, words.next()?) {
        ("runs", "in") => words.next()?.parse().ok()?,
        _ => return None,
    };
    Some((runs, seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::scratch_dir;
    use std::fs;

    #[test]
    fn targets_are_the_rs_stems() {
        let dir = scratch_dir("fuzz-targets");
        for file in ["segment_open.rs", "alloc_free.rs", "README.md"] {
            fs::write(dir.join(file), "").unwrap();
        }
        assert_eq!(targets(&dir).unwrap(), ["alloc_free", "segment_open"]);
        assert!(targets(&dir.join("missing")).unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn commands_per_toolchain() {
        assert_eq!(
            fuzz_command(Toolchain::Nightly, "alloc_free", 60).command_line(),
            "cargo +nightly fuzz run --fuzz-dir fuzz --release alloc_free -- -max_total_time=60 -timeout=30"
        );
        assert_eq!(
            fuzz_command(Toolchain::Stable, "alloc_free", 5).command_line(),
            "cargo fuzz run --fuzz-dir fuzz --release --sanitizer none alloc_free -- -max_total_time=5 -timeout=30"
        );
        assert_eq!(
            fuzz_command(Toolchain::Runner, "alloc_free", 5).command_line(),
            "cargo run --release --manifest-path fuzz/Cargo.toml --features stable-runner --bin fuzz-stable -- --time 5 alloc_free"
        );
    }

    #[test]
    fn only_failing_inputs_count() {
        let dir = scratch_dir("fuzz-artifacts");
        for file in ["crash-1a", "slow-unit-2b", "oom-3c", "notes"] {
            fs::write(dir.join(file), "").unwrap();
        }
        let found = failure_artifacts(&dir).unwrap();
        assert_eq!(found, BTreeSet::from([dir.join("crash-1a"), dir.join("oom-3c")]));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_libfuzzer_totals() {
        assert_eq!(parse_done("Done 1234567 runs in 61 second(s)"), Some((1_234_567, 61)));
        assert_eq!(parse_done("#1024 pulse cov: 12 ft: 14"), None);
        assert_eq!(parse_done("Done something else"), None);
    }
}
