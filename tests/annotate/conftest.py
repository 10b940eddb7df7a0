"""Fixtures of the annotation tests: the crash programs, compiled once per session.

Programs are built in a world-readable directory under /tmp, not in pytest's
0700 tmp_path: the handler's sandbox analyses root's crashes as an
unprivileged user (pipeline/sandbox.py), which must be able to read the
executables and libraries to symbolize them and to read their versions.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator

import pytest

from tests.annotate.crashing import PROGRAMS, build


@pytest.fixture(scope="session")
def readable_dir() -> Iterator[pathlib.Path]:
    path = pathlib.Path(tempfile.mkdtemp(prefix="cdann", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def program(readable_dir: pathlib.Path) -> Callable[[str], str]:
    """``program("null_deref")`` -> path of the compiled programs/null_deref.c."""
    out = readable_dir / "programs"
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            built[name] = build(name, out)
        return built[name]
    return get


_counter = itertools.count()


@pytest.fixture
def scenario(readable_dir: pathlib.Path) -> Callable[..., pathlib.Path]:
    """``scenario("versions", "private")``: run programs/NAME/build.sh into a fresh directory."""
    def make(name: str, *args: str) -> pathlib.Path:
        out = readable_dir / f"{name}{next(_counter)}"
        subprocess.run(["sh", str(PROGRAMS / name / "build.sh"), str(out), *args], check=True,
                       capture_output=True, text=True)
        return out
    return make
