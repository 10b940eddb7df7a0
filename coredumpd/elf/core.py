"""The model of an x86-64 Linux ELF core: header, segments, threads, notes, memory.

Read with the declared layouts of :mod:`coredumpd.elf.layouts` through a
:class:`~coredumpd.source.ByteSource`, so a stored lz4 core is read
without decompressing it whole.  lief is not used for cores: it copies the
file, cuts notes over 1 MiB, stops NT_FILE at 6000 entries and reads
NT_SIGINFO's fields in the wrong order.

Only the ELF header must be valid (else :class:`FormatError`).  Past it the
core is hostile: every count and offset is checked, what cannot be parsed is
described in :attr:`Core.problems` (with file offsets), partial results are
kept, and a core shorter than its program headers say sets
:attr:`Core.truncated`.

Note order follows the kernel's ``write_note_info()`` (fs/binfmt_elf.c): for
each thread NT_PRSTATUS, then (first thread only) NT_PRPSINFO, NT_SIGINFO,
NT_AUXV, NT_FILE, then that thread's regsets (NT_PRFPREG, NT_X86_XSTATE...).
The first thread is the one that took the fatal signal (the dumper).
"""

from __future__ import annotations

import bisect
import dataclasses

from coredumpd.elf import layouts as L
from coredumpd.elf import notes as N
from coredumpd.elf.notes import FileMapping, PrPsInfo, PrStatus, SigInfo
from coredumpd.errors import CoredumpdError, FormatError, MemoryReadError
from coredumpd.source import ByteSource

__all__ = ["Core", "ElfHeader", "FileMapping", "PrPsInfo", "PrStatus", "Segment", "SigInfo",
           "ThreadState"]

MAX_PHNUM = 1 << 20  # 16 x max_map_count (65530 by default); 56 MiB of headers
MAX_NOTES_BYTES = 64 << 20  # all PT_NOTE segments: ~11 KiB per thread, NT_FILE ~100 B per VMA
MAX_READ = 256 << 20  # one read_memory() call


@dataclasses.dataclass(frozen=True)
class ElfHeader:
    """Elf64_Ehdr fields, with ``e_phnum`` already resolved through PN_XNUM."""

    e_type: int
    e_machine: int
    e_version: int
    e_entry: int
    e_phoff: int
    e_shoff: int
    e_flags: int
    e_ehsize: int
    e_phentsize: int
    e_phnum: int
    e_shentsize: int
    e_shnum: int
    e_shstrndx: int


@dataclasses.dataclass(frozen=True)
class Segment:
    """One PT_LOAD: [vaddr, vaddr + memsz) of which filesz bytes are at ``offset``."""

    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int

    @property
    def end(self) -> int:
        return self.vaddr + self.memsz

    @property
    def perms(self) -> str:
        """``r-xp``-style permissions from p_flags (the core cannot tell shared from private)."""
        return "".join((
            "r" if self.flags & L.PF.R else "-",
            "w" if self.flags & L.PF.W else "-",
            "x" if self.flags & L.PF.X else "-",
            "p",
        ))


@dataclasses.dataclass
class ThreadState:
    """One thread: its NT_PRSTATUS, registers by name, NT_PRFPREG bytes if present.

    ``name`` is not in kernel cores; the analysis may fill it from facts.
    ``regsets`` holds the other per-thread notes (NT_X86_XSTATE...) by type.
    """

    tid: int
    prstatus: PrStatus
    registers: dict[str, int]
    fpregs: bytes | None = None
    name: str | None = None
    regsets: dict[int, bytes] = dataclasses.field(default_factory=dict)


