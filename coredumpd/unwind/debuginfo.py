"""Finding a module's debug information: separate debug files, MiniDebugInfo, DWARF lines.

Search order, as gdb's "Separate Debug Files" (GDB manual, 18.3):

1. by build-id: ``<debugdir>/.build-id/xx/yyyy….debug`` (checked: same build-id);
2. by ``.gnu_debuglink``: next to the file, in its ``.debug/`` directory, and
   under ``<debugdir>/<dir of the file>`` (checked: CRC32 of the debug file);
3. MiniDebugInfo: the xz-compressed ELF in ``.gnu_debugdata`` (Fedora and
   others; https://sourceware.org/gdb/current/onlinedocs/gdb.html/MiniDebugInfo.html),
   decompressed under a size cap.

Line numbers come from the DWARF line program of ONE compilation unit, found
through ``.debug_aranges`` (or, without it, the top DIE pc range of each CU),
decoded by :mod:`coredumpd.unwind.dwarfline`: never all of DWARF.
"""

from __future__ import annotations

import bisect
import lzma
import os
import zlib
from typing import Any

from coredumpd.elf.elffile import (
    CHDR,
    ELFCOMPRESS_ZLIB,
    MAX_SECTION_READ,
    SHF_COMPRESSED,
    ElfFile,
    Section,
)
from coredumpd.errors import CoredumpdError, FormatError
from coredumpd.unwind import dwarfline

DEBUG_DIRS = ("/usr/lib/debug",)
MAX_MINIDEBUGINFO = 64 << 20  # decompressed
MAX_MINIDEBUGINFO_XZ = 16 << 20
MAX_CRC_CHECK = 512 << 20
MAX_CU_SCAN = 50_000
TOP_DIE_WINDOW = 1 << 20  # bytes of a unit read to find its top DIE
INFLATE_STEP = 256 << 10


def build_id_path(build_id: bytes, debug_dir: str = DEBUG_DIRS[0]) -> str:
    text = build_id.hex()
    return os.path.join(debug_dir, ".build-id", text[:2], text[2:] + ".debug")


def _same_build_id(path: str, build_id: bytes) -> bool:
    try:
        with ElfFile.open(path) as elf:
            return elf.build_id == build_id
    except CoredumpdError:
        return False


def _crc32(path: str) -> int | None:
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > MAX_CRC_CHECK:
            return None
        crc = 0
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
        return crc
    except OSError:
        return None


def find_debug_file(host_path: str | None, build_id: bytes | None, debuglink: tuple[str, int] | None,
                    root: str = "/", debug_dirs: tuple[str, ...] = DEBUG_DIRS) -> str | None:
    """Path of the separate debug file for a module, or None."""
    roots = [root, "/"] if root not in ("", "/") else ["/"]
    dirs = [os.path.join(r, d.lstrip("/")) for r in roots for d in debug_dirs]
    if build_id:
        for debug_dir in dirs:
            candidate = build_id_path(build_id, debug_dir)
            if os.path.isfile(candidate) and _same_build_id(candidate, build_id):
                return candidate
    if debuglink and host_path:
        name, crc = debuglink
        name = os.path.basename(name)  # a file name, never a path (GDB manual 18.3)
        here = os.path.dirname(host_path)
        for candidate in [os.path.join(here, name), os.path.join(here, ".debug", name),
                          *(os.path.join(d, here.lstrip("/"), name) for d in dirs)]:
            if candidate != host_path and os.path.isfile(candidate):
                found = _crc32(candidate)
                if found == crc or (found is None and build_id and
                                    _same_build_id(candidate, build_id)):
                    return candidate
    return None


def minidebuginfo(elf: ElfFile) -> ElfFile | None:
    """The ELF inside ``.gnu_debugdata`` (xz), decompressed under a cap; None if absent."""
    compressed = elf.gnu_debugdata(MAX_MINIDEBUGINFO_XZ)
    if not compressed:
        return None
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        data = decompressor.decompress(compressed, max_length=MAX_MINIDEBUGINFO)
    except lzma.LZMAError as err:
        raise FormatError(f"{elf.name}: .gnu_debugdata is not valid xz: {err}") from err
    if not decompressor.eof:
        raise FormatError(f"{elf.name}: .gnu_debugdata over {MAX_MINIDEBUGINFO} bytes")
    return ElfFile.from_bytes(data, f"{elf.name}[.gnu_debugdata]")


# ---------------------------------------------------------------- DWARF lines


class SectionWindow:
    """Random reads in one (possibly zlib-compressed) section, inflating only a prefix.

    A CU's top DIE and its line program are small pieces of big sections:
    uncompressed sections are read with pread, compressed ones are inflated
    only as far as the furthest byte asked for (elf(5), SHF_COMPRESSED).
    """

    def __init__(self, elf: ElfFile, section: Section) -> None:
        self.elf, self.section = elf, section
        self.compressed = bool(section.sh_flags & SHF_COMPRESSED)
        self.size = section.sh_size
        self._inflated = bytearray()
        self._decompressor: Any = None
        self._input = b""
        if self.compressed:
            raw = elf.read(section.sh_offset, section.sh_size, section.name)
            ch_type, _reserved, self.size, _align = CHDR.unpack_from(raw)
            if ch_type != ELFCOMPRESS_ZLIB or self.size > MAX_SECTION_READ:
                raise FormatError(f"{elf.name}: {section.name}: unsupported compression",
                                  section.sh_offset)
            self._decompressor, self._input = zlib.decompressobj(), raw[CHDR.size:]

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (short at the end of the section)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        if not self.compressed:
            return self.elf.read(self.section.sh_offset + offset, end - offset, self.section.name)
        while len(self._inflated) < end and not self._decompressor.eof:
            try:
                chunk = self._decompressor.decompress(self._input, INFLATE_STEP)
            except zlib.error as err:
                raise FormatError(f"{self.elf.name}: {self.section.name}: {err}") from err
            self._input = self._decompressor.unconsumed_tail
            self._inflated += chunk
            if not chunk and not self._input:
                break
        return bytes(self._inflated[offset:end])


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
        if name not in self._sections:
            assert self._elf is not None
            section = self._elf.section(name)
            self._sections[name] = self._elf.section_data(section) if section else b""
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
        top = dwarfline.read_unit_top(info, self._section(".debug_abbrev"), at)
        if top.stmt_list is None:
            return None
        strings = (self._section(".debug_line_str"), self._section(".debug_str"))
        program = self._unit_bytes(".debug_line", top.stmt_list, MAX_SECTION_READ)
        return dwarfline.UnitLines(dwarfline.read_line_program(program, 0, strings))
