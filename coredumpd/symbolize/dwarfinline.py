"""Inlined calls at an address: the DW_TAG_inlined_subroutine chain of one CU.

gdb shows a call that the compiler inlined as a frame of its own (an INLINE
frame, with the pc of the physical frame that holds it): the innermost frame at
the line the line table gives, each outer frame at the *call site* of the one
inside it (``DW_AT_call_file``/``DW_AT_call_line``), the physical function
last.  This module finds that chain for one address in one compilation unit
(DWARF 5 standard, 3.3.8 "Concrete Inlined Instances", 2.17 "Code Addresses
and Ranges", 7.5 "Format of Debugging Information").

It walks the unit's DIEs from the top, descending only into DIEs whose pc
ranges hold the address (and into namespaces, classes and structures, which
have no ranges but hold member functions), skipping every other subtree by its
``DW_AT_sibling`` when the compiler gave one.  So a lookup reads the path to the
address, not the whole unit.  Every read is bounds-checked; malformed data
raises :class:`~coredumpd.errors.FormatError`.
"""

from __future__ import annotations

from collections.abc import Callable

from coredumpd.errors import FormatError
from coredumpd.symbolize.dwarfline import Reader, abbreviations, read_unit_header
from coredumpd.symbolize.types import InlinedCall
from coredumpd.values import Frozen, Value

# Tags (DWARF 5, 7.5.4)
DW_TAG_class_type, DW_TAG_lexical_block, DW_TAG_structure_type = 0x02, 0x0B, 0x13
DW_TAG_union_type, DW_TAG_inlined_subroutine, DW_TAG_catch_block = 0x17, 0x1D, 0x25
DW_TAG_subprogram, DW_TAG_try_block, DW_TAG_namespace = 0x2E, 0x32, 0x39
# Attributes (7.5.4)
DW_AT_sibling, DW_AT_name, DW_AT_low_pc, DW_AT_high_pc = 0x01, 0x03, 0x11, 0x12
DW_AT_abstract_origin, DW_AT_specification, DW_AT_ranges = 0x31, 0x47, 0x55
DW_AT_call_file, DW_AT_call_line, DW_AT_linkage_name = 0x58, 0x59, 0x6E
DW_AT_MIPS_linkage_name, DW_AT_str_offsets_base, DW_AT_addr_base = 0x2007, 0x72, 0x73
DW_AT_rnglists_base = 0x74
# Forms (7.5.6)
DW_FORM_addr, DW_FORM_block2, DW_FORM_block4, DW_FORM_data2 = 0x01, 0x03, 0x04, 0x05
DW_FORM_data4, DW_FORM_data8, DW_FORM_string, DW_FORM_block = 0x06, 0x07, 0x08, 0x09
DW_FORM_block1, DW_FORM_data1, DW_FORM_flag, DW_FORM_sdata = 0x0A, 0x0B, 0x0C, 0x0D
DW_FORM_strp, DW_FORM_udata, DW_FORM_ref_addr, DW_FORM_ref1 = 0x0E, 0x0F, 0x10, 0x11
DW_FORM_ref2, DW_FORM_ref4, DW_FORM_ref8, DW_FORM_ref_udata = 0x12, 0x13, 0x14, 0x15
DW_FORM_indirect, DW_FORM_sec_offset, DW_FORM_exprloc = 0x16, 0x17, 0x18
DW_FORM_flag_present, DW_FORM_strx, DW_FORM_addrx, DW_FORM_ref_sup4 = 0x19, 0x1A, 0x1B, 0x1C
DW_FORM_strp_sup, DW_FORM_data16, DW_FORM_line_strp, DW_FORM_ref_sig8 = 0x1D, 0x1E, 0x1F, 0x20
DW_FORM_implicit_const, DW_FORM_loclistx, DW_FORM_rnglistx = 0x21, 0x22, 0x23
DW_FORM_ref_sup8, DW_FORM_strx1, DW_FORM_strx4 = 0x24, 0x25, 0x28
DW_FORM_addrx1, DW_FORM_addrx4 = 0x29, 0x2C

