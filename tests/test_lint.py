"""The code base stays ruff-clean (rules in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the ruff pinned in requirements-dev.txt, beside this interpreter, before any other
PINNED = Path(sys.executable).with_name("ruff")
RUFF = str(PINNED) if PINNED.exists() else shutil.which("ruff")


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed")
def test_ruff_clean():
    done = subprocess.run([RUFF, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
