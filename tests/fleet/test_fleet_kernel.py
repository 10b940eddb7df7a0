"""Crashes through the real kernel on several stores (hosts), one PostgreSQL server."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest

from coredumpd.cli.corectl import main as corectl
from coredumpd.fleet.outbox import lock_path
from coredumpd.fleet.queries import groups as fleet_groups
from coredumpd.fleet.schema import SCHEMA
from tests.annotate.crashing import PROGRAMS
from tests.cli.test_reanalyze_debuginfod import _build as build_stripped
from tests.cli.test_reanalyze_debuginfod import debuginfod_server
from tests.support.crash import RegisteredHandler, compile_c, registered_handler
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

COREDUMPD = str(pathlib.Path(sys.executable).parent / "coredumpd")
PROGRAM = r"""
#include <string.h>
__attribute__((noinline)) int parse_header(const char *p) { return *(volatile const int *)p; }
__attribute__((noinline)) int parse_body(const char *p) { return *(volatile const int *)p + 1; }
int main(int argc, char **argv) {
    const char *p = 0;
    if (argc > 1 && strcmp(argv[1], "body") == 0)
        return parse_body(p);
    return parse_header(p);
}
"""
PACKAGE = '{"type":"deb","name":"fleet-demo","version":"1.2-3"}'


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> str:
    return compile_c(PROGRAM, tmp_path_factory.mktemp("prog"), name="fleetdemo",
                     flags=("-g", "-O1", "-fno-omit-frame-pointer", "-Xlinker",
                            f"--package-metadata={PACKAGE}"))


def stop_drainers(directory: str) -> None:
    """End a publisher still retrying in a test's store (its pid is in the lock file)."""
    path = lock_path(directory)
    if not os.path.exists(path):
        return
    with open(path, encoding="ascii") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return  # nobody holds it
        except BlockingIOError:
            pid = int(lock.read().strip() or 0)
    if pid > 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def hosts(tmp_path: pathlib.Path, dsn: str, *names: str) -> Iterator[list[RegisteredHandler]]:
    with contextlib.ExitStack() as stack:
        handlers = [stack.enter_context(registered_handler(
            tmp_path / name, fleet_database=dsn, fleet_host=name, journal=False,
            rate_limit_burst=1000)) for name in names]
        for handler in handlers:
            stack.callback(stop_drainers, handler.directory)
        yield handlers


