"""File:line from DWARF: the line program of ONE compilation unit, never all of DWARF.

The unit is found through ``.debug_aranges`` (or, without it, the top DIE pc
range of each CU) and decoded by :mod:`coredumpd.symbolize.dwarfline`.
"""

from __future__ import annotations

import bisect
import zlib
from types import ModuleType
from typing import Any

from coredumpd.elf.elffile import (
    CHDR,
    ELFCOMPRESS_ZLIB,
    MAX_SECTION_READ,
    SHF_COMPRESSED,
    ElfFile,
    Section,
)
from coredumpd.elf.layouts import SHT
from coredumpd.errors import CoredumpdError, FormatError
from coredumpd.symbolize import dwarfinline, dwarfline
from coredumpd.symbolize.types import InlinedCall


def _inflater() -> tuple[ModuleType, tuple[type[Exception], ...]]:
    """ISA-L's inflate (isal, a dependency) when importable, else zlib's: the same bytes,
    ~2.4 times as fast (libc's .debug_info inflated to its middle: 6.7 ms instead of
    16 ms of CPU), which was most of a cold analysis's DWARF work."""
    try:
        from isal import isal_zlib
    except ImportError:  # only slower
        return zlib, (zlib.error,)
    error: Any = isal_zlib.error  # the class (isal's stubs call it an instance)
    return isal_zlib, (zlib.error, error)


INFLATE, INFLATE_ERRORS = _inflater()

MAX_CU_SCAN = 50_000
TOP_DIE_WINDOW = 1 << 20  # bytes of a unit read to find its top DIE
ABBREV_REACH = 16 << 10  # bytes of an abbreviation table read first (libc's: ~1-3 KiB)
INFLATE_SLACK = 16 << 10  # compressed bytes fed beyond the estimate


class SectionWindow:
    """Random reads in one (possibly zlib-compressed) section, inflating only a prefix.

    A CU's top DIE and its line program are small pieces of big sections:
    uncompressed sections are read with pread, compressed ones are inflated
    only as far as the furthest byte asked for (elf(5), SHF_COMPRESSED), and
    their compressed bytes are read only as far as that needs.  Input is fed to
    zlib in pieces sized by the section's ratio, never as one buffer sliced again
    and again (``unconsumed_tail`` copies the rest of the input on every call:
    ~4 ms of a cold analysis inflating libc's ``.debug_info`` to its middle).
    """

    def __init__(self, elf: ElfFile, section: Section) -> None:
        self.elf, self.section = elf, section
        self.compressed = bool(section.sh_flags & SHF_COMPRESSED)
        self.size = section.sh_size
        self._inflated = bytearray()
        self._decompressor: Any = None
        self._next = self._end = 0  # file offsets: the next compressed byte to feed, the end
        if self.compressed:
            header = elf.read(section.sh_offset, min(CHDR.size, section.sh_size), section.name)
            if len(header) < CHDR.size:
                raise FormatError(f"{elf.name}: {section.name}: Elf64_Chdr cut",
                                  section.sh_offset)
            ch_type, _reserved, self.size, _align = CHDR.unpack_from(header)
            if ch_type != ELFCOMPRESS_ZLIB or self.size > MAX_SECTION_READ:
                raise FormatError(f"{elf.name}: {section.name}: unsupported compression",
                                  section.sh_offset)
            self._decompressor = INFLATE.decompressobj()
            self._next = section.sh_offset + CHDR.size
            self._end = section.sh_offset + section.sh_size

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (short at the end of the section)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        if not self.compressed:
            return self.elf.read(self.section.sh_offset + offset, end - offset, self.section.name)
        while len(self._inflated) < end and self._inflate_more(end):
            pass
        return bytes(self._inflated[offset:end])

    def _inflate_more(self, end: int) -> bool:
        """Feed zlib the compressed bytes that should inflate up to ``end``; False when
        the stream or the section ended (the rest reads short)."""
        if self._decompressor.eof or self._next >= self._end:
            return False
        wanted = (end - len(self._inflated)) * (self._end - self._next) // max(
            1, self.size - len(self._inflated)) + INFLATE_SLACK
        piece = self.elf.read(self._next, min(wanted, self._end - self._next), self.section.name)
        self._next += len(piece)
        try:  # at most the declared size: a bomb inflates no further than it says
            self._inflated += self._decompressor.decompress(
                piece, max(1, self.size - len(self._inflated)))
        except INFLATE_ERRORS as err:
            raise FormatError(f"{self.elf.name}: {self.section.name}: {err}") from err
        if self._decompressor.unconsumed_tail:  # the declared size is reached
            self._next = self._end
        return True


