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



# Run in a private /dev/shm (`unshare -m` and a tmpfs, as root): `clean --persistent` removes
# every dead persistent pool of the user, which must not reach other tests' (or a developer's).
OTHER_VERSION_TOOLS = r"""
import os, struct, subprocess, sys

def set_directory_version(pool, version):
    # The directory is found by its magic in segment 0's data extents; its second word is the
    # version.
    fd = os.open(f"/dev/shm/pyshm-{pool}", os.O_RDWR)
    try:
        off, size = 0, os.fstat(fd).st_size
        while off < size:
            start = os.lseek(fd, off, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
            at = os.pread(fd, end - start, start).find(b"PYSHMPOL")
            if at >= 0:
                os.pwrite(fd, struct.pack("<Q", version), start + at + 8)
                return
            off = end
        raise AssertionError("no directory found")
    finally:
        os.close(fd)

def clean(*args):
    out = subprocess.run([sys.executable, "-m", "pyshm", "clean", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout

def ls():
    out = subprocess.run([sys.executable, "-m", "pyshm", "ls"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout

HOLD = "import sys, pyshm; a = pyshm.create('kept', 3); print('ready', flush=True); sys.stdin.read()"

def start_holder(name, code=HOLD):
    # A program that holds a named array in pool `name` (its named pool) until its stdin
    # closes; returns it, once ready, and its environment.
    env = {**os.environ, "PYSHM_NAMED_POOL": name}
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "ready"
    return holder, env
"""

OTHER_VERSION = OTHER_VERSION_TOOLS + r"""
name = "oldversion"
holder, env = start_holder(name)
try:
    assert any(ln.split()[:1] == [name] for ln in ls().splitlines())  # a row of the table
    set_directory_version(name, 4)
    # `ls` cannot read it any more, and says so instead of "no pools".
    listed = ls()
    assert "not readable by this pyshm:" in listed.splitlines(), listed
    assert not any(ln.split()[:1] == [name] for ln in listed.splitlines()), listed
    assert f"  pyshm-{name}: made by another version of pyshm (directory version 4), in use: mapped by 1" in listed
    # Mapped by a program of that version: left, even with --persistent.
    out = clean("--persistent")
    (line,) = [ln for ln in out.splitlines() if ln.startswith(f"left pyshm-{name}:")]
    assert "another version of pyshm (directory version 4)" in line and "mapped by 1 live process" in line, out
    code = "import pyshm\ntry:\n    pyshm.create('new', 3)\nexcept ValueError as e:\n    print(e)\n"
    msg = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env).stdout
    assert "made by another version of pyshm (directory version 4; this pyshm reads version" in msg, msg
    assert "python -m pyshm clean --persistent" in msg, msg
finally:
    holder.communicate("", timeout=60)
assert holder.returncode == 0
# Mapped by nobody: it may hold that version's named arrays, so it goes only with --persistent.
out = clean()
(line,) = [ln for ln in out.splitlines() if ln.startswith(f"left pyshm-{name}:")]
assert "mapped by no process" in line and "clean it with --persistent" in line, line
assert os.path.exists(f"/dev/shm/pyshm-{name}")
assert f"removed {name}" in clean("--persistent").splitlines()
assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"pyshm-{name}")], os.listdir("/dev/shm")
assert ls().strip() == "no pyshm pools in /dev/shm"
print("ok")
"""


def test_a_named_pool_left_by_another_version_is_refused_clearly_and_cleaned_when_asked(tmp_path):
    # An upgrade that left a named pool behind: pyshm.create says what it is and how to remove
    # it; `clean` leaves it while a program of that version maps it, then names --persistent.
    in_private_dev_shm(tmp_path, OTHER_VERSION)


def in_private_dev_shm(tmp_path, code: str) -> None:
    """Runs ``code`` in a private /dev/shm; it prints ``ok`` last when it passes."""
    script = tmp_path / "script.py"
    script.write_text(code)
    mount = f"mount -t tmpfs -o size=64m tmpfs /dev/shm && exec {sys.executable} {script}"
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", mount],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and r.stdout.split()[-1:] == ["ok"], r.stdout[-3000:] + r.stderr[-3000:]


# A program of that version that also maps a file whose name is not UTF-8 (a Latin-1 file
# name; here a memfd's name, which /proc/<pid>/maps shows byte for byte).
ODD_FILE_NAME = OTHER_VERSION_TOOLS + r"""
name = "oddnames"
code = (
    "import mmap, os, sys, pyshm\n"
    "fd = os.memfd_create('caf\\udce9')\n"  # b'caf\xe9'
    "os.ftruncate(fd, 4096)\n"
    "m = mmap.mmap(fd, 4096)\n"
    "a = pyshm.create('kept', 3)\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)
holder, env = start_holder(name, code)
try:
    with open(f"/proc/{holder.pid}/maps", "rb") as f:
        assert b"/memfd:caf\xe9" in f.read()
    set_directory_version(name, 4)
    out = clean("--persistent")
    assert f"removed {name}" not in out.splitlines(), "clean removed a pool a live program maps"
    (line,) = [ln for ln in out.splitlines() if ln.startswith(f"left pyshm-{name}:")]
    assert "mapped by 1 live process" in line, out
    assert os.path.exists(f"/dev/shm/pyshm-{name}")
finally:
    holder.communicate("", timeout=60)
assert holder.returncode == 0
print("ok")
"""


def test_a_pool_of_another_version_mapped_by_a_program_that_maps_odd_file_names_is_in_use(tmp_path):
    # /proc/<pid>/maps is bytes: a file name that is not UTF-8 in it must not hide the process.
    in_private_dev_shm(tmp_path, ODD_FILE_NAME)


