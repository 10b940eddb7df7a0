"""DWARF 2-5 line tables, read for one compilation unit at a time.

Just enough DWARF to turn an address into file:line quickly and within
bounds: ``.debug_aranges`` (address -> CU), the CU header and its top DIE
(``DW_AT_stmt_list``, ranges), and the line number program of that CU.
Reference: DWARF 5 standard, sections 6.1.2 (aranges), 6.2 (line number
information), 7.5 (unit headers, abbreviations, forms).  pyelftools parses the
same data with construct, which is two orders of magnitude slower here (libc's
``.debug_aranges`` alone took 0.28 s).

Every read is bounds-checked; malformed data raises :class:`FormatError`.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Iterator

from coredumpd.errors import FormatError
from coredumpd.values import Frozen, Value

DW_AT_name, DW_AT_stmt_list, DW_AT_low_pc, DW_AT_high_pc = 0x03, 0x10, 0x11, 0x12
DW_FORM_addr, DW_FORM_data2, DW_FORM_data4, DW_FORM_data8 = 0x01, 0x05, 0x06, 0x07
DW_FORM_string, DW_FORM_data1, DW_FORM_strp, DW_FORM_udata = 0x08, 0x0B, 0x0E, 0x0F
DW_FORM_sec_offset, DW_FORM_implicit_const, DW_FORM_line_strp = 0x17, 0x21, 0x1F
DW_FORM_indirect, DW_FORM_data16, DW_FORM_block = 0x16, 0x1E, 0x09
DW_LNCT_path, DW_LNCT_directory_index = 1, 2
MAX_ABBREVS = 1 << 16
MAX_ROWS = 1 << 22
MAX_ENTRIES = 1 << 16

# Fixed sizes of forms; None: depends on the unit (address or offset size) or variable.
_FIXED = {0x05: 2, 0x06: 4, 0x07: 8, 0x0B: 1, 0x0C: 1, 0x11: 1, 0x12: 2, 0x13: 4, 0x14: 8,
          0x19: 0, 0x1C: 4, 0x1E: 16, 0x20: 8, 0x21: 0, 0x24: 8, 0x25: 1, 0x26: 2, 0x27: 3,
          0x28: 4, 0x29: 1, 0x2A: 2, 0x2B: 3, 0x2C: 4}
_OFFSET_SIZED = {0x0E, 0x17, 0x1D, 0x1F, 0x1F20, 0x1F21}
_ULEB = {0x0F, 0x15, 0x1A, 0x1B, 0x22, 0x23, 0x1F01, 0x1F02}
_BLOCK_ULEB = {0x09, 0x18}


class Reader:
    """A cursor over bytes with DWARF's primitive encodings, bounds-checked."""

    def __init__(self, data: bytes, position: int = 0, end: int | None = None) -> None:
        self.data = data
        self.position = position
        self.end = len(data) if end is None else min(end, len(data))

    def take(self, size: int) -> bytes:
        if size < 0 or self.position + size > self.end:
            raise FormatError(f"DWARF data ends before {size} more bytes", self.position)
        chunk = self.data[self.position:self.position + size]
        self.position += size
        return chunk

    def unsigned(self, size: int) -> int:
        if size == 1 and 0 <= self.position < self.end:  # most reads: no slice or from_bytes
            self.position += 1
            return self.data[self.position - 1]
        return int.from_bytes(self.take(size), "little")

    def signed8(self) -> int:
        return struct.unpack("<b", self.take(1))[0]  # type: ignore[no-any-return]

    def uleb(self) -> int:
        """An unsigned LEB128, read in place (abbreviation tables and DIEs are mostly
        LEB128s: the reads through :meth:`take` were most of a unit's parse)."""
        data, position, end = self.data, self.position, self.end
        result = shift = 0
        while 0 <= position < end:
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                self.position = position
                return result
            if shift > 70:
                self.position = position
                raise FormatError("LEB128 too long", position)
        self.position = position
        raise FormatError("DWARF data ends before 1 more bytes", position)

    def sleb(self) -> int:
        data, position, end = self.data, self.position, self.end
        result = shift = 0
        while 0 <= position < end:
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                self.position = position
                return result - (1 << shift) if byte & 0x40 else result
            if shift > 70:
                self.position = position
                raise FormatError("LEB128 too long", position)
        self.position = position
        raise FormatError("DWARF data ends before 1 more bytes", position)

    def cstring(self) -> bytes:
        end = self.data.find(b"\0", self.position, self.end)
        if end < 0:
            raise FormatError("unterminated string", self.position)
        value = self.data[self.position:end]
        self.position = end + 1
        return value

    def initial_length(self) -> tuple[int, int]:
        """(unit length, offset size 4 or 8) per DWARF 7.4."""
        length = self.unsigned(4)
        if length == 0xFFFFFFFF:
            return self.unsigned(8), 8
        if length >= 0xFFFFFFF0:
            raise FormatError(f"reserved unit length {length:#x}", self.position - 4)
        return length, 4