class DwarfLines:
    """File:line lookups in one ELF file with DWARF, one CU read at a time (cached).

    ``.debug_aranges`` finds the CU (without it, the top DIEs' low/high pc of
    at most MAX_CU_SCAN units); only that CU's line program is decoded.
    ``error`` says why lines are unavailable.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.error: str | None = None
        self._elf: ElfFile | None = None
        self._sections: dict[str, bytes] = {}
        self._aranges: tuple[list[int], list[tuple[int, int]]] | None = None
        self._unit_ranges: list[tuple[int, int, int]] | None = None
        self._units: dict[int, dwarfline.UnitLines | None] = {}
        self._dies: dict[int, dwarfinline.UnitDies | None] = {}
        self._windows: dict[str, SectionWindow] = {}
        try:
            self._elf = ElfFile.open(path)
            self.available = self._elf.section(".debug_line") is not None and \
                self._elf.section(".debug_info") is not None
        except CoredumpdError as err:
            self.error, self.available = str(err), False

    def close(self) -> None:
        if self._elf is not None:
            self._elf.close()
            self._elf = None
        self._sections.clear()
        self._windows.clear()

    def _section(self, name: str) -> bytes:
        """The whole section (compressed ones inflated by :data:`INFLATE`, in full)."""
        if name not in self._sections:
            assert self._elf is not None
            section = self._elf.section(name)
            if section is None or section.sh_type == SHT.NOBITS:
                data = b""
            elif section.sh_flags & SHF_COMPRESSED:
                window = self._window(name)
                data = window.read(0, window.size)
                if len(data) != window.size:
                    raise FormatError(f"{self.path}: {name} inflates to {len(data)} bytes, "
                                      f"not {window.size}", section.sh_offset)
            else:
                data = self._elf.section_data(section)
            self._sections[name] = data
        return self._sections[name]

    def lookup(self, address: int) -> dwarfline.LineRow | None:
        """The line row of link-time ``address``, or None (never raises)."""
        if not self.available:
            return None
        try:
            offset = self._unit_offset(address)
            if offset is None:
                return None
            if offset not in self._units:
                self._units[offset] = self._load_unit(offset)
            table = self._units[offset]
            return table.lookup(address) if table is not None else None
        except CoredumpdError as err:
            self.error, self.available = f"{self.path}: DWARF unreadable: {err}", False
            return None

    def inlined(self, address: int) -> list[InlinedCall]:
        """The inlined calls holding link-time ``address``, outermost first (never raises:
        [] when there are none or the DWARF cannot say)."""
        if not self.available:
            return []
        try:
            offset = self._unit_offset(address)
            if offset is None:
                return []
            if offset not in self._dies:
                self._dies[offset] = self._load_dies(offset)
            dies = self._dies[offset]
            return dies.inlined_at(address) if dies is not None else []
        except CoredumpdError as err:
            self.error = f"{self.path}: DWARF DIEs unreadable: {err}"
            return []

    def _load_dies(self, offset: int) -> dwarfinline.UnitDies | None:
        if ".debug_info" in self._sections:
            info = self._sections[".debug_info"]
            length, offset_size = dwarfline.Reader(info, offset).initial_length()
            info = info[offset:offset + length + (4 if offset_size == 4 else 12)]
        else:
            info = self._unit_bytes(".debug_info", offset, MAX_SECTION_READ)
        abbrev = self._abbrev_table(info, 0)
        top = dwarfline.read_unit_top(info, abbrev, 0)
        strings = (self._section(".debug_line_str"), self._section(".debug_str"))
        files: dict[int, str] = {}
        if top.stmt_list is not None:
            files = dwarfline.read_line_files(
                self._unit_bytes(".debug_line", top.stmt_list, MAX_SECTION_READ), 0, strings)
        sections = dwarfinline.Sections(
            abbrev=abbrev, strings=strings[1], line_strings=strings[0],
            ranges=self._section(".debug_ranges"), rnglists=self._section(".debug_rnglists"),
            str_offsets=self._section(".debug_str_offsets"),
            addresses=self._section(".debug_addr"))
        return dwarfinline.UnitDies(info, offset, sections, files)

    def _unit_offset(self, address: int) -> int | None:
        if self._aranges is None:
            self._aranges = dwarfline.parse_aranges(self._section(".debug_aranges"))
        starts, rest = self._aranges
        index = bisect.bisect_right(starts, address) - 1
        for candidate in range(index, max(index - 4, -1), -1):
            if starts[candidate] <= address < rest[candidate][0]:
                return rest[candidate][1]
        return self._unit_offset_by_ranges(address)

    def _unit_offset_by_ranges(self, address: int) -> int | None:
        """Without a covering .debug_aranges entry: the units' top-DIE low/high pc."""
        if self._unit_ranges is None:
            self._unit_ranges = []
            info, abbrev = self._section(".debug_info"), self._section(".debug_abbrev")
            offset = 0
            for _ in range(MAX_CU_SCAN):
                if offset >= len(info):
                    break
                length, offset_size = dwarfline.Reader(info, offset).initial_length()
                top = dwarfline.read_unit_top(info, abbrev, offset)
                if top.low_pc is not None and top.high_pc is not None:
                    self._unit_ranges.append((top.low_pc, top.high_pc, offset))
                offset += length + (4 if offset_size == 4 else 12)
        for low, high, offset in self._unit_ranges:
            if low <= address < high:
                return offset
        return None

    def _window(self, name: str) -> SectionWindow:
        if name not in self._windows:
            assert self._elf is not None
            section = self._elf.section(name)
            if section is None:
                raise FormatError(f"{self.path}: no {name}")
            self._windows[name] = SectionWindow(self._elf, section)
        return self._windows[name]

    def _abbrev_table(self, info: bytes, at: int) -> bytes:
        """``.debug_abbrev`` as far as the abbreviation table of the unit at ``at`` of
        ``info`` reaches: the parsers read only that table, and libc's compressed
        section inflates to ~1 MB, most of it other units' tables."""
        section = self._elf.section(".debug_abbrev") if self._elf is not None else None
        if ".debug_abbrev" in self._sections or section is None \
                or section.sh_type == SHT.NOBITS:
            return self._section(".debug_abbrev")
        table = dwarfline.read_unit_header(dwarfline.Reader(info, at))[3]
        window, reach = self._window(".debug_abbrev"), ABBREV_REACH
        while True:
            data = window.read(0, table + reach)
            if len(data) < table + reach:
                return data  # the whole section
            try:
                for _entry in dwarfline.abbreviations(data, table):
                    pass
                return data
            except FormatError:  # cut short here, or bad: read further (bad stays bad)
                reach *= 4

    def _unit_bytes(self, name: str, offset: int, cap: int) -> bytes:
        """The unit at ``offset`` of section ``name`` (its initial length says how long)."""
        window = self._window(name)
        length, offset_size = dwarfline.Reader(window.read(offset, 12)).initial_length()
        return window.read(offset, min(length + (4 if offset_size == 4 else 12), cap))

    def _load_unit(self, offset: int) -> dwarfline.UnitLines | None:
        if ".debug_info" in self._sections:  # already inflated whole (no .debug_aranges)
            info, at = self._sections[".debug_info"], offset
        else:
            info, at = self._unit_bytes(".debug_info", offset, TOP_DIE_WINDOW), 0
        top = dwarfline.read_unit_top(info, self._abbrev_table(info, at), at)
        if top.stmt_list is None:
            return None
        strings = (self._section(".debug_line_str"), self._section(".debug_str"))
        program = self._unit_bytes(".debug_line", top.stmt_list, MAX_SECTION_READ)
        return dwarfline.UnitLines(dwarfline.read_line_program(program, 0, strings))
