"""The command line: ``python -m pyshm`` and the ``pyshm`` console script name themselves as
they were started, print the package's version, and show plain help text."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest

import pyshm
from pyshm import __main__ as cli

PYTHON = sys.executable
SCRIPT = os.path.join(os.path.dirname(PYTHON), "pyshm")


def run(*args):
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_console_script_is_installed_and_declared():
    eps = importlib.metadata.entry_points()
    scripts = eps.select(group="console_scripts") if hasattr(eps, "select") else eps.get("console_scripts", [])  # 3.9
    (entry,) = [e for e in scripts if e.name == "pyshm"]
    assert entry.value == "pyshm.__main__:main"
    assert os.access(SCRIPT, os.X_OK), SCRIPT


@pytest.mark.parametrize("command,prog", [([PYTHON, "-m", "pyshm"], "python -m pyshm"), ([SCRIPT], "pyshm")])
def test_help_names_the_program_as_started_and_is_plain_text(command, prog):
    for sub in ([], ["ls"], ["clean"], ["demo"]):
        text = run(*command, *sub, "--help")
        assert text.startswith(f"usage: {prog} {' '.join(sub)}".rstrip() + " "), text
        assert "`" not in text and "::" not in text, text


@pytest.mark.parametrize("command,prog", [([PYTHON, "-m", "pyshm"], "python -m pyshm"), ([SCRIPT], "pyshm")])
def test_version_prints_the_packages_version(command, prog):
    assert run(*command, "--version") == f"{prog} {importlib.metadata.version('pyshm')}\n"


def test_the_version_has_one_source():
    assert pyshm.__version__ == importlib.metadata.version("pyshm")
    assert pyshm.__version__ == pyshm._native.__version__


def test_without_metadata_the_version_is_the_packages_own(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert cli.version() == pyshm.__version__


def test_program_name():
    assert cli.program_name("/x/site-packages/pyshm/__main__.py") == "python -m pyshm"
    assert cli.program_name("/usr/local/bin/pyshm") == "pyshm"


def test_clean_tells_how_to_remove_a_dead_persistent_pool_with_the_clis_own_option(capsys):
    # `pyshm clean` leaves a dead persistent pool and says how to remove it: with the command
    # line's option (`--persistent`), not the Rust/Python API's `include_persistent` argument.
    name = f"clipersist{os.getpid()}"
    code = f"import os, pyshm\npyshm.Pool(name={name!r}, persistent=True)\nos._exit(0)\n"
    subprocess.run([PYTHON, "-c", code], check=True, timeout=120)
    try:
        assert cli.main(["clean"]) == 0
        out = capsys.readouterr().out
        (line,) = [ln for ln in out.splitlines() if ln.startswith(f"left pyshm-{name}:")]
        assert "--persistent" in line and "include_persistent" not in line, line
    finally:
        for f in os.listdir("/dev/shm"):
            if f == f"pyshm-{name}" or f.startswith(f"pyshm-{name}-"):
                os.unlink(os.path.join("/dev/shm", f))
