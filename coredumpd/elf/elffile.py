"""A light, bounded reader of ELF64 objects: executables, libraries, debug files, the vDSO.

Reads only what is asked (``pread`` on demand), through the declared layouts
of :mod:`coredumpd.elf.layouts`; every count, offset and size is checked
against the file and against caps, errors are :class:`FormatError` with the
offset.  Imports only the standard library (the handler calls
:func:`version_info` on a ``/proc/PID/map_files`` fd while the crashed process
is held, so it must be quick and light).

References: elf(5), the gABI, and the GNU symbol versioning extensions
(https://refspecs.linuxfoundation.org/LSB_5.0.0/LSB-Core-generic/LSB-Core-generic/symversion.html).
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import NamedTuple, Self

from coredumpd.elf import layouts as L
from coredumpd.elf import notes as N
from coredumpd.errors import FormatError, TruncatedError
from coredumpd.values import Frozen

MAX_SECTIONS = 1 << 16
MAX_PHDRS = 1 << 16
MAX_SECTION_READ = 256 << 20  # one section (a big .symtab or .debug_line)
MAX_NOTES = 1 << 20
MAX_VERSION_ENTRIES = 1 << 16
SHF_EXECINSTR = 0x4
SHF_COMPRESSED = 0x800
ELFCOMPRESS_ZLIB = 1
# Elf64_Chdr: ch_type ch_reserved ch_size ch_addralign
CHDR = struct.Struct("<IIQQ")
VERSYM_HIDDEN = 0x8000
VER_FLG_BASE = 0x1
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE, STT_GNU_IFUNC = 0, 1, 2, 3, 4, 10

Pread = Callable[[int, int], bytes]


class ProgramHeader(Frozen):
    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_filesz: int
    p_memsz: int
    p_align: int


class Section(Frozen):
    index: int
    name: str
    sh_type: int
    sh_flags: int
    sh_addr: int
    sh_offset: int
    sh_size: int
    sh_link: int
    sh_info: int
    sh_addralign: int
    sh_entsize: int


class ElfSymbol(NamedTuple):
    """One Elf64_Sym; ``version`` from .gnu.version (dynsym only), ``default`` for ``@@``.

    A NamedTuple, not a dataclass: tables hold tens of thousands of them.
    """

    name: str
    value: int
    size: int
    type: int
    bind: int
    shndx: int
    version: str | None = None
    default: bool = True


def parse_program_headers(data: bytes, count: int, base: int = 0) -> list[ProgramHeader]:
    """``count`` Elf64_Phdr from ``data`` (cut short if ``data`` is)."""
    usable = min(count, len(data) // L.PHDR.size)
    if usable < count:
        raise TruncatedError("program headers", base, count * L.PHDR.size, len(data))
    return [ProgramHeader(t, f, o, v, fs, ms, a)
            for t, f, o, v, _p, fs, ms, a in L.PHDR.iter_unpack(data[:usable * L.PHDR.size])]


class ElfFile:
    """An ELF64 little-endian object read through ``pread(offset, size)``."""

    def __init__(self, pread: Pread, size: int, name: str = "<elf>") -> None:
        self._pread = pread
        self.size = size
        self.name = name
        self._fd = -1
        raw = pread(0, L.EHDR.size)
        if len(raw) < L.EHDR.size or raw[:4] != L.ELFMAG:
            raise FormatError(f"{name}: not an ELF file", 0)
        if raw[4] != L.ELFCLASS64 or raw[5] != L.ELFDATA2LSB:
            raise FormatError(f"{name}: not ELF64 little-endian", 4)
        (_ident, self.e_type, self.e_machine, _version, self.e_entry, self.e_phoff,
         self.e_shoff, _flags, _ehsize, self.e_phentsize, self.e_phnum, self.e_shentsize,
         self.e_shnum, self.e_shstrndx) = L.EHDR.unpack(raw)
        self._phdrs: list[ProgramHeader] | None = None
        self._sections: list[Section] | None = None

    # ------------------------------------------------------------ construction

    @classmethod
    def open(cls, path: str) -> ElfFile:
        """Open the regular file ``path`` (closed by :meth:`close` or ``with``).

        O_NONBLOCK and the S_ISREG check: a path named by a hostile core may
        be a FIFO or a device, whose open or read would block or never end.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as err:
            raise FormatError(f"cannot open {path}: {err.strerror}") from err
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FormatError(f"{path} is not a regular file")
            elf = cls.from_fd(fd, path)
        except BaseException:
            os.close(fd)
            raise
        elf._fd = fd
        return elf

    @classmethod
    def from_fd(cls, fd: int, name: str = "<fd>") -> ElfFile:
        """Read an already open fd (not closed by this object)."""
        try:
            size = os.fstat(fd).st_size
        except OSError as err:
            raise FormatError(f"cannot stat {name}: {err.strerror}") from err

        def pread(offset: int, length: int) -> bytes:
            try:
                return os.pread(fd, length, offset)
            except OSError as err:
                raise FormatError(f"cannot read {name}: {err.strerror}", offset) from err

        return cls(pread, size, name)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<bytes>") -> ElfFile:
        view = memoryview(data)
        return cls(lambda offset, length: bytes(view[offset:offset + length]), len(data), name)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ raw access

    def read(self, offset: int, size: int, what: str = "data") -> bytes:
        """Exactly ``size`` bytes at file ``offset`` or :class:`TruncatedError`."""
        if size > MAX_SECTION_READ or offset < 0 or size < 0:
            raise FormatError(f"{self.name}: {what} of {size} bytes is over the cap", offset)
        data = self._pread(offset, size) if size else b""
        if len(data) != size:
            raise TruncatedError(f"{self.name}: {what}", offset, size, len(data))
        return data

    @property
    def program_headers(self) -> list[ProgramHeader]:
        if self._phdrs is None:
            count = self.e_phnum
            if count and (self.e_phentsize != L.PHDR.size or count > MAX_PHDRS):
                raise FormatError(f"{self.name}: bad program header table", self.e_phoff)
            data = self.read(self.e_phoff, count * L.PHDR.size, "program headers")
            self._phdrs = parse_program_headers(data, count, self.e_phoff)
        return self._phdrs

    @property
    def sections(self) -> list[Section]:
        """Section headers with names (empty when there is no table)."""
        if self._sections is None:
            self._sections = self._read_sections()
        return self._sections

    def _read_sections(self) -> list[Section]:
        if self.e_shoff == 0 or self.e_shnum == 0:
            return []
        if self.e_shentsize != L.SHDR.size or self.e_shnum > MAX_SECTIONS:
            raise FormatError(f"{self.name}: bad section header table", self.e_shoff)
        data = self.read(self.e_shoff, self.e_shnum * L.SHDR.size, "section headers")
        raw = list(L.SHDR.iter_unpack(data))
        names = b""
        if 0 < self.e_shstrndx < len(raw):
            strtab = raw[self.e_shstrndx]
            names = self.read(strtab[4], min(strtab[5], 1 << 20), ".shstrtab")
        return [Section(index, _string(names, fields[0]), *fields[1:])
                for index, fields in enumerate(raw)]

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def section_data(self, section: Section) -> bytes:
        """The section's bytes, decompressed if SHF_COMPRESSED (zlib; elf(5) Elf64_Chdr)."""
        if section.sh_type == L.SHT.NOBITS:
            return b""
        data = self.read(section.sh_offset, section.sh_size, section.name)
        if not section.sh_flags & SHF_COMPRESSED:
            return data
        return _decompress(data, section, self.name)

    def vaddr_to_offset(self, vaddr: int) -> int | None:
        """File offset of link-time address ``vaddr`` through PT_LOAD, if file-backed."""
        for phdr in self.program_headers:
            if phdr.p_type == L.PT.LOAD and phdr.p_vaddr <= vaddr < phdr.p_vaddr + phdr.p_filesz:
                return phdr.p_offset + vaddr - phdr.p_vaddr
        return None

    # ------------------------------------------------------------ notes

    def notes(self) -> Iterator[N.Note]:
        """Notes of PT_NOTE segments, else of SHT_NOTE sections (debug files have no phdrs)."""
        regions = [(p.p_offset, p.p_filesz) for p in self.program_headers
                   if p.p_type == L.PT.NOTE]
        if not regions:
            regions = [(s.sh_offset, s.sh_size) for s in self.sections
                       if s.sh_type == L.SHT.NOTE]
        for offset, size in regions:
            if size > MAX_NOTES:
                continue
            try:
                yield from N.iter_notes(self.read(offset, size, "notes"), offset)
            except FormatError:
                continue

    @property
    def build_id(self) -> bytes | None:
        for note in self.notes():
            if note.name == "GNU" and note.type == L.NT_GNU.BUILD_ID and note.desc:
                return note.desc
        return None

    @property
    def debuglink(self) -> tuple[str, int] | None:
        """(file name, CRC32) of .gnu_debuglink (GDB manual, "Separate Debug Files")."""
        section = self.section(".gnu_debuglink")
        if section is None or section.sh_size > 4096:
            return None
        data = self.section_data(section)
        name, _, _ = data.partition(b"\0")
        crc_at = (len(name) + 1 + 3) & ~3
        if not name or crc_at + 4 > len(data):
            return None
        return name.decode("utf-8", "surrogateescape"), int.from_bytes(
            data[crc_at:crc_at + 4], "little")

    def gnu_debugdata(self, cap: int) -> bytes | None:
        """The xz-compressed MiniDebugInfo (.gnu_debugdata), if present and under ``cap``."""
        section = self.section(".gnu_debugdata")
        if section is None or section.sh_size > cap:
            return None
        return self.section_data(section)

    # ------------------------------------------------------------ dynamic, symbols

    def dynamic(self) -> list[tuple[int, int]]:
        """(d_tag, d_val) of PT_DYNAMIC (file offsets), up to DT_NULL."""
        for phdr in self.program_headers:
            if phdr.p_type == L.PT.DYNAMIC:
                data = self.read(phdr.p_offset, min(phdr.p_filesz, 1 << 20), "dynamic")
                entries = []
                for tag, value in L.DYN.iter_unpack(data[:len(data) - len(data) % L.DYN.size]):
                    if tag == L.DT.NULL:
                        break
                    entries.append((tag, value))
                return entries
        return []

    @property
    def soname(self) -> str | None:
        dynstr = self.section(".dynstr")
        for tag, value in self.dynamic():
            if tag == L.DT.SONAME and dynstr is not None:
                return _string(self.section_data(dynstr), value) or None
        return None

    def symbols(self, table: str = ".symtab") -> list[ElfSymbol]:
        """Symbols of ``.symtab`` or ``.dynsym``, with versions for ``.dynsym``."""
        section = self.section(table)
        if section is None or section.sh_type not in (L.SHT.SYMTAB, L.SHT.DYNSYM):
            return []
        data = self.section_data(section)
        strings = self._linked_strings(section)
        versions = self._symbol_versions(section) if table == ".dynsym" else {}
        symbols = []
        names: dict[int, str] = {}
        for index, (st_name, info, _other, shndx, value, size) in enumerate(
                L.SYM.iter_unpack(data[:len(data) - len(data) % L.SYM.size])):
            name = names.get(st_name)
            if name is None:
                name = names[st_name] = _string(strings, st_name)
            version, default = versions.get(index, (None, True)) if versions else (None, True)
            symbols.append(ElfSymbol(name, value, size, info & 0xF, info >> 4, shndx, version,
                                     default))
        return symbols

    def raw_symbols(self, table: str = ".symtab") -> tuple[bytes, bytes] | None:
        """(Elf64_Sym array, linked string table) of ``table``, for fast bulk readers."""
        section = self.section(table)
        if section is None or section.sh_type not in (L.SHT.SYMTAB, L.SHT.DYNSYM):
            return None
        return self.section_data(section), self._linked_strings(section)

    def _linked_strings(self, section: Section) -> bytes:
        if not 0 < section.sh_link < len(self.sections):
            return b""
        return self.section_data(self.sections[section.sh_link])

    # ------------------------------------------------------------ versions

    def verdefs(self) -> dict[int, tuple[str, int]]:
        """Version index -> (name, vd_flags) from .gnu.version_d."""
        section = self._section_of_type(L.SHT.GNU_VERDEF)
        if section is None:
            return {}
        data, strings = self.section_data(section), self._linked_strings(section)
        result: dict[int, tuple[str, int]] = {}
        for flags, index, aux in _walk_verdef(data):
            if aux + L.VERDAUX.size <= len(data):
                name_offset, _next = L.VERDAUX.unpack_from(data, aux)
                result[index] = (_string(strings, name_offset), flags)
        return result

    def verneeds(self) -> tuple[dict[str, list[str]], dict[int, str]]:
        """({needed file: [versions]}, {version index: version}) from .gnu.version_r."""
        section = self._section_of_type(L.SHT.GNU_VERNEED)
        if section is None:
            return {}, {}
        data, strings = self.section_data(section), self._linked_strings(section)
        files: dict[str, list[str]] = {}
        by_index: dict[int, str] = {}
        for file_name, other, version in _walk_verneed(data, strings):
            files.setdefault(file_name, []).append(version)
            by_index[other] = version
        return files, by_index

    def _section_of_type(self, sh_type: int) -> Section | None:
        return next((s for s in self.sections if s.sh_type == sh_type), None)

    def _symbol_versions(self, dynsym: Section) -> dict[int, tuple[str, bool]]:
        """dynsym index -> (version name, default) from .gnu.version."""
        versym = self._section_of_type(L.SHT.GNU_VERSYM)
        if versym is None:
            return {}
        names = {index: name for index, (name, _flags) in self.verdefs().items()}
        names.update(self.verneeds()[1])
        data = self.section_data(versym)
        result = {}
        for index in range(len(data) // 2):
            raw = int.from_bytes(data[2 * index:2 * index + 2], "little")
            version = names.get(raw & 0x7FFF) if raw & 0x7FFF > 1 else None
            if version is not None:
                result[index] = (version, not raw & VERSYM_HIDDEN)
        return result


def _decompress(data: bytes, section: Section, name: str) -> bytes:
    if len(data) < CHDR.size:
        raise TruncatedError(f"{name}: {section.name} Elf64_Chdr", section.sh_offset, CHDR.size,
                             len(data))
    ch_type, _reserved, ch_size, _align = CHDR.unpack_from(data)
    if ch_type != ELFCOMPRESS_ZLIB:
        raise FormatError(f"{name}: {section.name} uses compression {ch_type}, not zlib",
                          section.sh_offset)
    if ch_size > MAX_SECTION_READ:
        raise FormatError(f"{name}: {section.name} inflates to {ch_size} bytes, over the cap",
                          section.sh_offset)
    decompressor = zlib.decompressobj()
    try:
        result = decompressor.decompress(data[CHDR.size:], ch_size)
    except zlib.error as err:
        raise FormatError(f"{name}: {section.name} is not valid zlib: {err}",
                          section.sh_offset) from err
    if len(result) != ch_size:
        raise FormatError(f"{name}: {section.name} inflates to {len(result)} bytes, "
                          f"not {ch_size}", section.sh_offset)
    return result


def _string(table: bytes, offset: int) -> str:
    if not 0 <= offset < len(table):
        return ""
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else len(table)].decode("utf-8", "surrogateescape")


