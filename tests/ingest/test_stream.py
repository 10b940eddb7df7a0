"""The streaming reader: head parsed on the fly, bytes stored exactly, short input flagged."""

from __future__ import annotations

import os
import subprocess

import pytest

from coredumpd.elf import layouts as L
from coredumpd.ingest.stream import read_core
from coredumpd.store.lz4seek import SeekableLz4Reader, SeekableLz4Writer
from tests.support import elfwriter as W


def _pipe_from(data: bytes, tmp_path):
    """A real file as the 'pipe' (os.read semantics are the same for our reader)."""
    path = tmp_path / "input"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def _store(data: bytes, tmp_path, limit=None):
    fd = _pipe_from(data, tmp_path)
    out = os.open(tmp_path / "out.lz4", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    writer = SeekableLz4Writer(out, block_size=64 << 10)
    try:
        result = read_core(fd, writer, limit)
        writer.finish(result.truncated)
    finally:
        os.close(fd)
        os.close(out)
    return result, tmp_path / "out.lz4"


def test_simple_core_parsed_and_stored_exactly(tmp_path):
    data = W.simple_core()
    result, stored = _store(data, tmp_path)
    assert result.is_elf and result.truncated is None and result.problems == []
    assert [t.tid for t in result.threads] == [100, 101]
    assert result.siginfo.si_signo == 11 and result.siginfo.si_addr == 0x10
    assert result.files[0].path == "/bin/prog"
    assert result.auxv_value(L.AT.PAGESZ) == W.PAGE
    assert result.size == result.expected_size == len(data)
    restored = subprocess.run(["lz4", "-d", "-c", str(stored)], capture_output=True, check=True)
    assert restored.stdout == data
    with SeekableLz4Reader(str(stored)) as reader:
        assert reader.truncated is None
        assert reader.pread(100, 5000) == data[100:5100]


def test_pn_xnum_count_from_section_header(tmp_path):
    data = W.core([W.note("CORE", L.NT.PRSTATUS, W.prstatus(7))],
                  [W.Load(0x1000, b"\x22" * W.PAGE)], pn_xnum=True, extra_phdrs=3)
    result, _ = _store(data, tmp_path)
    assert result.phnum == 5 and result.threads[0].tid == 7 and result.truncated is None


@pytest.mark.parametrize("cut", ["ehdr", "phdrs", "notes", "segment"])
def test_stream_cut_short_is_stored_and_flagged(tmp_path, cut):
    data = W.simple_core()
    notes_offset = L.PHDR.unpack_from(data, L.EHDR.size)[2]
    at = {"ehdr": 30, "phdrs": L.EHDR.size + 70, "notes": notes_offset + 200,
          "segment": len(data) - 100}[cut]
    result, stored = _store(data[:at], tmp_path)
    assert result.size == at
    assert result.truncated
    with SeekableLz4Reader(str(stored)) as reader:
        assert reader.truncated == result.truncated
        assert reader.pread(0, at + 10) == data[:at]
    if cut == "segment":
        assert result.threads and result.siginfo is not None  # the head was complete
    else:
        assert result.problems


def test_garbage_and_empty(tmp_path):
    garbage = os.urandom(10000)
    result, stored = _store(garbage, tmp_path)
    assert not result.is_elf and result.truncated == "not an ELF core"
    with SeekableLz4Reader(str(stored)) as reader:
        assert reader.pread(0, 20000) == garbage
    result, _ = _store(b"", tmp_path)
    assert result.size == 0 and result.truncated == "empty stream"


def test_limit_truncates_and_stops_reading(tmp_path):
    data = W.simple_core()
    result, stored = _store(data, tmp_path, limit=5000)
    assert result.size == 5000 and "limit" in result.truncated
    with SeekableLz4Reader(str(stored)) as reader:
        assert reader.size == 5000 and reader.pread(0, 5000) == data[:5000]


def test_hostile_note_sizes_do_not_raise(tmp_path):
    bad = W.note("CORE", L.NT.FILE, b"\xff" * 64) + W.note("CORE", L.NT.PRSTATUS, b"\x01" * 8)
    data = W.core([bad], [W.Load(0x1000, b"\x33" * W.PAGE)])
    result, _ = _store(data, tmp_path)
    assert result.problems and result.truncated is None and result.size == len(data)


def test_head_only_without_writer(tmp_path):
    data = W.simple_core()
    fd = _pipe_from(data, tmp_path)
    try:
        result = read_core(fd, None)
    finally:
        os.close(fd)
    assert result.threads and result.size < len(data)
