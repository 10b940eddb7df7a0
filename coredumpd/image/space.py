"""The crashed process's address space: mappings, modules and memory.

Memory comes from the core first; bytes the kernel did not dump (clean
file-backed pages: ``.text``, ``.eh_frame``, symbol tables) come from the
mapped file on this machine, resolved through the crashed process's root and
used only when it is the same file (build-id from the ELF header page in the
core equals the file's; see :func:`_judge_file`).

Mappings are /proc/PID/maps as recorded at dump time when the facts hold
them, else the core's PT_LOAD headers named by NT_FILE (fs/binfmt_elf.c
``fill_files_note()``: one entry per file-backed VMA, with its page offset).
Modules group the file mappings of one path; the load bias follows the
kernel's ``elf_map()``: a PT_LOAD is mapped at PAGESTART(bias + p_vaddr) from
file offset PAGESTART(p_offset).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from typing import Any

from coredumpd.arch import Arch, for_machine
from coredumpd.elf import layouts as L
from coredumpd.elf.core import Core
from coredumpd.elf.elffile import ElfFile
from coredumpd.errors import CoredumpdError, MemoryReadError
from coredumpd.image.debuginfod import Debuginfod
from coredumpd.image.modules import (
    VDSO,
    build_module,
    dict_or_empty,
    group_file_mappings,
    main_path,
    resolve_in_root,
    symbols_source,
    use_debuginfod,
    vdso_module,
)
from coredumpd.image.relocated import dynamic_evidence
from coredumpd.image.types import Mapping, Module

__all__ = ["ProcessAddressSpace", "build_address_space", "mappings_from_core",
           "mappings_from_facts", "resolve_in_root"]

DELETED_SUFFIX = " (deleted)"
MAX_READ = 64 << 20  # one read()
MAX_FILE_OFFSET = 1 << 62  # off_t is signed 64-bit
MAX_MODULES = 4096


class ProcessAddressSpace:
    """:class:`~coredumpd.image.types.AddressSpace` over a core and trusted files.

    ``bytes_read`` counts every byte returned by :meth:`read` (the unwinder
    compares it with ``Caps.max_bytes_read``); ``max_bytes`` (0: none) makes
    reads past that budget fail with MemoryReadError.
    """

    def __init__(self, core: Core, mappings: list[Mapping], max_bytes: int = 0) -> None:
        self.core = core
        self.arch: Arch = for_machine(core.ehdr.e_machine)
        self._mappings = sorted(mappings, key=lambda m: m.start)
        self._mapping_starts = [m.start for m in self._mappings]
        self._modules: list[Module] = []
        self._module_starts: list[int] = []
        self._files: dict[str, int] = {}
        self._elves: dict[str, ElfFile | None] = {}
        self.page_size = core.auxv.get(L.AT.PAGESZ, 4096) or 4096
        self.bytes_read = 0
        self.max_bytes = max_bytes
        self.problems: list[str] = []

    # ------------------------------------------------------------ AddressSpace

    @property
    def modules(self) -> Sequence[Module]:
        return self._modules

    @property
    def mappings(self) -> Sequence[Mapping]:
        return self._mappings

    def mapping_at(self, address: int) -> Mapping | None:
        index = bisect.bisect_right(self._mapping_starts, address) - 1
        if index >= 0 and address < self._mappings[index].end:
            return self._mappings[index]
        return None

    def module_at(self, address: int) -> Module | None:
        index = bisect.bisect_right(self._module_starts, address) - 1
        if index >= 0 and address in self._modules[index]:
            mapping = self.mapping_at(address)
            module = self._modules[index]
            # a module's [start, end) may span foreign mappings (ld.so's gaps): check the VMA
            if module.is_vdso or (mapping is not None and mapping.path == module.path):
                return module
        return None

    def read(self, address: int, size: int) -> bytes:
        """Exactly ``size`` bytes: core segments first, then the trusted mapped file."""
        if size < 0 or size > MAX_READ:
            raise MemoryReadError(address, size, "bad read size")
        if self.max_bytes and self.bytes_read + size > self.max_bytes:
            raise MemoryReadError(address, size, "read budget exhausted")
        data = self.core.read_memory_partial(address, size)
        while len(data) < size:
            more = self._read_file(address + len(data), size - len(data))
            data += more
            if len(data) < size:
                rest = self.core.read_memory_partial(address + len(data), size - len(data))
                if not rest:
                    raise MemoryReadError(address, size, f"{address + len(data):#x} unavailable")
                data += rest
        self.bytes_read += size
        return data

    # ------------------------------------------------------------ files

    def _read_file(self, address: int, size: int) -> bytes:
        """Bytes at ``address`` from the file behind its mapping (empty if not trusted)."""
        mapping = self.mapping_at(address)
        if mapping is None or mapping.path is None:
            return b""
        module = self.module_at(address)
        if module is None or module.host_path is None:
            return b""
        length = min(size, mapping.end - address)
        offset = mapping.file_offset + address - mapping.start
        if not 0 <= offset < MAX_FILE_OFFSET:  # NT_FILE and facts offsets are hostile
            return b""
        try:
            return os.pread(self._fd(module.host_path), length, offset)
        except (OSError, OverflowError, ValueError):
            return b""

    def _fd(self, path: str) -> int:
        fd = self._files.get(path)
        if fd is None:
            fd = self._files[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return fd

    def open_elf(self, module: Module) -> ElfFile | None:
        """The module's ELF image: the trusted file, or the vDSO from the core (cached)."""
        key = module.path
        if key not in self._elves:
            self._elves[key] = self._open_elf(module)
        return self._elves[key]

    def _open_elf(self, module: Module) -> ElfFile | None:
        try:
            if module.is_vdso:
                image = self.core.read_memory(module.start, module.end - module.start)
                return ElfFile.from_bytes(image, VDSO)
            if module.host_path is not None:
                return ElfFile.from_fd(self._fd(module.host_path), module.host_path)
        except (CoredumpdError, OSError) as err:
            module.problems.append(f"cannot read the ELF image: {err}")
        return None

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
        self._elves.clear()

    def _add_module(self, module: Module) -> None:
        self._modules.append(module)

    def _index_modules(self) -> None:
        self._modules.sort(key=lambda m: m.start)
        self._module_starts = [m.start for m in self._modules]


