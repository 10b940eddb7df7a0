"""The head of an ELF core — header, program headers, notes — parsed in one place.

Two readers need it: the stream (:mod:`coredumpd.ingest.stream`), while the
kernel holds the crashed process and the bytes come from a pipe, and
:meth:`coredumpd.elf.core.Core.open`, on a stored core.  Both feed
:func:`parse_head` a ``read(offset, size)`` function: the stream's fills its
buffer from the pipe up to ``offset + size`` (and refuses past ``reach``), the
core's is a ``pread``.  A short read means the core ends there.

PN_XNUM (elf(5)): with 0xffff or more program headers, ``e_phnum`` is PN_XNUM
and the real count is ``sh_info`` of section header 0.  The kernel writes that
section header *after* the segment data (fs/binfmt_elf.c: fill_extnum_info(),
elf_core_write_extra_data()), out of the stream's reach for a big core; it
writes the program headers contiguously from ``e_phoff`` up to the notes, and
the PT_NOTE header first.  So ``sh_info`` is used whenever section header 0 can
be read, and only otherwise the count is inferred as ``(PT_NOTE p_offset -
e_phoff) / e_phentsize`` (:attr:`CoreHead.phnum_source` says which).

Past the ELF header nothing raises: every count and offset is checked before it
is used, and what cannot be parsed becomes a line in :attr:`CoreHead.problems`
with its file offset.  Imported while the kernel waits: only the declared
layouts of :mod:`coredumpd.elf.structs` (no ``dataclasses`` or ``enum``).
"""

from __future__ import annotations

from coredumpd.elf import structs as S
from coredumpd.errors import FormatError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    Read = Callable[[int, int], bytes]
    PhdrFields = tuple[int, int, int, int, int, int, int, int]

MAX_PHNUM = 1 << 20  # 16 x max_map_count (65530 by default); 56 MiB of headers
MAX_NOTES_BYTES = 64 << 20  # all PT_NOTE segments: ~11 KiB per thread, NT_FILE ~100 B per VMA
E_PHENTSIZE_OFFSET = 0x36  # offsetof(Elf64_Ehdr, e_phentsize)


def parse_ehdr(raw: bytes) -> list[int]:
    """The Elf64_Ehdr fields after ``e_ident`` (``e_type`` ... ``e_shstrndx``).

    Raises :class:`FormatError` unless ``raw`` starts with a whole ELF64
    little-endian header."""
    if len(raw) < S.EHDR.size:
        raise FormatError(f"core is {len(raw)} bytes, shorter than an ELF header", 0)
    fields = S.EHDR.unpack_from(raw)
    ident: bytes = fields[0]
    if ident[:4] != S.ELFMAG:
        raise FormatError(f"not an ELF file (starts {bytes(ident[:8])!r})", 0)
    if ident[4] != S.ELFCLASS64 or ident[5] != S.ELFDATA2LSB:
        raise FormatError(f"not ELF64 little-endian (class {ident[4]}, data {ident[5]})", 4)
    return list(fields[1:])


def core_type_problem(fields: list[int]) -> tuple[str, int] | None:
    """(message, offset) when the header is not that of an x86-64 core.

    The one machine fact outside :mod:`coredumpd.arch`: this runs while the kernel
    holds the crashed process, and importing ``coredumpd.arch`` there costs 13.6 ms
    (its interface's dataclasses, ``typing``, ``inspect``), more than the 12.5 ms of
    all the held phase's imports (``python -X importtime``, 2026-12-01)."""
    if fields[0] != S.ET_CORE:
        return f"not a core file (e_type {fields[0]})", 16
    if fields[1] != S.EM_X86_64:
        return f"not an x86-64 core (e_machine {fields[1]})", 18
    return None


class CoreHead:
    """What the head of a core says.

    ``fields``: the header after ``e_ident``, with ``e_phnum`` (index 9) resolved
    through PN_XNUM.  ``phdrs``: the program headers read, in file order.
    ``notes``: (file offset, bytes) of each PT_NOTE, possibly cut.  ``truncated``:
    a read came back short (the core ends inside its head).
    """

    __slots__ = ("fields", "notes", "phdrs", "phnum_source", "problems", "truncated")

    def __init__(self, fields: list[int]) -> None:
        self.fields = fields
        self.phdrs: list[PhdrFields] = []
        self.notes: list[tuple[int, bytes]] = []
        self.problems: list[str] = []
        self.truncated = False
        self.phnum_source = "e_phnum"  # or "sh_info", or "notes offset" (inferred)

    @property
    def phnum(self) -> int:
        return self.fields[9]

    def problem(self, message: str, offset: int | None = None) -> None:
        self.problems.append(message if offset is None else f"{message} (at offset {offset:#x})")

    def expected_size(self) -> int:
        """Bytes the whole core has, by its program headers (and PN_XNUM's section header)."""
        e_phoff, e_shoff = self.fields[4], self.fields[5]
        end = e_phoff + len(self.phdrs) * S.PHDR.size
        for p_type, _flags, p_offset, _vaddr, _paddr, p_filesz, _memsz, _align in self.phdrs:
            if p_type in (S.PT_LOAD, S.PT_NOTE) and p_filesz:
                end = max(end, p_offset + p_filesz)
        if self.phnum_source != "e_phnum" and e_shoff:
            end = max(end, e_shoff + S.SHDR.size)
        return end


