"""The seekable lz4 container: exact round trips, random reads, hostile files."""

from __future__ import annotations

import os
import pathlib
import shutil
import struct
import subprocess
import zlib

import lz4.frame
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coredumpd.errors import StoreError
from coredumpd.source import RawFileSource
from coredumpd.store.lz4seek import (
    BLOCK_ENTRY,
    BLOCK_ENTRY_V1,
    SKIPPABLE_HEADER,
    TRAILER,
    SeekableLz4Reader,
    SeekableLz4Writer,
    open_core_source,
)

BLOCK = 64 << 10
LZ4 = shutil.which("lz4")


def mixed_data(size: int, seed: int = 1) -> bytes:
    """Zero pages, random bytes and text, like a real core."""
    rnd = __import__("random").Random(seed)
    parts = []
    while sum(map(len, parts)) < size:
        kind = rnd.randrange(3)
        length = rnd.randrange(1, 3 * BLOCK)
        if kind == 0:
            parts.append(bytes(length))
        elif kind == 1:
            parts.append(rnd.randbytes(length))
        else:
            parts.append((b"GNU C library text %d\n" % rnd.randrange(1000)) * (length // 20 + 1))
    return b"".join(parts)[:size]


def store(path: pathlib.Path, data: bytes, block_size: int = BLOCK, chunk: int = 10007,
          truncated: str | None = None, threads: int = 1):
    with open(path, "wb") as handle:
        writer = SeekableLz4Writer(handle.fileno(), block_size, threads=threads)
        for start in range(0, len(data), chunk):
            writer.write(data[start:start + chunk])
        return writer.finish(truncated)


def lz4_decompress(path: pathlib.Path) -> bytes:
    if LZ4 is None:
        return lz4.frame.decompress(path.read_bytes())
    return subprocess.run([LZ4, "-dc", str(path)], check=True, capture_output=True).stdout


SIZES = [0, 1, 4095, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK, 7 * BLOCK + 12345]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("threads", [0, 2])
def test_round_trip_matches_lz4_cli(tmp_path, size, threads):
    data = mixed_data(size, seed=size)
    path = tmp_path / "core.lz4"
    stats = store(path, data, threads=threads)
    assert lz4_decompress(path) == data
    assert stats.original_size == size
    assert stats.stored_size == path.stat().st_size
    assert stats.blocks == -(-size // BLOCK)
    with SeekableLz4Reader(str(path)) as reader:
        assert reader.size == size
        assert reader.truncated is None
        assert reader.pread(0, size + 100) == data


def test_python_lz4_frame_decoder_agrees(tmp_path):
    data = mixed_data(3 * BLOCK + 5)
    path = tmp_path / "core.lz4"
    store(path, data)
    # lz4.frame stops at the end of the first frame; the skippable frame follows it
    assert lz4.frame.decompress(path.read_bytes()) == data


@pytest.mark.parametrize("block_size", [4096, 64 << 10, 1 << 20, 3 << 20, 4 << 20])
def test_block_sizes(tmp_path, block_size):
    data = mixed_data(2 * block_size + 99)
    path = tmp_path / "core.lz4"
    store(path, data, block_size=block_size, chunk=1 << 20)
    assert lz4_decompress(path) == data
    with SeekableLz4Reader(str(path)) as reader:
        assert reader.block_size == block_size
        assert reader.pread(block_size - 3, 10) == data[block_size - 3:block_size + 7]


def test_zero_blocks_cost_next_to_nothing(tmp_path):
    path = tmp_path / "zero.lz4"
    stats = store(path, bytes(64 << 20), block_size=1 << 20, chunk=1 << 20)
    assert stats.zero_blocks == 64
    assert stats.stored_size < (64 << 20) // 200  # lz4's best ratio is ~255:1
    assert lz4_decompress(path) == bytes(64 << 20)
    with SeekableLz4Reader(str(path)) as reader:
        assert reader.pread((32 << 20) - 1, 3) == b"\0\0\0"


def test_incompressible_blocks_stored_raw(tmp_path):
    data = os.urandom(4 * BLOCK)
    path = tmp_path / "random.lz4"
    stats = store(path, data)
    # 4 bytes per block, the frame header/EndMark and the index: nothing else
    assert stats.stored_size <= len(data) + 4 * (4 + BLOCK_ENTRY.size) + 200
    assert lz4_decompress(path) == data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reads=st.lists(st.tuples(st.integers(0, 9 * BLOCK), st.integers(0, 3 * BLOCK)),
                      min_size=1, max_size=20))
def test_random_preads_match_raw_bytes(tmp_path_factory, reads):
    path = tmp_path_factory.getbasetemp() / "random-preads.lz4"
    data = mixed_data(8 * BLOCK + 4321, seed=7)
    if not path.exists():
        store(path, data)
    with SeekableLz4Reader(str(path), cache_blocks=2) as reader:
        for offset, size in reads:
            assert reader.pread(offset, size) == data[offset:offset + size]


def test_copy_from_fd_and_limit(tmp_path):
    data = mixed_data(5 * BLOCK + 3)
    raw = tmp_path / "raw"
    raw.write_bytes(data)
    path = tmp_path / "core.lz4"
    with open(raw, "rb") as source, open(path, "wb") as out:
        writer = SeekableLz4Writer(out.fileno(), BLOCK)
        writer.write(data[:100])  # the headers, parsed by the caller
        source.seek(100)
        assert writer.copy_from(source.fileno(), limit=3 * BLOCK) == 3 * BLOCK
        writer.finish("ExternalSizeMax")
    with SeekableLz4Reader(str(path)) as reader:
        assert reader.size == 3 * BLOCK + 100
        assert reader.truncated == "ExternalSizeMax"
        assert reader.pread(0, reader.size) == data[:3 * BLOCK + 100]


def test_copy_from_pipe(tmp_path):
    data = mixed_data(3 * BLOCK + 17, seed=3)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        view = memoryview(data)
        while view:
            view = view[os.write(write_end, view[:4096]):]
        os._exit(0)
    os.close(write_end)
    path = tmp_path / "core.lz4"
    with open(path, "wb") as out:
        writer = SeekableLz4Writer(out.fileno(), BLOCK)
        assert writer.copy_from(read_end) == len(data)
        writer.finish()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert lz4_decompress(path) == data


@pytest.mark.parametrize("reason", ["", "stream ended in a segment", "ünïcode\n\x1b[31m"])
def test_truncated_flag_round_trip(tmp_path, reason):
    path = tmp_path / "core.lz4"
    store(path, b"ELF" * 1000, truncated=reason)
    with SeekableLz4Reader(str(path)) as reader:
        assert reader.truncated == reason
    store(path, b"ELF" * 1000)
    with SeekableLz4Reader(str(path)) as reader:
        assert reader.truncated is None


def test_reader_from_fd_keeps_callers_fd(tmp_path):
    path = tmp_path / "core.lz4"
    store(path, b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = SeekableLz4Reader(fd)
        assert reader.pread(0, 100) == b"x" * 100
        reader.close()
        assert os.pread(fd, 4, 0) == b"\x04\x22\x4d\x18"
    finally:
        os.close(fd)


def test_open_core_source_detects_formats(tmp_path):
    elf = tmp_path / "core"
    elf.write_bytes(b"\x7fELF" + bytes(60))
    source = open_core_source(str(elf))
    assert isinstance(source, RawFileSource)
    source.close()
    ours = tmp_path / "core.lz4"
    store(ours, b"\x7fELF" + bytes(60))
    with open_core_source(str(ours)) as source:  # type: ignore[attr-defined]
        assert source.pread(0, 4) == b"\x7fELF"
    plain = tmp_path / "plain.lz4"
    plain.write_bytes(lz4.frame.compress(b"\x7fELF" + bytes(60)))
    with pytest.raises(StoreError, match="lz4 -d"):
        open_core_source(str(plain))
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"MZ\x90\x00")
    with pytest.raises(StoreError, match="neither"):
        open_core_source(str(garbage))
    with pytest.raises(StoreError):
        open_core_source(str(tmp_path / "absent"))


@pytest.mark.parametrize("name", ["core", "core.lz4"])
def test_open_core_source_from_an_fd_leaves_the_fd_to_the_caller(tmp_path, name):
    """The sandbox child receives the core as an fd (SCM_RIGHTS)."""
    path = tmp_path / name
    if name.endswith(".lz4"):
        store(path, b"\x7fELF" + bytes(60))
    else:
        path.write_bytes(b"\x7fELF" + bytes(60))
    fd = os.open(path, os.O_RDONLY)
    try:
        source = open_core_source(fd)
        assert source.size == 64 and source.pread(0, 4) == b"\x7fELF"
        source.close()
        assert os.pread(fd, 4, 0)[:1] in (b"\x7f", b"\x04")  # still open
    finally:
        os.close(fd)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"MZ\x90\x00")
    fd = os.open(garbage, os.O_RDONLY)
    try:
        with pytest.raises(StoreError, match=f"fd {fd}.*neither"):
            open_core_source(fd)
    finally:
        os.close(fd)


# --- hostile files ---------------------------------------------------------------

@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "core.lz4"
    data = mixed_data(4 * BLOCK + 999, seed=11)
    store(path, data)
    return path.read_bytes(), data


def read_all(path: pathlib.Path) -> bytes:
    with SeekableLz4Reader(str(path)) as reader:
        return reader.pread(0, reader.size)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0))
