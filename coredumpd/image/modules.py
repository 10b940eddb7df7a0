"""Modules of a crashed process: one per mapped ELF object, and the vDSO.

For each mapped path: the ELF header page the kernel dumps (fs/binfmt_elf.c
``vma_dump_size()``: the first page of a file mapping that starts with ELF
magic) gives the program headers, hence the load bias (a PT_LOAD is mapped at
PAGESTART(bias + p_vaddr) from file offset PAGESTART(p_offset), ``elf_map()``),
the PT_GNU_EH_FRAME address and the build-id note.  The file on this machine
(resolved inside the process's root) is trusted only when it is the same
object (build-ids equal; without build-ids, the same first page), and the
facts recorded at dump time say whether it was deleted, replaced or modified.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

from coredumpd.clock import start_time_slack_ns
from coredumpd.elf import layouts as L
from coredumpd.elf.core import Core
from coredumpd.elf.elffile import ElfFile, ProgramHeader, parse_program_headers
from coredumpd.elf.notes import find_build_id
from coredumpd.errors import CoredumpdError
from coredumpd.image.debuginfo import find_debug_file, same_build_id
from coredumpd.image.debuginfod import Debuginfod
from coredumpd.image.types import Mapping, Module

VDSO = "[vdso]"
MAX_PHDRS_IN_CORE = 256
MAX_SYMLINKS = 40  # as the kernel's path walk (MAXSYMLINKS)


class CoreView(Protocol):
    """What module building needs of the address space being built."""

    core: Core
    page_size: int

    def mapping_at(self, address: int) -> Mapping | None: ...


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


def _headers_from_core(space: CoreView, start: int) -> tuple[int, list[
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


def _core_build_id(space: CoreView, phdrs: list[ProgramHeader],
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


def dict_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _file_changes(module: Module, facts: dict[str, Any]) -> None:
    """deleted / replaced / modified_in_place from the facts (docs/ARCHITECTURE.md)."""
    proc = dict_or_empty(facts.get("proc"))
    record = dict_or_empty(dict_or_empty(proc.get("files")).get(module.path))
    now, mapped = dict_or_empty(record.get("now")), dict_or_empty(record.get("mapped"))
    if "error" in now:
        module.deleted = True
    elif now and mapped:
        if (now.get("dev"), now.get("inode")) != (mapped.get("dev"), mapped.get("inode")):
            module.replaced = True
        elif now.get("mtime_ns") != mapped.get("mtime_ns"):
            module.modified_in_place = True
    start_us, mtime_ns = proc.get("start_time_us"), mapped.get("mtime_ns")
    if isinstance(start_us, int) and isinstance(mtime_ns, int) and mtime_ns > start_us * 1000 + start_time_slack_ns():
        module.modified_in_place = True
    mapped_object = dict_or_empty(dict_or_empty(facts.get("mapped_objects")).get(module.path))
    reason = mapped_object.get("reason")
    if reason == "deleted":
        module.deleted = True
    elif reason == "replaced":
        module.replaced = True
    elif reason == "modified":
        module.modified_in_place = True
    state = record.get("state") or reason
    module.state = state if isinstance(state, str) else None
    kept = mapped_object.get("kept")
    module.kept = kept if isinstance(kept, str) and os.path.isfile(kept) else None


def use_debuginfod(space: CoreView, module: Module, client: Debuginfod,
                   problems: list[str]) -> None:
    """What this machine lacks for ``module``, by its build-id from debuginfod (or its
    cache): the executable or library itself, then its debug file."""
    if module.is_vdso or not module.build_id:
        return
    build_id = module.build_id.hex()
    if module.host_path is None:
        path = client.find(build_id, "executable", problems)
        if path is not None:
            _judge_file(space, module, path, True, "/")
    if module.host_path is not None and module.debug_path is None:
        path = client.find(build_id, "debuginfo", problems)
        if path is not None and same_build_id(path, module.build_id):
            module.debug_path = path


def symbols_source(module: Module, cache: str | None) -> str | None:
    """Where the module's symbols come from: ``debug file``, ``debuginfod`` (its cache),
    ``kept copy``, ``file`` (the path on this machine), ``core`` (vDSO); None: nowhere."""
    def cached(path: str | None) -> bool:
        return cache is not None and path is not None and \
            path.startswith(cache.rstrip("/") + "/")
    if module.is_vdso:
        return "core" if module.build_id else None
    if module.debug_path is not None:
        return "debuginfod" if cached(module.debug_path) else "debug file"
    if module.host_path is None:
        return None
    if cached(module.host_path):
        return "debuginfod"
    return "kept copy" if module.host_path == module.kept else "file"


def module_state(module: Module) -> str:
    """The verdict of CONTRACT.md ``modules``: the dump-time one, else what the
    analysis found (flags set from the facts, the build-ids, the relocated pages)."""
    if module.modified_in_place:
        return "modified"
    if module.state in ("deleted", "replaced", "other-namespace"):
        return module.state
    if module.deleted and module.replaced:
        return "replaced"
    if module.deleted:
        return "deleted"
    if module.replaced:
        return "replaced"
    return module.state or "same"


def _judge_file(space: CoreView, module: Module, candidate: str,
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


def _trust(space: CoreView, module: Module, candidate: str, header_in_core: bool,
           first_page: bytes) -> None:
    """The build-id rule of docs/ARCHITECTURE.md; the reason goes to module.problems."""
    if module.build_id and module.file_build_id:
        if module.build_id == module.file_build_id:
            module.host_path = candidate
        else:
            module.problems.append(f"{candidate} has build-id {module.file_build_id.hex()}, "
                                   f"the process mapped {module.build_id.hex()}")
            # another file is at the path now (deleted may hold too); not for --exe copies,
            # nor for a container's own file that the host's path does not give
            module.replaced = module.replaced or (candidate.endswith(module.path)
                                                  and module.state != "other-namespace")
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


def _judge_by_header_page(space: CoreView, module: Module, candidate: str,
                          first_page: bytes) -> None:
    """Without build-ids, the dumped first page must equal the file's."""
    dumped = space.core.read_memory_partial(module.start, len(first_page))
    if module.file_build_id is None and dumped and first_page.startswith(dumped):
        module.host_path = candidate
        module.problems.append("no build-id: the file matched by its first page only")
    else:
        module.problems.append(f"{candidate} differs from the mapped file (first page)")
        module.replaced = module.replaced or (candidate.endswith(module.path)
                                              and module.state != "other-namespace")


