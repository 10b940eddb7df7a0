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

from coredumpd.elf import layouts as L
from coredumpd.elf.core import Core
from coredumpd.elf.elffile import ElfFile, ProgramHeader, parse_program_headers
from coredumpd.elf.notes import find_build_id
from coredumpd.errors import CoredumpdError, MemoryReadError
from coredumpd.unwind.debuginfo import find_debug_file
from coredumpd.unwind.types import Mapping, Module

DELETED_SUFFIX = " (deleted)"
MAX_PHDRS_IN_CORE = 256
VDSO = "[vdso]"
MAX_READ = 64 << 20  # one read()
MAX_SYMLINKS = 40  # as the kernel's path walk (MAXSYMLINKS)
MAX_MODULES = 4096


class ProcessAddressSpace:
    """:class:`~coredumpd.unwind.types.AddressSpace` over a core and trusted files.

    ``bytes_read`` counts every byte returned by :meth:`read` (the unwinder
    compares it with ``Caps.max_bytes_read``); ``max_bytes`` (0: none) makes
    reads past that budget fail with MemoryReadError.
    """

    def __init__(self, core: Core, mappings: list[Mapping], max_bytes: int = 0) -> None:
        self.core = core
        self._mappings = sorted(mappings, key=lambda m: m.start)
        self._mapping_starts = [m.start for m in self._mappings]
        self._modules: list[Module] = []
        self._module_starts: list[int] = []
        self._module_by_path: dict[str, Module] = {}
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
        module = self._module_by_path.get(mapping.path)
        if module is None or module.host_path is None:
            return b""
        length = min(size, mapping.end - address)
        offset = mapping.file_offset + address - mapping.start
        try:
            return os.pread(self._fd(module.host_path), length, offset)
        except OSError:
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
        self._module_by_path.setdefault(module.path, module)

    def _index_modules(self) -> None:
        self._modules.sort(key=lambda m: m.start)
        self._module_starts = [m.start for m in self._modules]


# ---------------------------------------------------------------- mappings