def published(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT host, crash_id FROM {SCHEMA}.crashes").fetchall()


def wait_published(dsn: str, count: int, timeout: float = 120) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    rows = []
    while time.monotonic() < deadline:
        # down (OperationalError), or no schema before the first publish (UndefinedTable)
        with contextlib.suppress(psycopg.OperationalError, psycopg.errors.UndefinedTable):
            rows = published(dsn)
            if len(rows) >= count:
                return rows
        time.sleep(0.2)
    raise TimeoutError(f"{len(rows)} of {count} records published after {timeout}s")


def run_corectl(capsys: pytest.CaptureFixture[str], handler: RegisteredHandler,
                *argv: str) -> tuple[int, str]:
    status = corectl(["--config", handler.config_path, "--no-pager", *argv],
                     env={"COLUMNS": "80"})
    return status, capsys.readouterr().out


def test_two_hosts_same_function_one_group(tmp_path: pathlib.Path, program: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with PostgresServer() as server:
        dsn = server.dsn(server.create_database())
        with hosts(tmp_path, dsn, "alpha", "beta") as (alpha, beta):
            crashes = [alpha.crash([program]), beta.crash([program]),
                       beta.crash([program, "body"])]
            wait_published(dsn, 3)
            status, out = run_corectl(capsys, alpha, "--json", "fleet", "groups")
            assert status == 0
            groups = json.loads(out)
            assert [(g["frames"], g["crashes"], g["hosts"]) for g in groups] == [
                ("parse_header | main", 2, 2), ("parse_body | main", 1, 1)]
            header = groups[0]
            assert header["signature"] == crashes[0]["signature"] == crashes[1]["signature"]
            assert header["root_cause"] == "null-deref"
            assert header["versions"] == ["1.2-3"]
            assert header["example"] in ({"host": "alpha", "id": crashes[0]["id"]},
                                         {"host": "beta", "id": crashes[1]["id"]})
            assert header["first_seen"] <= header["last_seen"]

            status, out = run_corectl(capsys, beta, "fleet", "groups", "--since", "1h")
            lines = out.splitlines()
            assert status == 0 and max(len(line) for line in lines) <= 80
            assert "parse_header | main" in out and "2 signatures, 3 crashes." in out

            def listed(*matches: str) -> list[tuple[str, str]]:
                status, out = run_corectl(capsys, alpha, "--json", "fleet", "list", *matches)
                return [(c["host"], c["id"]) for c in json.loads(out)] if status == 0 else []

            ids = [(name, c["id"]) for name, c in zip(("alpha", "beta", "beta"), crashes)]
            assert listed() == ids  # oldest first
            assert listed("host=beta") == ids[1:]
            assert listed(crashes[2]["id"]) == ids[2:]
            assert listed("fleetdemo") == listed(program) == ids  # COMM, executable path
            assert listed(str(crashes[0]["pid"])) == ids[:1]  # PID
            assert listed("COREDUMP_SIGNAL=11", "root_cause=null-deref") == ids
            assert listed("host=gamma") == []
            status, out = run_corectl(capsys, alpha, "fleet", "list", "host=alpha")
            assert status == 0 and "alpha" in out and "1 crash on 1 host." in out


def test_database_stopped_during_a_crash_storm(tmp_path: pathlib.Path, program: str) -> None:
    with PostgresServer() as server:
        dsn = server.dsn(server.create_database())
        with hosts(tmp_path, dsn, "alpha", "beta") as handlers:
            caught = [handlers[n % 2].crash([program]) for n in range(4)]
            wait_published(dsn, 4)
            server.stop()
            caught += [handlers[n % 2].crash([program, "body"]) for n in range(6)]
            for handler in handlers:  # the records wait in each store's outbox
                with contextlib.closing(sqlite3.connect(
                        os.path.join(handler.directory, "fleet-outbox.sqlite"))) as outbox:
                    assert outbox.execute("SELECT count(*) FROM outbox").fetchone()[0] == 3
            server.start()
            rows = wait_published(dsn, 10)  # the publishers retrying in the background
            for handler in handlers:
                done = subprocess.run([COREDUMPD, "publish", "--config", handler.config_path],
                                      capture_output=True, text=True, check=True)
                assert "0 waiting, 0 rejected" in done.stdout
            rows = published(dsn)
            expected = sorted((("alpha", "beta")[n % 2], row["id"]) for n, row in
                              enumerate(caught[:4]))
            expected += sorted((("alpha", "beta")[n % 2], row["id"]) for n, row in
                               enumerate(caught[4:]))
            assert sorted(rows) == sorted(expected)  # every record, once
            assert len(set(rows)) == len(rows) == 10




def test_a_slow_database_delays_no_crash(tmp_path: pathlib.Path, program: str) -> None:
    """The table locked by another session: inserts hang, crashes are still stored and
    analysed at once; the records arrive when the lock goes."""
    with PostgresServer() as server:
        dsn = server.dsn(server.create_database())
        with hosts(tmp_path, dsn, "alpha") as (alpha,):
            alpha.crash([program])
            wait_published(dsn, 1)
            with psycopg.connect(dsn) as blocker:
                blocker.execute(f"LOCK TABLE {SCHEMA}.crashes IN ACCESS EXCLUSIVE MODE")
                rows = [alpha.crash([program, "body"]) for _ in range(2)]
                assert all(row["analysis_state"] == "done" for row in rows)
                assert all(row["path_taken"]["fleet"] == "queued" for row in rows)
                blocker.rollback()  # the lock goes
            published_ids = {crash_id for _host, crash_id in wait_published(dsn, 3)}
            assert {row["id"] for row in rows} <= published_ids


def group_counts(dsn: str) -> list[tuple[str | None, int, int]]:
    with psycopg.connect(dsn) as conn:
        return [(g["frames"], g["crashes"], g["hosts"]) for g in fleet_groups(conn)]


def test_corectl_reanalyze_replaces_the_published_record(tmp_path: pathlib.Path) -> None:
    """A stripped program crashes on two hosts: one group of unnamed frames.  Its debug
    file comes (a real debuginfod); `corectl reanalyze` on one host publishes the new
    analysis, which replaces that host's record and moves it to the named group; on the
    other host too, and the old group is gone.  Never more rows than crashes."""
    out = tmp_path / "ran"
    _prog, build_id = build_stripped(out)
    argv = ["/bin/sh", str(PROGRAMS / "ran" / "run.sh"), str(out), "plain"]
    with PostgresServer() as server:
        dsn = server.dsn(server.create_database())
        with hosts(tmp_path, dsn, "alpha", "beta") as (alpha, beta):
            rows = [alpha.crash(argv, pidfile=str(out / "prog.pid")),
                    beta.crash(argv, pidfile=str(out / "prog.pid"))]
            wait_published(dsn, 2)
            ((unnamed, two, two_hosts),) = group_counts(dsn)
            assert (two, two_hosts) == (2, 2) and "ran_crash" not in (unnamed or "")
            with debuginfod_server(str(out / "served"), str(tmp_path), build_id) as url:
                env = {"DEBUGINFOD_URLS": url, "DEBUGINFOD_CACHE_PATH": str(tmp_path / "c"),
                       "DEBUGINFOD_TIMEOUT": "10", "PATH": os.environ.get("PATH", "")}
                for handler, row, expected in (
                        (alpha, rows[0], [("ran_crash | ran_middle | main", 1, 1),
                                          (unnamed, 1, 1)]),
                        (beta, rows[1], [("ran_crash | ran_middle | main", 2, 2)]),
                        (beta, rows[1], [("ran_crash | ran_middle | main", 2, 2)])):
                    stdout = io.StringIO()
                    with contextlib.redirect_stdout(stdout):
                        status = corectl(["--config", handler.config_path, "reanalyze",
                                          row["id"]], env)
                    assert status == 0
                    assert "fleet: published 1 records; 0 waiting" in stdout.getvalue()
                    counts = group_counts(dsn)
                    assert sorted(counts, key=str) == sorted(expected, key=str), counts
            assert sorted(published(dsn)) == sorted([("alpha", rows[0]["id"]),
                                                     ("beta", rows[1]["id"])])
            again = alpha.wait_row(rows[0]["pid"])
            assert again["path_taken"]["fleet"] == "queued"


def test_debian_binaries_get_their_versions_from_dpkg(tmp_path: pathlib.Path) -> None:
    """dash, Debian's /bin/sh, has no ELF package note: its crash through the kernel on two
    hosts publishes the versions dpkg-query gives for dash and libc6, and the group's
    versions are dash's."""
    from tests.fleet.test_dpkg import dpkg_query

    dash = os.path.realpath("/bin/sh")
    libc = os.path.realpath("/usr/lib/x86_64-linux-gnu/libc.so.6")
    argv = ["/bin/sh", "-c", "kill -SEGV $$"]
    with PostgresServer() as server:
        dsn = server.dsn(server.create_database())
        with hosts(tmp_path, dsn, "alpha", "beta") as (alpha, beta):
            rows = [alpha.crash(argv), beta.crash(argv)]
            assert all(row["exe"] == dash for row in rows)
            wait_published(dsn, 2)
            with psycopg.connect(dsn) as conn:
                records = [r for (r,) in conn.execute(
                    f"SELECT record FROM {SCHEMA}.crashes ORDER BY host").fetchall()]
                groups = fleet_groups(conn)
    for record in records:
        packages = {m["path"]: (m["package"], m.get("package_from"))
                    for m in record["modules"]}
        assert packages[dash] == (dpkg_query(dash), "dpkg")
        assert packages[libc] == (dpkg_query(libc), "dpkg")
        assert record["product_version"] == dpkg_query(dash)["version"]
    assert [(g["hosts"], g["versions"]) for g in groups] == [(2, [dpkg_query(dash)["version"]])]


SECRET_PROGRAM = r"""
#include <assert.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    char *secret = malloc(64);
    strcpy(secret, "heap-secret-");
    strcat(secret, getenv("FLEET_TOKEN"));  /* in memory only */
    assert(secret[0] == 'x' && "assert-secret");
    return 0;
}
"""


def test_a_published_record_holds_no_memory_and_no_environment(tmp_path: pathlib.Path) -> None:
    """A crash with a secret in its environment, on its heap and in its abort message
    (which the analysis reads from memory and puts in its annotation): the record that
    arrives in the database holds none of them."""
    program = compile_c(SECRET_PROGRAM, tmp_path, name="fleetsecret", flags=("-g", "-O0"))
    with PostgresServer() as server:
        dsn = server.dsn(server.create_database())
        with hosts(tmp_path, dsn, "alpha") as (alpha,):
            row = alpha.crash([program], env={"FLEET_TOKEN": "env-token-5417",
                                             "PATH": "/usr/bin:/bin"})
            assert row["root_cause"] == "abort-message"  # the analysis read the message
            assert any("assert-secret" in a["title"]
                       for a in row["analysis"]["annotations"])
            wait_published(dsn, 1)
            with psycopg.connect(dsn) as conn:
                ((text,),) = conn.execute(f"SELECT record::text FROM {SCHEMA}.crashes").fetchall()
    for secret in ("env-token-5417", "heap-secret", "assert-secret", "FLEET_TOKEN",
                   "PATH=", "registers", "disassembly", "evidence", "environ"):
        assert secret not in text, secret
    assert '"abort-message"' in text  # the root cause is there, by its id