PC_SCOPES = {DW_TAG_subprogram, DW_TAG_inlined_subroutine, DW_TAG_lexical_block,
             DW_TAG_try_block, DW_TAG_catch_block}
# gcc and clang put a function defined in a namespace inside the namespace's DIE, and
# a member function's definition at the unit's level (DW_AT_specification points into
# the class): classes hold only declarations, namespaces also definitions.
CONTAINERS = {DW_TAG_namespace}
WANTED = {DW_AT_sibling, DW_AT_name, DW_AT_low_pc, DW_AT_high_pc, DW_AT_abstract_origin,
          DW_AT_specification, DW_AT_ranges, DW_AT_call_file, DW_AT_call_line,
          DW_AT_linkage_name, DW_AT_MIPS_linkage_name}
MAX_DEPTH = 64  # nesting of scopes followed (gcc's deepest inline chains are ~20)
MAX_DIES = 2_000_000  # DIEs read for one lookup
MAX_RANGES = 1 << 16
MAX_ORIGIN_HOPS = 8  # abstract_origin/specification links followed for a name
_REFS = {DW_FORM_ref1, DW_FORM_ref2, DW_FORM_ref4, DW_FORM_ref8, DW_FORM_ref_udata}
_FIXED = {DW_FORM_data1: 1, DW_FORM_data2: 2, DW_FORM_data4: 4, DW_FORM_data8: 8,
          DW_FORM_flag: 1, DW_FORM_ref1: 1, DW_FORM_ref2: 2, DW_FORM_ref4: 4, DW_FORM_ref8: 8,
          DW_FORM_flag_present: 0, DW_FORM_ref_sup4: 4, DW_FORM_data16: 16,
          DW_FORM_ref_sig8: 8, DW_FORM_implicit_const: 0, DW_FORM_ref_sup8: 8,
          DW_FORM_strx1: 1, 0x26: 2, 0x27: 3, DW_FORM_strx4: 4,
          DW_FORM_addrx1: 1, 0x2A: 2, 0x2B: 3, DW_FORM_addrx4: 4}
_STRX = {DW_FORM_strx, DW_FORM_strx1, 0x26, 0x27, DW_FORM_strx4, 0x1F01}  # GNU_str_index
_ADDRX = {DW_FORM_addrx, DW_FORM_addrx1, 0x2A, 0x2B, DW_FORM_addrx4, 0x1F01 + 1}


class Sections(Frozen):
    """The other sections a unit's DIEs point into (empty when the file has none)."""

    abbrev: bytes
    strings: bytes  # .debug_str
    line_strings: bytes  # .debug_line_str
    ranges: bytes  # .debug_ranges (DWARF 2-4)
    rnglists: bytes  # .debug_rnglists (DWARF 5)
    str_offsets: bytes
    addresses: bytes  # .debug_addr


class _Die(Value):
    offset: int  # in the unit's bytes
    tag: int
    children: bool
    values: dict[int, tuple[int, object]]  # attribute -> (form, value)


Abbrevs = dict[int, tuple[int, bool, list[tuple[int, int, int]]]]


def parse_abbrevs(data: bytes, offset: int) -> Abbrevs:
    """The abbreviation table at ``offset``: code -> (tag, has children, [(at, form, const)])."""
    return {code: (tag, children, specs)
            for code, tag, children, specs in abbreviations(data, offset)}


