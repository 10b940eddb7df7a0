"""Kept copies of the files a crashed process mapped, content-addressed by build-id.

When the file a process mapped is no longer what its path gives on this
machine (deleted, replaced by an upgrade, a container's own file), the
handler copies it after the kernel released the process, from the
``/proc/PID/map_files`` descriptor it opened while the process was held (the
exact inode, also when unlinked or in another mount namespace).  One copy per
build-id however many crashes map it: ``DIR/binaries/XX/REST`` with
``XXREST`` the build-id in hex, the layout of a ``.build-id`` tree without its
suffixes.

The copies have their own budget (``BinariesMaxUse=``) and count towards
``MaxUse``; :func:`coredumpd.store.retention.vacuum` removes a copy once no
stored core refers to it.  A copy is readable by whoever could read the
original (its mode keeps only the original's read bits), owned by root.
"""

from __future__ import annotations

import os
import re
import stat
import time

from coredumpd.errors import StoreError
from coredumpd.paths import binaries_path, make_directory

BUILD_ID = re.compile(r"[0-9a-f]{8,128}")
COPY_CHUNK = 1 << 24
# A copy is made before its crash's index row exists: vacuum leaves copies this young alone.
GRACE_SECONDS = 600


class BinaryStore:
    """``DIR/binaries`` of the store at ``directory``, within ``max_use`` bytes (0: none)."""

    def __init__(self, directory: str, max_use: int) -> None:
        self.path = binaries_path(directory)
        self.max_use = max_use

    def path_of(self, build_id: str) -> str:
        if not BUILD_ID.fullmatch(build_id):
            raise StoreError(f"not a build-id: {build_id!r}")
        return os.path.join(self.path, build_id[:2], build_id[2:])

    def keep(self, fd: int, build_id: str | None) -> str:
        """Copy the file open at ``fd`` (its build-id ``build_id``); the copy's path.

        Raises StoreError saying why not (no build-id, over BinariesMaxUse)."""
        if not build_id:
            raise StoreError("not kept: the file has no build-id")
        target = self.path_of(build_id)
        if os.path.exists(target):
            os.utime(target)  # kept already, for another crash: young again (GRACE_SECONDS)
            return target
        info = os.fstat(fd)
        used = self.usage()
        if used + info.st_size > self.max_use:
            raise StoreError(f"not kept: {info.st_size} bytes over BinariesMaxUse="
                             f"{self.max_use} ({used} bytes used)")
        make_directory(self.path)
        make_directory(os.path.dirname(target))
        _copy_to(fd, target, info)
        return target

    def entries(self) -> list[tuple[str, str, int]]:
        """(build-id, path, bytes on disk) of every kept copy."""
        found = []
        try:
            prefixes = os.listdir(self.path)
        except OSError:
            return []
        for prefix in prefixes:
            sub = os.path.join(self.path, prefix)
            if len(prefix) != 2 or not os.path.isdir(sub):
                continue
            for rest in os.listdir(sub):
                path = os.path.join(sub, rest)
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode) and BUILD_ID.fullmatch(prefix + rest):
                    found.append((prefix + rest, path, info.st_blocks * 512))
        return found

    def usage(self) -> int:
        """Bytes on disk taken by the kept copies."""
        return sum(size for _bid, _path, size in self.entries())

    def remove_unreferenced(self, referenced: set[str], now: float | None = None) -> int:
        """Remove the copies whose path is not in ``referenced`` (and older than
        GRACE_SECONDS: a handler may be about to index the crash that made it); bytes freed."""
        freed = 0
        cutoff = (time.time() if now is None else now) - GRACE_SECONDS
        for _bid, path, size in self.entries():
            if path not in referenced and _mtime(path) < cutoff:
                try:
                    os.unlink(path)
                    freed += size
                except FileNotFoundError:
                    pass
                except OSError as err:
                    raise StoreError(f"cannot remove {path}: {err.strerror}") from err
        return freed


def _mtime(path: str) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return 0.0


def _copy_to(fd: int, target: str, info: os.stat_result) -> None:
    """Copy ``fd`` into a temporary file beside ``target``, then rename it there."""
    import tempfile  # here: the handler imports this module for retention, which never copies
    handle, temporary = tempfile.mkstemp(prefix=".kept-", dir=os.path.dirname(target))
    try:
        offset = 0
        while offset < info.st_size:
            copied = _copy_range(fd, handle, offset, info.st_size - offset)
            if copied == 0:
                break  # the file shrank: keep what there is
            offset += copied
        os.fchmod(handle, info.st_mode & 0o444)
        os.fsync(handle)
        os.rename(temporary, target)
    except OSError as err:
        os.unlink(temporary)
        raise StoreError(f"cannot keep a copy at {target}: {err.strerror}") from err
    finally:
        os.close(handle)


def _copy_range(source: int, target: int, offset: int, size: int) -> int:
    """copy_file_range(2) (a reflink or in-kernel copy), else pread + write."""
    count = min(size, COPY_CHUNK)
    try:
        return os.copy_file_range(source, target, count, offset)
    except OSError:
        data = os.pread(source, count, offset)
        os.write(target, data)
        return len(data)
