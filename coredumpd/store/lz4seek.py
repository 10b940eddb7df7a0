"""Seekable lz4: the writer, and opening a core whatever holds it.

The file format (one standard LZ4 frame of independent blocks, then a block
index in a skippable frame) is described in :mod:`coredumpd.store.lz4format`;
the reader is :class:`coredumpd.store.lz4reader.SeekableLz4Reader`, re-exported
here with the format's names and :func:`~coredumpd.store.coresource.open_core_source`,
so ``coredumpd.store.lz4seek`` stays the one import.
"""

from __future__ import annotations

import collections
import os
import struct
import threading
import zlib
from typing import TYPE_CHECKING, Self

from coredumpd.errors import StoreError
from coredumpd.paths import TEMPORARY_FILE_MODE
from coredumpd.store.coresource import open_core_source  # noqa: F401 (re-exported)
from coredumpd.store.lz4format import (  # noqa: F401 (re-exported)
    BLOCK_ENTRY,
    BLOCK_ENTRY_V1,
    BLOCK_WORD,
    FORMAT_VERSION,
    FRAME_MAGIC,
    INDEX_OVERHEAD,
    LZ4_FRAME_MAGIC,
    MAX_BLOCK_SIZE,
    MAX_REASON_BYTES,
    MIN_BLOCK_SIZE,
    RAW_BLOCK_FLAG,
    SKIPPABLE_HEADER,
    SKIPPABLE_MAGIC,
    TRAILER,
    TRAILER_FLAG_TRUNCATED,
    TRAILER_MAGIC,
    ZERO_BLOCK_FLAG,
    BlockKind,
    EncodedBlock,
    encode_block,
    frame_header,
)
from coredumpd.store.lz4reader import SeekableLz4Reader  # noqa: F401 (re-exported)
from coredumpd.values import Frozen

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

WORKER_NICE = 10  # workers' extra niceness while a spill file absorbs the stream
HC_INTERVAL = 16  # at most one block in 16 tries LZ4-HC (see SeekableLz4Writer._want_high)


class WriteStats(Frozen):
    """What :meth:`SeekableLz4Writer.finish` wrote."""

    original_size: int
    stored_size: int
    blocks: int
    zero_blocks: int


def _executor(threads: int, nice_increment: int) -> ThreadPoolExecutor:
    """The compression workers (concurrent.futures, with logging and threading behind it,
    is imported only for them: ~7 ms of a small core's handler, which compresses inline)."""
    from concurrent.futures import ThreadPoolExecutor
    return ThreadPoolExecutor(threads, "lz4seek", initializer=_lower_priority,
                              initargs=(nice_increment,))


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
            self.fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC,
                              TEMPORARY_FILE_MODE)
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
                    high: bool) -> EncodedBlock:
    block = os.pread(fd, length, offset)
    if len(block) != length:
        raise StoreError(f"spill file cut short at {offset:#x}")
    return encode_block(block, acceleration, high)


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
        self._executor = _executor(threads, WORKER_NICE if spill_dir is not None else 0) \
            if threads > 0 else None
        self._max_inflight = threads + 2
        self._inflight: collections.deque[
            tuple[Future[EncodedBlock] | EncodedBlock, bytearray | None]] = collections.deque()
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
        item: Future[EncodedBlock] | EncodedBlock
        if self._executor is None:
            item = encode_block(block, self._acceleration, self._want_high())
        else:
            item = self._executor.submit(encode_block, block, self._acceleration,
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
            if not isinstance(item, EncodedBlock) and not item.done():
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

    def _emit(self, item: Future[EncodedBlock] | EncodedBlock, buffer: bytearray | None) -> None:
        encoded = item if isinstance(item, EncodedBlock) else item.result()
        word = len(encoded.payload) | (RAW_BLOCK_FLAG if encoded.kind is BlockKind.RAW else 0)
        self._entries.append(BLOCK_ENTRY.pack(
            word | (ZERO_BLOCK_FLAG if encoded.kind is BlockKind.ZERO else 0), encoded.crc))
        self._offset += _write_all(self._fd, [BLOCK_WORD.pack(word), encoded.payload])
        self._zero_blocks += encoded.kind is BlockKind.ZERO
        self._hc_saved += encoded.saved
        if buffer is not None and len(self._spare) < 2:
            self._spare.append(buffer)  # written: the buffer can take the next block

