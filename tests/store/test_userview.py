"""Per-user views (coredumpd.store.userview) stay equal to the index under concurrent writers."""

from __future__ import annotations

import multiprocessing
import os

from coredumpd.model import CrashRecord, Facts
from coredumpd.paths import view_path
from coredumpd.store.index import Index

USERS = (1000, 1001)
WORKERS = 4
PER_WORKER = 24


def _write_many(path: str, worker: int) -> None:
    """Insert rows for both users, update every third, delete every fourth."""
    with Index(path) as index:
        for n in range(PER_WORKER):
            uid = USERS[n % len(USERS)]
            crash = index.insert(CrashRecord(
                pid=worker * 1000 + n, timestamp_us=1_000_000 + n, uid=uid, gid=uid,
                signal=11, comm=f"w{worker}",
                facts=Facts.from_json({"proc": {"environ": [f"SECRET={worker}"], "fds": [], "cwd": "/"}})))
            if n % 3 == 0:
                index.update(crash, root_cause=f"cause-{worker}-{n}")
            if n % 4 == 1:
                index.delete(crash)
        if index.view_errors:
            raise SystemExit("; ".join(index.view_errors))


def test_concurrent_writers_keep_views_equal_to_the_index(tmp_path):
    path = str(tmp_path / "store" / "index.sqlite")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_many, args=(path, w)) for w in range(WORKERS)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    with Index(path, create=False) as index:
        main = {row.id: row for row in index.find()}
    assert len(main) == WORKERS * (PER_WORKER - PER_WORKER // 4)
    for uid in USERS:
        with Index(view_path(path, uid), create=False) as view:
            seen = {row.id: row for row in view.find()}
        assert set(seen) == {crash for crash, row in main.items() if row.uid == uid}
        for crash, row in seen.items():
            assert row.root_cause == main[crash].root_cause
            assert row.facts.proc["environ"] is None and row.facts.proc["cwd"] == "/"
        assert os.stat(view_path(path, uid)).st_mode & 0o777 == 0o640
