"""The kernel's coredump socket: the request protocol and the peer's pidfd.

With ``kernel.core_pattern = @@PATH`` (Linux 6.16 and later) the kernel
connects to the ``AF_UNIX`` ``SOCK_STREAM`` socket listening at PATH for each
crash, sends a ``struct coredump_req``, and waits for a ``struct
coredump_ack``: ``COREDUMP_KERNEL`` makes it stream the core into the
connection (as the pipe does), ``COREDUMP_REJECT`` makes it write nothing
(include/uapi/linux/coredump.h; fs/coredump.c, coredump_sock_request()).  It
answers the ack with a 4-byte mark, 0 when the ack was accepted.  Checked on
this machine (shared/FACTS.md): request {16, 16, 0xf}; the crashed process is
reaped as soon as the kernel has written the last byte, whether or not the
server has read it or closed the connection; RLIMIT_CORE is not consulted at
all (even 0 or 1 still connects).

``getsockopt(SO_PEERPIDFD)`` gives a pidfd of the crashing process, and
``ioctl(PIDFD_GET_INFO)`` (include/uapi/linux/pidfd.h) its PID, credentials
and how it dumps (``coredump_mask``); once it has exited, its exit code —
the signal, with 0x80 when a core was written.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct

# include/uapi/linux/coredump.h
COREDUMP_KERNEL = 1 << 0
COREDUMP_USERSPACE = 1 << 1
COREDUMP_REJECT = 1 << 2
COREDUMP_WAIT = 1 << 3
COREDUMP_REQ = struct.Struct("<IIQ")  # struct coredump_req: size, size_ack, mask
COREDUMP_ACK = struct.Struct("<IIQ")  # struct coredump_ack: size, spare, flags
COREDUMP_MARK = struct.Struct("<I")  # enum coredump_mark: 0 = COREDUMP_MARK_REQACK
assert COREDUMP_REQ.size == 16 and COREDUMP_ACK.size == 16
REQUEST_MAX = 4096  # a newer kernel's larger request is read whole (as systemd does)

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # include/uapi/asm-generic/socket.h

# include/uapi/linux/pidfd.h: struct pidfd_info, as far as this kernel fills it
PIDFD_INFO = struct.Struct("<QQ11IiIIQ")
assert PIDFD_INFO.size == 80
PIDFD_INFO_EXIT = 1 << 3
PIDFD_INFO_COREDUMP = 1 << 4
PIDFD_COREDUMPED = 1 << 0
PIDFD_COREDUMP_SKIP = 1 << 1
PIDFD_COREDUMP_USER = 1 << 2
PIDFD_COREDUMP_ROOT = 1 << 3
_IOC_READ_WRITE = 3
PIDFD_GET_INFO = (_IOC_READ_WRITE << 30) | (PIDFD_INFO.size << 16) | (0xFF << 8) | 11


class ProtocolError(OSError):
    """The peer did not speak the coredump socket protocol."""


class PidfdInfo:
    """The fields of ``struct pidfd_info`` we use."""

    def __init__(self, raw: tuple[int, ...]) -> None:
        self.mask = raw[0]
        self.pid, self.tgid, self.ppid = raw[2], raw[3], raw[4]
        self.ruid, self.rgid, self.euid, self.egid = raw[5], raw[6], raw[7], raw[8]
        self.exit_code = raw[13]
        self.coredump_mask = raw[14]

    @property
    def exited(self) -> bool:
        return bool(self.mask & PIDFD_INFO_EXIT)

    @property
    def dumping(self) -> bool:
        """The kernel is dumping (or dumped) this process's core."""
        return bool(self.mask & PIDFD_INFO_COREDUMP and self.coredump_mask & PIDFD_COREDUMPED)

    def dump_mode(self) -> int | None:
        """What ``%d`` would say: 1 dumped as the user, 2 as root (suid_dumpable=2)."""
        if not self.mask & PIDFD_INFO_COREDUMP:
            return None
        if self.coredump_mask & PIDFD_COREDUMP_ROOT:
            return 2
        return 1 if self.coredump_mask & PIDFD_COREDUMP_USER else 0

    def exit_signal(self) -> int | None:
        """The signal that ended the process, once it has exited (wait(2) status)."""
        if not self.exited or self.exit_code & 0x7F == 0:
            return None
        return self.exit_code & 0x7F


def peer_pidfd(conn: socket.socket) -> int:
    """A pidfd of the process at the other end of ``conn`` (ours to close)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4)
    return int(struct.unpack("i", raw)[0])


def pidfd_info(pidfd: int, mask: int = PIDFD_INFO_COREDUMP | PIDFD_INFO_EXIT) -> PidfdInfo:
    """``ioctl(PIDFD_GET_INFO)``; OSError (ESRCH) for a reaped process without exit info."""
    buffer = bytearray(PIDFD_INFO.pack(mask, *([0] * 16)))
    fcntl.ioctl(pidfd, PIDFD_GET_INFO, buffer)
    return PidfdInfo(PIDFD_INFO.unpack(buffer))


def wait_exit(pidfd: int, timeout_ms: int) -> bool:
    """Sleep until the pidfd's process has exited (POLLIN), at most ``timeout_ms``."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout_ms))


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ProtocolError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def read_request(conn: socket.socket) -> tuple[int, int, int]:
    """The kernel's ``coredump_req``: (size, size_ack, mask).

    The first field gives the whole request's size; anything past the fields
    we know (a newer kernel) is read and ignored."""
    head = _recv_exactly(conn, COREDUMP_REQ.size)
    size, size_ack, mask = COREDUMP_REQ.unpack(head)
    if size < COREDUMP_REQ.size or size > REQUEST_MAX:
        raise ProtocolError(f"coredump_req of {size} bytes")
    if size > COREDUMP_REQ.size:
        _recv_exactly(conn, size - COREDUMP_REQ.size)
    return size, size_ack, mask


def send_ack(conn: socket.socket, flags: int) -> None:
    """Answer with ``flags`` and read the kernel's mark (0: the ack was taken)."""
    conn.sendall(COREDUMP_ACK.pack(COREDUMP_ACK.size, 0, flags))
    (mark,) = COREDUMP_MARK.unpack(_recv_exactly(conn, COREDUMP_MARK.size))
    if mark != 0:
        raise ProtocolError(f"the kernel refused the ack (mark {mark})")


def kernel_supports_socket(release: str | None = None) -> bool:
    """``@@PATH`` patterns exist since Linux 6.16 (request mode, coredump_req)."""
    text = release if release is not None else os.uname().release
    try:
        major, minor = (int(part) for part in text.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (6, 16)
