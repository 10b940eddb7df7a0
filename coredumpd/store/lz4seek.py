"""Seekable lz4: a standard LZ4 frame of independent blocks plus a block index.

Layout of a stored core (all integers little-endian)::

    LZ4 frame   header (7 bytes: magic 0x184D2204, FLG, BD, HC)
                block 0 .. block N-1   (u32 size word, payload; bit 31 = stored raw)
                EndMark (u32 0)
    skippable   magic 0x184D2A5C, u32 payload size, payload =
                N x BLOCK_ENTRY, truncation reason (UTF-8), TRAILER

A BLOCK_ENTRY (format 2) is the block's size word with bit 30 set for an
all-zero block, and the CRC-32 of its payload; offsets follow from the sizes.
Format 1 (read only) stored each block's offset and kind in 20 bytes.

The frame follows lz4's "LZ4 Frame Format Description" (lz4/doc/lz4_Frame_format.md):
blocks are independent (FLG.B.Indep), so ``lz4 -d`` restores the exact bytes and ignores
the skippable frame (magic 0x184D2A50..5F, "Skippable Frames").  The reader finds the
TRAILER at the end of the file, checks its CRC and the chain of block offsets, and then
decompresses only the blocks a read touches.  All-zero blocks are detected with one
memcmp, written as a precomputed compressed zero block (~0.4% of the block, lz4's best
ratio) and never decompressed on read.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import os
import struct
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Self

import lz4.block  # type: ignore[import-untyped]
import lz4.frame  # type: ignore[import-untyped]

from coredumpd.errors import StoreError
from coredumpd.store.source import ByteSource, RawFileSource

LZ4_FRAME_MAGIC = 0x184D2204
SKIPPABLE_MAGIC = 0x184D2A5C  # any of 0x184D2A50..0x184D2A5F is skipped by lz4 -d
TRAILER_MAGIC = b"CDLZ4IX1"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_BLOCK_SIZE = 4 << 20  # largest LZ4 frame block (BD code 7)
MIN_BLOCK_SIZE = 4096
MAX_REASON_BYTES = 4096
WORKER_NICE = 10  # workers' extra niceness while a spill file absorbs the stream
RAW_BLOCK_FLAG = 0x80000000
HC_LEVEL = 3  # LZ4HC_CLEVEL_MIN: the fastest high-compression level
HC_INTERVAL = 16  # at most one block in 16 tries LZ4-HC (see SeekableLz4Writer._want_high)  # frame format: highest bit of the block size = uncompressed
ELF_MAGIC = b"\x7fELF"

FRAME_MAGIC = struct.Struct("<I")
BLOCK_WORD = struct.Struct("<I")
SKIPPABLE_HEADER = struct.Struct("<II")  # magic, payload size
# size word (bit 31 raw, bit 30 zero block), crc32 of the payload
BLOCK_ENTRY = struct.Struct("<II")
ZERO_BLOCK_FLAG = 0x40000000
LENGTH_MASK = 0x3FFFFFFF
# format 1: data_offset (of the size word), stored_length, crc32 of the payload, kind
BLOCK_ENTRY_V1 = struct.Struct("<QIII")
# magic, version, flags, block_size, original_size, block_count, reason_length,
# frame_end (offset of the skippable frame), crc32 of the payload before this field
TRAILER = struct.Struct("<8sHHIQIIQI")
assert BLOCK_ENTRY.size == 8 and BLOCK_ENTRY_V1.size == 20
# bytes beyond lz4 -1's fixed ones (it writes a 4-byte content checksum, we do not)
INDEX_OVERHEAD = SKIPPABLE_HEADER.size + TRAILER.size - 4
assert TRAILER.size == 44
TRAILER_FLAG_TRUNCATED = 1


class BlockKind(enum.IntEnum):
    """How one block is stored."""

    COMPRESSED = 0
    RAW = 1  # incompressible: stored as is (size word bit 31)
    ZERO = 2  # all zero: compressed, and the reader never decompresses it


@dataclasses.dataclass(frozen=True)
class WriteStats:
    """What :meth:`SeekableLz4Writer.finish` wrote."""

    original_size: int
    stored_size: int
    blocks: int
    zero_blocks: int


@dataclasses.dataclass(frozen=True)
class _Encoded:
    kind: BlockKind
    raw_length: int
    payload: bytes | bytearray
    crc: int
    saved: int = 0  # bytes LZ4-HC saved over the fast compressor


@functools.lru_cache(maxsize=8)
def frame_header(block_size: int) -> bytes:
    """The 7-byte LZ4 frame header for independent blocks of at most ``block_size``.

    python-lz4 computes the header checksum (xxh32 of the descriptor); we only
    check that it declared what we need: version 01, B.Indep, no checksums,
    no content size, no dictionary.
    """
    for code, max_size in ((4, 64 << 10), (5, 256 << 10), (6, 1 << 20), (7, 4 << 20)):
        if block_size <= max_size:
            break
    compressor = lz4.frame.LZ4FrameCompressor(
        block_size=code, block_linked=False, content_checksum=False, block_checksum=False
    )
    header = bytes(compressor.begin())
    if len(header) != 7 or header[4] != 0x60 or header[5] != code << 4:
        raise StoreError(f"unexpected LZ4 frame header from python-lz4: {header.hex()}")
    return header


@functools.lru_cache(maxsize=8)
def _zero_block(block_size: int) -> tuple[bytes, _Encoded]:
    zeros = bytes(block_size)
    packed = lz4.block.compress(zeros, store_size=False)
    return zeros, _Encoded(BlockKind.ZERO, block_size, packed, zlib.crc32(packed))


def _encode_block(block: bytes | bytearray, acceleration: int, high: bool = False) -> _Encoded:
    """Compress one block (runs in a worker: lz4.block, zlib and memcmp are cheap or
    release the GIL).  All-zero blocks cost one memcmp and a cached result.  With
    ``high``, LZ4-HC is tried too and the smaller output kept (same block format)."""
    zeros, zero_encoded = _zero_block(len(block))
    if block == zeros:
        return zero_encoded
    if acceleration > 1:
        packed = lz4.block.compress(block, mode="fast", acceleration=acceleration,
                                    store_size=False)
    else:
        packed = lz4.block.compress(block, store_size=False)
    saved = 0
    if high:
        stronger = lz4.block.compress(block, mode="high_compression", compression=HC_LEVEL,
                                      store_size=False)
        if len(stronger) < len(packed):
            saved = min(len(packed), len(block)) - len(stronger)
            packed = stronger
    if len(packed) >= len(block):
        return _Encoded(BlockKind.RAW, len(block), block, zlib.crc32(block))
    return _Encoded(BlockKind.COMPRESSED, len(block), packed, zlib.crc32(packed), saved)


def _lower_priority(increment: int) -> None:
    """Raise this worker thread's nice value (Linux: per-thread)."""
    if increment:
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid)
                                                     + increment))
        except OSError:
            pass  # best effort: only the drain speed depends on it


