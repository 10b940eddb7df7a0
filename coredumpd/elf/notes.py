"""Decoders for ELF notes and for the Linux core notes.

Every function takes bytes that came from a hostile file: counts and sizes are
checked against the buffer before use, and problems raise
:class:`~coredumpd.errors.FormatError` with the offset.  Used by the streaming
handler (notes arrive before any segment data) and by the core reader.
"""

from __future__ import annotations

from collections.abc import Iterator

from coredumpd.arch import Arch, for_machine
from coredumpd.elf import layouts as L
from coredumpd.errors import FormatError, TruncatedError
from coredumpd.values import Frozen, Value

MAX_NOTE_NAME = 4096


def _align4(value: int) -> int:
    return (value + 3) & ~3


class Note(Frozen):
    """One note: ``name`` without its NUL, ``type`` as int, ``desc`` bytes.

    ``offset`` is where the note header starts, relative to the buffer's
    ``base`` given to :func:`iter_notes` (a file offset for a core).
    """

    name: str
    type: int
    desc: bytes
    offset: int


def iter_notes(data: bytes, base: int = 0) -> Iterator[Note]:
    """Yield the notes of a PT_NOTE segment or SHT_NOTE section.

    Stops with FormatError at the first note whose sizes run past ``data``.
    """
    view = memoryview(data)
    position = 0
    while position + L.NHDR.size <= len(view):
        namesz, descsz, note_type = L.NHDR.unpack_from(view, position)
        name_start = position + L.NHDR.size
        desc_start = name_start + _align4(namesz)
        desc_end = desc_start + descsz
        if namesz > MAX_NOTE_NAME or desc_end > len(view):
            raise TruncatedError(
                f"note type {note_type:#x}", base + position, desc_end - position,
                len(view) - position,
            )
        name = bytes(view[name_start:name_start + namesz]).rstrip(b"\0").decode("latin-1")
        yield Note(name, note_type, bytes(view[desc_start:desc_end]), base + position)
        position = _align4(desc_end)


class PrStatus(Frozen):
    """NT_PRSTATUS: one thread's signal state and registers."""

    si_signo: int
    si_code: int
    si_errno: int
    pr_cursig: int
    pr_sigpend: int
    pr_sighold: int
    pr_pid: int
    pr_ppid: int
    pr_pgrp: int
    pr_sid: int
    pr_utime_us: int
    pr_stime_us: int
    registers: dict[str, int]


def decode_prstatus(desc: bytes, offset: int = 0, arch: Arch | None = None) -> PrStatus:
    """NT_PRSTATUS of ``arch`` (default: x86-64, the only machine Core reads today)."""
    arch = arch or for_machine(L.EM_X86_64)
    layout = arch.prstatus
    if len(desc) < layout.size:
        raise TruncatedError("NT_PRSTATUS", offset, layout.size, len(desc))
    fields = layout.unpack_from(desc)
    signo, code, errno_, cursig, sigpend, sighold, pid, ppid, pgrp, sid = fields[:10]
    times = fields[10:18]
    regs = dict(zip(arch.prstatus_registers, fields[18:18 + len(arch.prstatus_registers)]))
    return PrStatus(
        si_signo=signo, si_code=code, si_errno=errno_, pr_cursig=cursig,
        pr_sigpend=sigpend, pr_sighold=sighold, pr_pid=pid, pr_ppid=ppid,
        pr_pgrp=pgrp, pr_sid=sid,
        pr_utime_us=times[0] * 1_000_000 + times[1],
        pr_stime_us=times[2] * 1_000_000 + times[3],
        registers=regs,
    )


class PrPsInfo(Frozen):
    """NT_PRPSINFO: process name, arguments and ids."""

    pr_state: int
    pr_sname: str
    pr_zomb: int
    pr_nice: int
    pr_flag: int
    pr_uid: int
    pr_gid: int
    pr_pid: int
    pr_ppid: int
    pr_pgrp: int
    pr_sid: int
    pr_fname: str
    pr_psargs: str


def _cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def decode_prpsinfo(desc: bytes, offset: int = 0) -> PrPsInfo:
    if len(desc) < L.PRPSINFO.size:
        raise TruncatedError("NT_PRPSINFO", offset, L.PRPSINFO.size, len(desc))
    (state, sname, zomb, nice, flag, uid, gid, pid, ppid, pgrp, sid, fname,
     psargs) = L.PRPSINFO.unpack_from(desc)
    return PrPsInfo(state, sname.decode("latin-1"), zomb, nice, flag, uid, gid, pid, ppid,
                    pgrp, sid, _cstring(fname), _cstring(psargs))