class UnitDies:
    """The DIEs of one compilation unit, read on demand for :meth:`inlined_at`.

    ``data`` holds the unit from its first byte (``unit_offset`` is where that is
    in ``.debug_info``, for DW_FORM_ref_addr); ``files`` is its line table's file
    list (DW_AT_call_file indexes it); ``demangle`` is not applied here.
    """

    def __init__(self, data: bytes, unit_offset: int, sections: Sections,
                 files: dict[int, str]) -> None:
        self.data, self.unit_offset, self.sections, self.files = data, unit_offset, sections, files
        reader = Reader(data, 0)
        self.version, self.offset_size, self.address_size, abbrev_offset = \
            read_unit_header(reader)
        self.end = reader.end
        if not 2 <= self.version <= 5:
            raise FormatError(f"unit version {self.version}", unit_offset)
        if self.address_size not in (4, 8):
            raise FormatError(f"address size {self.address_size}", unit_offset)
        self.abbrevs = parse_abbrevs(sections.abbrev, abbrev_offset)
        self.top_offset = reader.position
        self.str_offsets_base = 8 if self.offset_size == 4 else 16
        self.addr_base = 8
        self.rnglists_base = 12 if self.offset_size == 4 else 20
        self.base_address = 0
        self._dies = 0
        self._scopes: list[tuple[_Die, int | None]] | None = None
        top = self._die(reader, {DW_AT_low_pc, DW_AT_str_offsets_base, DW_AT_addr_base,
                                 DW_AT_rnglists_base})
        if top is not None:
            self._read_bases(top)
            low = self._address(top, DW_AT_low_pc)
            self.base_address = low if low is not None else 0
        self.first_child = reader.position

    def _read_bases(self, top: _Die) -> None:
        for attribute, name in ((DW_AT_str_offsets_base, "str_offsets_base"),
                                (DW_AT_addr_base, "addr_base"),
                                (DW_AT_rnglists_base, "rnglists_base")):
            value = top.values.get(attribute, (0, None))[1]
            if isinstance(value, int):
                setattr(self, name, value)

    # ------------------------------------------------------------ the chain

    def inlined_at(self, address: int) -> list[InlinedCall]:
        """The inlined calls holding link-time ``address``, outermost first ([] if none)."""
        self._dies = 0
        path: list[_Die] = []
        for die, children in self._functions():
            if self._contains(die, address):
                if die.tag == DW_TAG_inlined_subroutine:
                    path.append(die)
                if children is not None:
                    self._search(Reader(self.data, children, self.end), address, 1, path)
                break
        return [InlinedCall(self._name(die), self._file(die), self._int(die, DW_AT_call_line))
                for die in path]

    def _functions(self) -> list[tuple[_Die, int | None]]:
        """The code scopes at the unit's level and in its namespaces, with where their
        children start: read once per unit, then each lookup descends into one."""
        if self._scopes is None:
            self._scopes = []
            self._collect(Reader(self.data, self.first_child, self.end), 0)
        return self._scopes

    def _collect(self, reader: Reader, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise FormatError("namespaces nested too deep", reader.position)
        assert self._scopes is not None
        while reader.position < reader.end:
            die = self._die(reader, WANTED)
            if die is None:
                return
            if die.tag in PC_SCOPES and (DW_AT_low_pc in die.values or
                                         DW_AT_ranges in die.values):
                self._scopes.append((die, reader.position if die.children else None))
            if die.tag in CONTAINERS and die.children:
                self._collect(reader, depth + 1)
            elif die.children:
                self._skip_children(reader, die)

    def _search(self, reader: Reader, address: int, depth: int, path: list[_Die]) -> bool:
        """Read the sibling list at ``reader``; descend where ``address`` is.  True when a
        code scope holding the address was found (the search is over)."""
        if depth > MAX_DEPTH:
            raise FormatError("DIEs nested too deep", reader.position)
        while reader.position < reader.end:
            die = self._die(reader, WANTED)
            if die is None:
                return False
            if die.tag in PC_SCOPES and self._contains(die, address):
                if die.tag == DW_TAG_inlined_subroutine:
                    path.append(die)
                if die.children:
                    self._search(reader, address, depth + 1, path)
                return True
            if die.tag in CONTAINERS and die.children:
                if self._search(reader, address, depth + 1, path):
                    return True
            elif die.children:
                self._skip_children(reader, die)
        return False

    def _skip_children(self, reader: Reader, die: _Die) -> None:
        sibling = self._reference(die, DW_AT_sibling)
        if sibling is not None and reader.position <= sibling < self.end:
            reader.position = sibling
            return
        depth = 1
        while depth and reader.position < reader.end:
            child = self._die(reader, set())
            if child is None:
                depth -= 1
            elif child.children:
                depth += 1

    # ------------------------------------------------------------ one DIE

    def _die(self, reader: Reader, wanted: set[int]) -> _Die | None:
        """The DIE at ``reader`` (None for a null entry), with the ``wanted`` attributes."""
        offset = reader.position
        code = reader.uleb()
        if code == 0:
            return None
        self._dies += 1
        if self._dies > MAX_DIES:
            raise FormatError(f"more than {MAX_DIES} DIEs read for one address", offset)
        entry = self.abbrevs.get(code)
        if entry is None:
            raise FormatError(f"abbreviation {code} not found", self.unit_offset + offset)
        tag, children, specs = entry
        values: dict[int, tuple[int, object]] = {}
        for attribute, form, implicit in specs:
            value = self._value(reader, form, implicit)
            if attribute in wanted:
                values[attribute] = (form, value)
        return _Die(offset, tag, children, values)

    def _value(self, reader: Reader, form: int, implicit: int) -> object:
        """One attribute value: int, bytes (strings) or None (blocks, skipped)."""
        if form == DW_FORM_indirect:
            form = reader.uleb()
        if form == DW_FORM_implicit_const:
            return implicit
        if form == DW_FORM_addr:
            return reader.unsigned(self.address_size)
        if form in _FIXED:
            size = _FIXED[form]
            if size > 8:  # data16
                reader.take(size)
                return None
            return reader.unsigned(size)
        if form in (DW_FORM_strp, DW_FORM_line_strp, DW_FORM_sec_offset, DW_FORM_strp_sup,
                    DW_FORM_ref_addr) or form in (0x1F20, 0x1F21):
            if form == DW_FORM_ref_addr and self.version == 2:
                return reader.unsigned(self.address_size)
            return reader.unsigned(self.offset_size)
        if form in (DW_FORM_udata, DW_FORM_ref_udata, DW_FORM_strx, DW_FORM_addrx,
                    DW_FORM_loclistx, DW_FORM_rnglistx, 0x1F01, 0x1F02):
            return reader.uleb()
        if form == DW_FORM_sdata:
            return reader.sleb()
        if form == DW_FORM_string:
            return reader.cstring()
        if form in (DW_FORM_block, DW_FORM_exprloc):
            reader.take(reader.uleb())
            return None
        if form in (DW_FORM_block1, DW_FORM_block2, DW_FORM_block4):
            reader.take(reader.unsigned({DW_FORM_block1: 1, DW_FORM_block2: 2,
                                         DW_FORM_block4: 4}[form]))
            return None
        raise FormatError(f"unknown DW_FORM {form:#x}", self.unit_offset + reader.position)

    def _int(self, die: _Die, attribute: int) -> int | None:
        value = die.values.get(attribute, (0, None))[1]
        return value if isinstance(value, int) else None

    def _reference(self, die: _Die, attribute: int) -> int | None:
        """A reference attribute as an offset in this unit's bytes (None: elsewhere)."""
        form, value = die.values.get(attribute, (0, None))
        if not isinstance(value, int):
            return None
        if form in _REFS:
            return value
        if form == DW_FORM_ref_addr and 0 <= value - self.unit_offset < self.end:
            return value - self.unit_offset
        return None

    def _address(self, die: _Die, attribute: int) -> int | None:
        form, value = die.values.get(attribute, (0, None))
        if not isinstance(value, int):
            return None
        if form in _ADDRX:
            return self._indexed(self.sections.addresses, self.addr_base, value,
                                 self.address_size)
        return value

    def _indexed(self, section: bytes, base: int, index: int, size: int) -> int:
        at = base + index * size
        if at < 0 or at + size > len(section):
            raise FormatError(f"index {index} past its section", at)
        return int.from_bytes(section[at:at + size], "little")

    # ------------------------------------------------------------ ranges

    def _contains(self, die: _Die, address: int) -> bool:
        low = self._address(die, DW_AT_low_pc)
        if low is not None and DW_AT_high_pc in die.values:
            form, high = die.values[DW_AT_high_pc]
            if not isinstance(high, int):
                return False
            if form in _ADDRX:
                end = self._address(die, DW_AT_high_pc) or 0
            else:  # DWARF 4+: a data form is the length (2.17.2)
                end = high if form == DW_FORM_addr else low + high
            return low <= address < end
        if DW_AT_ranges in die.values:
            return any(start <= address < end for start, end in self._ranges(die))
        return False

    def _ranges(self, die: _Die) -> list[tuple[int, int]]:
        form, value = die.values[DW_AT_ranges]
        if not isinstance(value, int):
            return []
        if self.version < 5:
            return self._ranges_v4(value)
        offset = value
        if form == DW_FORM_rnglistx:
            offset = self.rnglists_base + self._indexed(
                self.sections.rnglists, self.rnglists_base, value, self.offset_size)
        return self._rnglist(offset)

    def _ranges_v4(self, offset: int) -> list[tuple[int, int]]:
        """``.debug_ranges`` (DWARF 4, 2.17.3): pairs, a base-address selection, 0 0."""
        reader = Reader(self.sections.ranges, offset)
        size, base, found = self.address_size, self.base_address, []
        largest = (1 << (8 * size)) - 1
        for _ in range(MAX_RANGES):
            start, end = reader.unsigned(size), reader.unsigned(size)
            if start == 0 and end == 0:
                break
            if start == largest:
                base = end
            else:
                found.append((base + start, base + end))
        return found

    def _rnglist(self, offset: int) -> list[tuple[int, int]]:
        """A DWARF 5 range list (2.17.3, 7.25: DW_RLE_* entries)."""
        reader = Reader(self.sections.rnglists, offset)
        size, base, found = self.address_size, self.base_address, []
        address_at: Callable[[int], int] = lambda index: self._indexed(
            self.sections.addresses, self.addr_base, index, size)
        for _ in range(MAX_RANGES):
            kind = reader.unsigned(1)
            if kind == 0:  # end_of_list
                break
            if kind == 1:  # base_addressx
                base = address_at(reader.uleb())
            elif kind == 2:  # startx_endx
                found.append((address_at(reader.uleb()), address_at(reader.uleb())))
            elif kind == 3:  # startx_length
                start = address_at(reader.uleb())
                found.append((start, start + reader.uleb()))
            elif kind == 4:  # offset_pair
                start = reader.uleb()
                found.append((base + start, base + reader.uleb()))
            elif kind == 5:  # base_address
                base = reader.unsigned(size)
            elif kind == 6:  # start_end
                found.append((reader.unsigned(size), reader.unsigned(size)))
            elif kind == 7:  # start_length
                start = reader.unsigned(size)
                found.append((start, start + reader.uleb()))
            else:
                raise FormatError(f"unknown range list entry {kind}", reader.position - 1)
        return found

    # ------------------------------------------------------------ names

    def _name(self, die: _Die) -> str | None:
        """The linkage name (else the name) of the function an inlined call instantiates,
        through DW_AT_abstract_origin and DW_AT_specification."""
        current: _Die | None = die
        for _ in range(MAX_ORIGIN_HOPS):
            if current is None:
                return None
            for attribute in (DW_AT_linkage_name, DW_AT_MIPS_linkage_name, DW_AT_name):
                if attribute in current.values:
                    name = self._string(*current.values[attribute])
                    if name:
                        return name
            target = self._reference(current, DW_AT_abstract_origin)
            if target is None:
                target = self._reference(current, DW_AT_specification)
            if target is None or not 0 < target < self.end:
                return None
            current = self._die(Reader(self.data, target, self.end), WANTED)
        return None

    def _string(self, form: int, value: object) -> str | None:
        if isinstance(value, bytes):
            raw = value
        elif not isinstance(value, int):
            return None
        elif form in (DW_FORM_strp, DW_FORM_line_strp):
            table = self.sections.line_strings if form == DW_FORM_line_strp \
                else self.sections.strings
            raw = _cstring(table, value)
        elif form in _STRX:
            at = self._indexed(self.sections.str_offsets, self.str_offsets_base, value,
                               self.offset_size)
            raw = _cstring(self.sections.strings, at)
        else:
            return None
        return raw.decode("utf-8", "surrogateescape") or None

    def _file(self, die: _Die) -> str | None:
        index = self._int(die, DW_AT_call_file)
        return self.files.get(index) if index is not None else None


def _cstring(table: bytes, offset: int) -> bytes:
    if not 0 <= offset < len(table):
        return b""
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else len(table)]
