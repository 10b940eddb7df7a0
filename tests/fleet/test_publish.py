"""Outbox and publisher against a real PostgreSQL server (no mocks)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys

import psycopg
import pytest

from coredumpd.config import Config, load_config
from coredumpd.fleet import FleetError
from coredumpd.fleet.outbox import Outbox
from coredumpd.fleet.publisher import drain, enqueue, send_batch
from coredumpd.fleet.queries import crashes, groups
from coredumpd.fleet.record import build_record, record_json
from coredumpd.fleet.schema import SCHEMA, VERSION, current_version, ensure_schema
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
    assert drain(config).stored == 3
    queue(config, 5)  # three again (a reanalysis, a batch whose commit was not seen) + two
    result = drain(config)
    assert (result.sent, result.stored) == (5, 2)
    with psycopg.connect(fleet_dsn) as conn:
        record = record_json(build_record(crash_record(), host="alpha"))
        assert send_batch(conn, [record, record]) == 1  # the same crash twice in one batch
        assert send_batch(conn, [record]) == 0
    assert len(rows(fleet_dsn)) == 6


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
    assert drain(dataclasses.replace(config, fleet_database=fleet_dsn)).sent == 2


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
