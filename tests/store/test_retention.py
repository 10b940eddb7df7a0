"""Retention: MaxUse/KeepFree on a real small file system, fairness, safe unlinks."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from coredumpd.config import Config
from coredumpd.errors import StoreError
from coredumpd.store.index import CrashRecord, Index
from coredumpd.store.naming import core_filename
from coredumpd.store.retention import StoreDirectory, default_limits, delete, stored_cores, vacuum

BOOT = "8d2a6e7f0c1b4a5e9f3d2c1b0a998877"
KIB = 1024


@pytest.fixture
def store(tmp_path):
    """A 4 MiB tmpfs as the store directory (real statvfs, real ENOSPC)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "store"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M,mode=0750", "tmpfs", str(mount)],
                   check=True)
    config = Config(directory=str(mount))
    index = Index(config.index_path)
    yield config, index
    index.close()
    subprocess.run(["umount", "-l", str(mount)], check=True)


def add_core(config, index, uid, pid, ts, size):
    name = core_filename("prog", uid, BOOT, pid, ts)
    path = os.path.join(config.directory, name)
    with open(path, "wb") as handle:
        handle.write(os.urandom(size))  # tmpfs allocates every page written
    return index.insert(CrashRecord(pid=pid, timestamp_us=ts, uid=uid, comm="prog",
                                    core_path=path, core_state="present", stored_size=size))


def states(index):
    return {r.id: r.core_state for r in index.find()}