ARANGES_HEAD32 = struct.Struct("<IHIBB")  # unit_length version debug_info_offset sizes
ARANGES_HEAD64 = struct.Struct("<IQHQBB")  # 0xffffffff, unit_length, ... (64-bit DWARF)


def parse_aranges(data: bytes) -> tuple[list[int], list[tuple[int, int]]]:
    """``.debug_aranges`` (DWARF 5, 6.1.2) as (sorted starts, [(end, CU offset)])."""
    ranges: list[tuple[int, int, int]] = []
    position = 0
    while position + ARANGES_HEAD32.size <= len(data):
        length, _version, cu_offset, address_size, segment_size = ARANGES_HEAD32.unpack_from(
            data, position)
        header_size, unit_end = ARANGES_HEAD32.size, position + 4 + length
        if length == 0xFFFFFFFF:
            if position + ARANGES_HEAD64.size > len(data):
                raise FormatError("64-bit aranges header cut", position)
            (_escape, length, _version, cu_offset, address_size,
             segment_size) = ARANGES_HEAD64.unpack_from(data, position)
            header_size, unit_end = ARANGES_HEAD64.size, position + 12 + length
        elif length >= 0xFFFFFFF0:
            raise FormatError(f"reserved unit length {length:#x}", position)
        if address_size == 8 and segment_size == 0:
            # the first tuple is aligned to the tuple size, from the start of the set
            start = position + (header_size + 15) // 16 * 16
            body = data[start:min(unit_end, len(data))]
            for address, size in struct.iter_unpack("<QQ", body[:len(body) - len(body) % 16]):
                if address == 0 and size == 0:
                    break
                if size:
                    ranges.append((address, address + size, cu_offset))
        position = unit_end
    ranges.sort()
    return [r[0] for r in ranges], [(r[1], r[2]) for r in ranges]


class UnitTop(Frozen):
    """What the line lookup needs from a CU: its line program and pc range."""

    stmt_list: int | None
    low_pc: int | None
    high_pc: int | None


AttributeSpecs = list[tuple[int, int, int]]  # (attribute, form, implicit const)


def abbreviations(abbrev: bytes, offset: int) -> Iterator[tuple[int, int, bool, AttributeSpecs]]:
    """The abbreviation table at ``offset`` of ``.debug_abbrev`` (DWARF 5, 7.5.3), entry by
    entry, at most MAX_ABBREVS: (code, tag, has children, attribute specs)."""
    reader = Reader(abbrev, offset)
    for _ in range(MAX_ABBREVS):
        code = reader.uleb()
        if code == 0:
            return
        tag, children = reader.uleb(), bool(reader.unsigned(1))
        specs = []
        while True:
            attribute, form = reader.uleb(), reader.uleb()
            if attribute == 0 and form == 0:
                break
            specs.append((attribute, form, reader.sleb() if form == DW_FORM_implicit_const
                          else 0))
        yield code, tag, children, specs


