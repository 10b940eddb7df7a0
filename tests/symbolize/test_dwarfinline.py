"""coredumpd.symbolize.dwarfinline: the inline chain of a real unit, and hostile bytes."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from coredumpd.elf.elffile import ElfFile
from coredumpd.errors import FormatError
from coredumpd.symbolize import dwarfinline, dwarfline
from tests.support.fixtures import FIXTURES_DIR

CXX = FIXTURES_DIR / "cxx" / "cxx"  # the cxx fixture: std::function's call inlined


def sections():
    with ElfFile.open(str(CXX)) as elf:
        def data(name):
            section = elf.section(name)
            return elf.section_data(section) if section is not None else b""
        return {name: data(name) for name in (
            ".debug_info", ".debug_abbrev", ".debug_str", ".debug_line_str", ".debug_ranges",
            ".debug_rnglists", ".debug_str_offsets", ".debug_addr", ".debug_line")}


SECTIONS = sections()
PARTS = dwarfinline.Sections(
    abbrev=SECTIONS[".debug_abbrev"], strings=SECTIONS[".debug_str"],
    line_strings=SECTIONS[".debug_line_str"], ranges=SECTIONS[".debug_ranges"],
    rnglists=SECTIONS[".debug_rnglists"], str_offsets=SECTIONS[".debug_str_offsets"],
    addresses=SECTIONS[".debug_addr"])


def unit(info: bytes) -> dwarfinline.UnitDies:
    top = dwarfline.read_unit_top(info, PARTS.abbrev, 0)
    files = {} if top.stmt_list is None else dwarfline.read_line_files(
        SECTIONS[".debug_line"], top.stmt_list, (PARTS.line_strings, PARTS.strings))
    return dwarfinline.UnitDies(info, 0, PARTS, files)


def test_the_lambda_call_of_std_function_is_three_inlined_calls():
    """gdb (fixtures/cores/cxx/gdb-bt.txt) at _M_invoke+20 (0x123c, the call's return
    address - 1): operator() at cxx_methods.cc:23 inside __invoke_impl (invoke.h:61)
    inside __invoke_r (invoke.h:111) inside _M_invoke (std_function.h:290)."""
    calls = unit(SECTIONS[".debug_info"]).inlined_at(0x123C)
    assert [(call.call_file.rsplit("/", 1)[-1], call.call_line) for call in calls] == [
        ("std_function.h", 290), ("invoke.h", 111), ("invoke.h", 61)]
    assert calls[-1].name == "operator()"
    assert calls[0].name.startswith("__invoke_r<") and calls[1].name.startswith("__invoke_impl<")
    assert unit(SECTIONS[".debug_info"]).inlined_at(0x124B) == []  # put(): nothing inlined


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 1 << 20), st.integers(0, 255), st.integers(0, 2000),
       st.integers(0x1000, 0x1400))
def test_corrupted_unit_raises_only_format_error(position, value, cut, address):
    """The fixture's unit with one byte changed and its tail cut: a chain or FormatError."""
    data = bytearray(SECTIONS[".debug_info"])
    data[position % len(data)] = value
    try:
        unit(bytes(data[:max(12, len(data) - cut)])).inlined_at(address)
    except FormatError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512), st.integers(0, 1 << 16))
def test_garbage_raises_only_format_error(data, address):
    try:
        dwarfinline.UnitDies(data, 0, PARTS, {}).inlined_at(address)
    except FormatError:
        pass
