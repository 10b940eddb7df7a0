"""Call-frame information: find the FDE for a pc (its rules: :mod:`coredumpd.unwind.cfa_program`).

Sources: the LSB "Exception Frames" chapter (``.eh_frame``, ``.eh_frame_hdr``,
the ``z``/``L``/``P``/``R``/``S`` augmentations and the ``DW_EH_PE_*``
pointer encodings) and DWARF 5 section 6.4 (the CFA instructions).  The
lookup reads the binary-search table of ``.eh_frame_hdr`` through the crashed
process's address space (the module's PT_GNU_EH_FRAME) and parses only the
one FDE and CIE it needs — never a whole ``.eh_frame``.

Every byte comes from a hostile core or file: record lengths are capped,
tables are checked against the FDE they point to (a table may lie), and
problems raise :class:`~coredumpd.errors.FormatError`.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable

from coredumpd.errors import FormatError
from coredumpd.unwind.dwarf_expr import MASK, read_sleb128, read_uleb128
from coredumpd.values import Frozen, replace

MemoryReader = Callable[[int, int], bytes]

MAX_RECORD = 1 << 16  # a CIE or FDE longer than this is garbage, not code
HDR_HEAD = struct.Struct("<BBBB")  # version, eh_frame_ptr_enc, fde_count_enc, table_enc
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")

# DW_EH_PE_* (LSB, "DWARF Exception Header Encoding").
DW_EH_PE_absptr = 0x00
DW_EH_PE_omit = 0xFF
DW_EH_PE_pcrel = 0x10
DW_EH_PE_textrel = 0x20
DW_EH_PE_datarel = 0x30
DW_EH_PE_funcrel = 0x40
DW_EH_PE_aligned = 0x50
DW_EH_PE_indirect = 0x80
_FORMATS = {0x00: struct.Struct("<Q"), 0x02: struct.Struct("<H"), 0x03: struct.Struct("<I"),
            0x04: struct.Struct("<Q"), 0x0A: struct.Struct("<h"), 0x0B: struct.Struct("<i"),
            0x0C: struct.Struct("<q")}
DW_EH_PE_uleb128 = 0x01
DW_EH_PE_sleb128 = 0x09


class Cie(Frozen):
    address: int
    version: int
    augmentation: str
    code_align: int
    data_align: int
    ra_register: int
    fde_encoding: int
    lsda_encoding: int
    signal_frame: bool
    instructions: bytes


class Fde(Frozen):
    address: int
    cie: Cie
    pc_begin: int
    pc_end: int
    instructions: bytes

    def __contains__(self, pc: int) -> bool:
        return self.pc_begin <= pc < self.pc_end


# --- pointers -----------------------------------------------------------------------------

class Bases(Frozen):
    """Base addresses for the relative pointer encodings."""

    data: int = 0  # DW_EH_PE_datarel: .eh_frame_hdr start (in the hdr), GOT otherwise
    text: int = 0
    func: int = 0


def read_encoded(data: bytes, position: int, encoding: int, address: int, bases: Bases,
                 read: MemoryReader | None = None) -> tuple[int, int]:
    """Decode one ``DW_EH_PE_*`` pointer at ``data[position]``.

    ``address`` is the runtime address of ``data[0]`` (for pcrel).  Returns
    (value, next position).  ``indirect`` dereferences through ``read``.
    """
    if encoding == DW_EH_PE_omit:
        return 0, position
    value_format = encoding & 0x0F
    if value_format == DW_EH_PE_uleb128:
        value, end = read_uleb128(data, position)
    elif value_format == DW_EH_PE_sleb128:
        value, end = read_sleb128(data, position)
    elif value_format in _FORMATS:
        layout = _FORMATS[value_format]
        end = position + layout.size
        if end > len(data):
            raise FormatError("encoded pointer runs past its record", address + position)
        (value,) = layout.unpack_from(data, position)
    else:
        raise FormatError(f"unknown pointer encoding {encoding:#x}", address + position)
    value = (value + _application_base(encoding, address + position, bases)) & MASK
    if encoding & DW_EH_PE_indirect:
        if read is None:
            raise FormatError("indirect pointer without memory", address + position)
        value = U64.unpack(read(value, 8))[0]
    return value, end


def _application_base(encoding: int, field_address: int, bases: Bases) -> int:
    application = encoding & 0x70
    if application == DW_EH_PE_absptr:
        return 0
    if application == DW_EH_PE_pcrel:
        return field_address
    if application == DW_EH_PE_datarel:
        return bases.data
    if application == DW_EH_PE_textrel:
        return bases.text
    if application == DW_EH_PE_funcrel:
        return bases.func
    raise FormatError(f"unsupported pointer application {encoding:#x}", field_address)


def encoded_size(encoding: int) -> int | None:
    """Byte size of a fixed-size encoding, None for LEB128 or omit."""
    layout = _FORMATS.get(encoding & 0x0F) if encoding != DW_EH_PE_omit else None
    return layout.size if layout else None


# --- records ------------------------------------------------------------------------------

def read_record(read: MemoryReader, address: int) -> tuple[bytes, int, bool]:
    """Read a CIE/FDE at ``address``: (body after the length, body address, is_64bit).

    The body is empty for the zero terminator.
    """
    (length,) = U32.unpack(read(address, 4))
    is_64bit = length == 0xFFFFFFFF
    body_address = address + 4
    if is_64bit:
        (length,) = U64.unpack(read(address + 4, 8))
        body_address += 8
    if length > MAX_RECORD:
        raise FormatError(f"CFI record of {length} bytes", address)
    return (read(body_address, length) if length else b""), body_address, is_64bit


def parse_cie(read: MemoryReader, address: int, eh_frame: bool = True) -> Cie:
    """Parse the CIE at ``address`` (``.eh_frame`` layout, or ``.debug_frame``'s)."""
    body, base, is_64bit = read_record(read, address)
    id_size = 8 if is_64bit else 4
    if len(body) < id_size + 2:
        raise FormatError("CIE shorter than its header", address)
    cie_id = int.from_bytes(body[:id_size], "little")
    expected = 0 if eh_frame else (1 << (8 * id_size)) - 1
    if cie_id != expected:
        raise FormatError(f"not a CIE (id {cie_id:#x})", address)
    version = body[id_size]
    if version not in (1, 3, 4):
        raise FormatError(f"CIE version {version}", address)
    end = body.index(b"\0", id_size + 1) if b"\0" in body[id_size + 1:] else -1
    if end < 0:
        raise FormatError("CIE augmentation string is not terminated", address)
    augmentation = body[id_size + 1:end].decode("latin-1")
    return _parse_cie_fields(read, body, end + 1, base, address, version, augmentation)


def _parse_cie_fields(read: MemoryReader, body: bytes, position: int, base: int, address: int,
                      version: int, augmentation: str) -> Cie:
    if "eh" in augmentation:
        position += 8  # the pre-GCC-3 eh_data pointer
    if version == 4:
        position += 2  # address_size, segment_selector_size
    code_align, position = read_uleb128(body, position)
    data_align, position = read_sleb128(body, position)
    if version == 1:
        if position >= len(body):
            raise FormatError("CIE truncated before its return register", address)
        ra_register, position = body[position], position + 1
    else:
        ra_register, position = read_uleb128(body, position)
    fde_encoding, lsda_encoding, signal = DW_EH_PE_absptr, DW_EH_PE_omit, False
    if augmentation.startswith("z"):
        length, position = read_uleb128(body, position)
        data_end = position + length
        fde_encoding, lsda_encoding, signal = _augmentation_data(
            read, body, position, base, augmentation[1:], address)
        position = data_end
    elif augmentation not in ("", "eh"):
        raise FormatError(f"CIE augmentation {augmentation!r} without 'z'", address)
    if position > len(body):
        raise FormatError("CIE augmentation data runs past its record", address)
    return Cie(address, version, augmentation, code_align, data_align, ra_register,
               fde_encoding, lsda_encoding, signal, body[position:])


def _augmentation_data(read: MemoryReader, body: bytes, position: int, base: int,
                       letters: str, address: int) -> tuple[int, int, bool]:
    fde_encoding, lsda_encoding, signal = DW_EH_PE_absptr, DW_EH_PE_omit, False
    for letter in letters:
        if letter in "LPR" and position >= len(body):
            raise FormatError("CIE augmentation data truncated", address)
        if letter == "L":
            lsda_encoding, position = body[position], position + 1
        elif letter == "R":
            fde_encoding, position = body[position], position + 1
        elif letter == "P":
            encoding = body[position]
            # The personality pointer is not needed to unwind: skip it without dereferencing.
            _, position = read_encoded(body, position + 1, encoding & 0x7F, base, Bases())
        elif letter == "S":
            signal = True
        elif letter in "BG":
            pass  # AArch64 pointer authentication / MTE: no data
        else:
            break  # unknown letter: the rest of the data cannot be interpreted (LSB)
    return fde_encoding, lsda_encoding, signal


def parse_fde(read: MemoryReader, address: int, cies: dict[int, Cie],
              eh_frame: bool = True, debug_frame_base: int = 0) -> Fde:
    """Parse the FDE at ``address`` and its CIE (cached in ``cies``)."""
    body, base, is_64bit = read_record(read, address)
    id_size = 8 if is_64bit else 4
    if len(body) < id_size:
        raise FormatError("FDE shorter than its header", address)
    pointer = int.from_bytes(body[:id_size], "little")
    if eh_frame:
        if pointer == 0:
            raise FormatError("expected an FDE, found a CIE", address)
        cie_address = base - pointer  # relative to the CIE pointer field itself
    else:
        cie_address = debug_frame_base + pointer
    cie = cies.get(cie_address)
    if cie is None:
        cie = cies[cie_address] = parse_cie(read, cie_address, eh_frame)
    bases = Bases()
    pc_begin, position = read_encoded(body, id_size, cie.fde_encoding, base, bases, read)
    pc_range, position = read_encoded(body, position, cie.fde_encoding & 0x0F, base, bases)
    if cie.augmentation.startswith("z"):
        length, position = read_uleb128(body, position)
        position += length
    if position > len(body):
        raise FormatError("FDE header runs past its record", address)
    return Fde(address, cie, pc_begin, (pc_begin + pc_range) & MASK, body[position:])


# --- .eh_frame_hdr ------------------------------------------------------------------------

class EhFrameHdr:
    """The binary-search table of ``.eh_frame_hdr`` at a runtime address."""

    def __init__(self, read: MemoryReader, address: int) -> None:
        head = read(address, 4 + 16)
        version, ptr_enc, count_enc, table_enc = HDR_HEAD.unpack_from(head)
        if version != 1:
            raise FormatError(f".eh_frame_hdr version {version}", address)
        bases = Bases(data=address)
        self.eh_frame, position = read_encoded(head, 4, ptr_enc, address, bases, read)
        self.count, position = read_encoded(head, position, count_enc, address, bases, read)
        self.entry_size = encoded_size(table_enc) or 0
        if count_enc == DW_EH_PE_omit or table_enc == DW_EH_PE_omit or not self.entry_size:
            self.count = 0  # no usable table (the LSB allows that)
        self.read = read
        self.address = address
        self.table = address + position
        self.table_enc = table_enc
        self.bases = bases

    def entry(self, index: int) -> tuple[int, int]:
        """(initial location, FDE address) of table entry ``index``."""
        size = self.entry_size
        start = self.table + 2 * size * index
        data = self.read(start, 2 * size)
        location, _ = read_encoded(data, 0, self.table_enc, start, self.bases, self.read)
        fde, _ = read_encoded(data, size, self.table_enc, start, self.bases, self.read)
        return location, fde

    def lookup(self, pc: int) -> int | None:
        """Address of the FDE whose initial location is the greatest <= ``pc``."""
        low, high = 0, self.count - 1
        found = None
        while low <= high:
            middle = (low + high) // 2
            location, fde = self.entry(middle)
            if location <= pc:
                found, low = fde, middle + 1
            else:
                high = middle - 1
        return found


# --- sections without a search table -----------------------------------------------------

MAX_SECTION_FDES = 1 << 20


def bytes_reader(data: bytes, base: int) -> MemoryReader:
    """A reader over ``data`` placed at address ``base`` (a section read from a file)."""
    def read(address: int, size: int) -> bytes:
        offset = address - base
        if offset < 0 or size < 0 or offset + size > len(data):
            raise FormatError(f"CFI read of {size} bytes outside its section", address)
        return data[offset:offset + size]
    return read


class SectionIndex:
    """A sorted table of the FDEs of a whole ``.eh_frame`` or ``.debug_frame`` section.

    Only for what has no ``.eh_frame_hdr``: static executables (gcc passes
    ``--eh-frame-hdr`` to the linker only for dynamic links) and
    ``.debug_frame`` in separate debug files.  Record headers are parsed, not
    their instructions.  ``base`` is the section's runtime address for
    ``.eh_frame`` (pc-relative pointers), 0 for ``.debug_frame`` (offsets);
    ``bias`` is added to ``.debug_frame``'s link-time pcs.
    """

    def __init__(self, data: bytes, base: int, eh_frame: bool, bias: int = 0) -> None:
        self.read = bytes_reader(data, base)
        self.eh_frame = eh_frame
        self.base = base
        self.bias = bias
        self.cies: dict[int, Cie] = {}
        self.entries: list[tuple[int, int, int]] = []  # pc_begin, pc_end, fde address
        self._index(len(data))

    def _index(self, size: int) -> None:
        address, end = self.base, self.base + size
        while address + 4 <= end and len(self.entries) < MAX_SECTION_FDES:
            body, body_address, is_64bit = read_record(self.read, address)
            if not body:
                if self.eh_frame:
                    break  # the zero terminator
                address = body_address
                continue
            id_size = 8 if is_64bit else 4
            pointer = int.from_bytes(body[:id_size], "little")
            is_cie = pointer == (0 if self.eh_frame else (1 << (8 * id_size)) - 1)
            if not is_cie:
                try:
                    fde = self.fde(address)
                    self.entries.append((fde.pc_begin, fde.pc_end, address))
                except FormatError:
                    pass  # one bad record does not hide the others
            address = body_address + len(body)
        self.entries.sort()
        self.starts = [entry[0] for entry in self.entries]

    def fde(self, address: int) -> Fde:
        fde = parse_fde(self.read, address, self.cies, self.eh_frame, self.base)
        if self.bias:
            fde = replace(fde, pc_begin=(fde.pc_begin + self.bias) & MASK,
                                      pc_end=(fde.pc_end + self.bias) & MASK)
        return fde

    def find(self, pc: int) -> Fde | None:
        """The FDE covering ``pc``, or None."""
        position = bisect.bisect_right(self.starts, pc) - 1
        if position < 0 or not self.entries[position][0] <= pc < self.entries[position][1]:
            return None
        return self.fde(self.entries[position][2])