def _abbrev(abbrev: bytes, offset: int, code: int) -> AttributeSpecs:
    """Attribute specs of abbreviation ``code`` (the table read only up to it)."""
    for entry_code, _tag, _children, specs in abbreviations(abbrev, offset):
        if entry_code == code:
            return specs
    raise FormatError(f"abbreviation {code} not found", offset)


def read_unit_header(reader: Reader) -> tuple[int, int, int, int]:
    """(version, offset size, address size, abbreviation offset) of the unit header at
    ``reader`` in ``.debug_info`` (DWARF 5, 7.5.1; versions 2-4 have no unit type).  The
    reader is left at the unit's first DIE, its end at the unit's end."""
    length, offset_size = reader.initial_length()
    reader.end = min(reader.end, reader.position + length)
    version = reader.unsigned(2)
    if version >= 5:
        unit_type, address_size = reader.unsigned(1), reader.unsigned(1)
        abbrev_offset = reader.unsigned(offset_size)
        if unit_type in (4, 5):  # skeleton, split_compile: dwo_id
            reader.take(8)
        elif unit_type in (2, 6):  # type units: signature, type offset
            reader.take(8 + offset_size)
    else:
        abbrev_offset = reader.unsigned(offset_size)
        address_size = reader.unsigned(1)
    return version, offset_size, address_size, abbrev_offset


def _form_value(reader: Reader, form: int, offset_size: int, address_size: int,
                version: int) -> int | None:
    """The value of an integer-like form, or None after skipping any other form."""
    if form == DW_FORM_indirect:
        form = reader.uleb()
    if form == DW_FORM_addr:
        return reader.unsigned(address_size)
    if form in _FIXED:
        size = _FIXED[form]
        if size > 8:
            reader.take(size)
            return None
        return reader.unsigned(size)
    if form in _OFFSET_SIZED or (form == 0x10 and version > 2):  # DW_FORM_ref_addr
        return reader.unsigned(offset_size)
    if form == 0x10:
        return reader.unsigned(address_size)
    if form in _ULEB:
        return reader.uleb()
    if form == 0x0D:  # sdata
        return reader.sleb()
    if form == DW_FORM_string:
        reader.cstring()
        return None
    if form in _BLOCK_ULEB:
        reader.take(reader.uleb())
        return None
    if form in (0x0A, 0x03, 0x04):  # block1, block2, block4
        reader.take(reader.unsigned({0x0A: 1, 0x03: 2, 0x04: 4}[form]))
        return None
    raise FormatError(f"unknown DW_FORM {form:#x}", reader.position)


def read_unit_top(info: bytes, abbrev: bytes, offset: int) -> UnitTop:
    """The top DIE of the unit at ``offset`` in ``.debug_info`` (DWARF 7.5.1)."""
    reader = Reader(info, offset)
    version, offset_size, address_size, abbrev_offset = read_unit_header(reader)
    values: dict[int, tuple[int, int | None]] = {}
    for attribute, form, implicit in _abbrev(abbrev, abbrev_offset, reader.uleb()):
        value = implicit if form == DW_FORM_implicit_const else _form_value(
            reader, form, offset_size, address_size, version)
        values[attribute] = (form, value)
    low = values.get(DW_AT_low_pc, (0, None))[1]
    high_form, high = values.get(DW_AT_high_pc, (0, None))
    if high is not None and low is not None and high_form != DW_FORM_addr:
        high = low + high
    return UnitTop(values.get(DW_AT_stmt_list, (0, None))[1], low, high)


class LineRow(Frozen):
    address: int
    file: str | None
    line: int
    is_stmt: bool


class _Header(Value):
    version: int
    min_length: int
    default_is_stmt: bool
    line_base: int
    line_range: int
    opcode_base: int
    opcode_lengths: list[int]
    files: dict[int, str]
    program_start: int
    program_end: int