def test_cut_anywhere_is_a_store_error(tmp_path_factory, good_file, cut):
    blob, _ = good_file
    path = tmp_path_factory.getbasetemp() / "cut.lz4"
    path.write_bytes(blob[:cut % len(blob)])
    with pytest.raises(StoreError):
        read_all(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), flip=st.integers(1, 255))
def test_flipped_byte_is_a_store_error_or_exact(tmp_path_factory, good_file, position, flip):
    """A corrupted byte is detected, except in the LZ4 header's unused bits (none)."""
    blob, data = good_file
    position %= len(blob)
    mutated = bytearray(blob)
    mutated[position] ^= flip
    path = tmp_path_factory.getbasetemp() / "flip.lz4"
    path.write_bytes(bytes(mutated))
    try:
        result = read_all(path)
    except StoreError:
        return
    # Only a zero block's payload is never read (its entry says "zeros"): then the
    # reader still returns the original bytes.
    assert result == data


def rewrite_trailer(blob: bytes, **changes: int) -> bytes:
    names = ["magic", "version", "flags", "block_size", "original_size", "block_count",
             "reason_length", "frame_end", "crc"]
    fields = dict(zip(names, TRAILER.unpack(blob[-TRAILER.size:])))
    fields.update(changes)
    packed = TRAILER.pack(*fields.values())
    frame_end = fields["frame_end"]
    body = blob[frame_end + SKIPPABLE_HEADER.size:-TRAILER.size]
    crc = zlib.crc32(packed[:-4], zlib.crc32(body))
    return blob[:-TRAILER.size] + packed[:-4] + struct.pack("<I", crc)


