"""The crash index: one SQLite row per crash, the source of truth for corectl.

SQLite in WAL mode (https://sqlite.org/wal.html) lets readers run while a
handler writes; every write is one ``BEGIN IMMEDIATE`` transaction, and
``busy_timeout`` makes concurrent handlers queue instead of failing.  The schema
version lives in ``PRAGMA user_version``.

MATCH semantics follow systemd's coredumpctl (src/coredump/coredumpctl.c,
add_match): ``FIELD=VALUE`` when the argument has ``=``; an ID; an executable
path when it contains ``/`` (made absolute against the cwd); a PID when it is a
number; a COMM otherwise.  Like sd_journal_add_match(3), matches on the same
field are OR-ed and matches on different fields AND-ed (``list 12 34`` is PID 12
or 34; ``list bash 12`` is COMM bash and PID 12).  An argument of 12 hex digits
is tried as an ID *or* a COMM, since a COMM can look like an ID.
``CONTAINER_ID=ID`` (or the journal's ``COREDUMP_CONTAINER_ID=ID``) selects the
crashes of one container, by the id ingest/container.py found (the full id, or
an nspawn machine's name), as the fleet's MATCH does.

Schema versions: 1, the columns of the record; 2 adds ``container_id`` (filled
from each row's facts by the migration).  A writer migrates an older index when
it opens it; a reader (``create=False``) reads an older index or per-user view
as it is, taking ``container_id`` from the facts (:data:`CONTAINER_ID_FROM_FACTS`).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Self

from coredumpd.errors import FormatError, StoreError
from coredumpd.model import COLUMNS, AnalysisResult, AnalysisState, CoreState, CrashRecord, Facts
from coredumpd.paths import FILE_MODE, make_directory
from coredumpd.store.sqlitefile import open_database

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 30_000
ID_LENGTH = 12
JSON_FIELDS = ("facts", "analysis", "path_taken")
FIELDS = COLUMNS  # the table's columns: the fields of coredumpd.model.CrashRecord, in order
_INTEGER_FIELDS = frozenset((
    "pid", "timestamp_us", "tid", "ns_pid", "uid", "gid", "signal", "si_code", "fault_address",
    "rlimit_core", "dump_mode", "core_size", "stored_size"))
# unsigned 64-bit values (%c = 2**64-1 for "unlimited", kernel addresses), kept in
# SQLite's signed 64-bit INTEGER as two's complement
_U64_FIELDS = frozenset(("fault_address", "rlimit_core"))
# systemd-coredump's journal field names (CONTRACT.md, "Journal") -> our columns
JOURNAL_FIELDS = {
    "COREDUMP_ID": "id", "COREDUMP_PID": "pid", "COREDUMP_TID": "tid", "COREDUMP_UID": "uid",
    "COREDUMP_GID": "gid", "COREDUMP_SIGNAL": "signal", "COREDUMP_TIMESTAMP": "timestamp_us",
    "COREDUMP_RLIMIT": "rlimit_core", "COREDUMP_HOSTNAME": "hostname", "COREDUMP_COMM": "comm",
    "COREDUMP_EXE": "exe", "COREDUMP_CMDLINE": "cmdline", "COREDUMP_CGROUP": "cgroup",
    "COREDUMP_UNIT": "unit", "COREDUMP_FILENAME": "core_path", "_BOOT_ID": "boot_id",
    "COREDUMP_ROOT_CAUSE": "root_cause", "COREDUMP_CONTAINER_ID": "container_id",
}
_SQL_TYPES = {name: "INTEGER" if name in _INTEGER_FIELDS else "TEXT" for name in FIELDS}
_SCHEMA = [
    "CREATE TABLE crashes ({}, PRIMARY KEY (id))".format(
        ", ".join(f"{name} {_SQL_TYPES[name]}" + (" NOT NULL" if name in ("id", "pid") else "")
                  for name in FIELDS)),
    "CREATE INDEX crashes_time ON crashes (timestamp_us)",
    "CREATE INDEX crashes_exe_time ON crashes (exe, timestamp_us)",
    "CREATE INDEX crashes_pid ON crashes (pid)",
    "CREATE INDEX crashes_comm ON crashes (comm)",
    "CREATE INDEX crashes_container ON crashes (container_id)",
]
# A row's container id from its facts JSON (the id is text; malformed facts give NULL):
# how schema 2 fills the new column, and how a reader of schema 1 selects it.
CONTAINER_ID_FROM_FACTS = ("CASE WHEN json_valid(facts) THEN CASE json_type(facts, "
                           "'$.container.id') WHEN 'text' THEN json_extract(facts, "
                           "'$.container.id') END END")
# version -> the statements that take an index from the version before to it
MIGRATIONS = {
    2: ["ALTER TABLE crashes ADD COLUMN container_id TEXT",
        f"UPDATE crashes SET container_id = {CONTAINER_ID_FROM_FACTS}",
        "CREATE INDEX crashes_container ON crashes (container_id)"],
}


def crash_id(boot_id: str, pid: int, timestamp_us: int, attempt: int = 0) -> str:
    """A short, stable ID: 12 hex digits of SHA-256 over boot id, PID and time."""
    seed = f"{boot_id}:{pid}:{timestamp_us}:{attempt}" if attempt else \
        f"{boot_id}:{pid}:{timestamp_us}"
    return _sha256_hex(seed.encode())[:ID_LENGTH]


def _sha256_hex(data: bytes) -> str:
    """SHA-256 in hex by CPython's built-in _sha256: hashlib loads OpenSSL's libcrypto
    first, 4-16 ms measured here, in every handler (the only hash it computes)."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # (3.12: _sha2)
    except ImportError:
        from hashlib import sha256
    return str(sha256(data).hexdigest())


