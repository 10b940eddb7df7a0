"""Outbox and publisher against a real PostgreSQL server (no mocks)."""

from __future__ import annotations

import datetime
import os
import pathlib
import subprocess
import sys
import threading

import psycopg
import pytest

from coredumpd.config import Config, load_config
from coredumpd.fleet import FleetError
from coredumpd.fleet.outbox import Outbox
from coredumpd.fleet.publisher import drain, enqueue, send_batch
from coredumpd.fleet.queries import crashes, groups
from coredumpd.fleet.record import build_record, record_json
from coredumpd.fleet.schema import (
    INSERT_SQL,
    MIGRATIONS,
    SCHEMA,
    VERSION,
    current_version,
    ensure_schema,
)
from coredumpd.values import replace
from tests.fleet.test_record import crash_record
from tests.support.postgres import PostgresServer

COREDUMPD = str(pathlib.Path(sys.executable).parent / "coredumpd")


def config_for(tmp_path: pathlib.Path, dsn: str, host: str = "alpha") -> Config:
    directory = tmp_path / host
    directory.mkdir(exist_ok=True)
    return Config(directory=str(directory), fleet_database=dsn, fleet_host=host)


def queue(config: Config, count: int, first: int = 0, **changes: object) -> list[str]:
    ids = []
    for number in range(first, first + count):
        record = crash_record()
        record.id = f"{number:012x}"
        record.pid = 1000 + number
        for name, value in changes.items():
            setattr(record, name, value)
        assert enqueue(config, record) == "queued"
        ids.append(record.id)
    return ids


def rows(dsn: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT host, machine_id, crash_id FROM {SCHEMA}.crashes "
                            "ORDER BY crash_id").fetchall()


def test_the_schema_is_created_and_versioned(fleet_dsn: str) -> None:
    with psycopg.connect(fleet_dsn) as conn:
        assert current_version(conn) == 0
        assert ensure_schema(conn) == 0
        assert current_version(conn) == VERSION
        assert ensure_schema(conn) == VERSION  # nothing to do the second time
        conn.execute(f"UPDATE {SCHEMA}.schema_version SET version = %s", (VERSION + 1,))
        conn.commit()
        with pytest.raises(FleetError, match="newer than this coredumpd"):
            ensure_schema(conn)


def test_the_outbox_survives_a_restart_and_drains_in_batches(
        tmp_path: pathlib.Path, fleet_dsn: str) -> None:
    config = config_for(tmp_path, fleet_dsn)
    ids = queue(config, 25)
    with Outbox(config.directory) as outbox:  # a new process: the file is all there is
        assert outbox.counts() == (25, 0)
    result = drain(config, batch_size=10)
    assert (result.sent, result.stored, result.waiting, result.error) == (25, 25, 0, None)
    assert [row[2] for row in rows(fleet_dsn)] == ids
    assert os.stat(os.path.join(config.directory, "fleet-outbox.sqlite")).st_mode & 0o777 \
        == 0o600


def test_publishing_is_idempotent_on_the_crash_id(tmp_path: pathlib.Path,
                                                  fleet_dsn: str) -> None:
    config = config_for(tmp_path, fleet_dsn)
    queue(config, 3)
    with Outbox(config.directory) as outbox:
        sent = [item.record for item in outbox.oldest(10)]
    assert drain(config).stored == 3
    with psycopg.connect(fleet_dsn) as conn:  # a batch whose commit was not seen, sent again
        assert send_batch(conn, sent) == 0
        record = record_json(build_record(crash_record(), host="alpha"))
        assert send_batch(conn, [record, record]) == 1  # the same crash twice in one batch
        assert send_batch(conn, [record]) == 0
    assert len(rows(fleet_dsn)) == 4


