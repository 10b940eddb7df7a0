"""What the analysis derives from a module, kept across crashes by build-id.

The tenth crash that maps libc should not read libc's symbol tables and DWARF
again: :class:`~coredumpd.symbolize.symbols.Symbolizer` keeps, per module, its
symbol table columns (with the tables' bytes, in which names are looked up) and
the answers it gave (name, file:line, inlined calls per link-time address) in
``DIRECTORY/cache/<build-id>``.

Trust: an entry is written only by a process that may write the store (the
directory is the owner's, mode 0700, entries 0600), never by the sandboxed
child.  A build-id is only a claim: a program can carry libc's.  So an entry
also names every file it was derived from with its identity (device, inode,
size, mtime, ctime: a file replaced or rewritten has another), and a reader
uses it only when the files it would read now are those files; a forged
build-id in another file is a miss, never a poisoned answer.

Format: one ``marshal`` blob (lists of ints and bytes load at C speed), a
format version and the build-id inside it; anything else is a miss.  The
directory is bounded (:attr:`ModuleCache.max_bytes`, least recently written
entries go first) and counted by vacuum (:meth:`usage`).
"""

from __future__ import annotations

import marshal
import os
from typing import Any

from coredumpd.errors import StoreError
from coredumpd.paths import make_directory

FORMAT_VERSION = 1
CACHE_DIRECTORY = "cache"
CACHE_MODE = 0o700
ENTRY_MODE = 0o600
DEFAULT_MAX_BYTES = 64 << 20
MAX_ENTRY_BYTES = 16 << 20  # an entry bigger than this is not kept
SUFFIX = ".mod"

FileIdentity = tuple[str, int, int, int, int, int]


def file_identity(path: str) -> FileIdentity | None:
    """(path, device, inode, size, mtime ns, ctime ns) of ``path``, None when unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def cache_path(directory: str) -> str:
    return os.path.join(directory, CACHE_DIRECTORY)


class ModuleCache:
    """Entries by build-id under ``DIRECTORY/cache``; reading never raises, writing is
    skipped where the directory cannot be made or written (``writable``)."""

    def __init__(self, directory: str, max_bytes: int = DEFAULT_MAX_BYTES,
                 writable: bool | None = None) -> None:
        self.path = cache_path(directory)
        self.max_bytes = max_bytes
        # only the store's owner writes: an entry from anyone else is never trusted
        self.writable = (os.geteuid() == _owner(directory)) if writable is None else writable

    def _entry(self, build_id: bytes) -> str:
        return os.path.join(self.path, build_id.hex() + SUFFIX)

    def load(self, build_id: bytes) -> dict[str, Any] | None:
        """The entry of ``build_id`` (its payload), or None when absent or not ours."""
        try:
            with open(self._entry(build_id), "rb") as handle:
                if os.fstat(handle.fileno()).st_uid != _owner_of_cache(self.path):
                    return None
                data = handle.read(MAX_ENTRY_BYTES + 1)
        except OSError:
            return None
        return self.decode(data, build_id)

    @staticmethod
    def decode(data: bytes, build_id: bytes) -> dict[str, Any] | None:
        """The payload of an entry's bytes, or None when they are not an entry of
        ``build_id`` in this format (the bytes come from an entry the owner wrote)."""
        try:
            blob = marshal.loads(data)
        except (EOFError, ValueError, TypeError):
            return None
        if (not isinstance(blob, dict) or blob.get("version") != FORMAT_VERSION
                or blob.get("build_id") != build_id or not isinstance(blob.get("payload"), dict)):
            return None
        payload: dict[str, Any] = blob["payload"]
        return payload

    def store(self, build_id: bytes, payload: dict[str, Any]) -> bool:
        """Write the entry of ``build_id`` (atomically), then keep the directory bounded."""
        if not self.writable:
            return False
        try:
            data = marshal.dumps({"version": FORMAT_VERSION, "build_id": build_id,
                                  "payload": payload})
        except ValueError:  # something marshal cannot hold: not cached
            return False
        if len(data) > MAX_ENTRY_BYTES:
            return False
        try:
            make_directory(self.path, CACHE_MODE)
            final = self._entry(build_id)
            temporary = f"{final}.{os.getpid()}.tmp"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         ENTRY_MODE)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(temporary, final)
        except (OSError, StoreError):
            return False
        self.trim()
        return True

    def _entries(self) -> list[tuple[float, int, str]]:
        """(mtime, size, path) of every entry."""
        found: list[tuple[float, int, str]] = []
        try:
            names = os.listdir(self.path)
        except OSError:
            return found
        for name in names:
            path = os.path.join(self.path, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            found.append((st.st_mtime, st.st_blocks * 512, path))
        return found

    def usage(self) -> int:
        """Bytes on disk of the cache (what vacuum counts against MaxUse)."""
        return sum(size for _, size, _ in self._entries())

    def trim(self, max_bytes: int | None = None) -> int:
        """Remove the oldest entries until the cache holds at most ``max_bytes``
        (default :attr:`max_bytes`); the bytes freed."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, path in entries:
            if total <= limit:
                break
            try:
                os.unlink(path)
            except OSError:
                continue
            total -= size
            freed += size
        return freed


def _owner(directory: str) -> int:
    try:
        return os.stat(directory).st_uid
    except OSError:
        return -1  # no store (yet): nothing is written, no store is made for a cache


def _owner_of_cache(path: str) -> int:
    try:
        return os.stat(path).st_uid
    except OSError:
        return -1
