"""The project's own source stays lint-clean, formatted and type-checked (ruff and mypy,
configured in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["foldgen", "tests", "examples", "benchmarks"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
    return subprocess.run([exe, *args, *SOURCES], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check():
    result = _ruff("check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = _ruff("format", "--check", "--diff")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy():
    """mypy over foldgen/, the runtime package included (the files and settings are
    pyproject.toml's [tool.mypy])."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