def _parse_ehdr(raw: bytes) -> tuple[int, ...]:
    if len(raw) < L.EHDR.size:
        raise FormatError(f"core is {len(raw)} bytes, shorter than an ELF header", 0)
    fields = L.EHDR.unpack_from(raw)
    ident: bytes = fields[0]
    if ident[:4] != L.ELFMAG:
        raise FormatError("not an ELF file (bad magic)", 0)
    if ident[4] != L.ELFCLASS64 or ident[5] != L.ELFDATA2LSB:
        raise FormatError(f"not ELF64 little-endian (class {ident[4]}, data {ident[5]})", 4)
    if fields[1] != L.ET.CORE:
        raise FormatError(f"not a core file (e_type {fields[1]})", 16)
    if fields[2] != L.EM_X86_64:
        raise FormatError(f"not an x86-64 core (e_machine {fields[2]})", 18)
    return tuple(fields[1:])


class Core:
    """An opened core.  Build with :meth:`Core.open`; never raises past the ELF header."""

    def __init__(self, source: ByteSource, ehdr: ElfHeader) -> None:
        self.source = source
        self.ehdr = ehdr
        self.segments: list[Segment] = []
        self.note_segments: list[tuple[int, int]] = []  # (offset, filesz) of PT_NOTE
        self.threads: list[ThreadState] = []
        self.siginfo: SigInfo | None = None
        self.auxv: dict[int, int] = {}
        self.files: list[FileMapping] = []
        self.prpsinfo: PrPsInfo | None = None
        self.problems: list[str] = []
        self.truncated = False
        self._starts: list[int] = []

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(cls, source: ByteSource, expected_tid: int | None = None) -> Core:
        """Parse ``source``.  ``expected_tid`` is the TID the kernel passed as ``%i``.

        The core's TIDs are in the crashed process's PID namespace
        (``fill_prstatus()`` uses ``task_pid_vnr``), so pass ``%i``, not ``%I``.
        """
        fields = _parse_ehdr(source.pread(0, L.EHDR.size))
        core = cls(source, ElfHeader(*fields))
        core._read_program_headers()
        core._read_notes()
        core._check_crashing_thread(expected_tid)
        stored_truncated = getattr(source, "truncated", None)
        if stored_truncated:
            core.truncated = True
            core.problems.append(f"the stored core was truncated: {stored_truncated}")
        return core

    def _problem(self, message: str, offset: int | None = None) -> None:
        self.problems.append(message if offset is None else f"{message} (at offset {offset:#x})")

    def _pread(self, offset: int, size: int) -> bytes:
        """Bytes of the core file; a damaged store block becomes a problem, not a raise."""
        if offset >= self.source.size:
            return b""
        try:
            return self.source.pread(offset, size)
        except CoredumpdError as err:
            self._problem(f"cannot read {size} bytes: {err}", offset)
            return b""

    def _resolve_phnum(self) -> int:
        """e_phnum, or section header 0's sh_info when e_phnum is PN_XNUM (elf(5))."""
        ehdr = self.ehdr
        if ehdr.e_phnum != L.PN_XNUM:
            return ehdr.e_phnum
        raw = self._pread(ehdr.e_shoff, L.SHDR.size) if ehdr.e_shoff else b""
        if len(raw) < L.SHDR.size:
            self._problem("PN_XNUM but section header 0 is missing", ehdr.e_shoff)
            self.truncated = self.truncated or bool(ehdr.e_shoff)
            return 0
        sh_info = L.SHDR.unpack_from(raw)[7]
        self.ehdr = dataclasses.replace(ehdr, e_phnum=sh_info)
        return int(sh_info)

    def _read_program_headers(self) -> None:
        ehdr = self.ehdr
        phnum = self._resolve_phnum()
        if phnum and ehdr.e_phentsize != L.PHDR.size:
            self._problem(f"e_phentsize is {ehdr.e_phentsize}, not {L.PHDR.size}", 0x36)
            return
        if phnum > MAX_PHNUM:
            self._problem(f"{phnum} program headers, reading only {MAX_PHNUM}", ehdr.e_phoff)
            phnum = MAX_PHNUM
        wanted = phnum * L.PHDR.size
        raw = self._pread(ehdr.e_phoff, wanted) if wanted else b""
        if len(raw) < wanted:
            self.truncated = True
            self._problem(f"program headers cut: {len(raw) // L.PHDR.size} of {phnum} present",
                          ehdr.e_phoff + len(raw))
        for (p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz,
             _align) in L.PHDR.iter_unpack(raw[:len(raw) - len(raw) % L.PHDR.size]):
            if p_type == L.PT.LOAD:
                self.segments.append(Segment(p_vaddr, p_memsz, p_offset, p_filesz, p_flags))
            elif p_type == L.PT.NOTE:
                self.note_segments.append((p_offset, p_filesz))
        self._index_segments()

    def _index_segments(self) -> None:
        self.segments.sort(key=lambda segment: segment.vaddr)
        kept: list[Segment] = []
        for segment in self.segments:
            if segment.vaddr + segment.memsz > 1 << 64 or segment.filesz > segment.memsz:
                self._problem(f"PT_LOAD at {segment.vaddr:#x} has impossible sizes",
                              segment.offset)
                continue
            if kept and segment.vaddr < kept[-1].end:
                self._problem(f"PT_LOAD at {segment.vaddr:#x} overlaps the previous one",
                              segment.offset)
                continue
            kept.append(segment)
        self.segments = kept
        self._starts = [segment.vaddr for segment in kept]
        data_end = max((s.offset + s.filesz for s in kept if s.filesz), default=0)
        if data_end > self.source.size:
            self.truncated = True
            self._problem(f"core truncated: segments need {data_end} bytes, "
                          f"the core has {self.source.size}", self.source.size)

    def _read_notes(self) -> None:
        budget = MAX_NOTES_BYTES
        for offset, filesz in self.note_segments:
            if filesz > budget:
                self._problem(f"PT_NOTE of {filesz} bytes over the note budget, cut", offset)
                filesz = budget
            budget -= filesz
            data = self._pread(offset, filesz)
            if len(data) < filesz:
                self.truncated = True
                self._problem(f"PT_NOTE cut: {len(data)} of {filesz} bytes", offset + len(data))
            self._parse_note_segment(data, offset)

    def _parse_note_segment(self, data: bytes, offset: int) -> None:
        try:
            for note in N.iter_notes(data, offset):
                self._take_note(note)
        except FormatError as err:
            self._problem(f"notes stop: {err}")

    def _take_note(self, note: N.Note) -> None:
        """Dispatch one note; a bad note is a problem, never an exception."""
        try:
            if note.name == "CORE":
                self._take_core_note(note)
            elif note.name == "LINUX" and self.threads:
                self.threads[-1].regsets[note.type] = note.desc
        except CoredumpdError as err:
            self._problem(f"note type {note.type:#x} unreadable: {err}")

    def _take_core_note(self, note: N.Note) -> None:
        if note.type == L.NT.PRSTATUS:
            status = N.decode_prstatus(note.desc, note.offset)
            self.threads.append(ThreadState(status.pr_pid, status, dict(status.registers)))
        elif note.type == L.NT.PRFPREG:
            self._take_thread_regset(note, fpregs=True)
        elif note.type == L.NT.PRPSINFO:
            self._take_once("prpsinfo", N.decode_prpsinfo(note.desc, note.offset), note)
        elif note.type == L.NT.SIGINFO:
            self._take_once("siginfo", N.decode_siginfo(note.desc, note.offset), note)
        elif note.type == L.NT.AUXV:
            if self.auxv:
                self._problem("second NT_AUXV ignored", note.offset)
            else:
                self.auxv = dict(N.decode_auxv(note.desc, note.offset))
        elif note.type == L.NT.FILE:
            if self.files:
                self._problem("second NT_FILE ignored", note.offset)
            else:
                self.files = N.decode_file_note(note.desc, note.offset)
        else:
            self._take_thread_regset(note, fpregs=False)

    def _take_thread_regset(self, note: N.Note, fpregs: bool) -> None:
        if not self.threads:
            self._problem(f"note type {note.type:#x} before any NT_PRSTATUS", note.offset)
            return
        thread = self.threads[-1]
        if fpregs:
            thread.fpregs = note.desc
        else:
            thread.regsets[note.type] = note.desc

    def _take_once(self, attribute: str, value: object, note: N.Note) -> None:
        if getattr(self, attribute) is not None:
            self._problem(f"second note type {note.type:#x} ignored", note.offset)
        else:
            setattr(self, attribute, value)

    def _check_crashing_thread(self, expected_tid: int | None) -> None:
        if not self.threads:
            self._problem("no NT_PRSTATUS: the core has no threads")
            return
        first = self.threads[0].tid
        if expected_tid is not None and first != expected_tid:
            known = any(thread.tid == expected_tid for thread in self.threads)
            self._problem(f"first thread is {first}, the kernel said {expected_tid}"
                          f" ({'another thread' if known else 'not in the core'})")

    # ----------------------------------------------------------------- queries

    @property
    def crashing_thread(self) -> ThreadState | None:
        return self.threads[0] if self.threads else None

    def segment_at(self, address: int) -> Segment | None:
        """The PT_LOAD containing ``address`` (dumped or not)."""
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0 and address < self.segments[index].end:
            return self.segments[index]
        return None

    def dumped(self, address: int) -> bool:
        """True when the byte at ``address`` is present in the core file."""
        segment = self.segment_at(address)
        if segment is None or address - segment.vaddr >= segment.filesz:
            return False
        return segment.offset + address - segment.vaddr < self.source.size

    def read_memory(self, address: int, size: int, zero_fill: bool = False) -> bytes:
        """Exactly ``size`` bytes of the process at ``address``, from dumped segments only.

        Bytes past p_filesz were not written by the kernel (clean file-backed
        pages, filtered mappings): their content is unknown, so they raise
        :class:`MemoryReadError` unless ``zero_fill`` asks for ELF bss
        semantics.  Never zero-filled where the core file itself was cut.
        """
        data, failure = self._read(address, size, zero_fill)
        if failure:
            raise MemoryReadError(address, size, failure)
        return data

    def read_memory_partial(self, address: int, size: int) -> bytes:
        """The dumped prefix of [address, address + size), possibly empty."""
        return self._read(address, size, False)[0]

    def _read(self, address: int, size: int, zero_fill: bool) -> tuple[bytes, str | None]:
        """(bytes read, None) or (the readable prefix, why the rest is not readable)."""
        if size < 0 or address < 0 or size > MAX_READ:
            return b"", "bad read size"
        chunks: list[bytes] = []
        position, remaining = address, size
        while remaining:
            chunk, failure = self._read_in_segment(position, remaining, zero_fill)
            chunks.append(chunk)
            if failure:
                return b"".join(chunks), failure
            position += len(chunk)
            remaining -= len(chunk)
        return b"".join(chunks), None

    def _read_in_segment(self, position: int, remaining: int,
                         zero_fill: bool) -> tuple[bytes, str | None]:
        segment = self.segment_at(position)
        if segment is None:
            return b"", f"{position:#x} is not mapped in the core"
        start = position - segment.vaddr
        length = min(remaining, segment.memsz - start)
        from_file = max(0, min(length, segment.filesz - start))
        if from_file and segment.offset + start >= self.source.size:
            return b"", f"core truncated at {position:#x}"
        try:
            data = self.source.pread(segment.offset + start, from_file) if from_file else b""
        except CoredumpdError as err:  # StoreError: a damaged stored block
            return b"", f"core unreadable at {position:#x}: {err}"
        if len(data) < from_file:
            return data, f"core truncated at {position + len(data):#x}"
        if from_file < length:
            if not zero_fill or segment.offset + segment.filesz > self.source.size:
                return data, f"{position + from_file:#x} was not dumped"
            data += bytes(length - from_file)
        return data, None

    def __repr__(self) -> str:
        return (f"<Core {len(self.threads)} threads, {len(self.segments)} segments, "
                f"{len(self.files)} files, {len(self.problems)} problems>")