@pytest.mark.parametrize("changes", [
    {"original_size": 1 << 62},
    {"original_size": 4 * BLOCK + 998},
    {"original_size": 5 * BLOCK + 1},
    {"block_count": 1 << 31},
    {"block_size": 1 << 30},
    {"block_size": 0},
    {"reason_length": 1 << 31},
    {"frame_end": 0},
    {"frame_end": 1 << 63},
    {"version": 3},
    {"version": 1},  # format-2 entries read as format 1: sizes cannot match
])
def test_lying_trailer_with_valid_crc_is_a_store_error(tmp_path, good_file, changes):
    blob, _ = good_file
    path = tmp_path / "lying.lz4"
    path.write_bytes(rewrite_trailer(blob, **changes))
    with pytest.raises(StoreError):
        read_all(path)


def entries_of(blob: bytes) -> tuple[int, list[list[int]]]:
    count, frame_end = TRAILER.unpack(blob[-TRAILER.size:])[5], TRAILER.unpack(blob[-TRAILER.size:])[7]
    start = frame_end + SKIPPABLE_HEADER.size
    return start, [list(e) for e in BLOCK_ENTRY.iter_unpack(blob[start:start + count * BLOCK_ENTRY.size])]


@pytest.mark.parametrize("field, value", [
    (0, 1 << 29),            # length past the block size
    (0, 3),                  # breaks the chain of offsets
    (0, 0xC0000000 | 100),   # raw and zero at once
    (0, 0x20000000 | 100),   # unknown flag
    (1, 12345),              # CRC of another payload
])
def test_lying_block_entry_with_valid_crc_is_a_store_error(tmp_path, good_file, field, value):
    blob, _ = good_file
    start, entries = entries_of(blob)
    entries[1][field] = value
    packed = b"".join(BLOCK_ENTRY.pack(*e) for e in entries)
    path = tmp_path / "entry.lz4"
    path.write_bytes(rewrite_trailer(blob[:start] + packed + blob[start + len(packed):]))
    with pytest.raises(StoreError):
        read_all(path)


