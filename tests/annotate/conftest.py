"""Fixtures of the annotation tests: the crash programs, compiled once per session."""

from __future__ import annotations

import pathlib
import subprocess
from collections.abc import Callable

import pytest

from tests.annotate.crashing import PROGRAMS, build


@pytest.fixture(scope="session")
def program(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """``program("null_deref")`` -> path of the compiled programs/null_deref.c."""
    out = tmp_path_factory.mktemp("programs")
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            built[name] = build(name, out)
        return built[name]
    return get


@pytest.fixture
def scenario(tmp_path: pathlib.Path) -> Callable[[str, tuple[str, ...]], pathlib.Path]:
    """``scenario("versions", "private")``: run programs/NAME/build.sh into a fresh directory."""
    def make(name: str, *args: str) -> pathlib.Path:
        out = tmp_path / name
        subprocess.run(["sh", str(PROGRAMS / name / "build.sh"), str(out), *args], check=True,
                       capture_output=True, text=True)
        return out
    return make  # type: ignore[return-value]
