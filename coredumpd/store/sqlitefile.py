"""Opening one of the store's SQLite files: the index and the fleet outbox alike.

Both are written by several processes at once (handlers, analysis jobs,
corectl), so both open the same way: the file created with its mode (never
through a symbolic link planted there), WAL (https://sqlite.org/wal.html) so
that readers run while one process writes, ``busy_timeout`` so that writers
queue instead of failing, and ``synchronous = NORMAL`` (durable at each WAL
checkpoint, safe against corruption).  Callers translate the errors into
their own (:class:`StoreError` here).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time

from coredumpd.errors import StoreError

WAL_RETRY_S = 0.005  # how often a new database's switch to WAL is retried while locked


def ensure_file(path: str, mode: int, what: str) -> None:
    """Create the database file with ``mode`` without following a symlink planted there.

    An existing file is only lstat()ed, never opened: closing any descriptor of
    the database file drops every POSIX lock this process holds on it
    (fcntl(2)), so opening and closing it here while another connection of this
    process is open would let other processes take the database from under
    that connection (sqlite.org/howtocorrupt.html, 2.2).
    """
    try:
        if not stat.S_ISLNK(os.lstat(path).st_mode):
            return
        raise StoreError(f"cannot open {what} {path}: it is a symbolic link")
    except FileNotFoundError:
        pass
    except OSError as err:
        raise StoreError(f"cannot open {what} {path}: {err.strerror}") from err
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
    except FileExistsError:
        return  # another process created it in between
    except OSError as err:
        raise StoreError(f"cannot open {what} {path}: {err.strerror}") from err
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it
    finally:
        os.close(fd)


def _read_only_uri(path: str) -> str:
    """SQLite's URI for ``path``, read-only (urllib.parse imported here: a writer such
    as the handler does not need it)."""
    import urllib.parse
    return f"file:{urllib.parse.quote(path)}?mode=ro"


def open_database(path: str, mode: int, what: str, busy_timeout_ms: int,
                  create: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (each write its own ``BEGIN IMMEDIATE``).

    ``create``: make the file (``mode``) and put it in WAL mode; otherwise open it
    read-only and never create it (readers such as corectl)."""
    if create:
        ensure_file(path, mode, what)
    try:
        target = path if create else _read_only_uri(path)
        db = sqlite3.connect(target, timeout=busy_timeout_ms / 1000, uri=not create,
                             isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if create:
            enter_wal(db, busy_timeout_ms)
        db.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error as err:
        raise StoreError(f"cannot open {what} {path}: {err}") from err
    return db


def enter_wal(db: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """``PRAGMA journal_mode = WAL``, waiting for other connections as busy_timeout does.

    SQLite does not call the busy handler for a change of journal mode: while
    another connection switched a new database to WAL, the others got "database
    is locked" at once (measured here: 13 of 240 openers of fresh databases, four
    at a time).  In a storm every handler opens the new store's index at the same
    moment, and a handler that cannot open the index stores nothing.  Once the
    file is in WAL mode the pragma is a no-op that needs no lock.
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if getattr(err, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY \
                    or time.monotonic() > deadline:
                raise
        time.sleep(WAL_RETRY_S)
