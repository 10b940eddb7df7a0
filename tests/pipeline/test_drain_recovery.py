"""The analysis queue survives killed drains and crashes it cannot analyse
(coredumpd.pipeline.analyze_job.watch_drains, analysis_queue's drain locks and attempts).

Real jobs (``python -m coredumpd.pipeline.analyze_job`` as the handler starts them,
real sandboxes) on index rows of the fixture core (tests/pipeline/test_drain.py's
Store), killed with SIGKILL while they hold a crash's claim, or failing on a real
SQLite error (a trigger in the store's index refuses one crash's result); and the
real handler, run as the kernel runs it, while a drain lock is held.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import time

from coredumpd.pipeline import analysis_queue, slots
from tests.pipeline import handler_support as S
from tests.pipeline.test_drain import FIXTURE, _finish
from tests.support.crash import registered_handler, wait_for_handlers


def _claim_holder(marker: str) -> int | None:
    """The PID holding the flock(2) of ``marker`` (/proc/locks), None when nobody does."""
    try:
        inode = os.stat(marker).st_ino
    except FileNotFoundError:
        return None
    for line in pathlib.Path("/proc/locks").read_text().splitlines():
        words = line.split()
        if len(words) > 5 and words[1] == "FLOCK" and words[5].endswith(f":{inode}"):
            return int(words[4])
    return None


def _kill_claim_holder(marker: str, job: subprocess.Popen[bytes], deadline: float) -> int:
    """SIGKILL the process of ``job`` that claims ``marker`` (its drain, not the job
    itself) as soon as it does; its PID, once it is gone."""
    while True:
        assert job.poll() is None and time.monotonic() < deadline, "the claim never came"
        holder = _claim_holder(marker)
        if holder is not None and holder != job.pid:
            assert int(pathlib.Path(f"/proc/{holder}/stat").read_text()
                       .rsplit(")", 1)[1].split()[1]) == job.pid  # the job's forked drain
            os.kill(holder, signal.SIGKILL)
            while pathlib.Path(f"/proc/{holder}").exists() and \
                    "Z" not in pathlib.Path(f"/proc/{holder}/stat").read_text().rsplit(")", 1)[1][:3]:
                time.sleep(0.005)
            return holder
        time.sleep(0.005)


def test_a_drain_killed_mid_queue_is_forked_again_and_finishes_it(store_of):
    """SIGKILL of the drain while it analyses the queue's second crash: no other crash
    comes, yet the job forks a new drain, which analyses that crash and the rest."""
    store = store_of(4)
    job = store.job(0)
    killed = _kill_claim_holder(store.markers[1], job, time.monotonic() + 300)
    _finish(job)
    rows = store.rows()
    assert [row["analysis_state"] for row in rows] == ["done"] * 4
    drains = [row["path_taken"]["analysis_job"]["pid"] for row in rows]
    assert drains[0] == killed and len(set(drains[1:])) == 1 and drains[1] != killed
    assert job.pid not in drains
    assert analysis_queue.waiting(str(store.directory / "analysis-queue")) == []


def test_a_crash_that_ends_every_drain_is_given_up_and_the_queue_goes_on(store_of):
    """The drain is killed each time it holds crash 0 (as the OOM killer would, were
    that core too big for the machine): after ATTEMPTS_MAX the next drain marks the crash
    failed, saying why, and analyses the others."""
    store = store_of(2)
    job = store.job(0)
    deadline = time.monotonic() + 300
    for _ in range(analysis_queue.ATTEMPTS_MAX):
        _kill_claim_holder(store.markers[0], job, deadline)
    _finish(job)
    first, second = store.rows()
    assert first["analysis_state"] == "failed" and second["analysis_state"] == "done"
    assert first["analysis_error"] == (
        f"analysis given up after {analysis_queue.ATTEMPTS_MAX} attempts; the last: the "
        "analysis job ended during the analysis (killed?)")
    assert analysis_queue.waiting(str(store.directory / "analysis-queue")) == []
    # its one journal entry (only the analysis job sends it) is not lost with the analysis
    assert len(_journal_entries(first)) == 1
    assert first["path_taken"]["journal"] == "sent"


def test_a_result_the_index_refuses_is_retried_then_given_up_with_its_error(store_of):
    """A real SQLite error on storing crash 0's result (a trigger in the index): the
    marker keeps the attempt and its error, the other crashes are analysed (crash 0 is
    the oldest: it must not hold them up), and after ATTEMPTS_MAX attempts crash 0 is
    marked failed with that error, which corectl shows."""
    from coredumpd.cli.corectl import main as corectl
    store = store_of(3)
    with contextlib.closing(sqlite3.connect(store.config.index_path)) as db, db:
        db.execute("CREATE TRIGGER injected BEFORE UPDATE OF analysis_state ON crashes "
                   f"WHEN NEW.id = '{store.ids[0]}' AND NEW.analysis_state = 'done' "
                   "BEGIN SELECT RAISE(ABORT, 'injected: the disk said no'); END")
    _finish(store.job(0))
    rows = store.rows()
    assert [row["analysis_state"] for row in rows] == ["failed", "done", "done"]
    error = rows[0]["analysis_error"]
    assert error.startswith(f"analysis given up after {analysis_queue.ATTEMPTS_MAX} attempts;"
                            " the last: ") and "injected: the disk said no" in error
    assert analysis_queue.waiting(str(store.directory / "analysis-queue")) == []
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert corectl(["--config", store.config_path, "--json", "show", store.ids[0]], {}) == 0
    assert json.loads(printed.getvalue())["analysis"] == {"state": "failed", "error": error}
    # each attempt sent the crash's journal entry before the index refused the result:
    # one entry per crash, however many attempts
    assert [len(_journal_entries(row)) for row in rows] == [1, 1, 1]


def _journal_entries(row: dict[str, object]) -> list[dict[str, object]]:
    """The entries of the crash of index ``row`` in the run's private journal (the
    store's), by its core file (crash IDs repeat across tests: the same pids and times)."""
    from tests.support import journald

    journal = journald.session_journal()
    assert journal is not None, "the store journals into the run's private journald"
    deadline = time.monotonic() + 10
    match = f"COREDUMP_FILENAME={row['core_path']}"
    while not journal.entries(match) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # journald writes what it received in order: the last came with the first
    return journal.entries(match)