class SigInfo(Frozen):
    """NT_SIGINFO, in the kernel's field order: si_signo, si_errno, si_code.

    ``si_addr`` is set for fault signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE,
    SIGTRAP) sent by the kernel; ``si_pid``/``si_uid`` when a process sent the
    signal (si_code <= 0) or for SIGCHLD; ``call_addr``/``syscall``/``arch``
    for SIGSYS (seccomp).
    """

    si_signo: int
    si_errno: int
    si_code: int
    si_addr: int | None = None
    si_pid: int | None = None
    si_uid: int | None = None
    call_addr: int | None = None
    syscall: int | None = None
    arch: int | None = None

    @property
    def sent_by_process(self) -> bool:
        return self.si_code <= 0

    @property
    def signal_name(self) -> str:
        return L.signal_name(self.si_signo)

    @property
    def code_name(self) -> str:
        return L.si_code_name(self.si_signo, self.si_code)


FAULT_SIGNALS = frozenset({4, 5, 7, 8, 11})  # SIGILL SIGTRAP SIGBUS SIGFPE SIGSEGV
SIGSYS = 31


def decode_siginfo(desc: bytes, offset: int = 0) -> SigInfo:
    if len(desc) < L.SIGINFO_SIZE:
        raise TruncatedError("NT_SIGINFO", offset, L.SIGINFO_SIZE, len(desc))
    signo, errno_, code = L.SIGINFO_HEAD.unpack_from(desc)
    union = L.SIGINFO_HEAD.size
    if code <= 0 or signo == 17:  # sent by kill()/tgkill()/sigqueue(), or SIGCHLD
        pid, uid = L.SIGINFO_KILL.unpack_from(desc, union)
        return SigInfo(signo, errno_, code, si_pid=pid, si_uid=uid)
    if signo == SIGSYS:
        call_addr, syscall, arch = L.SIGINFO_SYS.unpack_from(desc, union)
        return SigInfo(signo, errno_, code, si_addr=call_addr, call_addr=call_addr,
                       syscall=syscall, arch=arch)
    if signo in FAULT_SIGNALS:
        (addr,) = L.SIGINFO_FAULT.unpack_from(desc, union)
        return SigInfo(signo, errno_, code, si_addr=addr)
    return SigInfo(signo, errno_, code)


def decode_auxv(desc: bytes, offset: int = 0) -> list[tuple[int, int]]:
    """NT_AUXV as (a_type, a_val) pairs, up to and without AT_NULL."""
    entries = []
    for position in range(0, len(desc) - L.AUXV_ENTRY.size + 1, L.AUXV_ENTRY.size):
        a_type, a_val = L.AUXV_ENTRY.unpack_from(desc, position)
        if a_type == L.AT.NULL:
            break
        entries.append((a_type, a_val))
    return entries


class FileMapping(Frozen):
    """One NT_FILE entry: [start, end) maps ``path`` from byte ``file_offset``."""

    start: int
    end: int
    file_offset: int
    path: str


MAX_FILE_ENTRIES = 1 << 20


def decode_file_note(desc: bytes, offset: int = 0) -> list[FileMapping]:
    """NT_FILE (fs/binfmt_elf.c fill_files_note): every count checked first."""
    if len(desc) < L.NT_FILE_HEAD.size:
        raise TruncatedError("NT_FILE header", offset, L.NT_FILE_HEAD.size, len(desc))
    count, page_size = L.NT_FILE_HEAD.unpack_from(desc)
    table_end = L.NT_FILE_HEAD.size + count * L.NT_FILE_ENTRY.size
    if count > MAX_FILE_ENTRIES or table_end > len(desc):
        raise FormatError(f"NT_FILE claims {count} entries in {len(desc)} bytes", offset)
    if page_size == 0 or page_size & (page_size - 1):
        raise FormatError(f"NT_FILE page size {page_size} is not a power of two", offset)
    names = desc[table_end:].split(b"\0")
    if len(names) < count:
        raise FormatError(f"NT_FILE has {count} entries but {len(names)} names", offset)
    mappings = []
    for index in range(count):
        start, end, page_offset = L.NT_FILE_ENTRY.unpack_from(
            desc, L.NT_FILE_HEAD.size + index * L.NT_FILE_ENTRY.size)
        path = names[index].decode("utf-8", "surrogateescape")
        mappings.append(FileMapping(start, end, page_offset * page_size, path))
    return mappings


