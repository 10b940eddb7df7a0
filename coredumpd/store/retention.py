"""Retention: MaxUse/KeepFree vacuuming with per-user fairness, and deletion.

Modelled on systemd's src/coredump/coredump-vacuum.c:

- Defaults: MaxUse = 10% of the file system (at least 1 MiB, at most 4 GiB),
  KeepFree = 15% of the file system (at most 4 GiB); explicit values are
  page-aligned; 0 disables a limit.  Sizes are blocks on disk (st_blocks*512),
  free space is f_bfree*f_frsize, re-read after every removal.
- Fairness: while over a limit, remove the oldest core of the user who uses the
  most.  systemd counts that user's *files*; we weigh the *bytes* they occupy,
  because cores differ in size by orders of magnitude.  Ties go to the user with
  the older oldest core, as in systemd.
- Unlike systemd, each user's newest core is kept (issue 5: "keeps the newest
  cores of each user"); when only those remain and a limit is still exceeded,
  the result says ``satisfied=False`` and the caller decides (the handler does
  not store a new core below KeepFree).
- The core just written is excluded (systemd's ``exclude_fd``).
- Kept copies of mapped files (:mod:`coredumpd.store.binaries`) count towards
  MaxUse; one is removed once no stored core refers to it.
- The module cache (:mod:`coredumpd.store.modcache`) counts towards MaxUse too;
  it is emptied before any core is removed (it is made again on demand), and so
  are the files the analyses fetched from debuginfod (``DIR/debuginfod``: they
  are fetched again when needed).

Files are stat-ed and unlinked relative to a directory fd opened with
O_NOFOLLOW, without following symlinks; only regular files directly inside the
store directory are ever removed.  Removing a core keeps its index row, marked
``core_state='missing'`` with the reason.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterable, Iterator

from coredumpd.config import Config
from coredumpd.errors import StoreError
from coredumpd.model import CoreState, CrashRecord
from coredumpd.paths import debuginfod_path
from coredumpd.store.binaries import BinaryStore
from coredumpd.store.index import Index
from coredumpd.store.modcache import ModuleCache
from coredumpd.store.naming import parse_core_filename
from coredumpd.values import Frozen, Value

PAGE_SIZE = 4096
DEFAULT_MAX_USE_LOWER = 1 << 20
DEFAULT_MAX_USE_UPPER = 4 << 30
DEFAULT_KEEP_FREE_UPPER = 4 << 30
DEFAULT_KEEP_FREE = 1 << 20  # when the file system size is unknown
STORED_STATES = tuple(state.value for state in CoreState if state.stored)


class StoredCore(Frozen):
    """A core file in the store directory, with its index row when it has one."""

    name: str
    uid: int | None
    timestamp_us: int
    disk_bytes: int
    crash_id: str | None
    kept: tuple[str, ...] = ()  # kept copies of its mapped files (store/binaries.py)


class VacuumResult(Value):
    """What :func:`vacuum` removed and where the limits stand."""

    removed: list[StoredCore] = []  # noqa: RUF012 - one per instance (values.py)
    freed_bytes: int = 0
    used_bytes: int = 0  # by cores and kept binaries, after vacuuming
    max_use: int = 0
    keep_free: int = 0
    free_bytes: int = 0
    satisfied: bool = True


def _page_align(value: int) -> int:
    return (value + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def default_limits(fs_size: int, max_use: int | None, keep_free: int | None) -> tuple[int, int]:
    """(MaxUse, KeepFree) in bytes, systemd's defaults where None (vacuum_necessary)."""
    if max_use is None:
        if fs_size > 0:
            max_use = min(max(_page_align(fs_size // 10), DEFAULT_MAX_USE_LOWER),
                          DEFAULT_MAX_USE_UPPER)
        else:
            max_use = DEFAULT_MAX_USE_LOWER
    else:
        max_use = _page_align(max_use)
    if keep_free is None:
        keep_free = (min(_page_align(fs_size * 3 // 20), DEFAULT_KEEP_FREE_UPPER)
                     if fs_size > 0 else DEFAULT_KEEP_FREE)
    else:
        keep_free = _page_align(keep_free)
    return max_use, keep_free


class StoreDirectory:
    """The store directory, opened once without following symlinks."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise StoreError(f"cannot open store directory {path}: {err.strerror}") from err

    def close(self) -> None:
        os.close(self.fd)

    def file_system(self) -> tuple[int, int]:
        """(size, free) of the file system in bytes, like systemd's fstatvfs use."""
        try:
            info = os.fstatvfs(self.fd)
        except OSError:
            return 0, 2**64 - 1
        return info.f_frsize * info.f_blocks, info.f_frsize * info.f_bfree

    def stat_core(self, name: str) -> os.stat_result | None:
        """lstat of a regular file directly in the directory, else None."""
        if not name or "/" in name or name in (".", ".."):
            return None
        try:
            info = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except OSError:
            return None
        return info if stat.S_ISREG(info.st_mode) else None

    def unlink(self, name: str) -> bool:
        """unlinkat(2) (never follows a symlink); False when already gone."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise StoreError(f"cannot remove {self.path}/{name}: {err.strerror}") from err
        return True

    def names(self) -> list[str]:
        try:
            return os.listdir(self.fd)
        except OSError as err:
            raise StoreError(f"cannot list {self.path}: {err.strerror}") from err


def _core_name(directory: str, core_path: str | None) -> str | None:
    """The file name of the core at ``core_path`` when it lies directly in ``directory``."""
    if not core_path:
        return None
    parent, name = os.path.split(core_path)
    if os.path.normpath(parent) != os.path.normpath(directory):
        return None
    return name


def stored_cores(index: Index, store: StoreDirectory) -> list[StoredCore]:
    """Every regular core file in the store: indexed ones and orphans named like cores."""
    cores: dict[str, StoredCore] = {}
    for row in index.core_rows(STORED_STATES):
        name = _core_name(store.path, row.core_path)
        info = store.stat_core(name) if name else None
        if name and info:
            cores[name] = StoredCore(name, row.uid, row.timestamp_us, info.st_blocks * 512,
                                     row.id, row.kept)
    for name in store.names():
        parsed = parse_core_filename(name)
        if name in cores or parsed is None:
            continue
        info = store.stat_core(name)
        if info:
            cores[name] = StoredCore(name, parsed.uid, info.st_mtime_ns // 1000,
                                     info.st_blocks * 512, None)
    return sorted(cores.values(), key=lambda core: (core.timestamp_us, core.name))


def _pick_victim(cores: list[StoredCore], exclude: str | None) -> StoredCore | None:
    """The oldest removable core of the user using the most bytes."""
    by_user: dict[int | None, list[StoredCore]] = {}
    for core in cores:  # oldest first
        by_user.setdefault(core.uid, []).append(core)
    ranked = sorted(by_user.values(),
                    key=lambda own: (-sum(c.disk_bytes for c in own), own[0].timestamp_us))
    for own in ranked:
        for core in own[:-1]:  # each user's newest core is kept
            if core.name != exclude:
                return core
    return None


def _remove(index: Index, store: StoredCore, directory: StoreDirectory, reason: str) -> bool:
    removed = directory.unlink(store.name)
    if store.crash_id is not None:
        try:
            index.update(store.crash_id, core_state=CoreState.MISSING, core_reason=reason)
        except StoreError:
            pass  # the row vanished meanwhile (corectl delete): the file is gone either way
    return removed


def vacuum(config: Config, index: Index, max_use: int | None = None,
           keep_free: int | None = None, older_than: float | None = None,
           exclude: str | None = None) -> VacuumResult:
    """Remove cores until MaxUse and KeepFree hold (and all older than ``older_than`` s).

    ``max_use``/``keep_free`` default to the configuration's, then to systemd's
    defaults; ``exclude`` is the file name of a core that must stay (the one
    just written).
    """
    directory = StoreDirectory(config.directory)
    try:
        return _vacuum(index, directory, config.max_use if max_use is None else max_use,
                       config.keep_free if keep_free is None else keep_free, older_than,
                       exclude)
    finally:
        directory.close()


def _fetched_files(path: str) -> list[tuple[str, int]]:
    """(path, bytes on disk) of the regular files under ``path`` (symlinks not followed)."""
    found = []
    for root, _, names in os.walk(path):
        for name in names:
            file = os.path.join(root, name)
            try:
                info = os.lstat(file)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                found.append((file, info.st_blocks * 512))
    return found


def _fetched_usage(path: str) -> int:
    return sum(size for _, size in _fetched_files(path))


def _remove_fetched(path: str) -> int:
    """Remove every fetched file (and the emptied build-id directories); bytes freed."""
    freed = 0
    for file, size in _fetched_files(path):
        try:
            os.unlink(file)
        except OSError:
            continue
        freed += size
    for root, directories, _ in os.walk(path, topdown=False):
        for name in directories:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, name))
    return freed


def _vacuum(index: Index, directory: StoreDirectory, max_use: int | None,
            keep_free: int | None, older_than: float | None,
            exclude: str | None) -> VacuumResult:
    cores = stored_cores(index, directory)
    result = VacuumResult()
    if older_than is not None:
        cutoff = int((time.time() - older_than) * 1_000_000)
        for core in [c for c in cores if c.timestamp_us < cutoff and c.name != exclude]:
            _record_removal(result, cores, core, _remove(
                index, core, directory, f"removed by vacuum: older than {older_than:g} s"))
    fs_size, _ = directory.file_system()
    result.max_use, result.keep_free = default_limits(fs_size, max_use, keep_free)
    binaries = BinaryStore(directory.path, 0)
    modules = ModuleCache(directory.path, writable=False)
    while True:
        result.freed_bytes += binaries.remove_unreferenced({p for c in cores for p in c.kept})
        _, result.free_bytes = directory.file_system()
        cached = modules.usage()
        fetched = _fetched_usage(debuginfod_path(directory.path))
        result.used_bytes = sum(c.disk_bytes for c in cores) + binaries.usage() + cached \
            + fetched
        over = _over_limits(result)
        if not over:
            break
        if cached:  # derived from files, made again on demand: goes before any core
            result.freed_bytes += modules.trim(0)
            continue
        if fetched:  # fetched again when an analysis needs it: goes before any core
            result.freed_bytes += _remove_fetched(debuginfod_path(directory.path))
            continue
        victim = _pick_victim(cores, exclude)
        if victim is None:
            result.satisfied = False
            break
        _record_removal(result, cores, victim,
                        _remove(index, victim, directory, f"removed by vacuum: {over}"))
    return result


def _over_limits(result: VacuumResult) -> str:
    if result.max_use > 0 and result.used_bytes > result.max_use:
        return f"cores use {result.used_bytes} bytes, MaxUse={result.max_use}"
    if result.keep_free > 0 and result.free_bytes < result.keep_free:
        return f"{result.free_bytes} bytes free, KeepFree={result.keep_free}"
    return ""


def _record_removal(result: VacuumResult, cores: list[StoredCore], core: StoredCore,
                    removed: bool) -> None:
    cores.remove(core)
    if removed:
        result.removed.append(core)
        result.freed_bytes += core.disk_bytes


def delete(index: Index, ids: Iterable[str], reason: str = "deleted by corectl delete",
           forget: bool = False) -> list[str]:
    """Remove the cores of crashes ``ids`` (the store directory is the index's).

    Rows stay, marked missing with ``reason``; with ``forget`` they are dropped
    too.  Returns the IDs handled; unknown IDs raise StoreError before anything
    is removed.
    """
    records = [(crash, index.get(crash)) for crash in ids]
    unknown = [crash for crash, record in records if record is None]
    if unknown:
        raise StoreError(f"no crash {', '.join(unknown)} in the index")
    directory = StoreDirectory(os.path.dirname(os.path.abspath(index.path)))
    try:
        for crash, record in _present(records):
            name = _core_name(directory.path, record.core_path)
            if name and directory.stat_core(name):
                directory.unlink(name)
            if forget:
                index.delete(crash)
            elif record.core_state in STORED_STATES:
                index.update(crash, core_state=CoreState.MISSING, core_reason=reason)
    finally:
        directory.close()
    return [crash for crash, _ in records]


def _present(records: list[tuple[str, CrashRecord | None]]) -> Iterator[tuple[str, CrashRecord]]:
    for crash, record in records:
        if record is not None:
            yield crash, record