class CoreRow(NamedTuple):
    """What retention reads of a crash whose core is stored (:meth:`Index.core_rows`)."""

    id: str
    uid: int | None
    timestamp_us: int
    core_path: str
    kept: tuple[str, ...]  # the kept copies of its mapped files (facts.mapped_objects[].kept)


# facts.mapped_objects as JSON text, without reading the rest of the row's JSON
_MAPPED_OBJECTS = "CASE WHEN json_valid(facts) THEN json_extract(facts, '$.mapped_objects') END"


class Index:
    """The SQLite index at ``path`` (``Config.index_path``)."""

    def __init__(self, path: str, create: bool = True) -> None:
        """Open (``create``: and create, with the modes of :mod:`coredumpd.paths`) the index."""
        self.path = path
        self.views = create  # a writer keeps the per-user views up to date
        self.schema = SCHEMA_VERSION  # the file's, once open (a reader may meet an older one)
        self.view_errors: list[str] = []
        if create:
            make_directory(os.path.dirname(os.path.abspath(path)))
        self._db = open_database(path, FILE_MODE, "index", BUSY_TIMEOUT_MS, create)
        try:
            self._migrate(create)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open index {path}: {err}") from err

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def insert(self, record: CrashRecord) -> str:
        """Add ``record`` (its ``id`` generated when empty); returns the ID."""
        fields = _columns(record)
        _validate(fields)
        for name in ("pid", "timestamp_us"):
            if fields[name] is None:
                raise StoreError(f"a crash record needs {name}")
        explicit = bool(record.id)
        for attempt in range(16):
            row_id = record.id if explicit else crash_id(
                record.boot_id, record.pid or 0, record.timestamp_us or 0, attempt)
            values = list(_to_row_fields({**fields, "id": row_id}).values())
            try:
                self._write(f"INSERT INTO crashes ({', '.join(FIELDS)}) VALUES "
                            f"({', '.join('?' * len(FIELDS))})", values)
            except sqlite3.IntegrityError as err:
                if explicit:
                    raise StoreError(f"crash {row_id} is already in the index") from err
                continue
            record.id = row_id
            self._refresh_view(record.uid)
            return row_id
        raise StoreError("could not find a free crash ID")

    def update(self, crash: str, **fields: Any) -> None:
        """Set ``fields`` of crash ``crash``."""
        unknown = set(fields) - set(FIELDS) | ({"id"} & set(fields))
        if unknown:
            raise StoreError(f"cannot update field(s) {', '.join(sorted(unknown))}")
        if not fields:
            return
        _validate(fields)
        row = _to_row_fields(fields)
        assignments = ", ".join(f"{name} = ?" for name in row)
        changed = self._write(f"UPDATE crashes SET {assignments} WHERE id = ?",
                              [*row.values(), crash])
        if changed == 0:
            raise StoreError(f"no crash {crash} in the index")
        self._refresh_view(self._uid_of(crash))

    def get(self, crash: str) -> CrashRecord | None:
        rows = self._query(f"{self._select} WHERE id = ?", [crash])
        return rows[0] if rows else None

    def find(self, matches: Sequence[str] = (), since: int | None = None,
             until: int | None = None, uid: int | None = None) -> list[CrashRecord]:
        """Crashes matching ``matches`` (coredumpctl MATCH), newest last.

        ``since``/``until`` are microseconds since the epoch (inclusive); ``uid``
        restricts to one user's crashes (what a non-root caller may see).
        """
        clauses, params = _match_clauses(matches)
        for clause, value in (("timestamp_us >= ?", since), ("timestamp_us <= ?", until),
                              ("uid = ?", uid)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._query(f"{self._select}{where} ORDER BY timestamp_us, rowid", params)

    def core_rows(self, core_states: Sequence[str]) -> list[CoreRow]:
        """The crashes whose ``core_state`` is one of ``core_states`` and that name a core
        path, oldest first: only the columns retention needs.  The handler vacuums twice
        at each crash; reading every row's facts and analysis for it (:meth:`find`) cost
        0.17 ms of CPU a row of the abort fixture's (more for a longer analysis), against
        under 0.01 ms: 10.7 against 0.1 ms for 64 rows, every crash of a storm reading
        all those before it."""
        marks = ", ".join("?" for _ in core_states)
        try:
            rows = self._db.execute(
                f"SELECT id, uid, timestamp_us, core_path, {_MAPPED_OBJECTS} FROM crashes "
                f"WHERE core_state IN ({marks}) AND core_path IS NOT NULL AND core_path != '' "
                f"ORDER BY timestamp_us, rowid", list(core_states)).fetchall()
        except sqlite3.Error as err:
            raise StoreError(f"index {self.path}: {err}") from err
        return [CoreRow(str(crash), uid, timestamp_us or 0, _text(path), _kept_copies(mapped))
                for crash, uid, timestamp_us, path, mapped in rows]

    @property
    def _select(self) -> str:
        """The rows with every column of this schema, those of an older one included
        (SQLite lets WHERE name a result column, so a match reads both alike)."""
        if self.schema < 2:
            return f"SELECT *, {CONTAINER_ID_FROM_FACTS} AS container_id FROM crashes"
        return "SELECT * FROM crashes"

    def delete(self, crash: str) -> bool:
        """Remove the row of ``crash`` (not its core file); True when it existed."""
        uid = self._uid_of(crash)
        removed = self._write("DELETE FROM crashes WHERE id = ?", [crash]) > 0
        self._refresh_view(uid)
        return removed

    def _uid_of(self, crash: str) -> int | None:
        try:
            row = self._db.execute("SELECT uid FROM crashes WHERE id = ?",
                                   _sql_values([crash])).fetchone()
        except sqlite3.Error:
            return None
        return int(row[0]) if row and row[0] is not None else None

    def _refresh_view(self, uid: int | None) -> None:
        """Rebuild ``users/UID.sqlite`` (:mod:`coredumpd.store.userview`) from the
        rows of ``uid`` committed when the view's lock is held, so concurrent writers
        converge.  Root reads the index itself; a failure here never undoes the
        index write (the next write of that user repairs it)."""
        if uid is None or uid == 0 or not self.views:
            return
        from coredumpd.store import userview

        try:
            userview.write_view(self.path, uid, _SCHEMA, SCHEMA_VERSION, list(FIELDS),
                                lambda: userview.public_rows(self._db, uid, FIELDS))
        except (sqlite3.Error, StoreError, OSError) as err:
            self.view_errors.append(f"view of uid {uid}: {err}")

    def count_recent(self, exe: str, since_us: int) -> int:
        """Crashes of ``exe`` at or after ``since_us`` (the handler's rate limit)."""
        try:
            row = self._db.execute(
                "SELECT COUNT(*) FROM crashes WHERE exe = ? AND timestamp_us >= ?",
                _sql_values([exe, since_us])).fetchone()
        except sqlite3.Error as err:
            raise StoreError(f"index {self.path}: {err}") from err
        return int(row[0])

    def _migrate(self, create: bool) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"index {self.path} has schema {version}, newer than this "
                             f"coredumpd ({SCHEMA_VERSION})")
        if version == SCHEMA_VERSION:
            return
        if not create:
            if version == 0:
                raise StoreError(f"index {self.path} is not initialised")
            self.schema = version  # read as it is: a reader never writes
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]  # now, locked
            steps = [_SCHEMA] if version == 0 else \
                [MIGRATIONS[step] for step in range(version + 1, SCHEMA_VERSION + 1)]
            for statements in steps:
                for statement in statements:
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _write(self, sql: str, params: Sequence[Any]) -> int:
        """One statement in its own IMMEDIATE transaction; returns the changed rows."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                changed = self._db.execute(sql, _sql_values(params)).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as err:
            raise StoreError(f"index {self.path}: {err}") from err
        return int(changed)

    def _query(self, sql: str, params: Sequence[Any]) -> list[CrashRecord]:
        try:
            cursor = self._db.execute(sql, _sql_values(params))
            names = [d[0] for d in cursor.description]
            return [record_from_row(dict(zip(names, row))) for row in cursor.fetchall()]
        except sqlite3.Error as err:
            raise StoreError(f"index {self.path}: {err}") from err


def _columns(record: CrashRecord) -> dict[str, Any]:
    """The column values of ``record`` (JSON columns still as objects)."""
    return {name: getattr(record, name) for name in FIELDS}


def _validate(fields: dict[str, Any]) -> None:
    for name, states in (("core_state", CoreState), ("analysis_state", AnalysisState)):
        if name in fields and fields[name] not in tuple(states):
            raise StoreError(f"{name} {fields[name]!r} not in {tuple(s.value for s in states)}")
    for name in _INTEGER_FIELDS & set(fields):
        value = fields[name]
        low, high = (0, 2**64) if name in _U64_FIELDS else (-2**63, 2**63)
        if value is not None and not (isinstance(value, int) and low <= value < high):
            raise StoreError(f"{name}={value!r} is not a 64-bit integer")


def _to_row_fields(fields: dict[str, Any]) -> dict[str, Any]:
    row = {}
    for name, value in fields.items():
        if name in JSON_FIELDS and value is not None:
            if isinstance(value, (Facts, AnalysisResult)):
                value = value.to_json()
            try:
                value = json.dumps(value, sort_keys=True)
            except (TypeError, ValueError) as err:
                raise StoreError(f"{name} is not JSON-serialisable: {err}") from err
        elif name in _U64_FIELDS and value is not None and value >= 2**63:
            value -= 2**64  # SQLite integers are signed 64-bit: store u64 as two's complement
        elif isinstance(value, (CoreState, AnalysisState)):
            value = value.value
        row[name] = value
    return row


_JSON_READERS: dict[str, Callable[[dict[str, Any]], Any]] = {"facts": Facts.from_json, "analysis": AnalysisResult.from_json,
                 "path_taken": dict}


def _json_column(value: Any, name: str, problems: list[str]) -> Any:
    """A JSON column's value: text is parsed, garbage becomes None and a line in
    ``problems`` (one bad row must not stop ``corectl list``)."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except ValueError as err:
            problems.append(f"index column {name} is not valid JSON: {err}")
            return None
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(f"index column {name} has an unexpected type {type(value).__name__}")
        return None
    try:
        return _JSON_READERS[name](value)
    except FormatError as err:
        problems.append(f"index column {name}: {err}")
        return None