def test_marker_attempts_and_errors(tmp_path):
    queue = str(tmp_path / "analysis-queue")
    marker = analysis_queue.enqueue(str(tmp_path), "abc", "/etc/x.conf")
    assert marker is not None
    fd = analysis_queue.claim(marker)
    assert fd is not None
    assert analysis_queue.read_marker(fd) == ("/etc/x.conf", 0, "")  # as the handler wrote it
    assert analysis_queue.begin_attempt(fd) == (0, "")
    analysis_queue.record_error(fd, "StoreError: " + "x" * 5000)
    assert analysis_queue.begin_attempt(fd) == (1, "StoreError: " + "x" * 988)
    assert analysis_queue.read_marker(fd) == ("/etc/x.conf", 2, "")  # ended: no error yet
    assert not analysis_queue.journaled(fd)
    analysis_queue.mark_journaled(fd)  # the entry went out: kept through what follows
    analysis_queue.record_error(fd, "StoreError: no")
    assert analysis_queue.begin_attempt(fd) == (2, "StoreError: no")
    assert analysis_queue.journaled(fd)
    assert analysis_queue.read_marker(fd) == ("/etc/x.conf", 3, "")
    assert analysis_queue.config_of(fd) == "/etc/x.conf"
    analysis_queue.finish(marker, fd)
    assert analysis_queue.waiting(queue) == []


def test_drain_locks(tmp_path):
    queue = str(tmp_path / "analysis-queue")
    held = [analysis_queue.take_drain_lock(queue, "/etc/a.conf", 2) for _ in range(3)]
    assert held[0] is not None and held[1] is not None and held[2] is None  # 2, then none
    other = analysis_queue.take_drain_lock(queue, None, 2)  # another configuration's
    assert other is not None
    os.close(held[0])
    again = analysis_queue.take_drain_lock(queue, "/etc/a.conf", 2)  # the kernel let it go
    assert again is not None
    for fd in (held[1], other, again):
        os.close(fd)
    assert analysis_queue.drain_key("/etc/a.conf") != analysis_queue.drain_key(None)
    analysis_queue.enqueue(str(tmp_path), "abc", "/etc/a.conf")
    assert not analysis_queue.claimable(queue, None)
    assert analysis_queue.claimable(queue, "/etc/a.conf")
    fd = analysis_queue.claim(os.path.join(queue, "abc"))
    assert not analysis_queue.claimable(queue, "/etc/a.conf")  # held by its drain
    os.close(fd)


def test_the_handler_starts_no_job_while_every_drain_lock_is_held(tmp_path):
    """The handler (run as the kernel runs it, on the fixture core) only queues crashes
    while drain locks are held: no job starts (none counted its CPU).  The holder here
    then goes without draining, as a drain and its job both killed: the store's next
    crash starts a job that analyses all three."""
    raw = tmp_path / "core"
    subprocess.run(["lz4", "-d", "-q", str(FIXTURE / "core.lz4"), str(raw)], check=True)
    with registered_handler(tmp_path, rate_limit_burst=1000) as handler:
        queue = analysis_queue.queue_path(handler.directory)
        locks = []
        while (lock := analysis_queue.take_drain_lock(queue, handler.config_path,
                                                      slots.analysis_slots())) is not None:
            locks.append(lock)
        try:
            for pid in (424201, 424202):
                assert S.run_as_kernel(raw, S.kernel_args(pid), handler.config_path) == 0
            wait_for_handlers(handler.config_path)
            assert [row["analysis_state"] for row in S.rows(handler)] == ["pending"] * 2
            assert len(analysis_queue.waiting(queue)) == 2
            assert not os.path.exists(queue + ".cpu")  # no job ran, not even a short one
        finally:
            for lock in locks:
                os.close(lock)
        assert S.run_as_kernel(raw, S.kernel_args(424203), handler.config_path) == 0
        deadline = time.monotonic() + 300
        while any(row["analysis_state"] == "pending" for row in S.rows(handler)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        rows = S.rows(handler)
    assert [row["analysis_state"] for row in rows] == ["done"] * 3
    assert len({row["path_taken"]["analysis_job"]["pid"] for row in rows}) == 1
    assert analysis_queue.waiting(queue) == []
