"""The module cache (:mod:`coredumpd.store.modcache`) for the sandboxed analysis.

The analysis runs in a child dropped to an unprivileged user
(:mod:`coredumpd.pipeline.sandbox`) that reads a core the crashed process
wrote: a hostile core may take that child over.  So nothing the child writes
or says is ever written into the cache, and the child cannot open the cache
(``DIR/cache`` is root's, 0700).  Instead:

* **Reading: the parent passes read-only descriptors.**  For the *system
  files* the crashed process mapped (:func:`system_file`), the parent reads
  each file's build-id and opens ``DIR/cache/<build-id>.mod`` if it exists;
  the descriptors go to the child with the core (``SCM_RIGHTS``) and the
  child reads them through :class:`PassedModuleCache`, which still checks, as
  every reader does, that the files the entry was derived from are the files
  it would read now.

* **Writing: the parent derives, the child only asks.**  The child reports
  which link-time addresses of which system files it looked up and did not
  find in an entry (numbers, validated and capped here).  The parent then
  derives the symbol table and the answers for those addresses itself, from
  the files, with the same :class:`~coredumpd.symbolize.symbols.Symbolizer`,
  and writes the entry.  A hostile core can choose *which* addresses get
  cached, never *what* is cached for them: the answers come from the files
  alone, so no core can poison a later analysis.

A *system file* is one that only root can have written: a regular file owned
by root, readable by all, writable by no one else, whose path has no symlink
and whose every directory is root's and writable by no one else (and the
same for its separate debug file, else the module is not cached).  Parsing
it as root is no new exposure: root runs these files.  A user's own
program, a file in /tmp or a debug file fetched from a debuginfod server is
never parsed by the parent; the child derives what it needs from them and
nothing of it is kept.  Entries are readable by every analysis child: they
name the functions of world-readable files and which of their addresses
earlier analyses asked about (not which crash asked).
"""

from __future__ import annotations

import os
import re
import stat
import time
from typing import Any

from coredumpd.store.modcache import MAX_ENTRY_BYTES, ModuleCache, cache_path

MAX_PASSED = 64  # entries passed to one child (SCM_MAX_FD is 253)
MAX_MODULES = 64  # modules reported by one child
MAX_LOOKUPS = 4096  # addresses reported by one child, all modules together
DERIVE_SECONDS = 10.0  # the parent's time for deriving one report's answers
BUILD_ID = re.compile(r"[0-9a-f]{2,128}")
ADDRESS_LIMIT = 1 << 64


def system_file(path: str) -> bool:
    """Only root can have written ``path`` (see the module docstring); readable by all."""
    if not os.path.isabs(path) or os.path.realpath(path) != path:
        return False
    try:
        info = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022 \
            or not info.st_mode & 0o004:
        return False
    directory = os.path.dirname(path)
    while True:
        try:
            info = os.lstat(directory)
        except OSError:
            return False
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
            return False
        if directory == "/":
            return True
        directory = os.path.dirname(directory)


def mapped_system_files(facts: dict[str, Any] | None) -> list[str]:
    """The distinct system files among the file mappings /proc listed at dump time."""
    proc = (facts or {}).get("proc") or {}
    paths: list[str] = []
    for entry in proc.get("maps") or []:
        path = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(path, str) and path not in paths and system_file(path):
            paths.append(path)
    return paths


def file_build_id(path: str) -> bytes | None:
    """The build-id of a system file (parsed as root: only for :func:`system_file`)."""
    from coredumpd.elf.elffile import ElfFile
    from coredumpd.errors import CoredumpdError
    try:
        elf = ElfFile.open(path)
    except CoredumpdError:
        return None
    try:
        return elf.build_id
    except CoredumpdError:
        return None
    finally:
        elf.close()


class Offer:
    """What the parent gives one child: descriptors of existing entries, by build-id,
    and the system files it may derive entries for afterwards (path -> build-id)."""

    def __init__(self, directory: str, facts: dict[str, Any] | None, root: str) -> None:
        self.directory = directory
        self.files: dict[str, bytes] = {}
        self.build_ids: list[str] = []
        self.fds: list[int] = []
        if root not in ("", "/"):
            return  # the child reads another root's files: entries would never match
        for path in mapped_system_files(facts):
            build_id = file_build_id(path)
            if build_id is None:
                continue
            self.files[path] = build_id
            if len(self.fds) < MAX_PASSED and build_id.hex() not in self.build_ids:
                self._open_entry(build_id)

    def _open_entry(self, build_id: bytes) -> None:
        entry = os.path.join(cache_path(self.directory), build_id.hex() + ".mod")
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        self.build_ids.append(build_id.hex())
        self.fds.append(fd)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def remember(self, reported: object) -> int:
        """Derive and write the entries of the system files the child looked up
        (``reported``: what :meth:`PassedModuleCache.report` gave, not trusted);
        the number of modules written."""
        modules = _valid_report(reported, self.files)
        if not modules:
            return 0
        return derive_entries(self.directory, modules)


