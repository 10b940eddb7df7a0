"""Small cores wait in a spool file, not in memory, while the kernel holds the process."""

from __future__ import annotations

import os
import threading

import pytest

from coredumpd import paths
from coredumpd.ingest import spool
from coredumpd.ingest.stream import CoreStream
from coredumpd.store.lz4seek import SeekableLz4Reader, SeekableLz4Writer
from tests.support.fixtures import fixture_names, load_fixture


def _raw_core() -> bytes:
    from coredumpd.store.lz4seek import open_core_source

    source = open_core_source(str(load_fixture(fixture_names()[0]).core_path))
    try:
        return source.pread(0, source.size)
    finally:
        source.close()


def _feed(data: bytes) -> int:
    """A real pipe with a writer thread, as the kernel's."""
    read_end, write_end = os.pipe()

    def write() -> None:
        with os.fdopen(write_end, "wb") as handle:
            handle.write(data)

    threading.Thread(target=write, daemon=True).start()
    return read_end


def _store_through_spool(data: bytes, tmp_path, cap: int, limit=None):
    directory = tmp_path / "store"
    directory.mkdir(mode=0o750)
    config = tmp_path / "c.conf"
    config.write_text(f"[Coredump]\nDirectory={directory}  # inline comment\n")
    pipe = _feed(data)
    stream = CoreStream(pipe)
    spool_fd = spool.open_spool(str(config))
    assert spool_fd >= 0
    all_read = stream.spool(spool_fd, cap)
    held = len(stream.head.data)
    assert os.listdir(directory) == []  # the spool has no name
    out = os.open(tmp_path / "out.lz4", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    writer = SeekableLz4Writer(out, block_size=64 << 10)
    result = stream.drain_into(writer, limit)
    writer.finish(result.truncated)
    os.close(out)
    os.close(pipe)
    return all_read, held, result, tmp_path / "out.lz4"


def test_small_core_goes_through_the_spool_exactly(tmp_path):
    data = _raw_core()
    all_read, held, result, stored = _store_through_spool(data, tmp_path, cap=64 << 20)
    assert all_read and result.truncated is None and result.size == len(data)
    assert held < len(data) // 2  # only the head is in memory, the bulk was spooled
    reader = SeekableLz4Reader(str(stored))
    assert reader.pread(0, reader.size) == data
    reader.close()


def test_core_larger_than_the_spool_cap_continues_from_the_pipe(tmp_path):
    data = _raw_core()
    all_read, _, result, stored = _store_through_spool(data, tmp_path, cap=len(data) // 2)
    assert not all_read and result.truncated is None
    reader = SeekableLz4Reader(str(stored))
    assert reader.pread(0, reader.size) == data
    reader.close()


def test_size_limit_applies_to_spooled_bytes(tmp_path):
    data = _raw_core()
    limit = len(data) - 5000
    _, _, result, stored = _store_through_spool(data, tmp_path, cap=64 << 20, limit=limit)
    assert result.size == limit and "size limit" in (result.truncated or "")
    reader = SeekableLz4Reader(str(stored))
    assert reader.pread(0, reader.size) == data[:limit]
    reader.close()


@pytest.mark.parametrize(("text", "expected"), [
    ("", paths.DEFAULT_DIRECTORY),
    ("[Coredump]\nDirectory=/srv/cores\n", "/srv/cores"),
    ("[Coredump]\nDirectory = /a\nDirectory=/b ; comment\n", "/b"),
    ("[Other]\nDirectory=/no\n[Coredump]\nStorage=none\n", paths.DEFAULT_DIRECTORY),
    ("[Coredump]\n# Directory=/commented\nDirectory=/x#not-a-comment\n", "/x#not-a-comment"),
    ("[Coredump]\nDirectory=relative\n", paths.DEFAULT_DIRECTORY),
])
def test_configured_directory(tmp_path, text, expected):
    config = tmp_path / "c.conf"
    config.write_text(text)
    assert spool.configured_directory(str(config)) == expected


def test_configured_directory_agrees_with_load_config(tmp_path):
    from coredumpd.config import load_config

    config = tmp_path / "c.conf"
    config.write_text("[Coredump]\nDirectory = /var/crash/x   # where\nMaxUse=1G\n")
    assert spool.configured_directory(str(config)) == load_config(str(config)).directory


def test_no_spool_in_a_directory_others_may_write(tmp_path):
    directory = tmp_path / "open"
    directory.mkdir()
    os.chmod(directory, 0o777)
    config = tmp_path / "c.conf"
    config.write_text(f"[Coredump]\nDirectory={directory}\n")
    assert spool.open_spool(str(config)) == -1
    config.write_text(f"[Coredump]\nDirectory={tmp_path / 'missing'}\n")
    assert spool.open_spool(str(config)) == -1


def test_no_spool_on_a_nearly_full_file_system(tmp_path):
    directory = tmp_path / "store"
    directory.mkdir(mode=0o750)
    config = tmp_path / "c.conf"
    config.write_text(f"[Coredump]\nDirectory={directory}\n")
    free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    assert spool.open_spool(str(config), min_free=free * 2) == -1
    fd = spool.open_spool(str(config), min_free=1)
    assert fd >= 0
    os.close(fd)
