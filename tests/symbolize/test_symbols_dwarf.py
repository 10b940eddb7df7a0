"""coredumpd.symbolize.dwarfline on hostile bytes: only FormatError, bounded work."""

from __future__ import annotations

import os

import hypothesis.strategies as st
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