def _valid_report(reported: object, files: dict[str, bytes]) -> list[tuple[str, bytes,
                                                                           list[tuple[int, bool]]]]:
    """(path, build-id, lookups) of the reported modules that are system files this
    parent offered, with the build-id it read itself; anything else is dropped."""
    if not isinstance(reported, list):
        return []
    valid = []
    budget = MAX_LOOKUPS  # a core that made its child ask for much gets little derived
    for item in reported[:MAX_MODULES]:
        if not isinstance(item, dict):
            continue
        path, build_id, lookups = item.get("path"), item.get("build_id"), item.get("lookups")
        if not isinstance(path, str) or path not in files or build_id != files[path].hex() \
                or not isinstance(lookups, list):
            continue
        addresses = [(pair[0], pair[1]) for pair in lookups[:budget]
                     if isinstance(pair, list) and len(pair) == 2 and type(pair[0]) is int
                     and 0 <= pair[0] < ADDRESS_LIMIT and isinstance(pair[1], bool)]
        budget -= len(addresses)
        valid.append((path, files[path], addresses))
    return valid


class _NoModules:
    """The address space of a derivation: no core, no modules (only files)."""

    modules: tuple[Any, ...] = ()


def derive_entries(directory: str, modules: list[tuple[str, bytes, list[tuple[int, bool]]]]
                   ) -> int:
    """Write, from the files alone, the entries of ``modules`` (system files) with the
    answers for their lookups; what an entry holds already is not derived again."""
    from coredumpd.image import debuginfo
    from coredumpd.image.types import Module
    from coredumpd.symbolize.symbols import Symbolizer

    cache = ModuleCache(directory)
    if not cache.writable:
        return 0
    symbolizer = Symbolizer(_NoModules(), cache=cache)  # type: ignore[arg-type]
    deadline = time.monotonic() + DERIVE_SECONDS
    written = 0
    try:
        for path, build_id, lookups in modules:
            module = Module(path=path, start=0, end=0, load_bias=0, file_build_id=build_id,
                            host_path=path)
            usable, module.debug_path = _system_debug_file(path, build_id, debuginfo)
            if not usable:
                continue  # its debug file is not root's alone: not parsed here
            symbolizer.problems(module)  # the tables (from the entry when it has them)
            for address, lines in lookups:
                if time.monotonic() > deadline:
                    break  # what was derived is kept; the rest another time
                symbolizer.symbolize(module, address, lines)
            written += 1
    finally:
        symbolizer.close()  # writes what changed
    return written


def _system_debug_file(path: str, build_id: bytes, debuginfo: Any) -> tuple[bool, str | None]:
    """(usable, the module's separate debug file or None): not usable when there is one
    that is not a system file (the module is then not cached)."""
    from coredumpd.elf.elffile import ElfFile
    from coredumpd.errors import CoredumpdError
    try:
        elf = ElfFile.open(path)
        try:
            debuglink = elf.debuglink
        finally:
            elf.close()
    except CoredumpdError:
        return False, None
    found: str | None = debuginfo.find_debug_file(path, build_id, debuglink)
    if found is None:
        return True, None
    return system_file(os.path.realpath(found)), found


class PassedModuleCache(ModuleCache):
    """The child's cache: entries read from descriptors the parent passed, never a
    file written; what would have been written is kept as a report of lookups."""

    def __init__(self, entries: dict[bytes, int]) -> None:
        super().__init__("/nonexistent", writable=False)
        self.entries = entries
        self.known: dict[bytes, set[Any]] = {}  # answers each entry held when loaded
        self.asked: list[dict[str, Any]] = []

    def load(self, build_id: bytes) -> dict[str, Any] | None:
        fd = self.entries.get(build_id)
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0) if size <= MAX_ENTRY_BYTES else b""
        except OSError:
            return None
        payload = self.decode(data, build_id)
        if payload is not None and isinstance(payload.get("answers"), dict):
            self.known[build_id] = set(payload["answers"])
        return payload

    def store(self, build_id: bytes, payload: dict[str, Any]) -> bool:
        """Keep the lookups not answered by an entry, for the parent (:meth:`report`)."""
        files, answers = payload.get("files"), payload.get("answers")
        if not isinstance(files, list) or not files or not files[0] \
                or not isinstance(answers, dict):
            return False
        known = self.known.get(build_id, set())
        lookups = [[key[0], key[1]] for key in answers if key not in known]
        self.asked.append({"path": files[0][0], "build_id": build_id.hex(),
                           "lookups": lookups[:MAX_LOOKUPS]})
        return False

    def report(self) -> list[dict[str, Any]]:
        return self.asked[:MAX_MODULES]
