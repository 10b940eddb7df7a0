"""The journal entry: fields read back from a real systemd-journald; never blocking."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from coredumpd.model import CrashRecord
from coredumpd.report import journal
from tests.support import journald

ROW = {"id": "row1", "pid": 4242, "tid": 4243, "uid": 1000, "gid": 1000, "signal": 6,
       "timestamp_us": 1_700_000_000_123_456, "rlimit_core": 2**64 - 1, "hostname": "h",
       "comm": "prog", "exe": "/usr/bin/prog", "cmdline": "prog --x", "cgroup": "0::/x",
       "unit": "x.service", "core_path": "/var/lib/coredumpd/core.prog.1000.b.4242.1.lz4",
       "core_state": "truncated", "root_cause": "abort-message", "signature": "ab12"}
ANALYSIS = {"threads": [
    {"tid": 4244, "crashed": False, "frames": [{"index": 0, "pc": 0x7F00, "module": None}]},
    {"tid": 4243, "crashed": True, "frames": [
        {"index": 0, "pc": 0x7F0012345678, "module": "/usr/lib/x86_64-linux-gnu/libc.so.6",
         "offset": 0x3BD41, "symbol": "raise"},
        {"index": 1, "pc": 0x401136, "module": "/usr/bin/prog", "offset": 0x1136,
         "symbol": None}]}],
    "annotations": [{"id": "abort-message", "title": "assertion failed", "confidence": "high",
                     "evidence": ["x < 1"], "advice": "fix it"}]}


def record(row: dict[str, object], facts: dict[str, object] | None = None) -> CrashRecord:
    return CrashRecord.from_json({**row, "facts": facts, "analysis": ANALYSIS})


def test_message_has_systemd_shape():
    text = journal.message(record(ROW))
    assert text.startswith("Process 4242 (prog) of user 1000 dumped core.\n\n")
    assert "Root cause: abort-message: assertion failed" in text
    crashed = text.index("Stack trace of thread 4243:\n"
                         "#0  0x00007f0012345678 raise (libc.so.6 + 0x3bd41)\n"
                         "#1  0x0000000000401136 n/a (prog + 0x1136)")
    assert crashed < text.index("Stack trace of thread 4244:")  # crashed thread first


def test_fields_are_systemd_coredump_names():
    fields = journal.journal_fields(record(ROW, {"proc": {"cwd": "/", "slice": "system.slice"}}))
    assert fields["MESSAGE_ID"] == "fc2e22bc6ee647b6b90729ab34a250b1"
    assert fields["PRIORITY"] == "2"
    assert fields["COREDUMP_SIGNAL_NAME"] == "SIGABRT"
    assert fields["COREDUMP_TIMESTAMP"] == "1700000000123456"
    assert fields["COREDUMP_TRUNCATED"] == "1"
    assert fields["COREDUMP_ROOT_CAUSE"] == "abort-message"
    assert fields["COREDUMP_RLIMIT"] == str(2**64 - 1)


def test_native_encoding_is_binary_safe():
    raw = journal.encode_entry({"A": "one", "B": "two\nlines"})
    assert raw == b"A=one\nB\n" + (9).to_bytes(8, "little") + b"two\nlines\n"


@pytest.mark.parametrize("size", ["small", "memfd"])
def test_entry_read_back_from_real_journald(private_journal, size):
    marker = uuid.uuid4().hex
    row = dict(ROW, comm=f"prog\x1b[31m{marker}")
    fields = journal.journal_fields(record(row))
    fields["COREDUMPD_TEST_MARKER"] = marker
    if size == "memfd":
        fields["COREDUMPD_TEST_PADDING"] = "p" * (400 << 10)  # over one datagram
    assert journal.send(fields, timeout=2, path=private_journal.socket_path) == "sent"
    entry = private_journal.wait_entry(f"COREDUMPD_TEST_MARKER={marker}")
    assert entry["MESSAGE_ID"] == journal.MESSAGE_ID and entry["PRIORITY"] == "2"
    # journalctl -o json gives values holding control bytes as arrays of numbers
    entry = {k: bytes(v).decode() if isinstance(v, list) else v for k, v in entry.items()}
    assert entry["COREDUMP_PID"] == "4242" and entry["COREDUMP_COMM"] == row["comm"]
    assert entry["MESSAGE"].startswith("Process 4242 (prog")
    assert "Stack trace of thread 4243:" in entry["MESSAGE"]


def test_namespace_socket_is_systemds_layout():
    assert journal.journal_socket_path() == "/run/systemd/journal/socket"
    assert journal.journal_socket_path("crashes") == "/run/systemd/journal.crashes/socket"


def test_unknown_uid_is_left_out_never_none():
    unknown = CrashRecord.from_json(dict(ROW, uid=None, gid=None))
    assert journal.headline(4242, "prog", None) == "Process 4242 (prog) dumped core."
    assert journal.message(unknown) == "Process 4242 (prog) dumped core."
    line = journal.kmsg_line(None, "prog", None, 11, "stored")
    assert line == "Process (prog) dumped core (SIGSEGV): stored"
    fields = journal.journal_fields(unknown)
    assert "None" not in "".join(fields.values())
    assert "COREDUMP_UID" not in fields and "COREDUMP_GID" not in fields
    # coredumpctl cannot list it (252 aborts in parse_uid()): no coredump MESSAGE_ID
    assert "MESSAGE_ID" not in fields and fields["COREDUMP_PID"] == "4242"


def test_stand_in_pid_is_left_out():
    facts = {"id_sources": {"pid": None, "uid": "NT_PRPSINFO", "gid": "NT_PRPSINFO"}}
    fields = journal.journal_fields(CrashRecord.from_json({**ROW, "facts": facts}))
    assert "COREDUMP_PID" not in fields and "MESSAGE_ID" not in fields
    assert fields["MESSAGE"] == "Process (prog) of user 1000 dumped core."
    known = {"id_sources": {"pid": "NT_PRPSINFO", "uid": "NT_PRPSINFO", "gid": "%g"}}
    fields = journal.journal_fields(CrashRecord.from_json({**ROW, "facts": known}))
    assert fields["MESSAGE_ID"] == journal.MESSAGE_ID


def test_socket_that_never_reads_times_out(tmp_path):
    path = str(tmp_path / "sock")
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(path)
    try:
        outcomes = [journal.send({"MESSAGE": "x" * 4000}, timeout=0.05, path=path)
                    for _ in range(40)]
    finally:
        deaf.close()
    assert outcomes[0] == "sent"
    assert outcomes[-1] == "timeout"  # the queue filled up; we gave up instead of blocking


def test_missing_socket_is_unreachable(tmp_path):
    assert journal.send({"MESSAGE": "x"}, path=str(tmp_path / "none")).startswith("unreachable")


def test_stale_socket_file_is_unreachable_and_not_listening(tmp_path):
    """A socket file whose journald died (as /run keeps it where /run is no tmpfs)."""
    path = str(tmp_path / "stale")
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind(path)
    gone.close()
    assert os.path.exists(path) and not journald.listening(path)
    assert journal.send({"MESSAGE": "x"}, path=path) == "unreachable: ECONNREFUSED"
