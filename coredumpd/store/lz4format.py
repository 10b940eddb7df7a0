"""The on-disk layout of a seekable lz4 file, and the encoding of one block.

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

Shared by the writer (:mod:`coredumpd.store.lz4seek`) and the reader
(:mod:`coredumpd.store.lz4reader`).
"""

from __future__ import annotations

import enum
import functools
import struct
import zlib

import lz4.block  # type: ignore[import-untyped]
import lz4.frame  # type: ignore[import-untyped]

from coredumpd.errors import StoreError
from coredumpd.values import Frozen

LZ4_FRAME_MAGIC = 0x184D2204
SKIPPABLE_MAGIC = 0x184D2A5C  # any of 0x184D2A50..0x184D2A5F is skipped by lz4 -d
TRAILER_MAGIC = b"CDLZ4IX1"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_BLOCK_SIZE = 4 << 20  # largest LZ4 frame block (BD code 7)
MIN_BLOCK_SIZE = 4096
MAX_REASON_BYTES = 4096
RAW_BLOCK_FLAG = 0x80000000  # frame format: highest bit of the block size = uncompressed
HC_LEVEL = 3  # LZ4HC_CLEVEL_MIN: the fastest high-compression level

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


class EncodedBlock(Frozen):
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
def zero_block(block_size: int) -> tuple[bytes, EncodedBlock]:
    zeros = bytes(block_size)
    packed = lz4.block.compress(zeros, store_size=False)
    return zeros, EncodedBlock(BlockKind.ZERO, block_size, packed, zlib.crc32(packed))


def encode_block(block: bytes | bytearray, acceleration: int, high: bool = False) -> EncodedBlock:
    """Compress one block (runs in a worker: lz4.block, zlib and memcmp are cheap or
    release the GIL).  All-zero blocks cost one memcmp and a cached result.  With
    ``high``, LZ4-HC is tried too and the smaller output kept (same block format)."""
    zeros, zero_encoded = zero_block(len(block))
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
        return EncodedBlock(BlockKind.RAW, len(block), block, zlib.crc32(block))
    return EncodedBlock(BlockKind.COMPRESSED, len(block), packed, zlib.crc32(packed), saved)


def entries_v1(body: bytes) -> list[tuple[int | None, int, int, int]]:
    return [(offset, length, crc, kind)
            for offset, length, crc, kind in BLOCK_ENTRY_V1.iter_unpack(body)]


def entries_v2(body: bytes) -> list[tuple[int | None, int, int, int]]:
    entries: list[tuple[int | None, int, int, int]] = []
    for word, crc in BLOCK_ENTRY.iter_unpack(body):
        flags = word & ~LENGTH_MASK
        kind = {0: BlockKind.COMPRESSED, RAW_BLOCK_FLAG: BlockKind.RAW,
                ZERO_BLOCK_FLAG: BlockKind.ZERO}.get(flags, -1)
        entries.append((None, word & LENGTH_MASK, crc, kind))
    return entries


def block_kind(value: int, path: str) -> BlockKind:
    try:
        return BlockKind(value)
    except ValueError as err:
        raise StoreError(f"{path}: unknown block kind {value}") from err


