"""The SQLite crash index: round trips, coredumpctl MATCH semantics, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import stat

import pytest

from coredumpd.errors import StoreError
from coredumpd.model import AnalysisResult, AnalysisState, Annotation, CoreState, Facts
from coredumpd.store import index as index_module
from coredumpd.store.index import SCHEMA_VERSION, CrashRecord, Index, crash_id

BOOT = "8d2a6e7f0c1b4a5e9f3d2c1b0a998877"


def record(pid: int, ts: int, **fields) -> CrashRecord:
    base = {"boot_id": BOOT, "uid": 1000, "gid": 1000, "signal": 11, "comm": "prog",
            "exe": "/usr/bin/prog"}
    base.update(fields)
    return CrashRecord(pid=pid, timestamp_us=ts, **base)


@pytest.fixture
def index(tmp_path):
    with Index(str(tmp_path / "store" / "index.sqlite")) as idx:
        yield idx


def test_round_trip_every_field(index):
    full = record(
        4242, 1_700_000_000_000_001, tid=4243, ns_pid=1, si_code=128, fault_address=2**64 - 16,
        hostname="h", cmdline="prog --flag 'a b'", unit="x.service", cgroup="0::/system.slice/x",
        rlimit_core=2**64 - 1, dump_mode=1, core_path="/var/lib/coredumpd/core.x.lz4",
        core_state="truncated", core_reason="ExternalSizeMax", core_size=1 << 40,
        stored_size=12345, facts=Facts.from_json({"version": 1, "proc": {"comm": "prog\n\x1b"}}),
        analysis_state="done", analysis=AnalysisResult(annotations=[Annotation("null-deref", "NULL", "high")]),
        root_cause="null-deref", signature="ab" * 20, path_taken={"journal": "sent"},
    )
    crash = index.insert(full)
    assert crash == full.id == crash_id(BOOT, 4242, 1_700_000_000_000_001)
    assert len(crash) == 12 and int(crash, 16) >= 0
    assert index.get(crash) == full
    assert index.get("000000000000") is None


def test_defaults_round_trip(index):
    crash = index.insert(CrashRecord(pid=1, timestamp_us=5))
    got = index.get(crash)
    assert got == CrashRecord(pid=1, timestamp_us=5, id=crash)
    assert got.core_state == "none" and got.analysis_state == "pending" and got.facts is None


def test_update(index):
    crash = index.insert(record(10, 100))
    index.update(crash, analysis_state="done", analysis=AnalysisResult(),
                 root_cause="abort-hlt")
    got = index.get(crash)
    assert got.analysis == AnalysisResult() and got.root_cause == "abort-hlt"
    with pytest.raises(StoreError):
        index.update(crash, nonsense=1)
    with pytest.raises(StoreError):
        index.update(crash, id="x")
    with pytest.raises(StoreError):
        index.update(crash, core_state="gone")
    with pytest.raises(StoreError):
        index.update("ffffffffffff", root_cause="x")
    with pytest.raises(StoreError):
        index.update(crash, facts={"x": object()})


def test_invalid_records_rejected(index):
    with pytest.raises(StoreError):
        index.insert(record(1, 1, core_state="weird"))
    with pytest.raises(StoreError):
        index.insert(record(1, 1, core_size=2**64))
    with pytest.raises(StoreError):
        index.insert(record(1, 1, rlimit_core=-1))
    explicit = index.insert(record(1, 1, id="abcabcabcabc"))
    with pytest.raises(StoreError):
        index.insert(record(2, 2, id=explicit))


def test_same_pid_and_time_get_distinct_ids(index):
    first = index.insert(record(7, 7))
    second = index.insert(record(7, 7))
    assert first != second and len(index.find()) == 2


@pytest.fixture
def populated(index):
    rows = [
        record(100, 1_000, comm="bash", exe="/usr/bin/bash", uid=1000),
        record(200, 2_000, comm="node", exe="/usr/bin/node", uid=0, unit="web.service"),
        record(300, 3_000, comm="bash", exe="/opt/bash", uid=1001),
        record(100, 4_000, comm="sleep", exe="/usr/bin/sleep", uid=1000, signal=6,
               container_id=DOCKER_ID),
    ]
    ids = [index.insert(r) for r in reversed(rows)]  # inserted out of order
    return index, list(reversed(ids))


DOCKER_ID = "c0ffee" + "5" * 58


def pids(records):
    return [(r.pid, r.timestamp_us) for r in records]


def test_find_newest_last(populated):
    index, _ = populated
    assert pids(index.find()) == [(100, 1_000), (200, 2_000), (300, 3_000), (100, 4_000)]


@pytest.mark.parametrize("matches, expected", [
    (["100"], [(100, 1_000), (100, 4_000)]),
    (["100", "200"], [(100, 1_000), (200, 2_000), (100, 4_000)]),     # same field: OR
    (["bash"], [(100, 1_000), (300, 3_000)]),
    (["bash", "100"], [(100, 1_000)]),                                 # fields: AND
    (["/usr/bin/bash"], [(100, 1_000)]),
    (["/usr/bin/bash", "/opt/bash"], [(100, 1_000), (300, 3_000)]),
    (["COREDUMP_UNIT=web.service"], [(200, 2_000)]),
    (["unit=web.service"], [(200, 2_000)]),
    (["COREDUMP_SIGNAL=6"], [(100, 4_000)]),
    (["signal=0x6"], [(100, 4_000)]),
    (["COREDUMP_COMM=node", "COREDUMP_COMM=sleep"], [(200, 2_000), (100, 4_000)]),
    (["nothing"], []),
    ([f"CONTAINER_ID={DOCKER_ID}"], [(100, 4_000)]),
    ([f"COREDUMP_CONTAINER_ID={DOCKER_ID}", "sleep"], [(100, 4_000)]),
    ([f"container_id={DOCKER_ID}", "bash"], []),
    (["CONTAINER_ID=c0ffee"], []),  # a FIELD=VALUE match is exact, as coredumpctl's
])
def test_find_matches_like_coredumpctl(populated, matches, expected):
    index, _ = populated
    assert pids(index.find(matches)) == expected


def test_find_by_id_and_relative_path(populated, tmp_path, monkeypatch):
    index, ids = populated
    assert pids(index.find([ids[2]])) == [(300, 3_000)]
    assert pids(index.find([f"COREDUMP_ID={ids[1]}"])) == [(200, 2_000)]
    monkeypatch.chdir("/usr")
    assert pids(index.find(["bin/sleep"])) == [(100, 4_000)]  # made absolute like coredumpctl


def test_comm_that_looks_like_an_id(index):
    index.insert(record(5, 5, comm="deadbeefcafe"))
    assert pids(index.find(["deadbeefcafe"])) == [(5, 5)]


def test_find_time_and_uid_filters(populated):
    index, _ = populated
    assert pids(index.find(since=2_000, until=3_000)) == [(200, 2_000), (300, 3_000)]
    assert pids(index.find(uid=1000)) == [(100, 1_000), (100, 4_000)]
    assert pids(index.find(["bash"], uid=1000)) == [(100, 1_000)]


@pytest.mark.parametrize("bad", ["NOPE=1", "pid=abc", "facts=x", "COREDUMP_PID="])
def test_bad_field_matches(populated, bad):
    index, _ = populated
    with pytest.raises(StoreError):
        index.find([bad])


def test_delete_and_count_recent(populated):
    index, ids = populated
    assert index.count_recent("/usr/bin/bash", 0) == 1
    assert index.count_recent("/usr/bin/bash", 1_001) == 0
    assert index.delete(ids[0]) is True
    assert index.delete(ids[0]) is False
    assert index.count_recent("/usr/bin/bash", 0) == 0


def test_permissions_wal_and_schema_version(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "fresh" / "index.sqlite"
        Index(str(path)).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o751
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Index(str(path))


def test_symlinked_index_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "index.sqlite").symlink_to(target)
    with pytest.raises(StoreError):
        Index(str(tmp_path / "store" / "index.sqlite"))


def test_not_a_database(tmp_path):
    path = tmp_path / "index.sqlite"
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreError):
        Index(str(path))


def _insert_many(path: str, worker: int, count: int) -> None:
    with Index(path) as index:
        for n in range(count):
            index.insert(record(worker * 100_000 + n, 1_000_000 + n, comm=f"w{worker}"))


def test_concurrent_inserts_from_many_processes(tmp_path):
    """8 processes x 40 inserts at once: no lost or duplicate row, no error."""
    path = str(tmp_path / "store" / "index.sqlite")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_insert_many, args=(path, w, 40)) for w in range(8)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    with Index(path) as index:
        rows = index.find()
    assert len(rows) == 8 * 40
    assert len({r.id for r in rows}) == 8 * 40
    assert {(r.pid, r.timestamp_us) for r in rows} == {
        (w * 100_000 + n, 1_000_000 + n) for w in range(8) for n in range(40)}


def _open_and_insert(path: str, worker: int, barrier) -> None:
    barrier.wait()
    with Index(path) as index:
        index.insert(record(worker, 1_000_000 + worker))


def test_a_new_index_opened_by_many_processes_at_once(tmp_path):
    """Handlers of a storm open a store's new index at the same moment: SQLite does
    not call the busy handler for the switch to WAL, so all but the first used to
    fail at once with "database is locked" and their crashes had no row (the storm
    test's lost row, issue 13).  Forty fresh indexes, six openers each."""
    context = multiprocessing.get_context("fork")
    for store in range(40):
        path = str(tmp_path / f"store{store}" / "index.sqlite")
        barrier = context.Barrier(6)
        workers = [context.Process(target=_open_and_insert, args=(path, w, barrier))
                   for w in range(6)]
        for process in workers:
            process.start()
        for process in workers:
            process.join(120)
        assert [process.exitcode for process in workers] == [0] * 6, f"store {store}"
        with Index(path) as index:
            assert sorted(r.pid for r in index.find()) == list(range(6))


def test_read_only_open(tmp_path):
    path = str(tmp_path / "index.sqlite")
    with pytest.raises(StoreError):
        Index(path, create=False)
    assert not os.path.exists(path)
    with Index(path) as writer:
        crash = writer.insert(record(1, 1))
    with Index(path, create=False) as reader:
        assert reader.get(crash) is not None
        with pytest.raises(StoreError):
            reader.insert(record(2, 2))


def test_records_come_back_typed(index):
    crash = index.insert(record(10, 100, core_state=CoreState.TRUNCATED,
                                facts=Facts(proc={"unit": "x.service"})))
    got = index.get(crash)
    assert got.core_state is CoreState.TRUNCATED and got.analysis_state is AnalysisState.PENDING
    assert got.facts == Facts(proc={"unit": "x.service"}) and got.problems == []


def test_an_analysis_of_a_newer_version_is_a_problem_not_a_crash(index):
    """A row analysed by a newer coredumpd (a downgrade): corectl says so and shows the rest."""
    from coredumpd.report import jsonout

    crash = index.insert(record(10, 100))
    index.update(crash, analysis={**AnalysisResult().to_json(), "version": 2})
    got = index.get(crash)
    assert got.analysis is None
    assert got.problems == [("index column analysis: AnalysisResult version 2 is newer than "
                             "this coredumpd reads (version 1)")]
    show = jsonout.show_object(got)
    assert show["problems"] == got.problems and show["pid"] == 10


def test_the_index_refuses_a_record_without_pid_or_time(index):
    with pytest.raises(StoreError, match="needs pid"):
        index.insert(CrashRecord(pid=None, timestamp_us=1))


def test_a_second_index_in_one_process_keeps_the_first_ones_locks(tmp_path):
    """Closing any fd of the database file drops all of this process's POSIX locks on it
    (fcntl(2); sqlite.org/howtocorrupt.html 2.2): opening a second Index must not do that,
    or another process may take the database from under the first connection."""
    import subprocess
    import sys
    path = str(tmp_path / "index.sqlite")
    first = Index(path)
    try:
        first._db.execute("BEGIN")
        first._db.execute("SELECT count(*) FROM crashes").fetchone()  # holds a shared lock
        second = Index(path)
        second.close()
        # Another process asks for the exclusive lock that changing the journal mode needs:
        # it must be refused while the first connection's transaction is open.
        probe = ("import sqlite3,sys; d=sqlite3.connect(sys.argv[1], timeout=0);"
                 "print(d.execute('PRAGMA journal_mode=DELETE').fetchone()[0])")
        result = subprocess.run([sys.executable, "-c", probe, path], capture_output=True,
                                text=True, check=False)
        assert result.stdout.strip() != "delete", "the first connection's lock was dropped"
        first._db.execute("COMMIT")
    finally:
        first.close()


# -- schema 1 (before container_id), as an upgrade finds it -----------------------------

def _schema_1_index(path) -> dict[str, str]:
    """An index of schema 1 (the table without container_id), with rows whose facts
    name a container, none, or cannot be read; {what: crash id}."""
    create = index_module._SCHEMA[0].replace(", container_id TEXT", "")
    assert "container_id" not in create
    db = sqlite3.connect(path)
    db.execute(create)
    columns = [name for name in index_module.FIELDS if name != "container_id"]
    docker = {"container": {"engine": "docker", "id": DOCKER_ID}, "version": 1}
    facts = {"docker": json.dumps(docker), "host": '{"container": null, "version": 1}',
             "garbage": "{not json", "no facts": None,
             "number": '{"container": {"id": 7}, "version": 1}'}
    ids = {}
    for position, (what, text) in enumerate(facts.items()):
        ids[what] = f"{position:012x}"
        row = {name: None for name in columns} | {
            "id": ids[what], "pid": 10 + position, "timestamp_us": position, "facts": text,
            "core_state": "none", "analysis_state": "pending"}
        db.execute(f"INSERT INTO crashes ({', '.join(columns)}) VALUES "
                   f"({', '.join('?' * len(columns))})", [row[name] for name in columns])
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    return ids


def _container_ids(index) -> dict[str, str]:
    return {record.id: record.container_id for record in index.find()}


def test_a_reader_reads_schema_1_as_it_is(tmp_path):
    """corectl (create=False) on an index or per-user view no writer has migrated yet:
    container_id comes from the facts, and CONTAINER_ID= matches on it."""
    path = str(tmp_path / "index.sqlite")
    ids = _schema_1_index(path)
    with Index(path, create=False) as reader:
        assert reader.schema == 1
        assert _container_ids(reader) == {crash: DOCKER_ID if what == "docker" else ""
                                         for what, crash in ids.items()}
        assert [r.id for r in reader.find([f"CONTAINER_ID={DOCKER_ID}"])] == [ids["docker"]]
        assert reader.get(ids["docker"]).container_id == DOCKER_ID
        assert reader.get(ids["garbage"]).problems  # the facts column, as before
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1  # a reader never writes
    db.close()


def test_a_writer_migrates_schema_1_to_2(tmp_path):
    path = str(tmp_path / "index.sqlite")
    ids = _schema_1_index(path)
    with Index(path) as writer:
        assert writer.schema == SCHEMA_VERSION == 2
        assert _container_ids(writer) == {crash: DOCKER_ID if what == "docker" else ""
                                         for what, crash in ids.items()}
        assert [r.id for r in writer.find([f"CONTAINER_ID={DOCKER_ID}"])] == [ids["docker"]]
        new = writer.insert(record(99, 99, container_id="other"))
        assert [r.id for r in writer.find(["CONTAINER_ID=other"])] == [new]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    columns = [info[1] for info in db.execute("PRAGMA table_info(crashes)")]
    assert columns == list(index_module.FIELDS)  # the same table as a new index's
    indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "crashes_container" in indexes
    assert db.execute("EXPLAIN QUERY PLAN SELECT id FROM crashes WHERE container_id = 'x'"
                      ).fetchall()[0][-1].endswith("USING INDEX crashes_container (container_id=?)")
    db.close()
    with Index(path) as again:  # migrated once
        assert len(again.find()) == len(ids) + 1


def test_names_that_are_not_utf8_are_kept_byte_for_byte(index):
    """comm, exe and cmdline are the process's bytes, decoded with surrogateescape: a name
    with a byte that is not UTF-8 (prctl(PR_SET_NAME), a file name) holds a surrogate,
    which sqlite3 refused (UnicodeEncodeError: the handler died and the crash was lost).
    Kept as those bytes, read back as the same text, matched as coredumpctl matches."""
    from coredumpd.paths import view_path

    comm, exe = "bad\udcff\udcfename", "/tmp/dir\udcff/prog"
    core = "/var/lib/st\udcffre/core.lz4"  # a Directory= that is not UTF-8
    row_id = index.insert(record(10, 1000, comm=comm, exe=exe, cmdline=f"{exe} \udc80",
                                 core_path=core, core_state=CoreState.PRESENT))
    index.update(row_id, analysis_error="failed at \udcff", signature="sig\udcfe",
                 root_cause="null-deref")
    [back] = index.find([])
    assert (back.comm, back.exe, back.cmdline) == (comm, exe, f"{exe} \udc80")
    assert (back.analysis_error, back.signature) == ("failed at \udcff", "sig\udcfe")
    for match in (comm, exe, f"COREDUMP_COMM={comm}", f"COREDUMP_EXE={exe}", row_id):
        assert [found.id for found in index.find([match])] == [row_id], match
    assert index.find(["bad"]) == [] and index.find(["bad\ufffd\ufffdname"]) == []
    assert index.count_recent(exe, 0) == 1
    assert [row.core_path for row in index.core_rows(["present"])] == [core]  # retention
    with Index(view_path(index.path, 1000), create=False) as view:  # what the user reads
        assert [(found.comm, found.exe) for found in view.find([comm])] == [(comm, exe)]


def test_a_lone_surrogate_that_no_bytes_make_is_stored_escaped(index):
    """A surrogate that surrogateescape does not make (from JSON, "\\ud800") has no bytes:
    it is kept as its backslash escape rather than refused."""
    row_id = index.insert(record(11, 1000, cmdline="x\ud800y"))
    assert index.get(row_id).cmdline == "x\\ud800y"
