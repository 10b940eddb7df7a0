"""Kept copies of mapped files: content-addressed by build-id, a budget, pruned by vacuum."""

from __future__ import annotations

import os
import stat

import pytest

from coredumpd.errors import StoreError
from coredumpd.model import Facts
from coredumpd.store.binaries import GRACE_SECONDS, BinaryStore
from coredumpd.store.index import CrashRecord
from coredumpd.store.retention import vacuum
from tests.store.test_retention import KIB, add_core, states, store  # noqa: F401

BUILD_ID = "ab" + "12" * 19


def _source(tmp_path, size=8 * KIB, mode=0o750):
    path = tmp_path / "mapped.so"
    path.write_bytes(os.urandom(size))
    os.chmod(path, mode)
    return os.open(path, os.O_RDONLY)


def test_keep_copies_once_by_build_id(tmp_path):
    binaries = BinaryStore(str(tmp_path / "store"), 1 << 20)
    fd = _source(tmp_path)
    try:
        path = binaries.keep(fd, BUILD_ID)
        assert path == str(tmp_path / "store" / "binaries" / "ab" / ("12" * 19))
        with open(tmp_path / "mapped.so", "rb") as original, open(path, "rb") as kept:
            assert original.read() == kept.read()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o440  # the original's read bits only
        assert binaries.keep(fd, BUILD_ID) == path
        assert [entry[0] for entry in binaries.entries()] == [BUILD_ID]
    finally:
        os.close(fd)


def test_keep_refuses_without_build_id_or_over_budget(tmp_path):
    binaries = BinaryStore(str(tmp_path / "store"), 4 * KIB)
    fd = _source(tmp_path)
    try:
        with pytest.raises(StoreError, match="no build-id"):
            binaries.keep(fd, None)
        with pytest.raises(StoreError, match="BinariesMaxUse"):
            binaries.keep(fd, BUILD_ID)
        with pytest.raises(StoreError, match="not a build-id"):
            binaries.keep(fd, "../../etc")
    finally:
        os.close(fd)
    assert binaries.entries() == []


def _crash_keeping(config, index, kept, pid, ts):
    row = add_core(config, index, 0, pid, ts, 64 * KIB)
    facts = Facts(mapped_objects={"/usr/bin/prog": {"reason": "deleted", "kept": kept}})
    index.update(row, facts=facts)
    return row


def test_vacuum_counts_kept_copies_and_removes_them_with_their_last_core(store, tmp_path):  # noqa: F811
    config, index = store
    binaries = BinaryStore(config.directory, 1 << 20)
    fd = _source(tmp_path, size=256 * KIB)
    try:
        kept = binaries.keep(fd, BUILD_ID)
    finally:
        os.close(fd)
    old = _crash_keeping(config, index, kept, 1, 1_000)
    new = _crash_keeping(config, index, kept, 2, 2_000)
    result = vacuum(config, index, max_use=2 << 20, keep_free=0)
    assert result.used_bytes >= 256 * KIB + 128 * KIB and os.path.exists(kept)
    index.update(new, facts=Facts())  # only the old crash refers to the copy now
    long_ago = os.stat(kept).st_mtime - GRACE_SECONDS - 1
    os.utime(kept, (long_ago, long_ago))
    result = vacuum(config, index, max_use=200 * KIB, keep_free=0)  # the old core must go
    assert states(index)[old] == "missing" and not os.path.exists(kept)
    assert result.used_bytes < 200 * KIB


def test_a_young_unreferenced_copy_stays(store, tmp_path):  # noqa: F811
    """A handler keeps the copy before it inserts its row: vacuum must not race it."""
    config, index = store
    fd = _source(tmp_path)
    try:
        kept = BinaryStore(config.directory, 1 << 20).keep(fd, BUILD_ID)
    finally:
        os.close(fd)
    vacuum(config, index, keep_free=0)
    assert os.path.exists(kept)


def test_crash_record_keeps_mapped_objects(store):  # noqa: F811
    config, index = store
    row = _crash_keeping(config, index, "/x", 3, 3_000)
    record = index.get(row)
    assert isinstance(record, CrashRecord)
    assert record.facts.mapped_objects["/usr/bin/prog"]["kept"] == "/x"
