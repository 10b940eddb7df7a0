"""Where coredumpd keeps its files, and with which modes: the one place for both.

The store (``Directory=``) is root's: root-owned files that a user reads only
through an ACL entry naming them (:mod:`coredumpd.store.acl`), as
systemd-coredump grants a user its own cores.  So

- the store and ``users/`` are 0751: others may traverse them to the files an
  ACL opens to them, but not list them (who crashed is not theirs to see);
- cores, the index and the per-user views are 0640;
- temporary files (spool, lz4 spill) are 0600 and unnamed; the fleet outbox is 0600.

Imported by the handler while the kernel holds the crashed process, so it
imports nothing but ``os`` and our errors.
"""

from __future__ import annotations

import os

from coredumpd.errors import StoreError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import socket

DEFAULT_CONFIG_PATH = "/etc/coredumpd/coredumpd.conf"
DEFAULT_DIRECTORY = "/var/lib/coredumpd"
INDEX_NAME = "index.sqlite"
USERS_DIRECTORY = "users"  # users/UID.sqlite: each user's view of the index
BINARIES_DIRECTORY = "binaries"  # binaries/XX/REST: kept copies of mapped files, by build-id
# debuginfod/BUILD-ID/{debuginfo,executable}: what the handler's analyses fetched
# (DebuginfodURLs=), in elfutils' cache layout
DEBUGINFOD_DIRECTORY = "debuginfod"
SAVED_SYSCTL_PATH = os.path.join(DEFAULT_DIRECTORY, "saved-sysctl")  # `coredumpd install`
# the fleet outbox (coredumpd.fleet.outbox) and its drainer's lock: root's alone, 0600
# (records hold command lines), like the temporary files
FLEET_OUTBOX_NAME = "fleet-outbox.sqlite"
FLEET_LOCK_NAME = "fleet-outbox.lock"
DEFAULT_SOCKET_PATH = "/run/coredumpd/coredump.socket"  # `coredumpd serve`
# its analysis worker, for `corectl analyze` (coredumpd.cli.client has its own copy: the
# client imports nothing it can avoid)
DEFAULT_ANALYZE_SOCKET = "/run/coredumpd/analyze.socket"

DIRECTORY_MODE = 0o751
FILE_MODE = 0o640
TEMPORARY_FILE_MODE = 0o600


def index_path(directory: str) -> str:
    """The SQLite index of the store at ``directory``."""
    return os.path.join(directory, INDEX_NAME)


def binaries_path(directory: str) -> str:
    """``DIR/binaries``: the kept copies of the store at ``directory`` (store/binaries.py)."""
    return os.path.join(directory, BINARIES_DIRECTORY)


def debuginfod_path(directory: str) -> str:
    """``DIR/debuginfod``: the files the handler's analyses fetched by build-id."""
    return os.path.join(directory, DEBUGINFOD_DIRECTORY)


def view_path(index_file: str, uid: int) -> str:
    """``DIR/users/UID.sqlite`` beside the index at ``index_file``."""
    return os.path.join(os.path.dirname(os.path.abspath(index_file)), USERS_DIRECTORY,
                        f"{uid}.sqlite")


def make_directory(path: str, mode: int = DIRECTORY_MODE) -> bool:
    """Create ``path`` (missing parents too) with ``mode`` whatever the umask; True when
    created.  An existing directory keeps its mode: an administrator's choice."""
    try:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)
        os.mkdir(path, mode)
    except FileExistsError:
        return False
    except OSError as err:
        raise StoreError(f"cannot create {path}: {err.strerror}") from err
    try:
        os.chmod(path, mode)  # the umask removed bits
    except OSError as err:
        raise StoreError(f"cannot set the mode of {path}: {err.strerror}") from err
    return True


def listen_unix(path: str, mode: int, backlog: int) -> socket.socket:
    """A listening ``AF_UNIX`` stream socket at ``path`` (a file there is replaced)
    with ``mode``, nothing done by path to the socket once it exists.

    bind(2) creates the socket file with ``0777 & ~umask`` (net/unix/af_unix.c
    unix_bind), so the umask gives it ``mode`` from the start: no chmod(2) by path,
    which in a directory others may write follows whatever was put at that name
    meanwhile (a symlink to /etc/shadow).  It is bound in a new directory of ours
    (0700, beside ``path``), where nobody else can put anything, then renamed over
    ``path``: a client connecting meanwhile finds the old socket or the new one,
    never none.  The umask is the process's: call it before any thread is started.
    """
    import socket as socket_module

    private = os.path.join(os.path.dirname(path) or ".", f".{os.urandom(6).hex()}")
    os.mkdir(private, 0o700)
    temp = os.path.join(private, "s")
    listener = socket_module.socket(socket_module.AF_UNIX,
                                    socket_module.SOCK_STREAM | socket_module.SOCK_CLOEXEC)
    try:
        old_umask = os.umask(0o777 & ~mode)
        try:
            listener.bind(temp)
        finally:
            os.umask(old_umask)
        listener.listen(backlog)
        os.replace(temp, path)
    except BaseException:
        listener.close()
        if os.path.lexists(temp):
            os.unlink(temp)
        raise
    finally:
        os.rmdir(private)
    return listener