def _entry_formats(reader: Reader) -> list[tuple[int, int]]:
    return [(reader.uleb(), reader.uleb()) for _ in range(reader.unsigned(1))]


def _v5_entries(reader: Reader, formats: list[tuple[int, int]], offset_size: int,
                strings: tuple[bytes, bytes]) -> list[dict[int, object]]:
    """Directory or file entries of a DWARF 5 header (6.2.4.1)."""
    entries: list[dict[int, object]] = []
    count = reader.uleb()
    if count > MAX_ENTRIES or (count and not formats):
        raise FormatError(f"{count} directory/file entries", reader.position)
    for _ in range(count):
        entry: dict[int, object] = {}
        for content, form in formats:
            if form == DW_FORM_string:
                entry[content] = reader.cstring()
            elif form in (DW_FORM_line_strp, DW_FORM_strp):
                table = strings[0] if form == DW_FORM_line_strp else strings[1]
                at = reader.unsigned(offset_size)
                end = table.find(b"\0", at)
                entry[content] = table[at:end] if 0 <= at < len(table) and end >= 0 else b""
            else:
                entry[content] = _form_value(reader, form, offset_size, 8, 5)
        entries.append(entry)
    return entries


def _join(directory: bytes | None, name: bytes) -> str:
    path = name.decode("utf-8", "surrogateescape")
    if directory and not path.startswith("/"):
        path = os.path.join(directory.decode("utf-8", "surrogateescape"), path)
    return os.path.normpath(path)


def _header(data: bytes, offset: int, strings: tuple[bytes, bytes]) -> _Header:
    reader = Reader(data, offset)
    length, offset_size = reader.initial_length()
    program_end = min(len(data), reader.position + length)
    version = reader.unsigned(2)
    if not 2 <= version <= 5:
        raise FormatError(f"line table version {version}", offset)
    if version >= 5:
        reader.take(2)  # address_size, segment_selector_size
    header_length = reader.unsigned(offset_size)
    program_start = reader.position + header_length
    min_length = reader.unsigned(1)
    if version >= 4:
        reader.unsigned(1)  # maximum_operations_per_instruction (VLIW only)
    default_is_stmt, line_base = bool(reader.unsigned(1)), reader.signed8()
    line_range, opcode_base = reader.unsigned(1), reader.unsigned(1)
    if line_range == 0 or opcode_base == 0:
        raise FormatError("line_range or opcode_base is 0", offset)
    opcode_lengths = list(reader.take(opcode_base - 1))
    if version >= 5:
        directories = [e.get(DW_LNCT_path) for e in _v5_entries(
            reader, _entry_formats(reader), offset_size, strings)]
        files = {index: _join(_directory(directories, e.get(DW_LNCT_directory_index, 0)),
                              _bytes(e.get(DW_LNCT_path)))
                 for index, e in enumerate(_v5_entries(reader, _entry_formats(reader),
                                                       offset_size, strings))}
    else:
        files = _v4_files(reader)
    return _Header(version, min_length, default_is_stmt, line_base, line_range, opcode_base,
                   opcode_lengths, files, program_start, program_end)


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else b""


def _directory(directories: list[object], index: object) -> bytes | None:
    if isinstance(index, int) and 0 <= index < len(directories):
        return _bytes(directories[index])
    return None


def _v4_files(reader: Reader) -> dict[int, str]:
    """DWARF 2-4 include_directories and file_names (index 0: none, 1-based)."""
    directories: list[bytes] = []
    while entry := reader.cstring():
        directories.append(entry)
    files: dict[int, str] = {}
    while name := reader.cstring():
        directory_index = reader.uleb()
        reader.uleb()  # mtime
        reader.uleb()  # length
        known = 0 < directory_index <= len(directories)
        files[len(files) + 1] = _join(directories[directory_index - 1] if known else None, name)
    return files