def to_format_1(blob: bytes) -> bytes:
    """Rewrite a format-2 file's index as format 1 (offset, length, crc, kind)."""
    fields = list(TRAILER.unpack(blob[-TRAILER.size:]))
    start, entries = entries_of(blob)
    offset, v1 = 7, []
    for word, crc in entries:
        length = word & 0x3FFFFFFF
        kind = 1 if word & 0x80000000 else 2 if word & 0x40000000 else 0
        v1.append(BLOCK_ENTRY_V1.pack(offset, length, crc, kind))
        offset += 4 + length
    reason = blob[start + len(entries) * BLOCK_ENTRY.size:-TRAILER.size]
    body = b"".join(v1) + reason
    fields[1] = 1
    trailer = TRAILER.pack(*fields)[:-4]
    frame_end = fields[7]
    skip = SKIPPABLE_HEADER.pack(0x184D2A5C, len(body) + TRAILER.size)
    return (blob[:frame_end] + skip + body + trailer
            + struct.pack("<I", zlib.crc32(trailer, zlib.crc32(body))))


def test_format_1_files_still_read(tmp_path):
    data = mixed_data(6 * BLOCK + 77, seed=17)
    path = tmp_path / "v2.lz4"
    store(path, data, truncated="cut")
    old = tmp_path / "v1.lz4"
    old.write_bytes(to_format_1(path.read_bytes()))
    with SeekableLz4Reader(str(old)) as reader:
        assert reader.pread(0, reader.size) == data and reader.truncated == "cut"
    assert lz4_decompress(old) == data


def test_writer_memory_is_bounded(tmp_path):
    """256 MiB through the writer; the child's peak RSS must stay a few blocks."""
    script = (
        "import os, resource, sys\n"
        "from coredumpd.store.lz4seek import SeekableLz4Writer\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)\n"
        "w = SeekableLz4Writer(fd, 1 << 20, threads=2)\n"
        "chunk = (b'text page %d ' * 100000)[:1 << 16]\n"
        "noise = os.urandom(1 << 16)\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for i in range(4096):\n"
        "    w.write(noise if i % 3 == 0 else chunk)\n"
        "w.finish()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n"
    )
    out = subprocess.run([os.sys.executable, "-c", script, str(tmp_path / "big.lz4")],
                         check=True, capture_output=True, text=True)
    grown_kib = int(out.stdout)
    assert grown_kib < 32 * 1024, f"writer grew by {grown_kib} KiB for 256 MiB of input"


# --- spilling: the pipe is drained while compression lags --------------------------

