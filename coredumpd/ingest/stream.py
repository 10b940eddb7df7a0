"""Read the core once from the kernel's pipe, parse its head on the fly, store it.

The kernel writes a core strictly in order (fs/binfmt_elf.c elf_core_dump()):
the ELF header, the program headers (the PT_NOTE one first), all notes, then
the segment data page by page.  So the head — header, program headers, notes —
is read into memory first (bounded by :data:`MAX_HEAD`) and parsed by
:mod:`coredumpd.elf.head` (the parser ``Core.open`` uses too, PN_XNUM included)
before the bulk arrives; the bulk then goes from the pipe straight into the lz4
writer's block buffers (:meth:`~coredumpd.store.lz4seek.SeekableLz4Writer.copy_from`),
never held whole.  The notes are decoded (:func:`coredumpd.elf.notes.decode_core_notes`)
only after the kernel has been released.

Small cores (up to :data:`SMALL_CORE`) are first copied as they come into an
unnamed spool file (:meth:`CoreStream.spool`, :mod:`coredumpd.ingest.spool`)
so that the handler can release the kernel before it imports the lz4 writer or
decodes notes (:mod:`coredumpd.elf.notes` pulls in ``dataclasses``); only
``os``, ``struct``, the declared layouts and the head parser are needed until then.  Larger
cores are streamed into the lz4 writer as they come.

Nothing here raises on hostile or short input: problems are collected in
:attr:`StreamResult.problems` and a short stream sets ``truncated``.
"""

from __future__ import annotations

import os

from coredumpd.elf import structs as L
from coredumpd.elf.head import core_type_problem, parse_head
from coredumpd.errors import CoredumpdError, FormatError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Protocol

    from coredumpd.elf import notes as N

    class CoreWriter(Protocol):
        """What the stream needs from :class:`~coredumpd.store.lz4seek.SeekableLz4Writer`."""

        def write(self, data: bytes | bytearray | memoryview) -> None: ...

        def copy_from(self, fd: int, limit: int | None = None) -> int: ...

MAX_HEAD = 32 << 20  # header + program headers + notes held in memory, at most
SMALL_CORE = 8 << 20  # cores up to this size are read whole before the kernel is released
READ_CHUNK = 1 << 20


