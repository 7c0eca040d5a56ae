//! `cargo xtask <command>`: the project's automation, in plain Rust with no dependencies.
//!
//! 1. Two commands are all a newcomer needs: `demo` shows the project working, `test` runs
//!    everything CI checks (`.ci/run` is `cargo xtask test` and nothing else); `wheel` builds
//!    the files a user installs.
//! 2. Commands install what they need (rustfmt, clippy, cargo-fuzz, a Python virtual
//!    environment in `.venv`) instead of asking the reader to.
//! 3. Every program runs from the workspace root and is announced as `==> <command line>`, so any
//!    step can be rerun by hand; a summary of the steps and their durations ends each run, and
//!    any failure makes the exit status non-zero.
//!
//! `cargo xtask` is an alias from `.cargo/config.toml` for `cargo run --package xtask --`. Each
//! command lives in its own module; `util` holds the plumbing and `python` the virtual
//! environment that several commands share.

mod bench;
mod demo;
mod fuzz;
mod python;
mod test;
mod util;
mod wheel;

use std::env;
use std::process::ExitCode;

use util::{Error, Result, Steps};

const HELP: &str = "\
usage: cargo xtask <command>

commands:
  demo                            run the main job once and show what it did
  test [--no-loom] [--no-python]  everything CI checks (fmt, clippy, tests, loom, Python, leaks)
  fuzz [--time SECS] [TARGET]     run each fuzz target, or only TARGET, for SECS s (default 60)
  bench                           criterion benchmarks, throughput harness, Python benchmarks
  wheel                           build and check the abi3 manylinux wheel and the sdist
  help                            this text
";

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Demo,
    Test(test::Options),
    Fuzz(fuzz::Options),
    Bench,
    Wheel,
    Help,
}

/// Parses the arguments after `cargo xtask`.
fn parse(args: &[String]) -> Result<Command> {
    let Some((command, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    let no_more = |command: Command| match rest.first() {
        None => Ok(command),
        Some(extra) => Err(Error::Usage(format!("unexpected argument `{extra}`"))),
    };
    match command.as_str() {
        "help" | "-h" | "--help" => no_more(Command::Help),
        "demo" => no_more(Command::Demo),
        "bench" => no_more(Command::Bench),
        "wheel" => no_more(Command::Wheel),
        "test" => parse_test(rest),
        "fuzz" => parse_fuzz(rest),
        other => Err(Error::Usage(format!("unknown command `{other}`"))),
    }
}

fn parse_test(args: &[String]) -> Result<Command> {
    let mut options = test::Options { loom: true, python: true };
    for arg in args {
        match arg.as_str() {
            "--no-loom" => options.loom = false,
            "--no-python" => options.python = false,
            other => return Err(Error::Usage(format!("`test` does not take `{other}`"))),
        }
    }
    Ok(Command::Test(options))
}

fn parse_fuzz(args: &[String]) -> Result<Command> {
    let mut options = fuzz::Options { seconds: fuzz::DEFAULT_SECONDS, target: None };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let seconds = match arg.strip_prefix("--time") {
            Some("") => Some(args.next().map(String::as_str).unwrap_or_default()),
            Some(value) if value.starts_with('=') => Some(&value[1..]),
            _ => None,
        };
        if let Some(seconds) = seconds {
            options.seconds = match seconds.parse() {
                Ok(n) if n > 0 => n,
                _ => return Err(Error::Usage(format!("--time wants whole seconds, got `{seconds}`"))),
            };
        } else if arg.starts_with('-') {
            return Err(Error::Usage(format!("`fuzz` does not take `{arg}`")));
        } else if let Some(first) = &options.target {
            return Err(Error::Usage(format!("one fuzz target at a time: `{first}` and `{arg}`")));
        } else {
            options.target = Some(arg.clone());
        }
    }
    Ok(Command::Fuzz(options))
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("error: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    let root = util::workspace_root();
    if let Err(e) = env::set_current_dir(&root) {
        eprintln!("error: cannot change into the workspace root {}: {e}", root.display());
        return ExitCode::FAILURE;
    }

    let mut steps = Steps::default();
    let result = match &command {
        Command::Help => {
            print!("{HELP}");
            Ok(())
        }
        Command::Demo => demo::run(&mut steps),
        Command::Test(options) => test::run(options, &mut steps),
        Command::Fuzz(options) => fuzz::run(options, &mut steps),
        Command::Bench => bench::run(&mut steps),
        Command::Wheel => wheel::run(&mut steps),
    };
    if !steps.is_empty() {
        print!("{}", steps.summary());
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ Error::Usage(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(line: &str) -> Result<Command> {
        parse(&line.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn commands() {
        assert_eq!(parse_words("").unwrap(), Command::Help);
        assert_eq!(parse_words("--help").unwrap(), Command::Help);
        assert_eq!(parse_words("demo").unwrap(), Command::Demo);
        assert_eq!(parse_words("bench").unwrap(), Command::Bench);
        assert_eq!(parse_words("wheel").unwrap(), Command::Wheel);
        assert!(matches!(parse_words("bench now"), Err(Error::Usage(_))));
        assert!(matches!(parse_words("deploy"), Err(Error::Usage(_))));
    }

    #[test]
    fn test_options() {
        let all = test::Options { loom: true, python: true };
        assert_eq!(parse_words("test").unwrap(), Command::Test(all));
        let none = test::Options { loom: false, python: false };
        assert_eq!(parse_words("test --no-python --no-loom").unwrap(), Command::Test(none));
        assert!(matches!(parse_words("test --quick"), Err(Error::Usage(_))));
    }

    #[test]
    fn fuzz_options() {
        let fuzz =
            |seconds, target: Option<&str>| Command::Fuzz(fuzz::Options { seconds, target: target.map(String::from) });
        assert_eq!(parse_words("fuzz").unwrap(), fuzz(60, None));
        assert_eq!(parse_words("fuzz --time 5 alloc").unwrap(), fuzz(5, Some("alloc")));
        assert_eq!(parse_words("fuzz alloc --time=7").unwrap(), fuzz(7, Some("alloc")));
        for bad in ["fuzz --time", "fuzz --time 0", "fuzz --time x", "fuzz a b", "fuzz --fast"] {
            assert!(matches!(parse_words(bad), Err(Error::Usage(_))), "{bad}");
        }
    }
}
