"""Finding a module's debug information: separate debug files, MiniDebugInfo, DWARF lines.

Search order, as gdb's "Separate Debug Files" (GDB manual, 18.3):

1. by build-id: ``<debugdir>/.build-id/xx/yyyy….debug`` (checked: same build-id);
2. by ``.gnu_debuglink``: next to the file, in its ``.debug/`` directory, and
   under ``<debugdir>/<dir of the file>`` (checked: CRC32 of the debug file);
3. MiniDebugInfo: the xz-compressed ELF in ``.gnu_debugdata`` (Fedora and
   others; https://sourceware.org/gdb/current/onlinedocs/gdb.html/MiniDebugInfo.html),
   decompressed under a size cap.

Line numbers come from the DWARF line program of ONE compilation unit, found
through ``.debug_aranges`` (or, without it, the top DIE ranges of each CU):
never all of DWARF, since pyelftools takes minutes on big objects.
"""

from __future__ import annotations

import bisect
import dataclasses
import lzma
import os
import zlib
from typing import Any

from coredumpd.elf.elffile import ElfFile
from coredumpd.errors import CoredumpdError, FormatError

DEBUG_DIRS = ("/usr/lib/debug",)
MAX_MINIDEBUGINFO = 64 << 20  # decompressed
MAX_MINIDEBUGINFO_XZ = 16 << 20
MAX_CRC_CHECK = 512 << 20
MAX_DWARF_SECTIONS = 1 << 30  # total size of the debug sections pyelftools would load
MAX_CU_SCAN = 50_000


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
        if os.path.getsize(path) > MAX_CRC_CHECK:
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
            if os.path.exists(candidate) and _same_build_id(candidate, build_id):
                return candidate
    if debuglink and host_path:
        name, crc = debuglink
        here = os.path.dirname(host_path)
        for candidate in [os.path.join(here, name), os.path.join(here, ".debug", name),
                          *(os.path.join(d, here.lstrip("/"), name) for d in dirs)]:
            if candidate != host_path and os.path.exists(candidate):
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


@dataclasses.dataclass(frozen=True)
class LineRow:
    address: int
    file: str | None
    line: int
    is_stmt: bool


class _CuLines:
    """The line table of one CU, as sorted sequences of rows."""

    def __init__(self, sequences: list[tuple[int, int, list[LineRow]]]) -> None:
        self.sequences = sorted(sequences, key=lambda s: s[0])
        self.starts = [s[0] for s in self.sequences]

    def lookup(self, address: int) -> LineRow | None:
        """The row for ``address`` as gdb's ``find_pc_sect_line`` picks it.

        The rows at the greatest address <= ``address`` in the sequence holding
        it; the last ``is_stmt`` one among them, else the last one.
        """
        index = bisect.bisect_right(self.starts, address) - 1
        for candidate in range(index, max(index - 8, -1), -1):  # sequences rarely overlap
            start, end, rows = self.sequences[candidate]
            if start <= address < end:
                return _pick_row(rows, address)
        return None


def _pick_row(rows: list[LineRow], address: int) -> LineRow | None:
    addresses = [row.address for row in rows]
    upper = bisect.bisect_right(addresses, address)
    if upper == 0:
        return None
    best_address = addresses[upper - 1]
    lower = bisect.bisect_left(addresses, best_address)
    same = rows[lower:upper]
    stmts = [row for row in same if row.is_stmt]
    return (stmts or same)[-1]


