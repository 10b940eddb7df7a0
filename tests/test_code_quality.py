"""STYLE.md asks for ``mypy --strict`` and ``ruff`` clean code: keep it so."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_ruff_is_clean() -> None:
    result = _run(str(BIN / "ruff"), "check", "coredumpd", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    result = _run(str(BIN / "mypy"), "--strict", "--cache-dir", "/tmp/coredumpd-mypy-cache",
                  "coredumpd")
    assert result.returncode == 0, result.stdout + result.stderr
