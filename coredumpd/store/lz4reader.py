"""Random access to a seekable lz4 file: the :class:`SeekableLz4Reader` ByteSource.

Every number read from the file is checked before use (trailer CRC, block
counts against sizes, the chain of block offsets, each payload's CRC and
decompressed size); anything inconsistent raises :class:`StoreError`.  Only the
blocks a read touches are decompressed, with a small LRU cache.
"""

from __future__ import annotations

import collections
import os
import zlib
from typing import Self

import lz4.block  # type: ignore[import-untyped]

from coredumpd.errors import StoreError
from coredumpd.store.lz4format import (
    BLOCK_ENTRY,
    BLOCK_ENTRY_V1,
    BLOCK_WORD,
    FORMAT_VERSION,
    MAX_BLOCK_SIZE,
    MAX_REASON_BYTES,
    MIN_BLOCK_SIZE,
    RAW_BLOCK_FLAG,
    READABLE_VERSIONS,
    SKIPPABLE_HEADER,
    SKIPPABLE_MAGIC,
    TRAILER,
    TRAILER_FLAG_TRUNCATED,
    TRAILER_MAGIC,
    BlockKind,
    block_kind,
    entries_v1,
    entries_v2,
    frame_header,
)
from coredumpd.values import Frozen


class _Block(Frozen):
    offset: int  # of the size word
    stored_length: int
    crc: int
    kind: BlockKind


class SeekableLz4Reader:
    """A :class:`~coredumpd.source.ByteSource` over a seekable lz4 file.

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
        blocks = entries_v2(entries) if version == FORMAT_VERSION else entries_v1(entries)
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
                           block_kind(kind_value, self.path))
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