class StreamResult:
    """What the head of the core said, and how much of the stream was read."""

    def __init__(self) -> None:
        self.size = 0  # bytes read from the pipe (and stored, when a writer is given)
        self.expected_size: int | None = None  # from the program headers
        self.is_elf = False
        self.phnum = 0
        self.threads: list[N.ThreadState] = []  # first = the dumper
        self.siginfo: N.SigInfo | None = None
        self.prpsinfo: N.PrPsInfo | None = None
        self.auxv: list[tuple[int, int]] = []
        self.files: list[N.FileMapping] = []
        self.problems: list[str] = []
        self.notes: list[tuple[int, bytes]] = []  # (file offset, PT_NOTE bytes)
        self.notes_decoded = False
        self.truncated: str | None = None
        self.eof = False  # the kernel closed its end: we saw the whole stream
        self.write_error: str | None = None  # the writer failed (e.g. ENOSPC): stopped there

    def decode_notes(self) -> None:
        """Decode the notes read with the head (threads, siginfo, auxv, files)."""
        if self.notes_decoded:
            return
        self.notes_decoded = True
        from coredumpd.elf.notes import decode_core_notes
        notes = decode_core_notes(self.notes)
        self.threads, self.siginfo, self.prpsinfo = notes.threads, notes.siginfo, notes.prpsinfo
        self.auxv, self.files = notes.auxv, notes.files
        self.problems += notes.problems

    def sender(self) -> tuple[int, int, int] | None:
        """(si_code, si_pid, si_uid) when a process sent the fatal signal (si_code <= 0).

        Read straight from NT_SIGINFO with the declared layouts, without
        decoding the other notes, because it is needed while the process is held.
        """
        for _offset, data in self.notes:
            for note_type, start, end in _walk_notes(data):
                if note_type == L.NT_SIGINFO and end - start >= L.SIGINFO_SIZE:
                    _signo, _errno, code = L.SIGINFO_HEAD.unpack_from(data, start)
                    if code > 0:
                        return None
                    pid, uid = L.SIGINFO_KILL.unpack_from(data, start + L.SIGINFO_HEAD.size)
                    return code, pid, uid
        return None

    def auxv_value(self, a_type: int) -> int | None:
        for key, value in self.auxv:
            if key == a_type:
                return value
        return None

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest for the facts (``stream`` key)."""
        sig = self.siginfo
        return {
            "size": self.size, "expected_size": self.expected_size, "is_elf": self.is_elf,
            "phnum": self.phnum, "threads": [t.tid for t in self.threads],
            "siginfo": None if sig is None else {
                "si_signo": sig.si_signo, "si_code": sig.si_code, "si_errno": sig.si_errno,
                "si_addr": sig.si_addr, "si_pid": sig.si_pid, "si_uid": sig.si_uid},
            "problems": self.problems[:50], "truncated": self.truncated,
        }


class _Head:
    """Bytes read so far from the start of the stream (only the head is kept)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self.eof = False
        self.error: str | None = None  # a failed read, which ended the stream

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of the stream, reading on as needed; short at
        its end (the head parser's reader)."""
        try:
            self.fill(offset + size)
        except _StreamFailed as err:
            self.error = str(err)
        return bytes(self.data[offset:offset + size])

    def fill(self, wanted: int) -> bool:
        """Read until ``wanted`` bytes are held; False if the stream ends first."""
        while len(self.data) < wanted and not self.eof:
            try:
                chunk = os.read(self.fd, min(wanted - len(self.data), READ_CHUNK))
            except InterruptedError:
                continue
            except OSError as err:
                self.eof = True
                raise _StreamFailed(f"reading the core stream: {err.strerror}") from err
            if not chunk:
                self.eof = True
            self.data += chunk
        return len(self.data) >= wanted


class _StreamFailed(CoredumpdError):
    pass


class CoreStream:
    """The core as it comes from the pipe: head parsed, rest buffered or streamed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.head = _Head(fd)
        self.result = StreamResult()
        _parse_head(self.head, self.result)
        if self.head.error:
            self.result.problems.append(self.head.error)
        self.result.size = len(self.head.data)
        self.result.eof = self.head.eof
        self.spool_fd = -1
        self.spooled = 0

    def buffer(self, cap: int = SMALL_CORE) -> bool:
        """Read on until EOF or ``cap`` bytes are held; True when all was read.

        The fallback of :meth:`spool` when no spool file can be had."""
        try:
            self.head.fill(cap)
        except _StreamFailed as err:
            self.result.problems.append(str(err))
        self.result.size = len(self.head.data)
        self.result.eof = self.head.eof
        return self.head.eof

    def spool(self, spool_fd: int, cap: int = SMALL_CORE) -> bool:
        """Copy the pipe after the head into ``spool_fd`` until EOF or about ``cap``
        bytes; True when nothing more is to be read now: all was read, or the spool
        could not be written (disk full: ``write_error`` says so, and the spool is
        dropped at once so that the index row still fits).  One reusable buffer:
        nothing accumulates in memory."""
        self.spool_fd = spool_fd
        chunk = bytearray(READ_CHUNK)
        view = memoryview(chunk)
        while not self.head.eof and len(self.head.data) + self.spooled < cap:
            try:
                count = os.readv(self.fd, [chunk])
            except InterruptedError:
                continue
            except OSError as err:
                self.head.eof = True
                self.result.problems.append(f"reading the core stream: {err.strerror}")
                break
            if count == 0:
                self.head.eof = True
            try:
                written = 0
                while written < count:
                    written += os.write(spool_fd, view[written:count])
            except OSError as err:
                self._drop_spool(f"spooling the core: {err.strerror}")
                return True
            self.spooled += count
        self.result.size = len(self.head.data) + self.spooled
        self.result.eof = self.head.eof
        return self.head.eof

    def drain_into(self, writer: CoreWriter, limit: int | None = None) -> StreamResult:
        """Write what is held, then stream the rest of the pipe into ``writer``.

        ``limit`` caps the bytes stored (ExternalSizeMax, RLIMIT_CORE); past it
        the pipe is not read further and ``truncated`` says so — the caller then
        closes ``fd``, which ends the kernel's dump.
        """
        result = self.result
        if result.write_error:  # the spool failed: nothing sound to store
            return result
        data = self.head.data
        if limit is not None and len(data) > limit:
            del data[limit:]
            result.eof = False
        result.size = len(data)
        try:
            writer.write(data)
        except CoredumpdError as err:
            result.write_error = f"write failed: {err}"
            result.truncated = result.write_error
            return result
        finally:
            self.head.data = bytearray()  # the buffer is the writer's now
        if self.spool_fd >= 0 and not self._drain_spool(writer, limit):
            return result
        if not self.head.eof and (limit is None or result.size < limit):
            _copy_bulk(self.fd, writer, result, limit)
        _check_complete(result, limit)
        return result


    def _drop_spool(self, reason: str) -> None:
        self.result.write_error = self.result.truncated = reason
        self.result.problems.append(reason)
        os.close(self.spool_fd)
        self.spool_fd, self.spooled = -1, 0
        self.result.size = len(self.head.data)

    def _drain_spool(self, writer: CoreWriter, limit: int | None) -> bool:
        """Move the spooled bytes (up to ``limit`` in all) into ``writer``; False on a
        write failure (recorded)."""
        result = self.result
        wanted = self.spooled if limit is None else max(0, min(self.spooled, limit - result.size))
        if wanted < self.spooled:
            result.eof = False  # a size limit cut the core: _check_complete says so
        position = 0
        try:
            while position < wanted:
                data = os.pread(self.spool_fd, min(READ_CHUNK, wanted - position), position)
                if not data:
                    raise _StreamFailed(f"spool file ended at {position} of {wanted} bytes")
                writer.write(data)
                position += len(data)
        except (CoredumpdError, OSError) as err:
            result.write_error = f"write failed: {err}"
            result.truncated = result.write_error
            return False
        finally:
            result.size += position
            self.spooled = 0
            os.close(self.spool_fd)
            self.spool_fd = -1
        return True


def read_core(fd: int, writer: CoreWriter | None, limit: int | None = None) -> StreamResult:
    """Read the core from ``fd`` into ``writer`` (None: parse the head only), notes decoded."""
    stream = CoreStream(fd)
    result = stream.result if writer is None else stream.drain_into(writer, limit)
    result.decode_notes()
    return result


def _copy_bulk(fd: int, writer: CoreWriter, result: StreamResult, limit: int | None) -> None:
    room = None if limit is None else max(0, limit - result.size)
    try:
        copied = writer.copy_from(fd, room)
    except CoredumpdError as err:
        # copy_from raises for a failed read and for a failed write alike
        result.problems.append(str(err))
        result.write_error = f"stopped after {result.size}+ bytes: {err}"
        result.truncated = result.write_error
        return
    result.size += copied
    if room is not None and copied >= room:
        result.eof = _at_eof(fd)
    else:
        result.eof = True


def _at_eof(fd: int) -> bool:
    try:
        return os.read(fd, 1) == b""
    except OSError:
        return True


def _check_complete(result: StreamResult, limit: int | None) -> None:
    if result.truncated:
        return
    if not result.eof and limit is not None:
        result.truncated = f"size limit of {limit} bytes reached"
    elif not result.is_elf:
        result.truncated = "not an ELF core" if result.size else "empty stream"
    elif result.expected_size is None:
        result.truncated = f"stream ended after {result.size} bytes, in the program headers"
    elif result.size < result.expected_size:
        result.truncated = (f"stream ended after {result.size} of {result.expected_size}"
                            " bytes")


def _parse_head(head: _Head, result: StreamResult) -> None:
    try:
        parsed = parse_head(head.read, MAX_HEAD)
    except FormatError as err:
        if len(head.data) < L.EHDR.size:
            result.problems.append(f"stream ended after {len(head.data)} bytes, in the ELF header")
        else:
            result.problems.append(str(err))
        return
    result.is_elf = True
    wrong_type = core_type_problem(parsed.fields)
    if wrong_type is not None:
        result.problems.append(f"{wrong_type[0]} (at offset {wrong_type[1]:#x})")
    result.problems += parsed.problems
    result.phnum = parsed.phnum
    result.notes = parsed.notes
    if len(parsed.phdrs) == parsed.phnum:  # else: cut or refused, the size is unknown
        result.expected_size = parsed.expected_size()


def _walk_notes(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(n_type, desc start, desc end) of each note that fits in ``data``."""
    position = 0
    while position + L.NHDR.size <= len(data):
        namesz, descsz, note_type = L.NHDR.unpack_from(data, position)
        start = position + L.NHDR.size + ((namesz + 3) & ~3)
        end = start + descsz
        if end > len(data):
            return
        yield note_type, start, end
        position = (end + 3) & ~3