def parse_head(read: Read, reach: int | None = None) -> CoreHead:
    """Parse the head of a core through ``read(offset, size)``.

    ``reach``: bytes past this offset are never asked for (the stream holds the
    head in memory).  Raises :class:`FormatError` only for the ELF header itself.
    """
    head = CoreHead(parse_ehdr(read(0, S.EHDR.size)))
    phnum = _resolve_phnum(read, head, reach)
    if phnum:
        _read_program_headers(read, head, phnum, reach)
    _read_notes(read, head, reach)
    return head


def _within(reach: int | None, end: int) -> bool:
    return reach is None or end <= reach


def _resolve_phnum(read: Read, head: CoreHead, reach: int | None) -> int:
    """e_phnum; through PN_XNUM, section header 0's sh_info, else the inferred count."""
    e_phnum, e_shoff = head.fields[9], head.fields[5]
    if e_phnum != S.PN_XNUM:
        return e_phnum
    if e_shoff and _within(reach, e_shoff + S.SHDR.size):
        raw = read(e_shoff, S.SHDR.size)
        if len(raw) == S.SHDR.size:
            head.fields[9] = int(S.SHDR.unpack(raw)[7])
            head.phnum_source = "sh_info"
            return head.fields[9]
        head.truncated = True
        head.problem("PN_XNUM but section header 0 is cut", e_shoff + len(raw))
    elif not e_shoff:
        head.problem("PN_XNUM but no section header (e_shoff 0)", 0x28)
    return _infer_phnum(read, head, reach)


def _infer_phnum(read: Read, head: CoreHead, reach: int | None) -> int:
    """The kernel's layout: program headers from e_phoff up to the notes, PT_NOTE first."""
    e_phoff = head.fields[4]
    head.fields[9] = 0
    if not _within(reach, e_phoff + S.PHDR.size):
        head.problem(f"PN_XNUM and the first program header is past the first {reach} bytes,"
                     " the most the head may hold", e_phoff)
        return 0
    raw = read(e_phoff, S.PHDR.size)
    if len(raw) < S.PHDR.size:
        head.truncated = True
        head.problem("PN_XNUM and the core ends before the first program header", e_phoff)
        return 0
    p_type, _flags, p_offset = S.PHDR.unpack(raw)[:3]
    if p_type != S.PT_NOTE or p_offset <= e_phoff:
        head.problem(f"PN_XNUM, section header 0 unread, and the first program header is "
                     f"type {p_type:#x} at {p_offset:#x}: count unknown", e_phoff)
        return 0
    head.fields[9] = (p_offset - e_phoff) // S.PHDR.size
    head.phnum_source = "notes offset"
    return head.fields[9]


def _read_program_headers(read: Read, head: CoreHead, phnum: int, reach: int | None) -> None:
    e_phoff, e_phentsize = head.fields[4], head.fields[8]
    if e_phentsize != S.PHDR.size:
        head.problem(f"e_phentsize is {e_phentsize}, not {S.PHDR.size}", E_PHENTSIZE_OFFSET)
        return
    if phnum > MAX_PHNUM:
        head.problem(f"{phnum} program headers, reading only {MAX_PHNUM}", e_phoff)
        phnum = MAX_PHNUM
    wanted = phnum * S.PHDR.size
    if not _within(reach, e_phoff + wanted):
        head.problem(f"{phnum} program headers at {e_phoff:#x} go past the first {reach} "
                     "bytes, the most the head may hold", e_phoff)
        return
    raw = read(e_phoff, wanted)
    if len(raw) < wanted:
        head.truncated = True
        head.problem(f"program headers cut: {len(raw) // S.PHDR.size} of {phnum} present",
                     e_phoff + len(raw))
    head.phdrs = list(S.PHDR.iter_unpack(raw[:len(raw) - len(raw) % S.PHDR.size]))


def _read_notes(read: Read, head: CoreHead, reach: int | None) -> None:
    budget = MAX_NOTES_BYTES
    for p_type, _flags, p_offset, _vaddr, _paddr, p_filesz, _memsz, _align in head.phdrs:
        if p_type != S.PT_NOTE:
            continue
        if p_filesz > budget:
            head.problem(f"PT_NOTE of {p_filesz} bytes over the note budget, cut", p_offset)
            p_filesz = budget
        if not _within(reach, p_offset + p_filesz):
            head.problem(f"PT_NOTE of {p_filesz} bytes goes past the first {reach} bytes,"
                         " the most the head may hold", p_offset)
            continue
        budget -= p_filesz
        data = read(p_offset, p_filesz) if p_filesz else b""
        if len(data) < p_filesz:
            head.truncated = True
            head.problem(f"PT_NOTE cut: {len(data)} of {p_filesz} bytes", p_offset + len(data))
        head.notes.append((p_offset, data))