class DwarfLines:
    """File:line lookups in one ELF file with DWARF, one CU parsed at a time (cached)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._dwarf: Any = None
        self._handle: Any = None
        self._aranges: Any = None
        self._cu_ranges: list[tuple[int, int, int]] | None = None
        self._cus: dict[int, _CuLines | None] = {}
        self.available = self._open()

    def _open(self) -> bool:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
        try:
            self._handle = open(self.path, "rb")  # noqa: SIM115 (kept open for pyelftools)
            elf = ELFFile(self._handle)
            if not elf.has_dwarf_info() or elf.get_section_by_name(".debug_line") is None:
                return False
            total = sum(s["sh_size"] for s in elf.iter_sections() if s.name.startswith(".debug"))
            if total > MAX_DWARF_SECTIONS:
                return False
            self._dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
            return True
        except (OSError, ELFError, ValueError) as err:
            self.error = f"{self.path}: {err}"
            return False

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def lookup(self, address: int) -> LineRow | None:
        """The line row of link-time ``address``, or None (never raises)."""
        if not self.available:
            return None
        try:
            offset = self._cu_offset(address)
            if offset is None:
                return None
            if offset not in self._cus:
                self._cus[offset] = self._load_cu(offset)
            table = self._cus[offset]
            return table.lookup(address) if table is not None else None
        except Exception as err:  # noqa: BLE001 - pyelftools raises many types on bad DWARF
            self.error = f"{self.path}: DWARF unreadable: {err!r}"
            self.available = False
            return None

    def _cu_offset(self, address: int) -> int | None:
        if self._aranges is None:
            self._aranges = self._dwarf.get_aranges() or False
        if self._aranges:
            offset = self._aranges.cu_offset_at_addr(address)
            if offset is not None:
                return int(offset)
        return self._cu_offset_by_ranges(address)

    def _cu_offset_by_ranges(self, address: int) -> int | None:
        """Without a covering .debug_aranges entry: the CUs' top-DIE pc ranges."""
        if self._cu_ranges is None:
            self._cu_ranges = []
            for count, cu in enumerate(self._dwarf.iter_CUs()):
                if count >= MAX_CU_SCAN:
                    break
                for low, high in _top_die_ranges(self._dwarf, cu):
                    self._cu_ranges.append((low, high, cu.cu_offset))
        for low, high, offset in self._cu_ranges:
            if low <= address < high:
                return offset
        return None

    def _load_cu(self, offset: int) -> _CuLines | None:
        cu = self._dwarf.get_CU_at(offset)
        program = self._dwarf.line_program_for_CU(cu)
        if program is None:
            return None
        names = _file_names(program, cu)
        sequences: list[tuple[int, int, list[LineRow]]] = []
        rows: list[LineRow] = []
        for entry in program.get_entries():
            state = entry.state
            if state is None:
                continue
            if state.end_sequence:
                if rows:
                    sequences.append((rows[0].address, state.address, rows))
                rows = []
                continue
            rows.append(LineRow(state.address, names.get(state.file), state.line,
                                bool(state.is_stmt)))
        return _CuLines(sequences)


def _top_die_ranges(dwarf: Any, cu: Any) -> list[tuple[int, int]]:
    top = cu.get_top_DIE()
    attributes = top.attributes
    if "DW_AT_low_pc" in attributes and "DW_AT_high_pc" in attributes:
        low = attributes["DW_AT_low_pc"].value
        high = attributes["DW_AT_high_pc"]
        end = high.value if high.form == "DW_FORM_addr" else low + high.value
        return [(low, end)]
    if "DW_AT_ranges" in attributes:
        ranges = dwarf.range_lists()
        if ranges is not None:
            entries = ranges.get_range_list_at_offset(attributes["DW_AT_ranges"].value, cu=cu)
            return [(r.begin_offset, r.end_offset) for r in entries
                    if hasattr(r, "begin_offset")]
    return []


def _decode(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _file_names(program: Any, cu: Any) -> dict[int, str]:
    """File index -> path as gdb prints it, with ``./`` dropped (normpath)."""
    header = program.header
    version = header["version"]
    directories = [_decode(d) for d in header["include_directory"]]
    names: dict[int, str] = {}
    for position, entry in enumerate(header["file_entry"]):
        index = position if version >= 5 else position + 1
        name = _decode(entry.name)
        # DWARF 5: directory 0 is the CU's directory and is named; before: 0 means "none"
        directory_index = entry.dir_index if version >= 5 else entry.dir_index - 1
        if not os.path.isabs(name) and 0 <= directory_index < len(directories):
            name = os.path.join(directories[directory_index], name)
        names[index] = os.path.normpath(name)
    return names
