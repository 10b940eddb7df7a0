"""Write a stored core safely: anonymous temporary file, fsync, link into place.

- ``O_TMPFILE`` (open(2)) gives an unnamed inode in the storage directory, so
  a handler that dies half-way leaves nothing behind; ``linkat`` through
  ``/proc/self/fd/N`` with ``AT_SYMLINK_FOLLOW`` names it once complete (the
  documented idiom of open(2)).  File systems without O_TMPFILE get a hidden
  ``.#`` name created with O_EXCL and renamed.
- The directory is opened once (``O_DIRECTORY|O_NOFOLLOW``) and every name is
  resolved relative to that fd, so a symlink swapped in cannot redirect us.
- Read access for the crashing user is an ACL entry (:mod:`coredumpd.store.acl`).
"""

from __future__ import annotations

import os

from coredumpd.errors import StoreError
from coredumpd.paths import FILE_MODE, make_directory
from coredumpd.store.acl import grant_read

__all__ = ["TempCore", "grant_read", "may_grant_user", "open_directory"]


def open_directory(path: str) -> int:
    """Open (creating it, :data:`coredumpd.paths.DIRECTORY_MODE`, if needed) the storage
    directory; return its fd."""
    make_directory(path)
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise StoreError(f"cannot open storage directory {path}: {err.strerror}") from err


class TempCore:
    """An unnamed (or hidden) file in the storage directory, to be linked later."""

    def __init__(self, dir_fd: int) -> None:
        self.dir_fd = dir_fd
        self.hidden_name: str | None = None
        try:
            self.fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, FILE_MODE,
                              dir_fd=dir_fd)
        except OSError:
            self.fd = self._open_hidden()
        os.fchmod(self.fd, FILE_MODE)  # the umask may have removed bits

    def _open_hidden(self) -> int:
        name = f".#core.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC,
                         FILE_MODE, dir_fd=self.dir_fd)
        except OSError as err:
            raise StoreError(f"cannot create a temporary core file: {err.strerror}") from err
        self.hidden_name = name
        return fd

    def link(self, name: str) -> None:
        """fsync, then give the file its final ``name`` (never replacing another)."""
        try:
            os.fsync(self.fd)
            if self.hidden_name is None:
                os.link(f"/proc/self/fd/{self.fd}", name, dst_dir_fd=self.dir_fd,
                        follow_symlinks=True)
            else:
                os.link(self.hidden_name, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
                os.unlink(self.hidden_name, dir_fd=self.dir_fd)
                self.hidden_name = None
            os.fsync(self.dir_fd)
        except OSError as err:
            raise StoreError(f"cannot link the core as {name}: {err.strerror}") from err

    def discard(self) -> None:
        """Forget the file: an unnamed one vanishes with its last fd."""
        if self.hidden_name is not None:
            try:
                os.unlink(self.hidden_name, dir_fd=self.dir_fd)
            except OSError:
                pass
            self.hidden_name = None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def may_grant_user(dump_mode: int | None, uid: int | None, at_secure: int | None,
                   status_uids: list[int] | None, status_gids: list[int] | None) -> bool:
    """systemd-coredump's rule: the user may read its core only when the dump was
    not restricted (``%d`` = 1, see proc(5) suid_dumpable) and the process had no
    changed credentials (``AT_SECURE`` 0 in auxv, uid == euid, gid == egid)."""
    if dump_mode != 1 or uid is None or uid == 0 or at_secure != 0:
        return False
    if not status_uids or not status_gids or len(status_uids) < 2 or len(status_gids) < 2:
        return False
    return status_uids[0] == status_uids[1] and status_gids[0] == status_gids[1]
