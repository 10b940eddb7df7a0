"""Publishing: the outbox drained into the fleet database, in batches.

:func:`enqueue` runs in the detached analysis job, after the crash was
stored and analysed: it never raises and never connects.  :func:`drain`
sends the waiting records, :data:`BATCH_SIZE` per statement, and removes a
batch from the outbox only after the database committed it (and only the
records as they were sent: a reanalysis queued meanwhile stays).  The insert
is idempotent on the crash id (``ON CONFLICT DO NOTHING`` on (machine_id,
crash_id, analyzed_at)): a batch sent twice, because the connection broke
after the commit or two drainers raced, stores each crash once; a newer
analysis of a crash (``corectl reanalyze``) replaces the older one
(:mod:`coredumpd.fleet.schema`, version 2).

A database that is down, slow (``statement_timeout``) or refusing (wrong
password, no grant) costs nothing but a retry: the records wait.  The
automatic drain after a crash holds ``fleet-outbox.lock`` so that a crash
storm makes one connection, not hundreds, and retries with a backoff for
:data:`AUTO_RETRY_FOR` seconds; ``coredumpd publish`` drains once, by hand.
A record the database refuses for its content (a data error) is marked
rejected in the outbox with the reason instead of blocking the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from coredumpd.config import Config
from coredumpd.fleet import FleetError
from coredumpd.fleet.outbox import Outbox, Waiting, lock_path
from coredumpd.fleet.record import build_record, record_json
from coredumpd.fleet.schema import INSERT_SQL, ensure_schema
from coredumpd.model import CrashRecord
from coredumpd.paths import TEMPORARY_FILE_MODE

BATCH_SIZE = 500
CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_MS = 30_000
AUTO_RETRY_FOR = 600.0  # seconds the automatic drain keeps retrying a database that is down
MAX_BACKOFF_S = 30.0


class DrainResult(NamedTuple):
    sent: int  # records the database committed in this drain
    stored: int  # of which new to the database (the others it had already)
    waiting: int  # records still in the outbox
    rejected: int  # records the database refused for their content (kept in the outbox)
    error: str | None  # why records are still waiting, if they are


def enqueue(config: Config, record: CrashRecord) -> str:
    """Put the fleet record of ``record`` into the outbox; returns what happened
    (for ``path_taken``).  Never raises: publishing must not fail a crash."""
    try:
        fleet = build_record(record, host=config.fleet_host)
        with Outbox(config.directory) as outbox:
            outbox.add(fleet.crash_id, record_json(fleet))
    except Exception as err:  # noqa: BLE001 - the crash is stored; say why it is not queued
        return f"failed: {type(err).__name__}: {err}"
    return "queued"


def connect(dsn: str) -> Any:
    """A connection to the fleet database (FleetError when it cannot be made)."""
    import psycopg

    try:
        return psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S,
                               options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
    except psycopg.Error as err:
        raise FleetError(f"cannot connect to the fleet database: {_oneline(err)}") from err


def send_batch(conn: Any, records: list[str]) -> int:
    """Insert the JSON ``records`` in one statement; the number that were new."""
    with conn.cursor() as cur:
        cur.execute(INSERT_SQL, ("[" + ",".join(records) + "]",))
        stored = cur.rowcount
    conn.commit()
    return int(stored)


def drain(config: Config, retry_for: float = 0.0, batch_size: int = BATCH_SIZE,
          sleep: Callable[[float], None] = time.sleep) -> DrainResult:
    """Send the outbox until it is empty, or until the database failed and
    ``retry_for`` seconds of retries (with a backoff) are spent."""
    if not config.fleet_database:
        raise FleetError("no fleet database configured ([Fleet] Database=)")
    with Outbox(config.directory) as outbox:
        return _Drain(config.fleet_database, outbox, batch_size).run(retry_for, sleep)


def drain_after_crash(config: Config) -> DrainResult | None:
    """The analysis job's drain: only when no other process drains this outbox
    (None then); retried for :data:`AUTO_RETRY_FOR` seconds.  Each drainer
    checks the outbox again after releasing the lock, so a record queued while
    another drained is never left behind."""
    result = None
    while True:
        fd = os.open(lock_path(config.directory), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     TEMPORARY_FILE_MODE)
        with os.fdopen(fd, "r+", encoding="ascii") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return result  # the holder drains what we queued
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            result = drain(config, retry_for=AUTO_RETRY_FOR)
        if result.error is not None:
            return result
        with Outbox(config.directory) as outbox:  # queued while we held the lock?
            if outbox.counts()[0] == 0:
                return result


class _Drain:
    def __init__(self, dsn: str, outbox: Outbox, batch_size: int) -> None:
        self.dsn = dsn
        self.outbox = outbox
        self.batch_size = batch_size
        self.conn: Any = None
        self.sent = self.stored = 0

    def run(self, retry_for: float, sleep: Callable[[float], None]) -> DrainResult:
        deadline = time.monotonic() + retry_for
        backoff = 1.0
        error: str | None = None
        try:
            while True:
                try:
                    if not self._send_all():
                        error = None
                        break
                except FleetError as err:
                    error = str(err)
                    self._disconnect()
                    if time.monotonic() + backoff > deadline:
                        break
                    sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            self._disconnect()
        waiting, rejected = self.outbox.counts()
        return DrainResult(self.sent, self.stored, waiting, rejected, error)

    def _send_all(self) -> bool:
        """Send batches until the outbox is empty (False); raises FleetError."""
        while True:
            batch = self.outbox.oldest(self.batch_size)
            if not batch:
                return False
            if self.conn is None:
                self.conn = connect(self.dsn)
                self._call(ensure_schema, self.conn)
            self._send(batch)

    def _send(self, batch: list[Waiting]) -> None:
        import psycopg

        ids = [item.crash_id for item in batch]
        try:
            self.stored += send_batch(self.conn, [item.record for item in batch])
        except psycopg.DataError as err:
            self.conn.rollback()
            self._send_one_by_one(batch, err)
            return
        except psycopg.Error as err:
            self.outbox.failed(ids, _oneline(err))
            raise FleetError(f"the fleet database refused a batch: {_oneline(err)}") from err
        self.outbox.remove(batch)
        self.sent += len(batch)

    def _send_one_by_one(self, batch: list[Waiting], batch_error: Exception) -> None:
        """A batch with a record the database cannot take: find it, keep the others going."""
        import psycopg

        for item in batch:
            try:
                self.stored += send_batch(self.conn, [item.record])
            except psycopg.DataError as err:
                self.conn.rollback()
                self.outbox.reject(item.crash_id, _oneline(err))
                continue
            except psycopg.Error as err:
                raise FleetError(f"the fleet database refused a record: {_oneline(err)} "
                                 f"(after {_oneline(batch_error)})") from err
            self.outbox.remove([item])
            self.sent += 1

    def _call(self, function: Callable[[Any], Any], conn: Any) -> Any:
        import psycopg

        try:
            return function(conn)
        except psycopg.Error as err:
            raise FleetError(f"fleet database: {_oneline(err)}") from err

    def _disconnect(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # a broken connection is dropped either way
                self.conn.close()
            self.conn = None


def _oneline(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
