"""The local outbox: fleet records waiting to be published, in the store.

A SQLite file beside the index (``fleet-outbox.sqlite``, root's, mode 0600:
records hold command lines).  The analysis job adds a record; a publisher
takes the oldest in batches and removes them only after the database
committed them, so a crash, a reboot or a database that is down loses
nothing.  One row per crash id: enqueueing a crash again (a reanalysis)
replaces its waiting record.  A record that the database rejects for its
content stays here, marked ``rejected`` with the reason, out of the batches.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Self

from coredumpd.errors import StoreError
from coredumpd.fleet import FleetError
from coredumpd.paths import FLEET_LOCK_NAME, FLEET_OUTBOX_NAME, TEMPORARY_FILE_MODE
from coredumpd.store.sqlitefile import open_database

BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    crash_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    enqueued_us INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    rejected TEXT
);
CREATE INDEX IF NOT EXISTS outbox_waiting ON outbox (enqueued_us) WHERE rejected IS NULL;
"""


class Waiting(NamedTuple):
    crash_id: str
    record: str  # the record's JSON


def outbox_path(directory: str) -> str:
    return os.path.join(directory, FLEET_OUTBOX_NAME)


def lock_path(directory: str) -> str:
    return os.path.join(directory, FLEET_LOCK_NAME)


class Outbox:
    """The outbox file of one store directory."""

    def __init__(self, directory: str) -> None:
        self.path = outbox_path(directory)
        try:
            self._db = open_database(self.path, TEMPORARY_FILE_MODE, "the fleet outbox",
                                     BUSY_TIMEOUT_MS)
            self._db.executescript(_SCHEMA)
        except StoreError as err:
            raise FleetError(str(err)) from err
        except sqlite3.Error as err:
            raise FleetError(f"cannot open the fleet outbox {self.path}: {err}") from err

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, crash_id: str, record: str) -> None:
        """Queue ``record`` (JSON) for ``crash_id``, replacing one still waiting."""
        self._run("INSERT OR REPLACE INTO outbox (crash_id, record, enqueued_us) "
                  "VALUES (?, ?, ?)", (crash_id, record, time.time_ns() // 1000))

    def oldest(self, count: int) -> list[Waiting]:
        """Up to ``count`` waiting records, oldest first (rejected ones left out)."""
        rows = self._query("SELECT crash_id, record FROM outbox WHERE rejected IS NULL "
                           "ORDER BY enqueued_us, crash_id LIMIT ?", (count,))
        return [Waiting(str(crash_id), str(record)) for crash_id, record in rows]

    def remove(self, sent: Sequence[Waiting]) -> None:
        """Forget records the database committed: only as they were sent (a reanalysis
        may have replaced one since, and that one still has to go)."""
        self._many("DELETE FROM outbox WHERE crash_id = ? AND record = ?",
                   [(item.crash_id, item.record) for item in sent])

    def failed(self, crash_ids: Sequence[str], error: str) -> None:
        """Count a failed attempt (the records stay waiting)."""
        self._many("UPDATE outbox SET attempts = attempts + 1, last_error = ? "
                   "WHERE crash_id = ?", [(error, i) for i in crash_ids])

    def reject(self, crash_id: str, reason: str) -> None:
        """Keep a record the database refuses for its content, out of the batches."""
        self._run("UPDATE outbox SET rejected = ? WHERE crash_id = ?", (reason, crash_id))

    def counts(self) -> tuple[int, int]:
        """(waiting, rejected)."""
        rows = self._query("SELECT count(*) FILTER (WHERE rejected IS NULL), "
                           "count(*) FILTER (WHERE rejected IS NOT NULL) FROM outbox", ())
        waiting, rejected = rows[0]
        return int(waiting or 0), int(rejected or 0)

    def _run(self, sql: str, params: Sequence[object]) -> None:
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as err:
            raise FleetError(f"fleet outbox {self.path}: {err}") from err

    def _many(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        try:
            with self._db:  # one transaction
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(sql, rows)
        except sqlite3.Error as err:
            raise FleetError(f"fleet outbox {self.path}: {err}") from err

    def _query(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        try:
            return list(self._db.execute(sql, params))
        except sqlite3.Error as err:
            raise FleetError(f"fleet outbox {self.path}: {err}") from err
