"""coredumpd.elf.head: the one parser of a core's head, as the stream and Core.open use it.

Cores are built in code (tests.support.elfwriter), PN_XNUM ones with the
section header where the kernel writes it (after the segment data).  Each
case is read both ways: through ``Core.open`` (pread) and through the stream
(the handler's reader: fill from an fd), and the two must agree.
"""

from __future__ import annotations

import os
import re

import pytest

from coredumpd.elf import head as H
from coredumpd.elf import layouts as L
from coredumpd.elf.core import Core
from coredumpd.errors import FormatError
from coredumpd.ingest.stream import read_core
from coredumpd.source import BytesSource
from coredumpd.store.lz4seek import SeekableLz4Writer
from tests.support import elfwriter as W

MANY = L.PN_XNUM + 3  # program headers: more than e_phnum can say


def xnum_core(**options) -> bytes:
    notes = [W.note("CORE", L.NT.PRSTATUS, W.prstatus(7)),
             W.note("CORE", L.NT.SIGINFO, W.siginfo(11, 1, 0x10))]
    return W.core(notes, [W.Load(0x1000, b"\x22" * W.PAGE)], pn_xnum=True,
                  extra_phdrs=MANY - 2, **options)


def streamed(data: bytes, tmp_path):
    """The stream's view (the handler's reader on an fd), stored, notes decoded."""
    path = tmp_path / "stream"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    out = os.open(tmp_path / "stored.lz4", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        writer = SeekableLz4Writer(out, block_size=64 << 10)
        result = read_core(fd, writer)
        writer.finish(result.truncated)
        return result
    finally:
        os.close(fd)
        os.close(out)


def test_pn_xnum_count_is_sh_info_of_section_header_0(tmp_path):
    data = xnum_core()
    assert L.EHDR.unpack_from(data)[10] == L.PN_XNUM
    head = H.parse_head(BytesSource(data).pread)
    assert (head.phnum, head.phnum_source, head.problems) == (MANY, "sh_info", [])
    assert len(head.phdrs) == MANY and head.expected_size() == len(data)
    core = Core.open(BytesSource(data), expected_tid=7)
    assert core.ehdr.e_phnum == MANY and core.problems == [] and not core.truncated
    assert [t.tid for t in core.threads] == [7] and len(core.segments) == 1
    stream = streamed(data, tmp_path)
    assert stream.phnum == MANY and [t.tid for t in stream.threads] == [7]
    assert stream.siginfo.si_addr == 0x10 and stream.expected_size == len(data)


def test_pn_xnum_out_of_the_streams_reach_is_inferred_from_the_notes_offset():
    """A big core's section header comes after gigabytes of data: the stream cannot wait
    for it, and the kernel's layout (phdrs up to the notes) gives the same count."""
    data = xnum_core()
    notes_end = L.PHDR.unpack_from(data, L.EHDR.size)[2] + 4096
    head = H.parse_head(BytesSource(data).pread, reach=notes_end)
    assert (head.phnum, head.phnum_source, head.problems) == (MANY, "notes offset", [])
    assert len(head.notes) == 1


def test_sh_info_wins_over_the_layout():
    """Section header 0 written early (between phdrs and notes), as other writers may:
    the notes' offset then says one header more, sh_info is right."""
    data = xnum_core(section_header="early")
    head = H.parse_head(BytesSource(data).pread)
    assert (head.phnum, head.phnum_source) == (MANY, "sh_info")
    lying = H.parse_head(BytesSource(xnum_core(sh_info=2)).pread)
    assert lying.phnum == 2 and len(lying.phdrs) == 2  # what the file says, even if odd


def test_truncated_pn_xnum_core_keeps_its_threads(tmp_path):
    """The section header is the core's last 64 bytes, the first thing a size limit cuts."""
    data = xnum_core()
    cut = data[:-10]
    core = Core.open(BytesSource(cut))
    assert core.truncated and core.ehdr.e_phnum == MANY
    assert [t.tid for t in core.threads] == [7]
    shoff = L.EHDR.unpack_from(data)[6]
    assert f"PN_XNUM but section header 0 is cut (at offset {shoff + 54:#x})" in core.problems
    stream = streamed(cut, tmp_path)
    assert stream.phnum == MANY and [t.tid for t in stream.threads] == [7]
    assert stream.truncated == f"stream ended after {len(cut)} of {len(data)} bytes"


def test_pn_xnum_without_a_section_header():
    data = bytearray(xnum_core())
    L.EHDR.pack_into(data, 0, *(list(L.EHDR.unpack_from(data))[:6] + [0]
                                 + list(L.EHDR.unpack_from(data))[7:]))
    head = H.parse_head(BytesSource(bytes(data)).pread)
    assert head.phnum == MANY and head.phnum_source == "notes offset"
    assert head.problems == ["PN_XNUM but no section header (e_shoff 0) (at offset 0x28)"]


def test_pn_xnum_with_nothing_to_count_from():
    data = bytearray(xnum_core()[:-64])  # no section header
    L.PHDR.pack_into(data, L.EHDR.size, L.PT.LOAD, 0, 0x5000, 0, 0, 0, 0, 0)  # PT_NOTE gone
    head = H.parse_head(BytesSource(bytes(data)).pread)
    assert head.phnum == 0 and head.phdrs == [] and head.notes == []
    assert any("count unknown (at offset 0x40)" in p for p in head.problems)


def _with_header(data: bytes, **fields) -> bytes:
    names = ["e_ident", "e_type", "e_machine", "e_version", "e_entry", "e_phoff", "e_shoff",
             "e_flags", "e_ehsize", "e_phentsize", "e_phnum", "e_shentsize", "e_shnum",
             "e_shstrndx"]
    values = dict(zip(names, L.EHDR.unpack_from(data), strict=True)) | fields
    return L.EHDR.pack(*values.values()) + data[L.EHDR.size:]


HOSTILE = {  # header fields, threads still found
    "phoff past the end": ({"e_phoff": 1 << 40}, 0),
    "phnum far past the end": ({"e_phnum": 0xFFFE}, 2),  # the real ones come first
    "phentsize wrong": ({"e_phentsize": 32}, 0),
    "pn_xnum, shoff past the end": ({"e_phnum": L.PN_XNUM, "e_shoff": 1 << 50}, 2),  # inferred
    "pn_xnum, shoff and phoff past the end": ({"e_phnum": L.PN_XNUM, "e_shoff": 1 << 50,
                                               "e_phoff": 1 << 50}, 0),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers_become_problems_with_offsets(case, tmp_path):
    fields, threads = HOSTILE[case]
    data = _with_header(W.simple_core(), **fields)
    head = H.parse_head(BytesSource(data).pread)
    assert head.problems and all(re.search(r"\(at offset 0x[0-9a-f]+\)$", p)
                                 for p in head.problems), head.problems
    core = Core.open(BytesSource(data))
    assert len(core.threads) == threads and core.problems
    stream = streamed(data, tmp_path)
    assert len(stream.threads) == threads and stream.truncated
    # a section header past the stream's reach is expected (big cores), not a problem
    assert stream.problems or fields.get("e_phoff") is None and threads


def test_hostile_note_segments():
    data = bytearray(W.simple_core())
    note_phdr = list(L.PHDR.unpack_from(data, L.EHDR.size))
    note_phdr[2] = 1 << 45  # PT_NOTE offset past the end
    L.PHDR.pack_into(data, L.EHDR.size, *note_phdr)
    head = H.parse_head(BytesSource(bytes(data)).pread)
    cut = f"PT_NOTE cut: 0 of {note_phdr[5]} bytes (at offset {1 << 45:#x})"
    assert head.truncated and head.problems == [cut]
    note_phdr[2], note_phdr[5] = L.EHDR.size, 1 << 40  # a terabyte of notes
    L.PHDR.pack_into(data, L.EHDR.size, *note_phdr)
    head = H.parse_head(BytesSource(bytes(data)).pread)
    assert any("over the note budget, cut" in p for p in head.problems)


def test_every_cut_of_the_head_parses_or_raises_format_error_only(tmp_path):
    data = W.simple_core()
    notes_offset, notes_size = L.PHDR.unpack_from(data, L.EHDR.size)[2::3][:2]
    for cut in range(0, notes_offset + notes_size + 8, 7):
        if cut < L.EHDR.size:
            with pytest.raises(FormatError):
                H.parse_head(BytesSource(data[:cut]).pread)
            continue
        head = H.parse_head(BytesSource(data[:cut]).pread)
        assert head.truncated == (cut < notes_offset + notes_size), cut
        core = Core.open(BytesSource(data[:cut]))
        stream = streamed(data[:cut], tmp_path)
        assert [t.tid for t in stream.threads] == [t.tid for t in core.threads], cut
        assert stream.phnum == core.ehdr.e_phnum, cut


def test_not_a_core():
    with pytest.raises(FormatError, match="not an ELF file"):
        H.parse_head(BytesSource(b"MZ" + bytes(100)).pread)
    with pytest.raises(FormatError, match="not ELF64 little-endian"):
        H.parse_head(BytesSource(b"\x7fELF\x01\x01" + bytes(100)).pread)
    executable = _with_header(W.simple_core(), e_type=L.ET.EXEC)
    assert H.core_type_problem(H.parse_ehdr(executable)) == ("not a core file (e_type 2)", 16)
    with pytest.raises(FormatError, match="not a core file"):
        Core.open(BytesSource(executable))
