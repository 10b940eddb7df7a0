"""The journal entry of a crash, and the /dev/kmsg fallback.

The entry carries systemd-coredump's fields (src/coredump/coredump.c,
``COREDUMP_*``; MESSAGE_ID ``fc2e22bc6ee647b6b90729ab34a250b1`` is
SD_MESSAGE_COREDUMP), so ``journalctl`` and ``coredumpctl`` understand it, and
the message has systemd's shape: "Process PID (COMM) of user UID dumped core."
then the stack trace as systemd's elf-util.c prints it
(``#N  0x%016x symbol (module + 0xoffset)``).

Sending must never block the caller (the crashed process may be journald
itself, or its socket may be full and never read): instead of
``sd_journal_send()`` — a blocking ``sendmsg`` on a datagram socket — this
speaks journald's native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL) on a
non-blocking AF_UNIX datagram socket, waiting at most ``timeout`` seconds for
room, and passes entries too large for one datagram as a sealed memfd, as
libsystemd does.  No systemd library is imported.

``JournalNamespace=NS`` sends to that journal namespace's journald instead
(systemd's layout: ``/run/systemd/journal.NS/socket``, sd_journal_open_namespace(3)).

An entry carries the coredump MESSAGE_ID only when it has what systemd's
coredumpctl needs to list it: a PID, a UID and a GID (coredumpctl 252 aborts
in parse_uid() on an entry without ``COREDUMP_UID``).  Otherwise it is an
ordinary message that ``journalctl`` shows and ``coredumpctl`` ignores.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from coredumpd.model import AnalysisResult, CoreState, CrashRecord, FrameStyle, format_frame

if TYPE_CHECKING:  # socket (with selectors and math) is imported by send(): the handler,
    import socket  # which only writes /dev/kmsg lines, imports this module too

MESSAGE_ID = "fc2e22bc6ee647b6b90729ab34a250b1"
PRIORITY_CRIT = 2
JOURNAL_SOCKET = "/run/systemd/journal/socket"
NAMESPACE_SOCKET = "/run/systemd/journal.{namespace}/socket"
KMSG = "/dev/kmsg"
SYSLOG_IDENTIFIER = "coredumpd"
MAX_FRAMES = 64
MAX_THREADS = 16
LENGTH = struct.Struct("<Q")  # native protocol: binary-safe field length
SEALS = ("F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_WRITE", "F_SEAL_SEAL")


# coredumpctl parses these unconditionally (src/coredump/coredumpctl.c: print_list())
LISTED_BY_COREDUMPCTL = ("COREDUMP_PID", "COREDUMP_UID", "COREDUMP_GID", "COREDUMP_SIGNAL")


def journal_socket_path(namespace: str | None = None) -> str:
    """journald's native socket: the default journal's, or that of ``namespace``."""
    if namespace:
        return NAMESPACE_SOCKET.format(namespace=namespace)
    return JOURNAL_SOCKET


def _escape(text: str) -> str:
    """Control characters from the crashed process, made visible (kmsg is one line)."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


def _process(pid: Any, comm: str, uid: Any) -> str:
    """ "Process PID (COMM) of user UID", leaving out what is not known."""
    words = ["Process"] + ([str(pid)] if pid is not None else []) + [f"({comm})"]
    if uid is not None:
        words += ["of user", str(uid)]
    return " ".join(words)


def headline(pid: Any, comm: str, uid: Any) -> str:
    return f"{_process(pid, comm, uid)} dumped core."


# systemd's elf-util.c: "#%-2u 0x%016" PRIx64 " %s (%s + 0x%" PRIx64 ")"
FRAME_STYLE = FrameStyle(index_width=2, unknown_symbol="n/a", symbol_offset=None,
                         unknown_module="n/a", source=None, trust=None, repeat=None)


def stack_trace(analysis: AnalysisResult | None) -> str:
    """Threads in systemd-coredump's "Stack trace of thread N:" format, crashed first."""
    if analysis is None:
        return ""
    threads = sorted(analysis.threads, key=lambda t: not t.crashed)
    blocks = []
    for thread in threads[:MAX_THREADS]:
        lines = [f"Stack trace of thread {thread.tid}:"]
        lines += [format_frame(frame, FRAME_STYLE) for frame in thread.frames[:MAX_FRAMES]]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def root_cause_text(analysis: AnalysisResult | None) -> str:
    if analysis is None or not analysis.annotations:
        return ""
    first = analysis.annotations[0]
    lines = [f"Root cause: {first.id}: {first.title}"]
    lines += [f"  - {item}" for item in first.evidence[:8]]
    if first.advice:
        lines.append(f"Advice: {first.advice}")
    return "\n".join(lines)


def message(record: CrashRecord) -> str:
    parts = [headline(known_pid(record), record.comm or "unknown", record.uid)]
    for extra in (root_cause_text(record.analysis), stack_trace(record.analysis)):
        if extra:
            parts.append(extra)
    return "\n\n".join(parts)


def known_pid(record: CrashRecord) -> int | None:
    """The record's PID, or None where it is only the handler's stand-in (no %P and
    no NT_PRPSINFO: the facts' ``id_sources`` say so)."""
    sources = record.facts.id_sources if record.facts is not None else {}
    if "pid" in sources and sources["pid"] is None:
        return None
    return record.pid