def _walk_verdef(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(vd_flags, vd_ndx, absolute offset of the first Verdaux) per Elf64_Verdef."""
    position, seen = 0, 0
    while position + L.VERDEF.size <= len(data) and seen < MAX_VERSION_ENTRIES:
        _version, flags, index, _count, _hash, aux, next_ = L.VERDEF.unpack_from(data, position)
        yield flags, index, position + aux
        if next_ == 0:
            break
        position += next_
        seen += 1


def _walk_verneed(data: bytes, strings: bytes) -> Iterator[tuple[str, int, str]]:
    """(file, vna_other, version name) per Elf64_Vernaux of each Elf64_Verneed."""
    position, seen = 0, 0
    while position + L.VERNEED.size <= len(data) and seen < MAX_VERSION_ENTRIES:
        _version, count, file_offset, aux, next_ = L.VERNEED.unpack_from(data, position)
        file_name = _string(strings, file_offset)
        aux_position = position + aux
        for _ in range(min(count, MAX_VERSION_ENTRIES)):
            if aux_position + L.VERNAUX.size > len(data):
                break
            _hash, _flags, other, name, aux_next = L.VERNAUX.unpack_from(data, aux_position)
            yield file_name, other, _string(strings, name)
            seen += 1
            if aux_next == 0:
                break
            aux_position += aux_next
        if next_ == 0:
            break
        position += next_


def version_info(path_or_fd: str | int) -> dict[str, object]:
    """Symbol-version facts of one ELF object, for the ``symbol-version-miss`` rule.

    ``{"soname", "build_id", "verdefs": [names], "defines": {symbol: [versions]},
    "verneeds": {file: [versions]}}``; ``defines`` lists the versions each
    exported (defined, dynamic) symbol carries.  Raises FormatError.
    """
    if isinstance(path_or_fd, int):
        return _version_info(ElfFile.from_fd(path_or_fd))
    with ElfFile.open(path_or_fd) as elf:
        return _version_info(elf)


def _version_info(elf: ElfFile) -> dict[str, object]:
    verdefs = elf.verdefs()
    defines: dict[str, list[str]] = {}
    for symbol in elf.symbols(".dynsym"):
        if (symbol.shndx != L.SHN_UNDEF and symbol.name and symbol.version is not None
                and symbol.name != symbol.version):  # the version's own SHN_ABS marker
            defines.setdefault(symbol.name, []).append(symbol.version)
    build_id = elf.build_id
    return {
        "soname": elf.soname,
        "build_id": build_id.hex() if build_id else None,
        "verdefs": [name for name, flags in verdefs.values() if not flags & VER_FLG_BASE],
        "defines": defines,
        "verneeds": elf.verneeds()[0],
    }
