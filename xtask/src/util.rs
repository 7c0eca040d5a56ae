//! Plumbing shared by the commands: the error type, running programs, timing steps.
//!
//! 1. Every program runs from the workspace root (`main` changes into it first), with this
//!    process's stdin, stdout and stderr, after a banner `==> cargo ...` that shows the exact
//!    command line, including any environment variables xtask adds, so it can be rerun by hand.
//! 2. A failure names the command line and its exit status; nothing is retried.
//! 3. Each step is timed and recorded as passed, failed or skipped; [`Steps::summary`] renders
//!    the table that `main` prints at the end, also when a step failed.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The result of every fallible xtask function.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Why xtask stopped.
#[derive(Debug)]
pub(crate) enum Error {
    /// The command line could not be parsed; `main` prints the help after it.
    Usage(String),
    /// A program could not be started at all (not installed, not executable).
    Spawn { command: String, source: io::Error },
    /// A program ran and exited unsuccessfully, or was killed by a signal.
    Status { command: String, status: ExitStatus },
    /// A file-system operation failed.
    Io { context: String, source: io::Error },
    /// A check that xtask makes itself failed (leaked segment, crash artifact, missing file).
    Check(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(message) | Error::Check(message) => f.write_str(message),
            Error::Spawn { command, source } => write!(f, "could not start `{command}`: {source}"),
            Error::Status { command, status } => write!(f, "`{command}` failed ({status})"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spawn { source, .. } | Error::Io { source, .. } => Some(source),
            Error::Usage(_) | Error::Check(_) | Error::Status { .. } => None,
        }
    }
}

/// The workspace root: the parent of this crate's manifest directory.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The entries of `dir` whose file names pass `keep`, sorted; empty if `dir` does not exist.
pub(crate) fn list_dir(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let entries = match dir.read_dir() {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io_error(format!("listing {}", dir.display()), source)),
    };
    let mut paths = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|source| io_error(format!("listing {}", dir.display()), source))?;
        if entry.file_name().to_str().is_some_and(&keep) {
            paths.insert(entry.path());
        }
    }
    Ok(paths.into_iter().collect())
}

/// Wraps an I/O error with what xtask was doing.
pub(crate) fn io_error(context: String, source: io::Error) -> Error {
    Error::Io { context, source }
}

/// A program to run: what the banner shows is exactly what runs.
#[derive(Debug, Clone)]
pub(crate) struct Cmd {
    program: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    removed_envs: Vec<String>,
}

impl Cmd {
    /// A command running `program` (found on PATH unless it contains a `/`).
    pub(crate) fn new(program: impl Into<String>) -> Self {
        Cmd { program: program.into(), args: Vec::new(), envs: Vec::new(), removed_envs: Vec::new() }
    }

    /// `cargo` from PATH: the rustup proxy, so `+nightly` works.
    pub(crate) fn cargo() -> Self {
        Cmd::new("cargo")
    }

    /// Appends one argument.
    pub(crate) fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub(crate) fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the program (and shows it in the banner).
    pub(crate) fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Removes an environment variable for the program (shown in the banner as `env -u KEY`).
    pub(crate) fn env_remove(mut self, key: impl Into<String>) -> Self {
        self.removed_envs.push(key.into());
        self
    }

    /// The command line as a shell would take it: `[env -u KEY...] KEY=value program args...`.
    pub(crate) fn command_line(&self) -> String {
        let unset = self.removed_envs.iter().map(|k| format!("-u {}", shell_quote(k)));
        let unset = (!self.removed_envs.is_empty()).then(|| "env".to_string()).into_iter().chain(unset);
        let envs = self.envs.iter().map(|(k, v)| format!("{k}={}", shell_quote(v)));
        let words = std::iter::once(&self.program).chain(&self.args).map(|w| shell_quote(w));
        unset.chain(envs).chain(words).collect::<Vec<_>>().join(" ")
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        for key in &self.removed_envs {
            command.env_remove(key);
        }
        command.args(&self.args).envs(self.envs.iter().map(|(k, v)| (k, v)));
        command
    }

    fn spawn_error(&self, source: io::Error) -> Error {
        Error::Spawn { command: self.command_line(), source }
    }

    /// Prints the banner, runs the program and waits; fails unless it exits with 0.
    pub(crate) fn run(&self) -> Result<()> {
        let status = self.status()?;
        self.check(status)
    }

    /// Prints the banner, runs the program and returns its exit status, whatever it is.
    pub(crate) fn status(&self) -> Result<ExitStatus> {
        println!("==> {}", self.command_line());
        // The child writes to the same terminal; our banner must come first.
        let _ = io::stdout().flush();
        self.command().status().map_err(|e| self.spawn_error(e))
    }

    /// Turns a finished run's status into a result, naming the command line on failure.
    pub(crate) fn check(&self, status: ExitStatus) -> Result<()> {
        if status.success() {
            Ok(())
        } else {
            Err(Error::Status { command: self.command_line(), status })
        }
    }