def _kept_copies(mapped_objects: Any) -> tuple[str, ...]:
    """The ``kept`` paths of facts.mapped_objects (JSON text); none when unreadable."""
    try:
        objects = json.loads(mapped_objects) if isinstance(mapped_objects, str) else None
    except ValueError:
        return ()
    if not isinstance(objects, dict):
        return ()
    return tuple(entry["kept"] for entry in objects.values()
                 if isinstance(entry, dict) and isinstance(entry.get("kept"), str))


def _sql_values(params: Sequence[Any]) -> list[Any]:
    """``params`` as SQLite takes them: a str that is not UTF-8 becomes its bytes (a BLOB).

    What the crashed process named itself (comm, its path, its command line) is decoded
    with surrogateescape (:mod:`coredumpd.ingest.procfs`): a name with a byte that is not
    UTF-8 holds a surrogate, which sqlite3 cannot encode — the handler died on the
    insert and the crash was lost.  Stored as the bytes the process had, read back by
    :func:`record_from_row` as the same str, matched (``=``, ``IN``) byte for byte."""
    values = list(params)
    for number, value in enumerate(values):
        if type(value) is str and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                values[number] = value.encode("utf-8", "surrogateescape" if _escaped(value)
                                              else "backslashreplace")
    return values


def _text(value: Any) -> str:
    """A text column's value as :func:`_sql_values` stored it (bytes: not UTF-8)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _escaped(text: str) -> bool:
    """Every surrogate of ``text`` is one that surrogateescape makes (U+DC80..U+DCFF)."""
    return all(not 0xD800 <= ord(char) <= 0xDFFF or 0xDC80 <= ord(char) <= 0xDCFF
               for char in text)


def record_from_row(row: Mapping[str, Any]) -> CrashRecord:
    """The record of one row of the crashes table (column name -> SQLite value)."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name in FIELDS:
        value = row.get(name)
        if name in JSON_FIELDS:
            value = _json_column(value, name, problems)
        elif name in _U64_FIELDS and isinstance(value, int) and value < 0:
            value += 2**64
        elif value is None and _SQL_TYPES[name] == "TEXT":
            value = ""
        elif isinstance(value, bytes):  # text that was not UTF-8 (_sql_values)
            value = _text(value)
        values[name] = value
    for name, states in (("core_state", CoreState), ("analysis_state", AnalysisState)):
        try:
            values[name] = states(values[name])
        except ValueError:
            problems.append(f"index column {name} has an unknown value {values[name]!r}")
            values[name] = CoreState.MISSING if name == "core_state" else None
    return CrashRecord(**values, problems=problems)