# ---------------------------------------------------------------- mappings


def mappings_from_core(core: Core) -> list[Mapping]:
    """One Mapping per PT_LOAD, named by the NT_FILE entry starting there."""
    named = {entry.start: entry for entry in core.files}
    vdso = core.auxv.get(L.AT.SYSINFO_EHDR)
    mappings = []
    for segment in core.segments:
        entry = named.get(segment.vaddr)
        path, offset, deleted = None, 0, False
        if entry is not None:
            path, offset = entry.path, entry.file_offset
            if path.endswith(DELETED_SUFFIX):
                path, deleted = path[:-len(DELETED_SUFFIX)], True
        elif segment.vaddr == vdso:
            path = VDSO
        mappings.append(Mapping(segment.vaddr, segment.end, segment.perms, offset,
                                path, deleted=deleted))
    return mappings


def mappings_from_facts(maps: list[dict[str, Any]]) -> list[Mapping]:
    """Mappings from facts.proc.maps (/proc/PID/maps parsed by the handler)."""
    mappings = []
    for entry in maps:
        if not isinstance(entry, dict):
            continue
        try:
            path = str(entry["path"]) if entry.get("path") else None
            mappings.append(Mapping(int(entry["start"]), int(entry["end"]),
                                    str(entry.get("perms", "---p")), int(entry.get("offset", 0)),
                                    path, int(entry.get("inode", 0)), str(entry.get("dev", "")),
                                    bool(entry.get("deleted", False))))
        except (KeyError, TypeError, ValueError):
            continue
    return mappings


def build_address_space(core: Core, facts: dict[str, Any] | None = None, root: str = "/",
                        exe: str | None = None, max_bytes: int = 0,
                        debuginfod: Debuginfod | None = None) -> ProcessAddressSpace:
    """Mappings, modules and memory of the crashed process (docs/ARCHITECTURE.md).

    ``root`` is where the process's ``/`` is on this machine (default: the
    facts' ``proc.root``); ``exe`` a copy of the executable to use instead of
    the mapped path (still checked by build-id); ``debuginfod`` fills in, by
    build-id, files and debug files this machine lacks (image/debuginfod.py).
    """
    facts = dict_or_empty(facts)
    proc = dict_or_empty(facts.get("proc"))
    maps = proc.get("maps")
    mappings = mappings_from_facts(maps) if isinstance(maps, list) and maps else \
        mappings_from_core(core)
    if root == "/" and isinstance(proc.get("root"), str):
        root = proc["root"]
    space = ProcessAddressSpace(core, mappings, max_bytes)
    groups = group_file_mappings(space.mappings)
    main = main_path(core, facts, groups)
    if len(groups) > MAX_MODULES:
        space.problems.append(f"{len(groups)} mapped files: modules built for {MAX_MODULES}")
        groups = [g for g in groups if g[0] == main][:1] + [
            g for g in groups if g[0] != main][:MAX_MODULES - 1]
    for path, group in groups:
        module = build_module(space, path, group, facts, root, exe, path == main)
        if module is not None:
            space._add_module(module)
    vdso = vdso_module(space)
    if vdso is not None:
        space._add_module(vdso)
    space._index_modules()
    for module in space.modules:
        if debuginfod is not None:
            use_debuginfod(space, module, debuginfod, space.problems)
        _check_relocated(space, module)
        module.symbols_from = symbols_source(module, debuginfod.cache if debuginfod else None)
    return space


def _check_relocated(space: ProcessAddressSpace, module: Module) -> None:
    """Mark a module whose relocated ``.dynamic`` in the core is not its file's now."""
    if module.is_vdso or module.host_path is None:
        return
    elf = space.open_elf(module)
    if elf is None:
        return
    module.relocation_evidence = dynamic_evidence(space.core, module, elf)
    if module.relocation_evidence:
        module.modified_in_place = True


