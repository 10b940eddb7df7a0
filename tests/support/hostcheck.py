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
development machine (and its journal, and the coredumpd installed on it): a
new entry that is positively another run's is reported, not counted against
this run — the crashed process ran in another checkout (its cwd or ``PWD=``
is a coredumpd checkout other than this one), or the writer's ``_CMDLINE``
names another checkout, or is another process's pytest, or its core file lies
outside every store this run configured (:func:`note_store`) and outside
/var/lib/coredumpd.  Every other new entry counts, whoever wrote it.  The
same for /var/lib/coredumpd: new rows whose crashed process ran in another
checkout (and their core files) are noted, anything else counts.
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
ENTRY_FIELDS = ("COREDUMP_PID", "COREDUMP_EXE", "COREDUMP_FILENAME", "COREDUMP_CWD",
                "COREDUMP_ENVIRON", "_CMDLINE", "_PID", "_COMM", "SYSLOG_IDENTIFIER",
                "_SOURCE_REALTIME_TIMESTAMP")
SQLITE_SIDE_FILES = ("index.sqlite-wal", "index.sqlite-shm")  # come and go with connections
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


def other_checkout(cwd: str | None, environ: list[str] | str | None) -> str | None:
    """The coredumpd checkout other than this one that a crashed process ran in (its
    cwd, or the ``PWD=`` its shell left in its environment), if any."""
    if isinstance(environ, str):
        environ = environ.split("\n")
    places = [cwd] + [item[4:] for item in environ or [] if item.startswith("PWD=")]
    for place in places:
        if not place or not place.startswith("/"):
            continue
        place = os.path.realpath(place)
        if place != REPO and os.path.isfile(os.path.join(place, "tests/support/hostcheck.py")):
            return place
    return None


def _store() -> dict[str, Any] | None:
    """/var/lib/coredumpd: its files (SQLite's -wal/-shm left out) and the ids and
    PIDs of its rows; ``others`` names the rows of crashes in another checkout."""
    if not os.path.lexists(STORE):
        return None
    state: dict[str, Any] = {"files": _files(STORE) if os.path.isdir(STORE)
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
                state["others"] = _rows_of_others(db, tables)
        except sqlite3.Error as err:
            state["rows"] = f"unreadable: {err}"
    return state


def _files(directory: str) -> list[str]:
    """Names in ``directory`` and one level below (the module cache's entries:
    ``cache/<build-id>.mod``), SQLite's -wal/-shm left out."""
    names = []
    for name in os.listdir(directory):
        if name in SQLITE_SIDE_FILES:
            continue
        names.append(name)
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                names.extend(f"{name}/{inner}" for inner in os.listdir(path))
            except OSError as err:
                names.append(f"{name}/ unreadable: {err.strerror}")
    return sorted(names)


def _rows_of_others(db: sqlite3.Connection, tables: list[str]) -> dict[str, list[str]]:
    """Row id -> [the other checkout, the core file's name] for crashes in another checkout."""
    others = {}
    for table in tables:
        if not {"id", "facts", "core_path"} <= set(_columns(db, table)):
            continue
        for row_id, facts, core_path in db.execute(f"SELECT id, facts, core_path FROM {table}"):
            try:
                proc = json.loads(facts or "{}").get("proc") or {}
            except (ValueError, AttributeError):
                continue
            checkout = other_checkout(proc.get("cwd"), proc.get("environ"))
            if checkout:
                others[row_id] = [checkout, os.path.basename(core_path or "")]
    return others


def _store_of_others(before: dict[str, Any], after: dict[str, Any]) -> list[str] | None:
    """Notes when every difference in /var/lib/coredumpd is rows of crashes in other
    checkouts and their core files; None when something else changed."""
    rows_before, rows_after = before.get("rows"), after.get("rows")
    if not isinstance(rows_before, dict) or not isinstance(rows_after, dict) or \
            not isinstance(before.get("files"), list) or not isinstance(after.get("files"), list):
        return None
    others = after.get("others") or {}
    notes = []
    for table, rows in rows_after.items():
        old = rows_before.get(table, [])
        if any(row not in rows for row in old):
            return None  # a row gone
        for row_id, pid in (row for row in rows if row not in old):
            if row_id not in others:
                return None
            notes.append(f"{STORE}: new row {row_id} (pid {pid}) of a crash in another "
                         f"checkout, {others[row_id][0]}")
    cores = {core for _checkout, core in others.values() if core}
    files_before, files_after = set(before["files"]), set(after["files"])
    new_files = files_after - files_before
    if cores:  # their analyses may have filled the module cache
        new_files = {name for name in new_files if name.partition("/")[0] != "cache"}
    if files_before - files_after or not new_files <= cores:
        return None
    return notes


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def snapshot() -> HostState:
    entries, error = _journal()
    return HostState(_sysctls(), entries, error, _store())


def _describe(entry: dict[str, Any]) -> str:
    return (f"COREDUMP_PID={entry.get('COREDUMP_PID')} COREDUMP_EXE={entry.get('COREDUMP_EXE')}"
            f" (cwd {entry.get('COREDUMP_CWD')}) written by {entry.get('_CMDLINE')!r} "
            f"(_PID={entry.get('_PID')}, SYSLOG_IDENTIFIER={entry.get('SYSLOG_IDENTIFIER')})")


def _another_run(entry: dict[str, Any]) -> bool:
    """Positively written by another test run on a shared machine, not by this one."""
    if other_checkout(entry.get("COREDUMP_CWD"), entry.get("COREDUMP_ENVIRON")):
        return True  # the crash of a process in another checkout, whoever recorded it
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
            checkout = other_checkout(entry.get("COREDUMP_CWD"), entry.get("COREDUMP_ENVIRON"))
            where = f" (a crash in {checkout})" if checkout else ""
            notes.append(f"host journal: new coredump entry of another run{where}: "
                         f"{_describe(entry)}")
        else:
            changed.append(f"host journal: new coredump entry {_describe(entry)}")
    for cursor, entry in before.journal.items():
        if cursor not in after.journal:
            changed.append(f"host journal: coredump entry gone: {_describe(entry)}")
    if after.journal_error != before.journal_error:
        changed.append(f"host journal: journalctl said {before.journal_error!r} at the start, "
                       f"{after.journal_error!r} at the end")
    others = _store_of_others(before.store, after.store) \
        if before.store is not None and after.store is not None else None
    if others is not None:
        notes.extend(others)
    elif before.store != after.store:
        changed.append(f"{STORE}: was {json.dumps(before.store)[:300]}, "
                       f"is now {json.dumps(after.store)[:300]}")
    return changed, notes