def journal_fields(record: CrashRecord) -> dict[str, str]:
    """systemd-coredump's COREDUMP_* fields for a crash record (with its analysis).

    Without a PID, UID or GID the entry goes out without the coredump MESSAGE_ID:
    coredumpctl could not list it (see the module docstring)."""
    from coredumpd.elf.layouts import signal_name
    proc = (record.facts.proc if record.facts is not None else None) or {}
    signo = record.signal or 0
    fields: dict[str, Any] = {
        "MESSAGE": message(record), "MESSAGE_ID": MESSAGE_ID,
        "PRIORITY": PRIORITY_CRIT, "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "COREDUMP_PID": known_pid(record), "COREDUMP_TID": record.tid,
        "COREDUMP_UID": record.uid, "COREDUMP_GID": record.gid,
        "COREDUMP_SIGNAL": signo, "COREDUMP_SIGNAL_NAME": signal_name(signo),
        "COREDUMP_TIMESTAMP": record.timestamp_us, "COREDUMP_RLIMIT": record.rlimit_core,
        "COREDUMP_HOSTNAME": record.hostname, "COREDUMP_COMM": record.comm,
        "COREDUMP_EXE": record.exe, "COREDUMP_CMDLINE": record.cmdline,
        "COREDUMP_CGROUP": record.cgroup, "COREDUMP_UNIT": record.unit,
        "COREDUMP_USER_UNIT": proc.get("user_unit"), "COREDUMP_SLICE": proc.get("slice"),
        "COREDUMP_CWD": proc.get("cwd"), "COREDUMP_ROOT": proc.get("root"),
        "COREDUMP_FILENAME": record.core_path,
        "COREDUMP_TRUNCATED": 1 if record.core_state == CoreState.TRUNCATED else None,
        "COREDUMP_ID": record.id, "COREDUMP_CORE_STATE": record.core_state,
        "COREDUMP_ROOT_CAUSE": record.root_cause, "COREDUMP_SIGNATURE": record.signature,
        "COREDUMP_NS_PID": record.ns_pid,
        "COREDUMP_CONTAINER_ID": record.container.get("id"),
        "COREDUMP_CONTAINER_ENGINE": record.container.get("engine"),
        "COREDUMP_CONTAINER_POD": record.container.get("pod"),
        "COREDUMP_CONTAINER_ROOT": record.container.get("root"),
    }
    if proc.get("environ"):
        fields["COREDUMP_ENVIRON"] = "\n".join(proc["environ"])
    # Empty values are left out: systemd's coredumpctl prints them as empty lines
    # (an empty "Unit:"), where systemd-coredump itself omits what it does not know.
    known = {key: str(value) for key, value in fields.items() if value not in (None, "")}
    if not all(key in known for key in LISTED_BY_COREDUMPCTL):
        del known["MESSAGE_ID"]
    return known


def _encode_field(key: str, value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    if b"\n" not in raw:
        return key.encode() + b"=" + raw + b"\n"
    return key.encode() + b"\n" + LENGTH.pack(len(raw)) + raw + b"\n"


def encode_entry(fields: Mapping[str, str]) -> bytes:
    """journald's native protocol: KEY=VALUE lines, binary-safe form for multi-line values."""
    return b"".join(_encode_field(key, value) for key, value in fields.items())


def _wait_writable(sock: socket.socket, timeout: float) -> bool:
    """POLLOUT on a *connected* AF_UNIX datagram socket means room in the peer's
    queue (net/unix/af_unix.c: unix_dgram_poll())."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def _send_memfd(sock: socket.socket, payload: bytes) -> None:
    """Too large for a datagram: a sealed memfd passed with SCM_RIGHTS (journald accepts it)."""
    import socket
    fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, payload)
        seals = 0
        for name in SEALS:
            seals |= getattr(fcntl, name, 0)
        fcntl.fcntl(fd, getattr(fcntl, "F_ADD_SEALS", 1033), seals)
        sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
    finally:
        os.close(fd)


def send(fields: Mapping[str, str], timeout: float = 0.5, path: str | None = None) -> str:
    """Send one entry; never blocks longer than ``timeout``.  Returns the outcome:
    ``sent``, ``timeout`` or ``unreachable: REASON``."""
    import socket
    path = path or journal_socket_path()
    payload = encode_entry(fields)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    except OSError as err:
        return f"unreachable: {err.strerror}"
    try:
        sock.setblocking(False)
        sock.connect(path)
        return _send_with_deadline(sock, payload, time.monotonic() + timeout)
    except OSError as err:
        return f"unreachable: {errno.errorcode.get(err.errno or 0, err.strerror)}"
    finally:
        sock.close()


def _send_with_deadline(sock: socket.socket, payload: bytes, deadline: float) -> str:
    while True:
        try:
            try:
                sock.send(payload)
            except OSError as err:
                if err.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                _send_memfd(sock, payload)
            return "sent"
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _wait_writable(sock, remaining):
                return "timeout"


def kmsg_line(pid: Any, comm: str, uid: Any, signo: Any, text: str) -> str:
    """One printk line: ``<3>coredumpd: Process 1 (systemd) of user 0 dumped core (SIGSEGV): …``."""
    from coredumpd.elf.layouts import signal_name
    name = signal_name(signo) if isinstance(signo, int) else "?"
    return _escape(f"{_process(pid, comm, uid)} dumped core ({name}): {text}")[:900]


def service_line(pid: int, text: str) -> str:
    """One printk line about coredumpd itself (the server, a worker, the supervisor), not
    about a crash: ``<3>coredumpd: [PID] capture server ended (…); …`` — written without
    :func:`kmsg_line`'s "Process … dumped core (SIG…)", which would read as a crash."""
    return _escape(f"[{pid}] {text}")[:900]


def write_kmsg(line: str, priority: int = 3) -> bool:
    """Append ``line`` to the kernel log (/dev/kmsg, never blocks); False if impossible."""
    try:
        fd = os.open(KMSG, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return False
    try:
        os.write(fd, f"<{priority}>{SYSLOG_IDENTIFIER}: {line}\n".encode("utf-8", "replace"))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