class _Spill:
    """An unlinked file holding raw blocks the workers have not caught up with.

    Lets the caller drain the kernel's pipe at page-cache speed (splice(2), no
    copy through user space) while compression lags; blocks are compressed
    from here, in order, later.
    """

    def __init__(self, directory: str) -> None:
        try:
            self.fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise StoreError(f"cannot create a spill file in {directory}: {err.strerror}") from err
        self.size = 0

    def append(self, data: memoryview) -> int:
        offset = self.size
        while data:
            try:
                done = os.pwrite(self.fd, data, self.size)
            except OSError as err:
                raise StoreError(f"cannot spill: {err.strerror}") from err
            data = data[done:]
            self.size += done
        return offset

    def splice_from(self, fd: int, count: int) -> int:
        """Move up to ``count`` bytes from the pipe ``fd``; 0 at EOF."""
        try:
            done = os.splice(fd, self.fd, count, offset_dst=self.size)
        except OSError as err:
            raise StoreError(f"cannot splice into the spill file: {err.strerror}") from err
        self.size += done
        return done

    def reset(self) -> None:
        os.ftruncate(self.fd, 0)
        self.size = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _encode_spilled(fd: int, offset: int, length: int, acceleration: int,
                    high: bool) -> _Encoded:
    block = os.pread(fd, length, offset)
    if len(block) != length:
        raise StoreError(f"spill file cut short at {offset:#x}")
    return _encode_block(block, acceleration, high)


