"""A store filled by real crashes under the real handler, shared by tests/cli."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.kernel import can_swap_core_pattern

HOSTILE_NAME = "evil\x1b[31mred"  # an ESC in the executable's name (and so comm, exe)

SEGV = "int main(void) { *(volatile int *)0 = 1; return 0; }\n"
ABORT = """#include <stdlib.h>
static void die(void) { abort(); }
int main(void) { die(); return 0; }
"""


@dataclasses.dataclass
class CrashStore:
    config_path: str
    directory: str
    rows: dict[str, dict[str, Any]]  # "segv", "abort", "hostile" -> index row

    def argv(self, *args: str) -> list[str]:
        return ["--config", self.config_path, "--no-pager", *args]


_STORE_FAILURE: list[str] = []  # a failed set-up is not retried by every test


@pytest.fixture(scope="session")
def crash_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashStore]:
    """Three real crashes (SIGSEGV, SIGABRT, a hostile name) in one store."""
    if not can_swap_core_pattern():
        pytest.skip("needs root and a writable kernel.core_pattern")
    if _STORE_FAILURE:
        pytest.fail(f"the crash store could not be filled: {_STORE_FAILURE[0]}")
    from tests.support.crash import compile_c, registered_handler

    tmp = tmp_path_factory.mktemp("corectl")
    # The analysis runs as AnalysisUser (nobody): the programs must be readable
    # by it, which pytest's 0700 tmp directories are not.
    programs_dir = tempfile.mkdtemp(prefix="corectl-programs-")
    os.chmod(programs_dir, 0o755)
    programs = {"segv": compile_c(SEGV, programs_dir, name="segv"),
                "abort": compile_c(ABORT, programs_dir, name="aborter"),
                "hostile": compile_c(SEGV, programs_dir, name=HOSTILE_NAME)}
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, programs_dir, ignore_errors=True)
        handler = cleanup.enter_context(registered_handler(tmp, rate_limit_burst=100))
        try:
            rows = {key: handler.crash([path], timeout=60) for key, path in programs.items()}
        except Exception as err:
            _STORE_FAILURE.append(f"{type(err).__name__}: {err}")
            raise
        yield CrashStore(handler.config_path, handler.directory, rows)


@pytest.fixture()
def programs_dir() -> Iterator[str]:
    """A directory the analysis user (nobody) can read, for test programs."""
    directory = tempfile.mkdtemp(prefix="corectl-programs-")
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture()
def fresh_store(tmp_path: pathlib.Path) -> Iterator[Any]:
    """A registered handler on an empty store of this test's own (for delete/vacuum)."""
    if not can_swap_core_pattern():
        pytest.skip("needs root and a writable kernel.core_pattern")
    from tests.support.crash import registered_handler

    with registered_handler(tmp_path, rate_limit_burst=100) as handler:
        yield handler


def environment(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra}


def crash_table(db: sqlite3.Connection) -> str:
    """The index table holding the CrashRecord columns (named by store/index.py)."""
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        columns = {info[1] for info in db.execute(f"PRAGMA table_info({name})")}
        if {"id", "analysis", "facts", "core_state"} <= columns:
            return str(name)
    raise AssertionError("no crash table in the index")
