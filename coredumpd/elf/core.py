"""The model of an x86-64 Linux ELF core: header, segments, threads, notes, memory.

Read through a :class:`~coredumpd.source.ByteSource`, so a stored lz4 core is
read without decompressing it whole.  The head (header, program headers,
notes) is parsed by :mod:`coredumpd.elf.head`, the same parser the handler's
stream uses, and the notes decoded by :func:`coredumpd.elf.notes.decode_core_notes`.

Only the ELF header must be valid (else :class:`FormatError`).  Past it the
core is hostile: every count and offset is checked, what cannot be parsed is
described in :attr:`Core.problems` (with file offsets), partial results are
kept, and a core shorter than its program headers say sets
:attr:`Core.truncated`.  The first thread is the one that took the fatal
signal (the dumper).
"""

from __future__ import annotations

import bisect

from coredumpd.elf import head as H
from coredumpd.elf import layouts as L
from coredumpd.elf.notes import (
    FileMapping,
    PrPsInfo,
    PrStatus,
    SigInfo,
    ThreadState,
    decode_core_notes,
)
from coredumpd.errors import CoredumpdError, FormatError, MemoryReadError
from coredumpd.source import ByteSource
from coredumpd.values import Frozen

__all__ = ["Core", "ElfHeader", "FileMapping", "PrPsInfo", "PrStatus", "Segment", "SigInfo",
           "ThreadState"]

MAX_READ = 256 << 20  # one read_memory() call


class ElfHeader(Frozen):
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


# p_flags (PF_R 4, PF_W 2, PF_X 1) -> "rwxp"; a table, because each ``int & PF.R`` on the
# IntFlag builds a flag object (~30 us for the 400 segments of a 200-thread core)
PERMS = tuple("".join(("r" if flags & L.PF.R else "-", "w" if flags & L.PF.W else "-",
                       "x" if flags & L.PF.X else "-", "p")) for flags in range(8))
PF_W = int(L.PF.W)


class Segment(Frozen):
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
        return PERMS[self.flags & 7]


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
        fields = H.parse_ehdr(source.pread(0, L.EHDR.size))
        wrong_type = H.core_type_problem(fields)
        if wrong_type is not None:
            raise FormatError(*wrong_type)
        core = cls(source, ElfHeader(*fields))
        head = H.parse_head(core._pread)
        core.ehdr = ElfHeader(*head.fields)
        core.problems += head.problems
        core.truncated = head.truncated
        core._take_program_headers(head)
        core._take_notes(head)
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

    def _take_program_headers(self, head: H.CoreHead) -> None:
        for p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, _align in head.phdrs:
            if p_type == L.PT.LOAD:
                self.segments.append(Segment(p_vaddr, p_memsz, p_offset, p_filesz, p_flags))
            elif p_type == L.PT.NOTE:
                self.note_segments.append((p_offset, p_filesz))
        self._index_segments()

    def _take_notes(self, head: H.CoreHead) -> None:
        notes = decode_core_notes(head.notes)
        self.threads, self.prpsinfo, self.siginfo = notes.threads, notes.prpsinfo, notes.siginfo
        self.auxv, self.files = dict(notes.auxv), notes.files
        self.problems += notes.problems

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
