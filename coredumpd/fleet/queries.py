"""Reading the fleet database: groups by signature, and crashes across hosts.

Both return plain JSON-able dicts (what ``corectl --json fleet`` prints);
times are ISO 8601 in UTC, as in ``corectl --json list``.  MATCH arguments
take the forms of ``corectl list`` (an id, a PID, a COMM, an executable path,
FIELD=VALUE), over the columns of the fleet table.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from coredumpd.errors import StoreError
from coredumpd.fleet import FleetError
from coredumpd.fleet.schema import SCHEMA
from coredumpd.store.index import match_kind

# FIELD=VALUE names (lower case, or systemd's COREDUMP_* through the index's
# table) -> fleet columns; integer columns compare as numbers.
COLUMNS = {"id": "crash_id", "crash_id": "crash_id", "host": "host", "hostname": "host",
           "machine_id": "machine_id", "container_id": "container_id", "pid": "pid",
           "uid": "uid", "signal": "signal", "signal_name": "signal_name", "comm": "comm",
           "exe": "exe", "unit": "unit", "core_state": "core_state",
           "root_cause": "root_cause", "signature": "signature",
           "version": "product_version", "product_version": "product_version"}
INTEGER_COLUMNS = frozenset(("pid", "uid", "signal"))

GROUPS_SQL = f"""
WITH g AS (
    SELECT signature, count(*) AS crashes, count(DISTINCT host) AS hosts,
           min(crashed_at) AS first_seen, max(crashed_at) AS last_seen,
           array_agg(DISTINCT product_version)
               FILTER (WHERE product_version IS NOT NULL) AS versions
    FROM {SCHEMA}.crashes WHERE {{where}} GROUP BY signature)
SELECT g.signature, e.frames, e.root_cause, g.crashes, g.hosts, g.first_seen, g.last_seen,
       g.versions, e.host, e.crash_id
FROM g LEFT JOIN LATERAL (
    SELECT host, crash_id, frames, root_cause FROM {SCHEMA}.crashes c
    WHERE c.signature = g.signature AND c.crashed_at = g.last_seen
    ORDER BY host, crash_id LIMIT 1) e ON true
ORDER BY g.crashes DESC, g.last_seen DESC, g.signature
"""

LIST_COLUMNS = ("crashed_at", "host", "crash_id", "machine_id", "container_id", "pid", "uid",
                "signal_name", "comm", "exe", "unit", "core_state", "root_cause", "signature",
                "frames", "product_version")


def _iso(value: datetime.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time_clauses(since_us: int | None, until_us: int | None) -> tuple[list[str], list[Any]]:
    clauses, params = [], []
    for op, value in ((">=", since_us), ("<=", until_us)):
        if value is not None:
            clauses.append(f"crashed_at {op} to_timestamp(%s / 1e6)")
            params.append(value)
    return clauses, params


def classify(match: str) -> tuple[str, Any]:
    """(column, value) for one MATCH, as ``corectl list`` reads it (store.index.match_kind)."""
    kind, value = match_kind(match)
    if kind != "field":
        return {"id": "crash_id|comm", "exe": "exe", "pid": "pid", "comm": "comm"}[kind], value
    field, name, text = value
    column = COLUMNS.get(name)
    if column is None:
        raise StoreError(f"unknown field {field!r} in match {match!r} (the fleet has: "
                         f"{', '.join(sorted(COLUMNS))})")
    if column in INTEGER_COLUMNS:
        try:
            return column, int(text, 0)
        except ValueError as err:
            raise StoreError(f"{field} needs a number, not {text!r}") from err
    return column, text


def match_clauses(matches: Sequence[str]) -> tuple[list[str], list[Any]]:
    """SQL conditions: alternatives within one column, all columns must hold."""
    by_column: dict[str, list[Any]] = {}
    for match in matches:
        column, value = classify(match)
        by_column.setdefault(column, []).append(value)
    clauses: list[str] = []
    params: list[Any] = []
    for column, values in by_column.items():
        if column == "crash_id|comm":
            clauses.append("(crash_id = ANY(%s) OR comm = ANY(%s))")
            params += [values, values]
        else:
            clauses.append(f"{column} = ANY(%s)")
            params.append(values)
    return clauses, params


def groups(conn: Any, since_us: int | None = None, until_us: int | None = None,
           matches: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One dict per signature, the most frequent first."""
    clauses, params = _time_clauses(since_us, until_us)
    more, more_params = match_clauses(matches)
    where = " AND ".join(clauses + more) or "true"
    rows = _fetch(conn, GROUPS_SQL.format(where=where), params + more_params)
    return [{"signature": signature or None, "frames": frames, "root_cause": root_cause,
             "crashes": crashes, "hosts": hosts, "first_seen": _iso(first),
             "last_seen": _iso(last), "versions": sorted(versions or []),
             "example": {"host": host, "id": crash_id}}
            for (signature, frames, root_cause, crashes, hosts, first, last, versions, host,
                 crash_id) in rows]


def crashes(conn: Any, matches: Sequence[str] = (), since_us: int | None = None,
            until_us: int | None = None, newest: int | None = None) -> list[dict[str, Any]]:
    """Matching crashes of every host, oldest first (only the ``newest`` N if given)."""
    clauses, params = _time_clauses(since_us, until_us)
    more, more_params = match_clauses(matches)
    where = " AND ".join(clauses + more) or "true"
    sql = (f"SELECT {', '.join(LIST_COLUMNS)}, record->'row'->>'core_path' FROM "
           f"{SCHEMA}.crashes WHERE {where} ORDER BY crashed_at DESC, host, crash_id")
    if newest is not None:
        sql += f" LIMIT {int(newest)}"
    rows = _fetch(conn, sql, params + more_params)
    out = []
    for row in reversed(rows):
        entry = dict(zip(LIST_COLUMNS, row, strict=False))
        entry["timestamp"] = _iso(entry.pop("crashed_at"))
        entry["id"] = entry.pop("crash_id")
        entry["signature"] = entry["signature"] or None
        entry["core_path"] = row[-1] or None
        out.append(entry)
    return out


def _fetch(conn: Any, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    import psycopg

    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            rows = list(cur.fetchall())
        conn.rollback()  # read-only: end the transaction
        return rows
    except psycopg.errors.UndefinedTable as err:
        raise FleetError("the fleet database has no coredumpd schema yet (it is created "
                         "by the first `coredumpd publish`)") from err
    except psycopg.Error as err:
        raise FleetError(f"fleet database: {' '.join(str(err).split())}") from err
