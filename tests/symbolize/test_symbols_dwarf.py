"""coredumpd.symbolize.dwarfline on hostile bytes: only FormatError, bounded work."""

from __future__ import annotations

import os
import pathlib
import zlib

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from coredumpd.elf.elffile import ElfFile
from coredumpd.errors import FormatError
from coredumpd.image.debuginfo import build_id_path
from coredumpd.symbolize import dwarfline
from coredumpd.symbolize.lines import SectionWindow

LIBC = os.path.realpath("/usr/lib/x86_64-linux-gnu/libc.so.6")


def libc_debug_sections():
    with ElfFile.open(LIBC) as elf:
        build_id = elf.build_id
    with ElfFile.open(build_id_path(build_id)) as debug:
        return {name: debug.section_data(debug.section(name))
                for name in (".debug_line", ".debug_info", ".debug_abbrev", ".debug_aranges",
                             ".debug_line_str", ".debug_str")}


SECTIONS = libc_debug_sections()
STRINGS = (SECTIONS[".debug_line_str"], SECTIONS[".debug_str"])


def only_format_errors(function, *args):
    try:
        function(*args)
    except FormatError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_raises_only_format_error(data):
    only_format_errors(dwarfline.parse_aranges, data)
    only_format_errors(dwarfline.read_line_program, data, 0, STRINGS)
    only_format_errors(dwarfline.read_unit_top, data, data, 0)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 4000), st.integers(0, 255), st.integers(0, 3000))
def test_corrupted_real_line_program(position, value, cut):
    """libc's first line program with one byte changed and its tail cut."""
    data = bytearray(SECTIONS[".debug_line"][:4000])
    data[position % len(data)] = value
    only_format_errors(dwarfline.read_line_program, bytes(data[:len(data) - cut]), 0, STRINGS)


def test_real_aranges_and_units_parse():
    starts, rest = dwarfline.parse_aranges(SECTIONS[".debug_aranges"])
    assert len(starts) > 1000 and starts == sorted(starts)
    offsets = sorted({offset for _end, offset in rest})
    for offset in offsets[:50]:
        top = dwarfline.read_unit_top(SECTIONS[".debug_info"], SECTIONS[".debug_abbrev"], offset)
        assert top.stmt_list is not None
        sequences = dwarfline.read_line_program(SECTIONS[".debug_line"], top.stmt_list, STRINGS)
        assert all(start <= end for start, end, _rows in sequences)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3_000_000), st.integers(0, 70_000))
def test_section_window_reads_equal_the_whole_section(offset, size):
    """Partial inflation of libc's compressed .debug_info gives the same bytes."""
    window = section_window(".debug_info")
    whole = SECTIONS[".debug_info"]
    assert window.compressed
    assert window.read(offset, size) == whole[offset:offset + size]


def section_window(name, cache={}):  # noqa: B006 - one window per session is the point
    if name not in cache:
        with ElfFile.open(LIBC) as elf:
            build_id = elf.build_id
        debug = ElfFile.open(build_id_path(build_id))
        cache[name] = SectionWindow(debug, debug.section(name))
    return cache[name]


def _damaged_copy(tmp_path, change):
    """A copy of libc's debug file with ``change(bytearray, .debug_info section)`` applied."""
    with ElfFile.open(LIBC) as elf:
        build_id = elf.build_id
    data = bytearray(pathlib.Path(build_id_path(build_id)).read_bytes())
    with ElfFile.open(build_id_path(build_id)) as debug:
        change(data, debug.section(".debug_info"))
    path = tmp_path / "damaged.debug"
    path.write_bytes(bytes(data))
    return ElfFile.open(str(path))


@pytest.fixture(params=["isal", "zlib"])
def inflater(request, monkeypatch):
    """SectionWindow with ISA-L's inflate (when installed) and with zlib's fallback."""
    from coredumpd.symbolize import lines

    if request.param == "zlib":
        monkeypatch.setattr(lines, "INFLATE", zlib)
        monkeypatch.setattr(lines, "INFLATE_ERRORS", (zlib.error,))
    elif lines.INFLATE is zlib:
        pytest.skip("isal is not installed")
    return request.param


