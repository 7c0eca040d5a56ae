"""Every Python example in docs/guide.md runs, as a program of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

GUIDE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "guide.md")


def examples() -> list[str]:
    with open(GUIDE) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_the_guide_has_examples():
    assert len(examples()) >= 8


@pytest.mark.parametrize("index", range(len(examples())))
def test_guide_example_runs(index, tmp_path):
    script = tmp_path / f"example{index}.py"
    script.write_text(examples()[index])
    env = dict(os.environ)
    env.pop("PYSHM_POOL", None)  # a program of its own, with its own default pool
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