def test_default_limits_follow_systemd():
    assert default_limits(100 << 30, None, None) == (4 << 30, 4 << 30)  # capped at 4G
    assert default_limits(10 << 30, None, None) == (1 << 30, (3 << 30) // 2)
    assert default_limits(5 << 20, None, None) == (1 << 20, _align((5 << 20) * 3 // 20))
    assert default_limits(0, None, None) == (1 << 20, 1 << 20)
    assert default_limits(1 << 30, 1000, 0) == (4096, 0)  # explicit: page-aligned, 0 = off


def _align(value):
    return (value + 4095) // 4096 * 4096


def test_max_use_removes_oldest_of_heaviest_user_keeps_newest(store):
    config, index = store
    a = [add_core(config, index, 1000, 10 + n, 1_000 + n, 300 * KIB) for n in range(3)]
    b = [add_core(config, index, 1001, 20 + n, 900 + n, 100 * KIB) for n in range(2)]
    result = vacuum(config, index, max_use=600 * KIB, keep_free=0)
    # A uses 900K, B 200K: A's two oldest go (A's newest stays), then 500K <= 600K
    assert [c.crash_id for c in result.removed] == a[:2]
    assert result.satisfied and result.used_bytes <= 600 * KIB
    assert states(index) == {a[0]: "missing", a[1]: "missing", a[2]: "present",
                             b[0]: "present", b[1]: "present"}
    assert index.get(a[0]).core_reason.startswith("removed by vacuum: cores use")
    assert not os.path.exists(index.get(a[0]).core_path)
    assert os.path.exists(index.get(a[2]).core_path)


def test_each_users_newest_survives_and_result_says_unsatisfied(store):
    config, index = store
    a = add_core(config, index, 1000, 1, 1, 200 * KIB)
    b = add_core(config, index, 1001, 2, 2, 200 * KIB)
    result = vacuum(config, index, max_use=100 * KIB, keep_free=0)
    assert result.removed == [] and result.satisfied is False
    assert states(index) == {a: "present", b: "present"}


def test_keep_free_on_a_full_file_system(store):
    config, index = store
    ids = [add_core(config, index, 1000, n + 1, n + 1, 700 * KIB) for n in range(5)]
    # 3.5 MiB of cores (+ the index) on 4 MiB: ~0.5 MiB free; KeepFree=1M takes one
    # removal, KeepFree=2M two more (measured by statvfs after each unlink)
    result = vacuum(config, index, max_use=0, keep_free=1 << 20)
    assert [c.crash_id for c in result.removed] == ids[:1]
    assert result.free_bytes >= 1 << 20 and result.satisfied
    result = vacuum(config, index, max_use=0, keep_free=2 << 20)
    assert [c.crash_id for c in result.removed] == ids[1:3]
    assert result.free_bytes >= 1 << 20 and result.satisfied


def test_exclude_the_core_just_written(store):
    config, index = store
    first = add_core(config, index, 1000, 1, 1, 300 * KIB)
    second = add_core(config, index, 1000, 2, 2, 300 * KIB)
    add_core(config, index, 1000, 3, 3, 300 * KIB)
    name = os.path.basename(index.get(first).core_path)
    result = vacuum(config, index, max_use=400 * KIB, keep_free=0, exclude=name)
    assert [c.crash_id for c in result.removed] == [second]
    assert index.get(first).core_state == "present"


def test_older_than(store):
    config, index = store
    now = int(time.time() * 1e6)
    old = add_core(config, index, 1000, 1, now - 3_600_000_000, 10 * KIB)
    new = add_core(config, index, 1000, 2, now, 10 * KIB)
    result = vacuum(config, index, max_use=0, keep_free=0, older_than=600)
    assert [c.crash_id for c in result.removed] == [old]
    assert index.get(old).core_reason == "removed by vacuum: older than 600 s"
    assert index.get(new).core_state == "present"


def test_orphan_core_files_count_and_can_go(store):
    config, index = store
    orphan = core_filename("lost", 1000, BOOT, 9, 1)
    with open(os.path.join(config.directory, orphan), "wb") as handle:
        handle.write(os.urandom(300 * KIB))
    os.utime(os.path.join(config.directory, orphan), (1, 1))
    add_core(config, index, 1000, 2, 2_000_000, 300 * KIB)
    result = vacuum(config, index, max_use=400 * KIB, keep_free=0)
    assert [(c.name, c.crash_id) for c in result.removed] == [(orphan, None)]


def test_symlinks_and_outside_paths_are_never_followed(store, tmp_path):
    config, index = store
    victim = tmp_path / "precious"
    victim.write_bytes(b"x" * 100_000)
    link_name = core_filename("evil", 1000, BOOT, 5, 1)
    os.symlink(victim, os.path.join(config.directory, link_name))
    outside = index.insert(CrashRecord(pid=6, timestamp_us=2, uid=1000, core_state="present",
                                       core_path=str(victim)))
    linked = index.insert(CrashRecord(pid=5, timestamp_us=1, uid=1000, core_state="present",
                                      core_path=os.path.join(config.directory, link_name)))
    add_core(config, index, 1000, 7, 3, 10 * KIB)
    add_core(config, index, 1000, 8, 4, 10 * KIB)
    directory = StoreDirectory(config.directory)
    try:
        names = {c.name for c in stored_cores(index, directory)}
    finally:
        directory.close()
    assert link_name not in names and "precious" not in names
    vacuum(config, index, max_use=4096, keep_free=0)
    assert victim.read_bytes() == b"x" * 100_000
    delete(index, [outside, linked])
    assert victim.exists() and os.path.islink(os.path.join(config.directory, link_name))


def test_store_directory_symlink_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    config = Config(directory=str(tmp_path / "link"))
    with Index(str(real / "index.sqlite")) as index, pytest.raises(StoreError):
        vacuum(config, index)


def test_delete_marks_missing_or_forgets(store):
    config, index = store
    a = add_core(config, index, 1000, 1, 1, 10 * KIB)
    b = add_core(config, index, 1000, 2, 2, 10 * KIB)
    path_a = index.get(a).core_path
    assert delete(index, [a]) == [a]
    assert not os.path.exists(path_a)
    got = index.get(a)
    assert got.core_state == "missing" and got.core_reason == "deleted by corectl delete"
    delete(index, [b], forget=True)
    assert index.get(b) is None
    with pytest.raises(StoreError):
        delete(index, ["ffffffffffff"])
    assert index.get(a).core_path == path_a