def signatures(dsn: str) -> list[tuple[str, str, str | None, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT crash_id, signature, root_cause, frames FROM "
                            f"{SCHEMA}.crashes ORDER BY crash_id").fetchall()


def test_a_reanalysis_replaces_the_published_record(tmp_path: pathlib.Path,
                                                    fleet_dsn: str) -> None:
    """The newer analysis of a crash replaces the older, whatever order they arrive in,
    and the groups are counted again: never two rows of one crash."""
    config = config_for(tmp_path, fleet_dsn)
    ids = queue(config, 3)
    assert drain(config).stored == 3
    with psycopg.connect(fleet_dsn) as conn:
        assert [(g["signature"], g["crashes"]) for g in groups(conn)] == [
            ("0123456789abcdef0123456789abcdef01234567", 3)]
    first = crash_record()
    first.id = ids[0]
    published = record_json(build_record(first, host="alpha"))
    newer = crash_record()  # symbols came: another signature, another root cause
    newer.id, newer.pid, newer.root_cause = ids[0], 1000, "bad-jump"
    assert newer.analysis is not None
    newer.signature = newer.analysis.signature = "f" * 40
    newer.analysis.signature_frames = ["prog!decode_frame", "prog!main"]
    assert enqueue(config, newer) == "queued"
    result = drain(config)
    assert (result.sent, result.stored, result.waiting) == (1, 1, 0)
    assert signatures(fleet_dsn) == [
        (ids[0], "f" * 40, "bad-jump", "decode_frame | main"),
        (ids[1], "0123456789abcdef0123456789abcdef01234567", "null-deref", "parse_header | main"),
        (ids[2], "0123456789abcdef0123456789abcdef01234567", "null-deref", "parse_header | main")]
    with psycopg.connect(fleet_dsn) as conn:
        assert [(g["frames"], g["crashes"], g["hosts"]) for g in groups(conn)] == [
            ("parse_header | main", 2, 1), ("decode_frame | main", 1, 1)]
        send_batch(conn, [published])  # the older analysis, late: it does not come back
        assert [g["crashes"] for g in groups(conn)] == [2, 1]
    assert len(signatures(fleet_dsn)) == 3


def test_a_reanalysis_queued_during_a_drain_is_not_lost(tmp_path: pathlib.Path,
                                                        fleet_dsn: str) -> None:
    config = config_for(tmp_path, fleet_dsn)
    (crash_id,) = queue(config, 1)
    with Outbox(config.directory) as outbox:
        batch = outbox.oldest(10)  # a drainer took the first analysis...
        queue(config, 1)  # ...the reanalysis replaced it in the outbox...
        outbox.remove(batch)  # ...and the drainer forgets what it sent, only that
        assert outbox.counts() == (1, 0)
        assert outbox.oldest(10)[0].record != batch[0].record
    assert drain(config).sent == 1
    assert [row[2] for row in rows(fleet_dsn)] == [crash_id]


def test_concurrent_analyses_of_one_crash_leave_one_row(fleet_dsn: str) -> None:
    """Two publishers of one host in flight at once (a drain by hand beside the automatic
    one, a reanalysis between them): the trigger's lock makes the later one see the other."""
    record = crash_record()
    older = record_json(build_record(record, host="alpha", machine_id="m" * 32,
                                     analyzed_us=1))
    newer = record_json(build_record(record, host="alpha", machine_id="m" * 32,
                                     analyzed_us=2))
    with psycopg.connect(fleet_dsn) as setup:
        ensure_schema(setup)
    with psycopg.connect(fleet_dsn) as first, psycopg.connect(fleet_dsn) as second:
        with first.cursor() as cur:
            cur.execute(INSERT_SQL, ("[" + newer + "]",))  # not committed yet
        done: list[int] = []
        thread = threading.Thread(target=lambda: done.append(send_batch(second, [older])))
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waits for the first's lock
        first.commit()
        thread.join(10)
    assert done == [1]  # inserted, then deleted by its own trigger: the newer stays
    with psycopg.connect(fleet_dsn) as conn:
        assert conn.execute(f"SELECT analyzed_at FROM {SCHEMA}.crashes").fetchall() == [
            (datetime.datetime(1970, 1, 1, 0, 0, 0, 2, tzinfo=datetime.UTC),)]


def test_version_1_rows_are_migrated_and_replaced(fleet_dsn: str) -> None:
    """A database of schema version 1 (rows without analyzed_at) taken to the current
    version: its rows stay and count, and the next analysis of one replaces it."""
    with psycopg.connect(fleet_dsn) as conn:
        with conn.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {SCHEMA}")
            cur.execute(f"CREATE TABLE {SCHEMA}.schema_version (version integer NOT NULL)")
            cur.execute(f"INSERT INTO {SCHEMA}.schema_version VALUES (1)")
            cur.execute(MIGRATIONS[0])
            cur.execute(f"INSERT INTO {SCHEMA}.crashes (machine_id, crash_id, host, crashed_at, "
                        "signature, record) VALUES ('m', 'c1', 'old', now(), 's1', '{}'), "
                        "('m', 'c2', 'old', now(), 's1', '{}')")
        conn.commit()
        assert ensure_schema(conn) == 1 and current_version(conn) == VERSION
        assert [g["crashes"] for g in groups(conn)] == [2]
        record = crash_record()
        record.id = "c1"
        send_batch(conn, [record_json(build_record(record, host="new", machine_id="m"))])
        assert sorted((g["signature"], g["crashes"]) for g in groups(conn)) == [
            ("0123456789abcdef0123456789abcdef01234567", 1), ("s1", 1)]


def test_a_database_that_is_down_loses_nothing(tmp_path: pathlib.Path) -> None:
    with PostgresServer() as server:
        dsn = server.dsn(server.create_database())
        config = config_for(tmp_path, dsn)
        queue(config, 4)
        server.stop()
        waits: list[float] = []
        result = drain(config, retry_for=3, sleep=waits.append)
        assert (result.sent, result.waiting) == (0, 4)
        assert result.error is not None and "cannot connect" in result.error
        assert waits == [1.0, 2.0]  # retried with a backoff until retry_for was spent
        server.start()
        result = drain(config)
        assert (result.sent, result.waiting, result.error) == (4, 0, None)
        assert len(rows(dsn)) == 4


def test_a_refusing_database_loses_nothing(tmp_path: pathlib.Path, fleet_dsn: str,
                                          postgres_server: PostgresServer) -> None:
    with psycopg.connect(fleet_dsn) as conn:
        ensure_schema(conn)
        conn.execute("CREATE ROLE nobody_here LOGIN")
        conn.commit()
    dbname = fleet_dsn.split("@/", 1)[1].split("?")[0]
    config = config_for(tmp_path, postgres_server.dsn(dbname, user="nobody_here"))
    queue(config, 2)
    result = drain(config)
    assert (result.sent, result.waiting) == (0, 2) and "permission denied" in str(result.error)
    with Outbox(config.directory) as outbox:
        assert outbox.counts() == (2, 0)
    assert drain(replace(config, fleet_database=fleet_dsn)).sent == 2


def test_a_record_the_database_cannot_take_is_kept_aside(tmp_path: pathlib.Path,
                                                        fleet_dsn: str) -> None:
    config = config_for(tmp_path, fleet_dsn)
    queue(config, 2)
    with Outbox(config.directory) as outbox:
        outbox.add("bad000000000", '{"crash_id": "bad000000000", "timestamp_us": "soon"}')
    queue(config, 2, first=2)
    result = drain(config)
    assert (result.sent, result.waiting, result.rejected) == (4, 0, 1)
    assert len(rows(fleet_dsn)) == 4


def test_the_grants_of_docs_fleet_md(tmp_path: pathlib.Path, fleet_dsn: str,
                                     postgres_server: PostgresServer) -> None:
    """A publisher with INSERT publishes and cannot read; a reader with SELECT reads."""
    owner = config_for(tmp_path, fleet_dsn, host="owner")
    queue(owner, 1)
    assert drain(owner).sent == 1  # the owner's first publish creates the schema
    grants = pathlib.Path(__file__).resolve().parents[2] / "docs" / "FLEET.md"
    sql = grants.read_text().split("```sql\n", 1)[1].split("```", 1)[0]
    with psycopg.connect(fleet_dsn, autocommit=True) as conn:
        conn.execute(sql)
    dbname = fleet_dsn.split("@/", 1)[1].split("?")[0]
    publisher = config_for(tmp_path, postgres_server.dsn(dbname, user="coredumpd_publisher"),
                           host="beta")
    queue(publisher, 2, first=10)
    assert drain(publisher).stored == 2
    queue(publisher, 1, first=10)  # a reanalysis: INSERT alone replaces the older record
    assert drain(publisher).stored == 1
    with psycopg.connect(publisher.fleet_database) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(f"SELECT * FROM {SCHEMA}.crashes")
    reader = postgres_server.dsn(dbname, user="coredumpd_reader")
    with psycopg.connect(reader) as conn:
        assert len(crashes(conn)) == 3
        assert groups(conn)[0]["hosts"] == 2
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            send_batch(conn, [record_json(build_record(crash_record(), host="x"))])


def test_coredumpd_publish_drains_by_hand(tmp_path: pathlib.Path, fleet_dsn: str) -> None:
    config_path = tmp_path / "c.conf"
    config_path.write_text(f"[Coredump]\nDirectory={tmp_path / 'store'}\n"
                           f"[Fleet]\nDatabase={fleet_dsn}\nHost=gamma\n")
    config = load_config(str(config_path))
    assert (config.fleet_database, config.fleet_host) == (fleet_dsn, "gamma")
    os.makedirs(config.directory)
    queue(config, 3)
    done = subprocess.run([COREDUMPD, "publish", "--config", str(config_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "published 3 records (0 were already in the database); 0 waiting" in done.stdout
    assert {row[0] for row in rows(fleet_dsn)} == {"gamma"}
    config_path.write_text(f"[Coredump]\nDirectory={config.directory}\n"
                           "[Fleet]\nDatabase=postgresql:///nowhere?host=/nonexistent\n")
    queue(config, 1, first=5)
    done = subprocess.run([COREDUMPD, "publish", "--config", str(config_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "1 waiting" in done.stdout and "cannot connect" in done.stderr