def _write_all(fd: int, parts: list[bytes | bytearray | memoryview]) -> int:
    """writev(2) until everything is written; returns the byte count."""
    total = sum(len(p) for p in parts)
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        try:
            done = os.writev(fd, views)
        except InterruptedError:
            continue
        except OSError as err:
            raise StoreError(f"cannot write stored core: {err.strerror}") from err
        while views and done >= len(views[0]):
            done -= len(views[0])
            views.pop(0)
        if views and done:
            views[0] = views[0][done:]
    return total


class SeekableLz4Writer:
    """Compress a stream into a seekable lz4 file on ``fd`` (not closed here).

    ``threads`` compression workers overlap with the caller's reads; at most
    ``threads + 2`` blocks are in memory, whatever the core size.  With
    ``spill_dir`` (a directory on the store's file system), blocks that arrive
    while every worker is busy go raw to an unlinked spill file instead of
    making the caller wait, so :meth:`copy_from` drains a pipe at close to
    ``cat`` speed and :meth:`finish` compresses the backlog.  ``acceleration``
    is lz4's (1 = ``lz4 -1``).
    """

    def __init__(self, fd: int, block_size: int = 1 << 20, *, threads: int = 1,
                 acceleration: int = 1, spill_dir: str | None = None) -> None:
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block_size {block_size} not in [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]")
        self._fd = fd
        self._block_size = block_size
        self._acceleration = acceleration
        # With a spill file the workers only need the CPU left over by the drain:
        # Linux applies nice per thread (setpriority(2) on a TID, "NOTES" in sched(7)).
        self._executor = ThreadPoolExecutor(
            threads, "lz4seek", initializer=_lower_priority,
            initargs=(WORKER_NICE if spill_dir is not None else 0,)) if threads > 0 else None
        self._max_inflight = threads + 2
        self._inflight: collections.deque[
            tuple[Future[_Encoded] | _Encoded, bytearray | None]] = collections.deque()
        self._spill = _Spill(spill_dir) if spill_dir is not None and threads > 0 else None
        self._spilled: collections.deque[tuple[int, int]] = collections.deque()
        self._spill_ok = self._spill is not None
        self._spill_error: str | None = None
        self._spare: list[bytearray] = []
        self._buffer = bytearray(block_size)
        self._filled = 0
        self._entries: list[bytes] = []
        self._original_size = 0
        self._zero_blocks = 0
        self._spilled_bytes = 0
        self._submitted = 0
        self._hc_saved = 0
        self._last_high = -HC_INTERVAL
        self._finished = False
        self._offset = _write_all(fd, [frame_header(block_size)])

    @property
    def spilled_bytes(self) -> int:
        """Bytes that went through the spill file (0 when compression kept up)."""
        return self._spilled_bytes

    @property
    def spill_error(self) -> str | None:
        """Why spilling stopped (e.g. "No space left on device"), if it did."""
        return self._spill_error

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the stream."""
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), self._block_size - self._filled)
            self._buffer[self._filled:self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == self._block_size:
                self._submit_buffer()

    def copy_from(self, fd: int, limit: int | None = None) -> int:
        """Read ``fd`` to EOF (or ``limit`` bytes) straight into block buffers
        (or, when compression lags and ``fd`` is a pipe, splice it to the spill).

        Returns the number of bytes read.
        """
        total = 0
        while limit is None or total < limit:
            room = self._block_size - self._filled
            if limit is not None:
                room = min(room, limit - total)
            if self._filled == 0 and self._must_spill():
                count = self._splice_block(fd, room)
                if count >= 0:
                    total += count
                    if count < room and self._spill_ok:
                        break  # EOF (a short splice after an error continues inline)
                    continue
            count = self._read_into_buffer(fd, room)
            if count == 0:
                break
            total += count
            if self._filled == self._block_size:
                self._submit_buffer()
        return total

    def finish(self, truncated: str | None = None) -> WriteStats:
        """Flush, write the EndMark and the index; return what was stored."""
        if self._finished:
            raise StoreError("SeekableLz4Writer.finish() called twice")
        if self._filled:
            self._submit_buffer()
        while self._inflight or self._spilled:
            self._promote_spilled()
            self._emit(*self._inflight.popleft())
        self._shutdown()
        reason = (truncated or "").encode("utf-8", "replace")[:MAX_REASON_BYTES]
        frame_end = self._offset + BLOCK_WORD.size
        body = b"".join(self._entries) + reason
        trailer = TRAILER.pack(
            TRAILER_MAGIC, FORMAT_VERSION, TRAILER_FLAG_TRUNCATED if truncated is not None else 0,
            self._block_size, self._original_size, len(self._entries), len(reason), frame_end, 0,
        )[:-4]
        crc = zlib.crc32(trailer, zlib.crc32(body))
        payload_size = len(body) + TRAILER.size
        self._offset += _write_all(self._fd, [
            BLOCK_WORD.pack(0), SKIPPABLE_HEADER.pack(SKIPPABLE_MAGIC, payload_size),
            body, trailer, struct.pack("<I", crc),
        ])
        return WriteStats(self._original_size, self._offset, len(self._entries), self._zero_blocks)

    def abort(self) -> None:
        """Stop the workers without writing the index (the caller discards the file)."""
        self._shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        self._finished = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._spill is not None:
            self._spill.close()

    def _read_into_buffer(self, fd: int, room: int) -> int:
        while True:
            try:
                count = os.readv(fd, [memoryview(self._buffer)[self._filled:self._filled + room]])
                break
            except InterruptedError:
                continue
            except OSError as err:
                raise StoreError(f"cannot read the core stream: {err.strerror}") from err
        self._filled += count
        return count

    def _must_spill(self) -> bool:
        """Spill when the workers are all busy (or a backlog exists: order is kept)."""
        if self._spill is None or not self._spill_ok:
            return False
        self._emit_done()
        return bool(self._spilled) or len(self._inflight) >= self._max_inflight

    def _splice_block(self, fd: int, room: int) -> int:
        """Splice one block from ``fd`` to the spill; -1 when ``fd`` cannot be spliced.

        A short block (EOF, or an error after some bytes) is moved back into the
        memory buffer: every queued block but the last must be a whole block.
        """
        assert self._spill is not None
        offset, count = self._spill.size, 0
        try:
            while count < room:
                done = self._spill.splice_from(fd, room - count)
                if done == 0:
                    break
                count += done
        except StoreError as err:
            self._spill_ok = False  # not a pipe, disk full: read and compress inline
            self._spill_error = str(err)
            if count == 0:
                return -1
        if count == room and self._spill_ok:
            self._queue_spilled(offset, count)
            return count
        data = os.pread(self._spill.fd, count, offset)
        self._buffer[:count] = data
        self._filled = count
        self._spill.size = offset
        if count == room:
            self._submit_buffer()
        return count

    def _queue_spilled(self, offset: int, length: int) -> None:
        self._spilled.append((offset, length))
        self._spilled_bytes += length
        self._original_size += length

    def _submit_buffer(self) -> None:
        if self._finished:
            raise StoreError("write to a finished SeekableLz4Writer")
        length = self._filled
        if length == self._block_size and self._must_spill():
            assert self._spill is not None
            try:
                self._queue_spilled(self._spill.append(memoryview(self._buffer)), length)
                self._filled = 0
                return
            except StoreError as err:
                self._spill_ok = False  # disk full: compress inline from now on
                self._spill_error = str(err)
        self._drain_spilled()
        self._filled = 0
        buffer = self._buffer
        self._buffer = self._spare.pop() if self._spare else bytearray(self._block_size)
        block = buffer if length == self._block_size else bytes(buffer[:length])
        item: Future[_Encoded] | _Encoded
        if self._executor is None:
            item = _encode_block(block, self._acceleration, self._want_high())
        else:
            item = self._executor.submit(_encode_block, block, self._acceleration,
                                         self._want_high())
        self._inflight.append((item, buffer))
        self._original_size += length
        while len(self._inflight) > self._max_inflight:
            self._emit(*self._inflight.popleft())

    def _drain_spilled(self) -> None:
        """Compress the whole backlog, keeping at most max_inflight blocks in memory."""
        while self._spilled:
            self._promote_spilled()
            if self._spilled:
                self._emit(*self._inflight.popleft())

    def _want_high(self) -> bool:
        """Whether the next block should also try LZ4-HC.

        Our only bytes beyond what ``lz4 -1`` writes for the same blocks are the
        block index and trailer (INDEX_OVERHEAD + 8 per block).  While the HC
        savings have not paid for them, every HC_INTERVAL-th block is also
        compressed with HC (one text block usually pays for thousands).
        """
        number = self._submitted
        self._submitted += 1
        debt = INDEX_OVERHEAD + BLOCK_ENTRY.size * self._submitted - self._hc_saved
        if debt <= 0 or number - self._last_high < HC_INTERVAL:
            return False
        self._last_high = number
        return True

    def _emit_done(self) -> None:
        """Write the finished blocks at the head of the queue; never waits."""
        while self._inflight:
            item = self._inflight[0][0]
            if isinstance(item, Future) and not item.done():
                break
            self._emit(*self._inflight.popleft())
        self._promote_spilled()

    def _promote_spilled(self) -> None:
        """Hand spilled blocks, in order, to free workers."""
        while self._spilled and len(self._inflight) < self._max_inflight:
            if self._spill is None or self._executor is None:
                raise StoreError("spilled blocks without a spill file")
            offset, length = self._spilled.popleft()
            self._inflight.append((self._executor.submit(
                _encode_spilled, self._spill.fd, offset, length, self._acceleration,
                self._want_high()), None))
        if not self._spilled and not self._inflight and self._spill is not None \
                and self._spill.size:
            self._spill.reset()

    def _emit(self, item: Future[_Encoded] | _Encoded, buffer: bytearray | None) -> None:
        encoded = item.result() if isinstance(item, Future) else item
        word = len(encoded.payload) | (RAW_BLOCK_FLAG if encoded.kind is BlockKind.RAW else 0)
        self._entries.append(BLOCK_ENTRY.pack(
            word | (ZERO_BLOCK_FLAG if encoded.kind is BlockKind.ZERO else 0), encoded.crc))
        self._offset += _write_all(self._fd, [BLOCK_WORD.pack(word), encoded.payload])
        self._zero_blocks += encoded.kind is BlockKind.ZERO
        self._hc_saved += encoded.saved
        if buffer is not None and len(self._spare) < 2:
            self._spare.append(buffer)  # written: the buffer can take the next block


@dataclasses.dataclass(frozen=True)
class _Block:
    offset: int  # of the size word
    stored_length: int
    crc: int
    kind: BlockKind


class SeekableLz4Reader:
    """A :class:`~coredumpd.store.source.ByteSource` over a seekable lz4 file.

    ``path_or_fd``: a path, or an fd that is duplicated (the caller keeps its
    own).  Every number read from the file is checked before use; anything
    inconsistent raises :class:`StoreError`.
    """

    def __init__(self, path_or_fd: str | int, cache_blocks: int = 8) -> None:
        self.path = path_or_fd if isinstance(path_or_fd, str) else f"fd {path_or_fd}"
        try:
            if isinstance(path_or_fd, int):
                self._fd = os.dup(path_or_fd)
            else:
                self._fd = os.open(path_or_fd, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise StoreError(f"cannot open {self.path}: {err.strerror}") from err
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._block_size = 0
        self._original_size = 0
        self._truncated: str | None = None
        self._blocks: list[_Block] = []
        self._cache_blocks = max(1, cache_blocks)
        try:
            self._load_index(self._file_size())
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        return self._original_size

    @property
    def truncated(self) -> str | None:
        """Why the stored core is incomplete (the writer's reason), or None."""
        return self._truncated

    @property
    def block_size(self) -> int:
        return self._block_size

    def pread(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError(f"negative offset or size: {offset}, {size}")
        end = min(offset + size, self._original_size)
        parts = []
        while offset < end:
            index, start = divmod(offset, self._block_size)
            block = self._block(index)
            take = min(end - offset, len(block) - start)
            parts.append(block[start:start + take])
            offset += take
        return b"".join(parts)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._cache.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _file_size(self) -> int:
        try:
            return os.fstat(self._fd).st_size
        except OSError as err:
            raise StoreError(f"cannot stat {self.path}: {err.strerror}") from err

    def _read_exact(self, offset: int, size: int, what: str) -> bytes:
        try:
            data = os.pread(self._fd, size, offset)
        except OSError as err:
            raise StoreError(f"{self.path}: cannot read {what} at {offset:#x}: "
                             f"{err.strerror}") from err
        if len(data) != size:
            raise StoreError(f"{self.path}: {what} at {offset:#x} cut short "
                             f"({len(data)} of {size} bytes)")
        return data

    def _load_index(self, file_size: int) -> None:
        header = frame_header(MIN_BLOCK_SIZE)
        if file_size < len(header) + BLOCK_WORD.size + SKIPPABLE_HEADER.size + TRAILER.size:
            raise StoreError(f"{self.path}: {file_size} bytes is too short for a seekable lz4 file")
        tail = self._read_exact(file_size - TRAILER.size, TRAILER.size, "trailer")
        (magic, version, flags, block_size, original_size, block_count, reason_length,
         frame_end, crc) = TRAILER.unpack(tail)
        if magic != TRAILER_MAGIC or version not in READABLE_VERSIONS:
            raise StoreError(f"{self.path}: no seekable lz4 trailer (a plain lz4 frame?)")
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or reason_length > MAX_REASON_BYTES:
            raise StoreError(f"{self.path}: bad trailer (block size {block_size}, "
                             f"reason {reason_length} bytes)")
        if block_count != -(-original_size // block_size):
            raise StoreError(f"{self.path}: {block_count} blocks cannot hold {original_size} bytes")
        entry_size = (BLOCK_ENTRY if version == FORMAT_VERSION else BLOCK_ENTRY_V1).size
        body_size = block_count * entry_size + reason_length
        if frame_end + SKIPPABLE_HEADER.size + body_size + TRAILER.size != file_size:
            raise StoreError(f"{self.path}: index size does not match the file size {file_size}")
        skip = self._read_exact(frame_end, SKIPPABLE_HEADER.size + body_size, "index")
        skip_magic, payload_size = SKIPPABLE_HEADER.unpack_from(skip)
        if skip_magic != SKIPPABLE_MAGIC or payload_size != body_size + TRAILER.size:
            raise StoreError(f"{self.path}: bad skippable frame header at {frame_end:#x}")
        body = skip[SKIPPABLE_HEADER.size:]
        if zlib.crc32(tail[:-4], zlib.crc32(body)) != crc:
            raise StoreError(f"{self.path}: block index checksum mismatch")
        self._check_header(block_size)
        entries = body[:block_count * entry_size]
        blocks = _entries_v2(entries) if version == FORMAT_VERSION else _entries_v1(entries)
        self._blocks = self._check_entries(blocks, frame_end, block_size, original_size)
        self._block_size = int(block_size)
        self._original_size = int(original_size)
        reason = body[block_count * entry_size:].decode("utf-8", "replace")
        self._truncated = reason if flags & TRAILER_FLAG_TRUNCATED else None

    def _check_header(self, block_size: int) -> None:
        expected = frame_header(block_size)
        if self._read_exact(0, len(expected), "frame header") != expected:
            raise StoreError(f"{self.path}: LZ4 frame header is not the one we write")

    def _check_entries(self, entries: list[tuple[int | None, int, int, int]], frame_end: int,
                       block_size: int, original_size: int) -> list[_Block]:
        """Blocks from (offset or None, stored_length, crc, kind) entries, each checked
        against the chain of sizes from the frame header to the EndMark."""
        blocks = []
        expected_offset = len(frame_header(block_size))
        for number, (offset, length, crc, kind_value) in enumerate(entries):
            block = _Block(expected_offset if offset is None else offset, length, crc,
                           _block_kind(kind_value, self.path))
            raw_length = min(block_size, original_size - number * block_size)
            if block.offset != expected_offset or block.stored_length > block_size or (
                    block.kind is BlockKind.RAW and block.stored_length != raw_length):
                raise StoreError(f"{self.path}: block {number} entry is inconsistent "
                                 f"(offset {block.offset:#x}, length {block.stored_length})")
            expected_offset += BLOCK_WORD.size + block.stored_length
            blocks.append(block)
        if expected_offset + BLOCK_WORD.size != frame_end:
            raise StoreError(f"{self.path}: blocks end at {expected_offset:#x}, "
                             f"frame ends at {frame_end:#x}")
        return blocks

    def _block(self, index: int) -> bytes:
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        data = self._decode(index)
        self._cache[index] = data
        if len(self._cache) > self._cache_blocks:
            self._cache.popitem(last=False)
        return data

    def _decode(self, index: int) -> bytes:
        block = self._blocks[index]
        raw_length = min(self._block_size, self._original_size - index * self._block_size)
        if block.kind is BlockKind.ZERO:
            return bytes(raw_length)
        stored = self._read_exact(block.offset, BLOCK_WORD.size + block.stored_length,
                                  f"block {index}")
        word = BLOCK_WORD.unpack_from(stored)[0]
        expected_word = block.stored_length | (RAW_BLOCK_FLAG if block.kind is BlockKind.RAW else 0)
        payload = stored[BLOCK_WORD.size:]
        if word != expected_word or zlib.crc32(payload) != block.crc:
            raise StoreError(f"{self.path}: block {index} at {block.offset:#x} is corrupt")
        if block.kind is BlockKind.RAW:
            return payload
        try:
            data = bytes(lz4.block.decompress(payload, uncompressed_size=raw_length))
        except lz4.block.LZ4BlockError as err:
            raise StoreError(f"{self.path}: block {index} does not decompress: {err}") from err
        if len(data) != raw_length:
            raise StoreError(f"{self.path}: block {index} gives {len(data)} bytes, "
                             f"expected {raw_length}")
        return data


def _entries_v1(body: bytes) -> list[tuple[int | None, int, int, int]]:
    return [(offset, length, crc, kind)
            for offset, length, crc, kind in BLOCK_ENTRY_V1.iter_unpack(body)]


def _entries_v2(body: bytes) -> list[tuple[int | None, int, int, int]]:
    entries: list[tuple[int | None, int, int, int]] = []
    for word, crc in BLOCK_ENTRY.iter_unpack(body):
        flags = word & ~LENGTH_MASK
        kind = {0: BlockKind.COMPRESSED, RAW_BLOCK_FLAG: BlockKind.RAW,
                ZERO_BLOCK_FLAG: BlockKind.ZERO}.get(flags, -1)
        entries.append((None, word & LENGTH_MASK, crc, kind))
    return entries


def _block_kind(value: int, path: str) -> BlockKind:
    try:
        return BlockKind(value)
    except ValueError as err:
        raise StoreError(f"{path}: unknown block kind {value}") from err


def open_core_source(path: str) -> ByteSource:
    """Open a core whatever holds it: a raw ELF file or our seekable lz4.

    A plain LZ4 frame without our block index (``lz4`` CLI, other tools) cannot
    be read at random; decompress it first (``lz4 -d``).
    """
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as err:
        raise StoreError(f"cannot open {path}: {err.strerror}") from err
    if magic == ELF_MAGIC:
        return RawFileSource(path)
    if len(magic) == 4 and FRAME_MAGIC.unpack(magic)[0] == LZ4_FRAME_MAGIC:
        try:
            return SeekableLz4Reader(path)
        except StoreError as err:
            raise StoreError(f"{path}: an LZ4 frame without a usable coredumpd block index "
                             f"({err}); decompress it with `lz4 -d` first") from err
    raise StoreError(f"{path}: neither an ELF core nor a seekable lz4 core "
                     f"(starts with {magic.hex() or 'nothing'})")