def feed_pipe(data: bytes) -> tuple[int, int]:
    """A forked child writes ``data`` into a pipe; returns (read end, child pid)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        view = memoryview(data)
        while view:
            view = view[os.write(write_end, view[:1 << 16]):]
        os._exit(0)
    os.close(write_end)
    return read_end, pid


def test_spill_from_filled_pipe(tmp_path):
    data = mixed_data(15 * BLOCK + 7, seed=21)
    read_end = filled_pipe(data)
    path = tmp_path / "core.lz4"
    with open(path, "wb") as out:
        writer = SeekableLz4Writer(out.fileno(), BLOCK, threads=1, spill_dir=str(tmp_path))
        assert writer.copy_from(read_end) == len(data)
        os.close(read_end)
        writer.finish()
    assert writer.spilled_bytes > 0 and writer.spill_error is None
    assert lz4_decompress(path) == data


@pytest.mark.parametrize("size", [0, 100, 40 * BLOCK, 40 * BLOCK + 5])
def test_spill_from_pipe_round_trip(tmp_path, size):
    data = mixed_data(size, seed=size + 1)
    read_end, pid = feed_pipe(data)
    path = tmp_path / "core.lz4"
    with open(path, "wb") as out:
        writer = SeekableLz4Writer(out.fileno(), BLOCK, threads=1, spill_dir=str(tmp_path))
        writer.write(data[:10])
        os.read(read_end, 10)
        assert writer.copy_from(read_end) == size - min(size, 10)
        os.close(read_end)  # as the handler does before the slow part
        stats = writer.finish()
    os.waitpid(pid, 0)
    assert stats.original_size == size
    assert lz4_decompress(path) == data
    with SeekableLz4Reader(str(path)) as reader:
        assert reader.pread(0, size) == data
    assert list(tmp_path.iterdir()) == [path]  # the spill file was anonymous


def test_spill_with_write_calls(tmp_path):
    """write() spills too: memcpy outruns one lz4 worker by far, so this spills."""
    data = mixed_data(64 * BLOCK + 3, seed=5)
    path = tmp_path / "core.lz4"
    with open(path, "wb") as out:
        writer = SeekableLz4Writer(out.fileno(), BLOCK, threads=1, spill_dir=str(tmp_path))
        for start in range(0, len(data), BLOCK // 2):
            writer.write(data[start:start + BLOCK // 2])
        writer.finish()
    assert writer.spilled_bytes > 0
    assert lz4_decompress(path) == data


def test_spill_needs_a_pipe_falls_back_for_files(tmp_path):
    data = mixed_data(20 * BLOCK + 1, seed=9)
    raw = tmp_path / "raw"
    raw.write_bytes(data)
    path = tmp_path / "core.lz4"
    with open(raw, "rb") as source, open(path, "wb") as out:
        writer = SeekableLz4Writer(out.fileno(), BLOCK, threads=1, spill_dir=str(tmp_path))
        assert writer.copy_from(source.fileno()) == len(data)
        writer.finish()
    assert lz4_decompress(path) == data
    assert writer.spill_error is not None and "Invalid argument" in writer.spill_error


@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def filled_pipe(data: bytes) -> int:
    """A pipe already holding all of ``data`` (at most 1 MiB) and closed for writing:
    copy_from then reads much faster than one lz4 worker compresses, so it spills."""
    import fcntl
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 1 << 20)  # F_SETPIPE_SZ
    assert os.write(write_end, data) == len(data)
    os.close(write_end)
    return read_end


@pytest.mark.parametrize("free", [0, 16 << 10])
def test_spill_disk_full_falls_back_to_inline(tmp_path, small_tmpfs, free):
    """The spill file system is full (or fills mid-block): nothing lost, nothing raised."""
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as handle:
        try:
            handle.write(bytes(128 << 10))
        except OSError:
            pass
    os.truncate(filler, (128 << 10) - free)
    data = mixed_data(15 * BLOCK + 7, seed=13)
    read_end = filled_pipe(data)
    path = tmp_path / "core.lz4"
    with open(path, "wb") as out:
        writer = SeekableLz4Writer(out.fileno(), BLOCK, threads=1, spill_dir=str(small_tmpfs))
        assert writer.copy_from(read_end) == len(data)
        os.close(read_end)
        writer.finish()
    assert lz4_decompress(path) == data
    assert writer.spill_error is not None and "No space" in writer.spill_error


FIXTURE_CORE = pathlib.Path(__file__).resolve().parents[2] / "fixtures/cores/abort/core.lz4"


@pytest.mark.skipif(LZ4 is None, reason="needs the lz4 CLI")
@pytest.mark.parametrize("block_size", [1 << 20, 4 << 20])
@pytest.mark.parametrize("source", ["fixture", "mixed"])
def test_stored_no_larger_than_lz4_cli(tmp_path, block_size, source):
    """The index costs 8 bytes a block; LZ4-HC on a few blocks pays for it."""
    if source == "fixture":
        if not FIXTURE_CORE.exists():
            pytest.skip("fixtures/cores/abort/core.lz4 not built")
        with SeekableLz4Reader(str(FIXTURE_CORE)) as reader:
            data = reader.pread(0, reader.size)
    else:
        data = mixed_data(12 << 20, seed=23)
    path = tmp_path / "core.lz4"
    stats = store(path, data, block_size=block_size, chunk=1 << 20)
    reference = subprocess.run([LZ4, "-1", "-c"], input=data, check=True,
                               capture_output=True).stdout
    assert stats.stored_size <= len(reference)
    assert lz4_decompress(path) == data