    /// Like [`Cmd::run`], but also hands each line the program writes to stderr to `on_line`
    /// (the line is still printed), for commands whose last words are worth summarising.
    pub(crate) fn run_watching_stderr(&self, mut on_line: impl FnMut(&str)) -> Result<()> {
        println!("==> {}", self.command_line());
        let _ = io::stdout().flush();
        let mut child = self.command().stderr(Stdio::piped()).spawn().map_err(|e| self.spawn_error(e))?;
        if let Some(stderr) = child.stderr.take() {
            // Read raw bytes: a non-UTF-8 line must not stop the copy, or the child would block
            // on a full pipe.
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let _ = io::stderr().write_all(&line);
                on_line(String::from_utf8_lossy(&line).trim_end());
                line.clear();
            }
        }
        let status = child.wait().map_err(|e| self.spawn_error(e))?;
        self.check(status)
    }

    /// Like [`Cmd::run`], but also returns what the program wrote to stdout (still printed after
    /// it ends), for commands whose report xtask checks.
    pub(crate) fn output(&self) -> Result<String> {
        println!("==> {}", self.command_line());
        let _ = io::stdout().flush();
        let output = self.command().stderr(Stdio::inherit()).output().map_err(|e| self.spawn_error(e))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        print!("{stdout}");
        self.check(output.status)?;
        Ok(stdout)
    }

    /// Runs the program silently and returns its stdout if it succeeded; for "which version?".
    pub(crate) fn probe_output(&self) -> Option<String> {
        let output = self.command().stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs the program silently and reports whether it succeeded; for "is X installed?".
    pub(crate) fn probe(&self) -> bool {
        self.command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

/// Quotes `word` for a POSIX shell if it holds anything beyond a safe set of characters.
fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Makes sure a tool is installed: if `probe` fails, runs `install` as its own step.
pub(crate) fn ensure_tool(steps: &mut Steps, name: &str, probe: Cmd, install: Cmd) -> Result<()> {
    if probe.probe() {
        return Ok(());
    }
    println!("==> {name} is not installed; installing it");
    steps.cmd(format!("install {name}"), &install)
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    Skipped(String),
}

#[derive(Debug)]
struct Record {
    name: String,
    duration: Option<Duration>,
    outcome: Outcome,
    note: String,
}

/// The steps of one xtask command, in the order they ran, with durations and outcomes.
#[derive(Debug, Default)]
pub(crate) struct Steps {
    records: Vec<Record>,
    started: Option<Instant>,
}

impl Steps {
    /// Runs `body` as the step `name`, timing it and recording whether it returned `Ok`.
    pub(crate) fn run<T>(&mut self, name: impl Into<String>, body: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        self.started.get_or_insert(start);
        let result = body();
        let outcome = if result.is_ok() { Outcome::Passed } else { Outcome::Failed };
        self.records.push(Record { name: name.into(), duration: Some(start.elapsed()), outcome, note: String::new() });
        result
    }

    /// Runs one command as the step `name`.
    pub(crate) fn cmd(&mut self, name: impl Into<String>, cmd: &Cmd) -> Result<()> {
        self.run(name, || cmd.run())
    }

    /// Records the step `name` as skipped and says why.
    pub(crate) fn skip(&mut self, name: impl Into<String>, why: impl Into<String>) {
        let (name, why) = (name.into(), why.into());
        println!("==> {name}: {why}; skipped");
        let outcome = Outcome::Skipped(why);
        self.records.push(Record { name, duration: None, outcome, note: String::new() });
    }

    /// Attaches a short note (shown in the summary) to the step recorded last.
    pub(crate) fn note(&mut self, note: impl Into<String>) {
        if let Some(last) = self.records.last_mut() {
            last.note = note.into();
        }
    }

    /// Whether no step has been recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The summary table: one row per step, then the total wall time.
    pub(crate) fn summary(&self) -> String {
        let width = self.records.iter().map(|r| r.name.len()).max().unwrap_or(0).max("total".len());
        let mut out = String::from("\n==> summary\n");
        for record in &self.records {
            let time = record.duration.map_or_else(|| "-".to_string(), format_duration);
            let mut result = match &record.outcome {
                Outcome::Passed => "ok".to_string(),
                Outcome::Failed => "FAILED".to_string(),
                Outcome::Skipped(why) => format!("skipped ({why})"),
            };
            if !record.note.is_empty() {
                result = format!("{result}: {}", record.note);
            }
            out += &format!("    {:<width$}  {time:>7}  {result}\n", record.name);
        }
        let total = self.started.map_or_else(|| "-".to_string(), |s| format_duration(s.elapsed()));
        let failed = self.records.iter().any(|r| r.outcome == Outcome::Failed);
        let verdict = if failed { "FAILED" } else { "ok" };
        out += &format!("    {:<width$}  {total:>7}  {verdict}\n", "total");
        out
    }
}

/// `12.3s` under a minute, `4m05s` above.
fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = duration.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// A fresh, empty scratch directory for a test (std has no tempdir; names are per process).
#[cfg(test)]
pub(crate) fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_shows_env_and_quotes() {
        let cmd = Cmd::cargo()
            .args(["test", "-p", "shm-arena"])
            .env("RUSTFLAGS", "--cfg shm_loom")
            .env("LOOM_MAX_PREEMPTIONS", "2");
        assert_eq!(cmd.command_line(), "RUSTFLAGS='--cfg shm_loom' LOOM_MAX_PREEMPTIONS=2 cargo test -p shm-arena");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let cmd = Cmd::new("pip").arg("install").env_remove("CARGO").env("PATH", "/usr/bin");
        assert_eq!(cmd.command_line(), "env -u CARGO PATH=/usr/bin pip install");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn summary_lists_every_step_and_the_verdict() {
        let mut steps = Steps::default();
        steps.run("fmt", || Ok(())).unwrap();
        steps.skip("python tests", "python package not present yet");
        let _ = steps.run("clippy", || Err::<(), _>(Error::Check("bad".into())));
        let summary = steps.summary();
        assert!(summary.contains("fmt"));
        assert!(summary.contains("skipped (python package not present yet)"));
        assert!(summary.lines().last().unwrap().contains("FAILED"));
    }

    #[test]
    fn list_dir_of_missing_dir_is_empty() {
        let missing = std::env::temp_dir().join("xtask-no-such-dir-7f3a");
        assert!(list_dir(&missing, |_| true).unwrap().is_empty());
    }
}