def match_kind(match: str) -> tuple[str, Any]:
    """How coredumpctl's add_match reads one MATCH argument, for every store of crashes:
    ``("field", (FIELD, record field name, VALUE))`` for FIELD=VALUE (journal names such
    as COREDUMP_PID mapped), ``("exe", absolute path)``, ``("id", text)`` (an ID, which
    may also be a COMM), ``("pid", int)`` or ``("comm", text)``."""
    if "=" in match:
        field, value = match.split("=", 1)
        return "field", (field, JOURNAL_FIELDS.get(field.upper(), field.lower()), value)
    if "/" in match:
        return "exe", os.path.abspath(match)
    if re.fullmatch(rf"[0-9a-f]{{{ID_LENGTH}}}", match):
        return "id", match
    if re.fullmatch(r"[0-9]+", match):
        return "pid", int(match)
    return "comm", match


def _classify(match: str) -> tuple[str, Any]:
    """(column, value) for one MATCH argument, as coredumpctl's add_match."""
    kind, value = match_kind(match)
    if kind != "field":
        return ("id|comm" if kind == "id" else kind), value
    field, column, text = value
    if column not in FIELDS or column in JSON_FIELDS:
        raise StoreError(f"unknown field {field!r} in match {match!r}")
    if column in _INTEGER_FIELDS:
        try:
            return column, _to_row_fields({column: int(text, 0)})[column]
        except ValueError as err:
            raise StoreError(f"{field} needs a number, not {text!r}") from err
    return column, text


def _match_clauses(matches: Iterable[str]) -> tuple[list[str], list[Any]]:
    """SQL conditions: OR within one column, AND across columns."""
    by_column: dict[str, list[Any]] = {}
    for match in matches:
        column, value = _classify(match)
        by_column.setdefault(column, []).append(value)
    clauses: list[str] = []
    params: list[Any] = []
    for column, values in by_column.items():
        if column == "id|comm":
            marks = ", ".join("?" * len(values))
            clauses.append(f"(id IN ({marks}) OR comm IN ({marks}))")
            params += values + values
        else:
            clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
            params += values
    return clauses, params