# `clean --persistent` run where /proc is not procfs (a chroot or sandbox that shares /dev/shm
# but mounts no /proc; here a tmpfs over it): who maps the pool cannot be told.
NO_PROC = OTHER_VERSION_TOOLS + r"""
name = "noproc"
holder, env = start_holder(name)
try:
    set_directory_version(name, 4)
    blind = f"mount -t tmpfs tmpfs /proc && exec {sys.executable} -m pyshm clean --persistent"
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", blind], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert f"removed {name}" not in r.stdout.splitlines(), "clean removed a pool a live program maps"
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith(f"left pyshm-{name}:")]
    assert "/proc" in line, line
    assert os.path.exists(f"/dev/shm/pyshm-{name}")
finally:
    holder.communicate("", timeout=60)
assert holder.returncode == 0
print("ok")
"""


def test_a_pool_of_another_version_is_left_when_proc_cannot_be_read(tmp_path):
    # Without /proc, no process can be seen mapping the pool: that is "cannot tell", not "none".
    in_private_dev_shm(tmp_path, NO_PROC)


# Every way into a pool of another version says so: the named-array functions, the default pool
# (PYSHM_POOL), pyshm.Pool(name=...), and a handle or a pickle made in a handles() block.
ENTRY_POINTS = OTHER_VERSION_TOOLS + r"""
import shutil, tempfile
env = {**os.environ, "PYSHM_NAMED_POOL": "namedx", "PYSHM_POOL": "defaultx", "OUT": tempfile.mkdtemp()}
code = '''
import os, pickle, sys, pyshm
a = pyshm.create("kept", 3)
b = pyshm.Pool(name="explicit", persistent=True).zeros(5)
d = pyshm.zeros(7)
with pyshm.handles():
    sent = pickle.dumps(d)
open(os.path.join(os.environ["OUT"], "sent"), "wb").write(sent)
open(os.path.join(os.environ["OUT"], "handle"), "wb").write(pickle.dumps(pyshm.handle(d)))
print("ready", flush=True)
sys.stdin.read()
'''
holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
try:
    assert holder.stdout.readline().strip() == "ready"
    for pool in ("namedx", "defaultx", "explicit"):
        set_directory_version(pool, 4)
    load = "pickle.loads(open(os.path.join(os.environ['OUT'], {!r}), 'rb').read())"
    for call in [
        "pyshm.create('new', 3)",
        "pyshm.attach('kept')",
        "pyshm.list()",
        "pyshm.delete('kept')",
        "pyshm.Lock('l')",
        "pyshm.zeros(3)",
        "pyshm.Pool(name='explicit')",
        load.format("sent"),
        "pyshm.attach({})".format(load.format("handle")),
    ]:
        probe = f"import os, pickle, pyshm\ntry:\n    {call}\nexcept ValueError as e:\n    print('ValueError', e)\n"
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
        assert r.stdout.startswith("ValueError ") and "made by another version of pyshm" in r.stdout, (call, r)
finally:
    holder.communicate("", timeout=60)
    shutil.rmtree(env["OUT"])
assert holder.returncode == 0
print("ok")
"""


def test_every_way_into_a_pool_of_another_version_raises_the_clear_value_error(tmp_path):
    in_private_dev_shm(tmp_path, ENTRY_POINTS)


# A pool of another version that nobody maps, replaced (same name, new files) by a program of
# that version after `clean` listed /dev/shm: clean must judge the files it removes, not the
# ones it listed. Files clean reads first (sorted by name, never initialised: it waits 10 ms on
# each) give a window to stop it in once it has listed.
REPLACED = OTHER_VERSION_TOOLS + r"""
import signal, time
name = "zzreplaced"

def holder():
    h, _ = start_holder(name)
    set_directory_version(name, 4)
    return h

def reading_a_slow_file(pid):
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/dev/shm/pyshm-aaslow") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False

def stopped(pid):
    # True once stopped, None if gone (then `poll` says so).
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] == b"T"
    except OSError:
        return None

gone = holder()
gone.communicate("", timeout=60)
for i in range(500):
    fd = os.open(f"/dev/shm/pyshm-aaslow{i:04}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, 1 << 16)
    os.close(fd)
cleaner = subprocess.Popen([sys.executable, "-m", "pyshm", "clean", "--persistent"], stdout=subprocess.PIPE, text=True)
second = None
try:
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline and cleaner.poll() is None, "clean was never stopped among the slow files"
        if reading_a_slow_file(cleaner.pid):
            os.kill(cleaner.pid, signal.SIGSTOP)
            while stopped(cleaner.pid) is False and time.monotonic() < deadline:
                time.sleep(0.001)
            if reading_a_slow_file(cleaner.pid):
                break
            os.kill(cleaner.pid, signal.SIGCONT)  # caught between two of them: again
        time.sleep(0.001)
    for f in os.listdir("/dev/shm"):
        if f == f"pyshm-{name}" or f.startswith(f"pyshm-{name}-"):
            os.unlink(f"/dev/shm/{f}")
    second = holder()
    os.kill(cleaner.pid, signal.SIGCONT)
    out = cleaner.communicate(timeout=120)[0]
    assert f"removed {name}" not in out.splitlines(), "clean removed a pool a live program maps"
    assert os.path.exists(f"/dev/shm/pyshm-{name}")
finally:
    if cleaner.poll() is None:
        os.kill(cleaner.pid, signal.SIGCONT)
        cleaner.kill()
        cleaner.wait(60)
    if second is not None:
        second.communicate("", timeout=60)
print("ok")
"""


def test_a_pool_of_another_version_replaced_after_clean_listed_it_is_judged_by_its_new_files(tmp_path):
    in_private_dev_shm(tmp_path, REPLACED)