def _is_other_file(candidate: str) -> bool:
    """True when ``candidate`` is a regular file that is not ELF (locale-archive, fonts)."""
    try:
        if not os.path.isfile(candidate):
            return False
        with open(candidate, "rb") as handle:
            return handle.read(4) != L.ELFMAG
    except OSError:
        return False


def _build_module(space: CoreView, path: str, group: list[Mapping],
                  facts: dict[str, Any], root: str, exe: str | None) -> Module | None:
    """The module of one mapped object, or None when it is a mapped data file."""
    start, end = group[0].start, max(m.end for m in group)
    module = Module(path=path, start=start, end=end, load_bias=start,
                    deleted=any(m.deleted for m in group))
    header_at = next((m.start for m in group if m.file_offset == 0), None)
    headers = _headers_from_core(space, header_at) if header_at is not None else None
    _file_changes(module, facts)
    candidate = module.kept or exe or resolve_in_root(path, root)
    if headers is None and _is_other_file(candidate):
        return None
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


def vdso_module(space: CoreView) -> Module | None:
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


def group_file_mappings(mappings: Sequence[Mapping]) -> list[tuple[str, list[Mapping]]]:
    """File mappings grouped per object: by path, a new group at each offset-0
    mapping of a path already seen (the same library loaded twice, dlmopen)."""
    groups: list[tuple[str, list[Mapping]]] = []
    current: dict[str, list[Mapping]] = {}
    for mapping in mappings:
        if not mapping.path or not mapping.path.startswith("/"):
            continue
        group = current.get(mapping.path)
        if group is None or (mapping.file_offset == 0 and any(
                m.file_offset == 0 for m in group)):
            group = current[mapping.path] = []
            groups.append((mapping.path, group))
        group.append(mapping)
    return groups


def main_path(core: Core, facts: dict[str, Any],
              groups: list[tuple[str, list[Mapping]]]) -> str | None:
    """The executable: the mapping holding AT_ENTRY, else facts.proc.exe."""
    entry = core.auxv.get(L.AT.ENTRY)
    for path, group in groups:
        if entry is not None and any(entry in m for m in group):
            return path
    exe = dict_or_empty(facts.get("proc")).get("exe")
    return exe if isinstance(exe, str) and any(exe == path for path, _ in groups) else None



def build_module(space: CoreView, path: str, group: list[Mapping], facts: dict[str, Any],
                 root: str, exe: str | None, is_main: bool) -> Module | None:
    """One module (None for a mapped data file); a failure becomes a problem, never a raise."""
    try:
        module = _build_module(space, path, group, facts, root, exe if is_main else None)
    except (CoredumpdError, OSError, ValueError) as err:
        module = Module(path=path, start=group[0].start, end=group[-1].end,
                        load_bias=group[0].start, problems=[f"module not built: {err}"])
    if module is not None:
        module.is_main = is_main
    return module
