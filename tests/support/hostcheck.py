"""What a test run must leave as it found it, checked at the end of the run.

The suite runs as root on a real machine: it swaps kernel.core_pattern, crashes
programs and runs journald.  A user's machine must not notice afterwards
(issue 13): the same ``kernel.core_pattern``, ``kernel.core_pipe_limit`` and
``fs.suid_dumpable``, not one coredump entry more or less in the host's
journal (``MESSAGE_ID=fc2e22bc6ee647b6b90729ab34a250b1``, what systemd's
coredumpctl lists), and ``/var/lib/coredumpd`` as it was.  tests/conftest.py
takes a :func:`snapshot` when the session starts and fails the run with
:func:`differences` when it ends.

journalctl reads the journal files and needs no running journald, so this
works on a machine with or without one.  Several checkouts may share a
development machine (and its journal): a new entry that is positively
another run's is reported, not counted against this run — its writer's
``_CMDLINE`` names another checkout, or is another process's pytest, or its
core file lies outside every store this run configured
(:func:`note_store`) and outside /var/lib/coredumpd.  Every other new entry
counts, whoever wrote it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import sqlite3
import subprocess
from collections.abc import Iterator
from typing import Any

from tests.support.kernel import LOCK_PATH

REPO = str(pathlib.Path(__file__).resolve().parents[2])
COREDUMP_MESSAGE_ID = "fc2e22bc6ee647b6b90729ab34a250b1"
SYSCTLS = {
    "kernel.core_pattern": "/proc/sys/kernel/core_pattern",
    "kernel.core_pipe_limit": "/proc/sys/kernel/core_pipe_limit",
    "fs.suid_dumpable": "/proc/sys/fs/suid_dumpable",
}
STORE = "/var/lib/coredumpd"
ENTRY_FIELDS = ("COREDUMP_PID", "COREDUMP_EXE", "COREDUMP_FILENAME", "_CMDLINE", "_PID",
                "_COMM", "SYSLOG_IDENTIFIER", "_SOURCE_REALTIME_TIMESTAMP")
_STORES: set[str] = set()


def note_store(directory: str) -> None:
    """A store directory this run configured (tests.support.crash.write_config)."""
    _STORES.add(os.path.abspath(directory).rstrip("/") + "/")


@dataclasses.dataclass
class HostState:
    sysctls: dict[str, str]
    journal: dict[str, dict[str, Any]]  # cursor -> a few fields of the entry
    journal_error: str | None
    store: dict[str, Any] | None  # None: /var/lib/coredumpd does not exist


@contextlib.contextmanager
def _core_pattern_lock() -> Iterator[None]:
    """tests/support/kernel.py's lock: read the values between other runs' swaps."""
    try:
        lock = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield  # not root: nobody here can have swapped them either
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)


def _sysctls() -> dict[str, str]:
    values = {}
    with _core_pattern_lock():
        for name, path in SYSCTLS.items():
            try:
                values[name] = pathlib.Path(path).read_text().rstrip("\n")
            except OSError as err:
                values[name] = f"unreadable: {err.strerror}"
    return values


def _journal() -> tuple[dict[str, dict[str, Any]], str | None]:
    try:
        out = subprocess.run(["journalctl", "--no-pager", "-o", "json", "--all",
                              f"--output-fields={','.join(ENTRY_FIELDS)}",
                              f"MESSAGE_ID={COREDUMP_MESSAGE_ID}"],
                             capture_output=True, text=True, check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {}, f"journalctl: {err}"
    entries = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            entries[entry["__CURSOR"]] = {key: entry.get(key) for key in ENTRY_FIELDS}
    error = None if out.returncode == 0 else f"journalctl exit {out.returncode}: {out.stderr}"
    return entries, error


def _store() -> dict[str, Any] | None:
    if not os.path.lexists(STORE):
        return None
    state: dict[str, Any] = {"files": sorted(os.listdir(STORE)) if os.path.isdir(STORE)
                             else "not a directory"}
    index = os.path.join(STORE, "index.sqlite")
    if os.path.exists(index):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as db:
                tables = [row[0] for row in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")]
                state["rows"] = {table: [list(row) for row in db.execute(
                    f"SELECT id, pid FROM {table}")] for table in tables
                    if "id" in _columns(db, table) and "pid" in _columns(db, table)}
        except sqlite3.Error as err:
            state["rows"] = f"unreadable: {err}"
    return state


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def snapshot() -> HostState:
    entries, error = _journal()
    return HostState(_sysctls(), entries, error, _store())


def _describe(entry: dict[str, Any]) -> str:
    return (f"COREDUMP_PID={entry.get('COREDUMP_PID')} COREDUMP_EXE={entry.get('COREDUMP_EXE')}"
            f" written by {entry.get('_CMDLINE')!r} (_PID={entry.get('_PID')}, "
            f"SYSLOG_IDENTIFIER={entry.get('SYSLOG_IDENTIFIER')})")


def _another_run(entry: dict[str, Any]) -> bool:
    """Positively written by another test run on a shared machine, not by this one."""
    cmdline = str(entry.get("_CMDLINE") or "")
    if entry.get("_PID") == str(os.getpid()) or REPO + "/" in cmdline:
        return False
    if "coredumpd" in cmdline or "/.venv/" in cmdline:
        return True  # another checkout's handler or analysis job
    if " -m pytest" in cmdline:
        return True  # another pytest process (this one's _PID is ours)
    filename = str(entry.get("COREDUMP_FILENAME") or "")
    return filename.startswith("/") and not filename.startswith(STORE + "/") and \
        not any(filename.startswith(store) for store in _STORES)


def differences(before: HostState, after: HostState) -> tuple[list[str], list[str]]:
    """(what this run changed on the host, notes on changes made by others)."""
    changed, notes = [], []
    for name, value in before.sysctls.items():
        if after.sysctls.get(name) != value:
            changed.append(f"{name} was {value!r}, is now {after.sysctls.get(name)!r}")
    for cursor, entry in after.journal.items():
        if cursor in before.journal:
            continue
        if _another_run(entry):
            notes.append(f"host journal: new coredump entry of another run: {_describe(entry)}")
        else:
            changed.append(f"host journal: new coredump entry {_describe(entry)}")
    for cursor, entry in before.journal.items():
        if cursor not in after.journal:
            changed.append(f"host journal: coredump entry gone: {_describe(entry)}")
    if after.journal_error != before.journal_error:
        changed.append(f"host journal: journalctl said {before.journal_error!r} at the start, "
                       f"{after.journal_error!r} at the end")
    if before.store != after.store:
        changed.append(f"{STORE}: was {json.dumps(before.store)[:300]}, "
                       f"is now {json.dumps(after.store)[:300]}")
    return changed, notes
