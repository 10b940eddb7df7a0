"""Per-user views of the index: what ``corectl`` reads when not run as root.

systemd lets a user read the crashes in their own journal files; coredumpd
keeps, beside the root-only index, one small SQLite file per user,
``users/UID.sqlite``, holding exactly that user's rows with the root-only
data taken out (the environment and the open-file list, issue 6).  It is
root-owned, mode 0640, readable by that user through an ACL entry
(:mod:`coredumpd.store.acl`), and in rollback-journal mode so that a reader
needs nothing but read access (WAL readers must write the ``-shm`` file).

:class:`coredumpd.store.index.Index` rebuilds a user's view after every write
that touches that user's rows, from the committed state of the index, so the
view never has a row the index lost, and concurrent writers converge.
"""

from __future__ import annotations

import copy
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from coredumpd.errors import StoreError
from coredumpd.paths import FILE_MODE, make_directory, view_path
from coredumpd.store.acl import grant_read

ROOT_ONLY_FACTS = (("proc", "environ"), ("proc", "fds"))
BUSY_TIMEOUT_S = 30.0


def public_facts(facts: Any) -> Any:
    """``facts`` without what only root may read."""
    if not isinstance(facts, dict):
        return facts
    facts = copy.deepcopy(facts)
    for section, key in ROOT_ONLY_FACTS:
        part = facts.get(section)
        if isinstance(part, dict) and key in part:
            part[key] = None
            facts.setdefault("missing", {})
            if isinstance(facts["missing"], dict):
                facts["missing"][f"{section}.{key}"] = "root only"
    return facts


def public_rows(index: sqlite3.Connection, uid: int, columns: Sequence[str]) -> list[list[Any]]:
    """The rows of ``uid`` in the index, ``columns`` in order, root-only facts removed."""
    cursor = index.execute("SELECT * FROM crashes WHERE uid = ? ORDER BY timestamp_us, rowid",
                           [uid])
    names = [d[0] for d in cursor.description]
    rows = []
    for raw in cursor.fetchall():
        row = dict(zip(names, raw))
        if row.get("facts"):
            try:
                row["facts"] = json.dumps(public_facts(json.loads(row["facts"])),
                                          sort_keys=True)
            except ValueError:
                row["facts"] = None  # unreadable: leave nothing root-only in it
        rows.append([row.get(name) for name in columns])
    return rows


def write_view(index_path: str, uid: int, schema: Iterable[str], version: int,
               columns: list[str], read_rows: Callable[[], list[list[Any]]]) -> str:
    """Replace the view of ``uid`` with ``read_rows()``, called while the view's write
    lock is held: of two writers the later reads the index later, so the last view
    written holds every committed row.  The view's path."""
    path = view_path(index_path, uid)
    make_directory(os.path.dirname(path))
    _ensure_view_file(path, uid)
    try:
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as err:
        raise StoreError(f"cannot open the view {path}: {err}") from err
    try:
        db.execute("PRAGMA journal_mode = DELETE")
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] != version:
                db.execute("DROP TABLE IF EXISTS crashes")
                for statement in schema:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {int(version)}")
            db.execute("DELETE FROM crashes")
            db.executemany(f"INSERT INTO crashes ({', '.join(columns)}) VALUES "
                           f"({', '.join('?' * len(columns))})", read_rows())
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    except sqlite3.Error as err:
        raise StoreError(f"cannot write the view {path}: {err}") from err
    finally:
        db.close()
    return path


def _ensure_view_file(path: str, uid: int) -> None:
    """Create the view 0640 (no symlink followed) and let ``uid`` read it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as err:
        raise StoreError(f"cannot open the view {path}: {err.strerror}") from err
    try:
        os.fchmod(fd, FILE_MODE)
        grant_read(fd, uid)
    finally:
        os.close(fd)