def test_section_window_reads_the_same_with_either_inflater(inflater):
    with ElfFile.open(LIBC) as elf:
        build_id = elf.build_id
    with ElfFile.open(build_id_path(build_id)) as debug:
        window = SectionWindow(debug, debug.section(".debug_info"))
        whole = SECTIONS[".debug_info"]
        for offset, size in ((10_000, 300), (2_828_568, 59), (1_000_000, 70_000),
                             (len(whole) - 10, 100)):
            assert window.read(offset, size) == whole[offset:offset + size]


def test_section_window_on_a_corrupt_stream_raises_only_format_error(tmp_path, inflater):
    """Garbage in the middle of the compressed bytes: what comes before it reads as
    before, a read past it is a FormatError (or reads short), never another error."""
    def corrupt(data, section):
        middle = section.sh_offset + section.sh_size // 2
        data[middle:middle + 4096] = bytes(range(256)) * 16

    debug = _damaged_copy(tmp_path, corrupt)
    try:
        window = SectionWindow(debug, debug.section(".debug_info"))
        assert window.read(1000, 500) == SECTIONS[".debug_info"][1000:1500]
        try:
            assert window.read(window.size - 100, 100) != SECTIONS[".debug_info"][-100:]
        except FormatError:
            pass
    finally:
        debug.close()


def test_section_window_inflates_no_further_than_declared(tmp_path, inflater):
    """An Elf64_Chdr that declares less than the stream holds (a bomb would): reads stop
    at the declared size, and no more is inflated."""
    def declare_less(data, section):
        data[section.sh_offset + 8:section.sh_offset + 16] = (100_000).to_bytes(8, "little")

    debug = _damaged_copy(tmp_path, declare_less)
    try:
        window = SectionWindow(debug, debug.section(".debug_info"))
        assert window.size == 100_000
        assert window.read(99_000, 5000) == SECTIONS[".debug_info"][99_000:100_000]
        assert window.read(200_000, 10) == b""
        assert len(window._inflated) <= 100_000
    finally:
        debug.close()


def test_abbreviation_tables_read_from_a_prefix_are_the_whole_sections():
    """DwarfLines inflates .debug_abbrev only as far as a unit's table reaches: every
    sampled unit's table parses the same as from the whole section."""
    from coredumpd.symbolize.dwarfinline import parse_abbrevs
    from coredumpd.symbolize.lines import DwarfLines

    with ElfFile.open(LIBC) as elf:
        lines = DwarfLines(build_id_path(elf.build_id))
    try:
        _starts, rest = dwarfline.parse_aranges(SECTIONS[".debug_aranges"])
        info, whole = SECTIONS[".debug_info"], SECTIONS[".debug_abbrev"]
        for offset in sorted({offset for _end, offset in rest})[::-40]:  # the last first
            table = dwarfline.read_unit_header(dwarfline.Reader(info, offset))[3]
            prefix = lines._abbrev_table(info, offset)
            assert len(prefix) < len(whole) or table > len(whole) // 2
            assert parse_abbrevs(prefix, table) == parse_abbrevs(whole, table)
    finally:
        lines.close()


def test_an_abbreviation_offset_past_the_tables_reads_at_most_the_section():
    """A unit header naming an abbreviation offset near or past the section's end (a
    table cut by the end, or none): the whole section, read once, and the lookup
    stays a FormatError's business, never a loop or another error."""
    import struct

    from coredumpd.symbolize.lines import DwarfLines

    with ElfFile.open(LIBC) as elf:
        lines = DwarfLines(build_id_path(elf.build_id))
    whole = SECTIONS[".debug_abbrev"]
    try:
        for table in (len(whole) - 3, len(whole), len(whole) + 10_000, 1 << 31):
            header = struct.pack("<IHBBI", 8, 5, 1, 8, table)  # DWARF 5 compile unit
            assert lines._abbrev_table(header, 0) == whole
            try:
                dwarfline.read_unit_top(header + b"\x01", whole, 0)
            except FormatError:
                pass
    finally:
        lines.close()