def _perms(flags: int) -> str:
    return "".join(("r" if flags & L.PF.R else "-", "w" if flags & L.PF.W else "-",
                    "x" if flags & L.PF.X else "-", "p"))


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
        mappings.append(Mapping(segment.vaddr, segment.end, _perms(segment.flags), offset,
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


# ---------------------------------------------------------------- modules


def resolve_in_root(path: str, root: str) -> str:
    """``path`` as the crashed process saw it, on this machine: inside ``root``.

    Symbolic links are followed as a chroot would (absolute targets and ``..``
    stay inside ``root``; cf. openat2(2) RESOLVE_IN_ROOT), so a path or link
    named by the core cannot lead outside the process's file system.
    """
    if root in ("", "/"):
        return os.path.normpath("/" + path.lstrip("/"))
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        here = os.path.join(root, *resolved, part)
        if os.path.islink(here) and hops < MAX_SYMLINKS:
            hops += 1
            target = os.readlink(here)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _headers_from_core(space: ProcessAddressSpace, start: int) -> tuple[int, list[
        ProgramHeader]] | None:
    """(e_type, program headers) from the ELF header page dumped at ``start``."""
    try:
        raw = space.core.read_memory(start, L.EHDR.size)
        if raw[:4] != L.ELFMAG or raw[4] != L.ELFCLASS64:
            return None
        fields = L.EHDR.unpack(raw)
        e_type, e_phoff, e_phentsize, e_phnum = fields[1], fields[5], fields[9], fields[10]
        if e_phentsize != L.PHDR.size or e_phnum > MAX_PHDRS_IN_CORE:
            return None
        data = space.core.read_memory(start + e_phoff, e_phnum * L.PHDR.size)
        return e_type, parse_program_headers(data, e_phnum)
    except CoredumpdError:
        return None


def _load_bias(phdrs: list[ProgramHeader], group: list[Mapping], page: int) -> int | None:
    """Bias from the first PT_LOAD and the mapping of its page-aligned file offset."""
    loads = [p for p in phdrs if p.p_type == L.PT.LOAD]
    if not loads:
        return None
    first = min(loads, key=lambda p: p.p_vaddr)
    file_page = first.p_offset & ~(page - 1)
    for mapping in group:
        if mapping.file_offset == file_page:
            return mapping.start - (first.p_vaddr & ~(page - 1))
    return None


def _or(value: int | None, default: int) -> int:
    """``value`` unless None (a load bias of 0 is the usual one for ET_EXEC)."""
    return default if value is None else value


def _core_build_id(space: ProcessAddressSpace, phdrs: list[ProgramHeader],
                   bias: int) -> bytes | None:
    for phdr in phdrs:
        if phdr.p_type == L.PT.NOTE and 0 < phdr.p_filesz <= 1 << 16:
            try:
                data = space.core.read_memory(bias + phdr.p_vaddr, phdr.p_filesz)
            except CoredumpdError:
                continue
            build_id = find_build_id(data)
            if build_id:
                return build_id
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _file_changes(module: Module, facts: dict[str, Any]) -> None:
    """deleted / replaced / modified_in_place from the facts (docs/ARCHITECTURE.md)."""
    proc = _dict(facts.get("proc"))
    record = _dict(_dict(proc.get("files")).get(module.path))
    now, mapped = _dict(record.get("now")), _dict(record.get("mapped"))
    if "error" in now:
        module.deleted = True
    elif now and mapped:
        if (now.get("dev"), now.get("inode")) != (mapped.get("dev"), mapped.get("inode")):
            module.replaced = True
        elif now.get("mtime_ns") != mapped.get("mtime_ns"):
            module.modified_in_place = True
    start_us, mtime_ns = proc.get("start_time_us"), mapped.get("mtime_ns")
    if isinstance(start_us, int) and isinstance(mtime_ns, int) and mtime_ns // 1000 > start_us:
        module.modified_in_place = True
    reason = _dict(_dict(facts.get("mapped_objects")).get(module.path)).get("reason")
    if reason == "deleted":
        module.deleted = True
    elif reason == "replaced":
        module.replaced = True
    elif reason == "modified":
        module.modified_in_place = True


def _judge_file(space: ProcessAddressSpace, module: Module, candidate: str,
                header_in_core: bool, root: str) -> None:
    """Set ``file_build_id``, and ``host_path`` and ``debug_path`` if it is the mapped file."""
    try:
        with ElfFile.open(candidate) as elf:
            module.file_build_id = elf.build_id
            first_page = elf.read(0, min(elf.size, space.page_size))
            debuglink = elf.debuglink
    except CoredumpdError as err:
        module.problems.append(f"{candidate}: {err}")
        return
    _trust(space, module, candidate, header_in_core, first_page)
    if module.host_path is not None:
        module.debug_path = find_debug_file(module.host_path, module.file_build_id, debuglink,
                                            root)


def _trust(space: ProcessAddressSpace, module: Module, candidate: str, header_in_core: bool,
           first_page: bytes) -> None:
    """The build-id rule of docs/ARCHITECTURE.md; the reason goes to module.problems."""
    if module.build_id and module.file_build_id:
        if module.build_id == module.file_build_id:
            module.host_path = candidate
        else:
            module.problems.append(f"{candidate} has build-id {module.file_build_id.hex()}, "
                                   f"the process mapped {module.build_id.hex()}")
            # another file is at the path now (deleted may hold too); not for --exe copies
            module.replaced = module.replaced or candidate.endswith(module.path)
    elif module.build_id:
        module.problems.append(f"{candidate} has no build-id, the process mapped "
                               f"{module.build_id.hex()}")
    elif header_in_core:
        _judge_by_header_page(space, module, candidate, first_page)
    elif module.replaced or module.modified_in_place:
        module.problems.append(f"{candidate} changed since it was mapped and cannot be checked")
    else:
        module.host_path = candidate
        module.problems.append("the ELF header page is not in the core: the file is unverified")


def _judge_by_header_page(space: ProcessAddressSpace, module: Module, candidate: str,
                          first_page: bytes) -> None:
    """Without build-ids, the dumped first page must equal the file's."""
    dumped = space.core.read_memory_partial(module.start, len(first_page))
    if module.file_build_id is None and dumped and first_page.startswith(dumped):
        module.host_path = candidate
        module.problems.append("no build-id: the file matched by its first page only")
    else:
        module.problems.append(f"{candidate} differs from the mapped file (first page)")
        module.replaced = module.replaced or candidate.endswith(module.path)


def _build_module(space: ProcessAddressSpace, path: str, group: list[Mapping],
                  facts: dict[str, Any], root: str, exe: str | None) -> Module:
    start, end = group[0].start, max(m.end for m in group)
    module = Module(path=path, start=start, end=end, load_bias=start,
                    deleted=any(m.deleted for m in group))
    header_at = next((m.start for m in group if m.file_offset == 0), None)
    headers = _headers_from_core(space, header_at) if header_at is not None else None
    _file_changes(module, facts)
    candidate = exe or resolve_in_root(path, root)
    phdrs = headers[1] if headers else []
    if headers is not None:
        module.load_bias = _or(_load_bias(phdrs, group, space.page_size), start)
        module.build_id = _core_build_id(space, phdrs, module.load_bias)
    if os.path.exists(candidate):
        _judge_file(space, module, candidate, headers is not None, root)
    else:
        module.problems.append(f"{candidate} is not on this machine")
    if headers is None and module.host_path is not None:
        phdrs = _file_program_headers(module.host_path, module)
        module.load_bias = _or(_load_bias(phdrs, group, space.page_size), start)
    module.eh_frame_hdr = next((module.load_bias + p.p_vaddr for p in phdrs
                                if p.p_type == L.PT.GNU_EH_FRAME), None)
    return module


def _file_program_headers(path: str, module: Module) -> list[ProgramHeader]:
    try:
        with ElfFile.open(path) as elf:
            return elf.program_headers
    except CoredumpdError as err:
        module.problems.append(f"{path}: {err}")
        return []


def _vdso_module(space: ProcessAddressSpace) -> Module | None:
    address = space.core.auxv.get(L.AT.SYSINFO_EHDR)
    mapping = space.mapping_at(address) if address else None
    if address is None or mapping is None:
        return None
    module = Module(path=VDSO, start=mapping.start, end=mapping.end, load_bias=mapping.start,
                    is_vdso=True)
    headers = _headers_from_core(space, address)
    if headers is None:
        module.problems.append("the vDSO is not in the core")
        return module
    module.load_bias = _or(_load_bias(headers[1], [mapping], space.page_size), address)
    module.build_id = _core_build_id(space, headers[1], module.load_bias)
    module.file_build_id = module.build_id
    module.eh_frame_hdr = next((module.load_bias + p.p_vaddr for p in headers[1]
                                if p.p_type == L.PT.GNU_EH_FRAME), None)
    return module


def _group_file_mappings(mappings: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    groups: dict[str, list[Mapping]] = {}
    for mapping in mappings:
        if mapping.path and mapping.path.startswith("/"):
            groups.setdefault(mapping.path, []).append(mapping)
    return groups


def _main_path(core: Core, facts: dict[str, Any], groups: dict[str, list[Mapping]]) -> str | None:
    """The executable: the mapping holding AT_ENTRY, else facts.proc.exe."""
    entry = core.auxv.get(L.AT.ENTRY)
    for path, group in groups.items():
        if entry is not None and any(entry in m for m in group):
            return path
    exe = _dict(facts.get("proc")).get("exe")
    return exe if isinstance(exe, str) and exe in groups else None


def build_address_space(core: Core, facts: dict[str, Any] | None = None, root: str = "/",
                        exe: str | None = None, max_bytes: int = 0) -> ProcessAddressSpace:
    """Mappings, modules and memory of the crashed process (docs/ARCHITECTURE.md).

    ``root`` is where the process's ``/`` is on this machine (default: the
    facts' ``proc.root``); ``exe`` a copy of the executable to use instead of
    the mapped path (still checked by build-id).
    """
    facts = _dict(facts)
    proc = _dict(facts.get("proc"))
    maps = proc.get("maps")
    mappings = mappings_from_facts(maps) if isinstance(maps, list) and maps else \
        mappings_from_core(core)
    if root == "/" and isinstance(proc.get("root"), str):
        root = proc["root"]
    space = ProcessAddressSpace(core, mappings, max_bytes)
    groups = _group_file_mappings(space.mappings)
    main = _main_path(core, facts, groups)
    paths = list(groups)
    if len(paths) > MAX_MODULES:
        space.problems.append(f"{len(paths)} mapped files: modules built for {MAX_MODULES}")
        paths = ([main] if main else []) + [p for p in paths if p != main][:MAX_MODULES - 1]
    for path in paths:
        module = Module(path=path, start=0, end=0, load_bias=0, is_main=path == main)
        space._add_module(_build_module_guarded(space, module, groups[path], facts, root, exe))
    vdso = _vdso_module(space)
    if vdso is not None:
        space._add_module(vdso)
    space._index_modules()
    return space


def _build_module_guarded(space: ProcessAddressSpace, stub: Module, group: list[Mapping],
                          facts: dict[str, Any], root: str, exe: str | None) -> Module:
    """Build one module; a failure becomes a problem on a bare module, never a raise."""
    try:
        module = _build_module(space, stub.path, group, facts, root,
                               exe if stub.is_main else None)
    except (CoredumpdError, OSError, ValueError) as err:
        module = Module(path=stub.path, start=group[0].start, end=group[-1].end,
                        load_bias=group[0].start, problems=[f"module not built: {err}"])
    module.is_main = stub.is_main
    return module