def read_line_program(data: bytes, offset: int, strings: tuple[bytes, bytes]
                      ) -> list[tuple[int, int, list[LineRow]]]:
    """Sequences (start, end, rows) of the line program at ``offset`` of .debug_line."""
    header = _header(data, offset, strings)
    return _run(header, Reader(data, header.program_start, header.program_end))


def read_line_files(data: bytes, offset: int, strings: tuple[bytes, bytes]) -> dict[int, str]:
    """The file list of the line program at ``offset`` (what DW_AT_call_file indexes:
    from 0 in DWARF 5, from 1 before)."""
    return _header(data, offset, strings).files


def _run(h: _Header, reader: Reader) -> list[tuple[int, int, list[LineRow]]]:
    """The line-number state machine (DWARF 5, 6.2.5)."""
    sequences: list[tuple[int, int, list[LineRow]]] = []
    rows: list[LineRow] = []
    address, file, line, is_stmt = 0, 1, 1, h.default_is_stmt
    total = 0
    while reader.position < reader.end and total < MAX_ROWS:
        opcode = reader.unsigned(1)
        if opcode >= h.opcode_base:
            adjusted = opcode - h.opcode_base
            address += (adjusted // h.line_range) * h.min_length
            line += h.line_base + adjusted % h.line_range
            rows.append(LineRow(address, h.files.get(file), line, is_stmt))
        elif opcode == 0:
            size = reader.uleb()
            end = reader.position + size
            sub = reader.unsigned(1) if size else 0
            if sub == 1:  # DW_LNE_end_sequence
                if rows:
                    sequences.append((rows[0].address, address, rows))
                total += len(rows)
                rows = []
                address, file, line, is_stmt = 0, 1, 1, h.default_is_stmt
            elif sub == 2:  # DW_LNE_set_address
                address = reader.unsigned(min(8, size - 1))
            reader.position = end
        elif opcode == 1:  # DW_LNS_copy
            rows.append(LineRow(address, h.files.get(file), line, is_stmt))
        elif opcode == 2:
            address += reader.uleb() * h.min_length
        elif opcode == 3:
            line += reader.sleb()
        elif opcode == 4:
            file = reader.uleb()
        elif opcode == 6:
            is_stmt = not is_stmt
        elif opcode == 8:  # DW_LNS_const_add_pc
            address += ((255 - h.opcode_base) // h.line_range) * h.min_length
        elif opcode == 9:  # DW_LNS_fixed_advance_pc
            address += reader.unsigned(2)
        elif opcode in (7, 10, 11):
            pass
        else:  # set_column, set_isa, or unknown: skip its ULEB operands
            for _ in range(h.opcode_lengths[opcode - 1]):
                reader.uleb()
    return sequences


class UnitLines:
    """The line table of one CU, as sorted sequences of rows."""

    def __init__(self, sequences: list[tuple[int, int, list[LineRow]]]) -> None:
        self.sequences = sorted(sequences, key=lambda s: s[0])
        self.starts = [s[0] for s in self.sequences]
        self._addresses: dict[int, list[int]] = {}

    def lookup(self, address: int) -> LineRow | None:
        """The row for ``address`` as gdb's ``find_pc_sect_line`` picks it.

        Among the rows at the greatest address <= ``address`` in the sequence
        holding it: the last ``is_stmt`` one, else the last one.
        """
        index = bisect.bisect_right(self.starts, address) - 1
        for candidate in range(index, max(index - 8, -1), -1):  # sequences rarely overlap
            start, end, rows = self.sequences[candidate]
            if start <= address < end:
                if candidate not in self._addresses:
                    self._addresses[candidate] = [row.address for row in rows]
                return _pick_row(rows, self._addresses[candidate], address)
        return None


def _pick_row(rows: list[LineRow], addresses: list[int], address: int) -> LineRow | None:
    upper = bisect.bisect_right(addresses, address)
    if upper == 0:
        return None
    lower = bisect.bisect_left(addresses, addresses[upper - 1])
    same = rows[lower:upper]
    statements = [row for row in same if row.is_stmt]
    return (statements or same)[-1]