def find_build_id(data: bytes, base: int = 0) -> bytes | None:
    """The NT_GNU_BUILD_ID descriptor among the notes in ``data``, if any."""
    try:
        for note in iter_notes(data, base):
            if note.name == "GNU" and note.type == L.NT_GNU.BUILD_ID and note.desc:
                return note.desc
    except FormatError:
        return None
    return None


class ThreadState(Value):
    """One thread: its NT_PRSTATUS, registers by name, NT_PRFPREG bytes if present.

    ``name`` is not in kernel cores; the analysis may fill it from facts.
    ``regsets`` holds the other per-thread notes (NT_X86_XSTATE...) by type.
    """

    tid: int
    prstatus: PrStatus
    registers: dict[str, int]
    fpregs: bytes | None = None
    name: str | None = None
    regsets: dict[int, bytes] = {}  # noqa: RUF012 - one per instance (values.py)


class CoreNotes(Value):
    """The decoded notes of a core (its PT_NOTE segments), first thread = the dumper.

    Note order follows the kernel's ``write_note_info()`` (fs/binfmt_elf.c): for
    each thread NT_PRSTATUS, then (first thread only) NT_PRPSINFO, NT_SIGINFO,
    NT_AUXV, NT_FILE, then that thread's regsets (NT_PRFPREG, NT_X86_XSTATE...).
    A note that cannot be decoded is a line in ``problems``, never an exception.
    """

    threads: list[ThreadState] = []  # noqa: RUF012 - one per instance (values.py)
    prpsinfo: PrPsInfo | None = None
    siginfo: SigInfo | None = None
    auxv: list[tuple[int, int]] = []  # noqa: RUF012 - one per instance (values.py)
    files: list[FileMapping] = []  # noqa: RUF012 - one per instance (values.py)
    problems: list[str] = []  # noqa: RUF012 - one per instance (values.py)

    def _problem(self, message: str, offset: int) -> None:
        self.problems.append(f"{message} (at offset {offset:#x})")


def decode_core_notes(segments: list[tuple[int, bytes]]) -> CoreNotes:
    """Decode the PT_NOTE segments given as (file offset, bytes)."""
    result = CoreNotes()
    for offset, data in segments:
        try:
            for note in iter_notes(data, offset):
                _take_note(result, note)
        except FormatError as err:
            result.problems.append(f"notes stop: {err}")
    return result


def _take_note(result: CoreNotes, note: Note) -> None:
    try:
        if note.name == "CORE":
            _take_core_note(result, note)
        elif note.name == "LINUX" and result.threads:
            result.threads[-1].regsets[note.type] = note.desc
    except FormatError as err:
        result.problems.append(f"note type {note.type:#x} unreadable: {err}")


def _take_core_note(result: CoreNotes, note: Note) -> None:
    if note.type == L.NT.PRSTATUS:
        status = decode_prstatus(note.desc, note.offset)
        result.threads.append(ThreadState(status.pr_pid, status, dict(status.registers)))
    elif note.type == L.NT.PRPSINFO:
        _take_once(result, "prpsinfo", decode_prpsinfo(note.desc, note.offset), note)
    elif note.type == L.NT.SIGINFO:
        _take_once(result, "siginfo", decode_siginfo(note.desc, note.offset), note)
    elif note.type == L.NT.AUXV:
        _take_once(result, "auxv", decode_auxv(note.desc, note.offset), note)
    elif note.type == L.NT.FILE:
        _take_once(result, "files", decode_file_note(note.desc, note.offset), note)
    elif not result.threads:
        result._problem(f"note type {note.type:#x} before any NT_PRSTATUS", note.offset)
    elif note.type == L.NT.PRFPREG:
        result.threads[-1].fpregs = note.desc
    else:
        result.threads[-1].regsets[note.type] = note.desc


def _take_once(result: CoreNotes, attribute: str, value: object, note: Note) -> None:
    if getattr(result, attribute):
        result._problem(f"second note type {note.type:#x} ignored", note.offset)
    else:
        setattr(result, attribute, value)
