"""Whether a mapped library is still the file the loader relocated: its ``.dynamic`` in the core.

When ld.so loads an object at a non-zero bias it adds the bias to the address
entries of the object's own ``.dynamic`` in place (glibc
elf/get-dynamic-info.h, ``ADJUST_DYN_INFO``: DT_HASH, DT_PLTGOT, DT_STRTAB,
DT_SYMTAB, DT_RELA, DT_REL, DT_JMPREL, DT_VERSYM, DT_GNU_HASH), in a writable
segment (x86-64 keeps ``.dynamic`` there, under RELRO).  Those pages are the
process's private copies, which the kernel dumps (an ELF core dumps every
private file mapping with anonymous pages, fs/binfmt_elf.c ``vma_dump_size()``).

Copying a file over a mapped one (``cp``: open with O_TRUNC, write) truncates
the inode, and truncation unmaps the private copies too
(mm/truncate.c ``truncate_pagecache()`` → ``unmap_mapping_range(…, even_cows=1)``):
the next access reads the page again from the file, unrelocated.  So the core
shows, independently of any timestamp:

- ``reverted``: the entries hold the file's own link-time values, not value + bias —
  the relocated pages were discarded (incidents/library-overwritten-in-place.txt:
  DT_STRTAB read as 0x1898);
- ``differs``: the entries are neither the file's values nor them + bias — the
  loader relocated another layout than the file has now;
- nothing for an untouched file (every entry is the file's value + bias).
"""

from __future__ import annotations

from coredumpd.elf import layouts as L
from coredumpd.elf.core import Core
from coredumpd.elf.elffile import ElfFile, ProgramHeader
from coredumpd.errors import CoredumpdError
from coredumpd.image.types import Module

# The entries ld.so relocates in place (ADJUST_DYN_INFO), by name for the evidence.
ADJUSTED = {L.DT.HASH: "DT_HASH", L.DT.PLTGOT: "DT_PLTGOT", L.DT.STRTAB: "DT_STRTAB",
            L.DT.SYMTAB: "DT_SYMTAB", L.DT.RELA: "DT_RELA", L.DT.REL: "DT_REL",
            L.DT.JMPREL: "DT_JMPREL", L.DT.VERSYM: "DT_VERSYM", L.DT.GNU_HASH: "DT_GNU_HASH"}
MAX_DYNAMIC = 1 << 16


def _entries(data: bytes) -> list[tuple[int, int]]:
    entries = []
    for tag, value in L.DYN.iter_unpack(data[:len(data) - len(data) % L.DYN.size]):
        if tag == L.DT.NULL:
            break
        entries.append((tag, value))
    return entries


def _writable_dynamic(phdrs: list[ProgramHeader]) -> ProgramHeader | None:
    """PT_DYNAMIC when it lies in a writable PT_LOAD (else ld.so leaves it alone)."""
    dynamic = next((p for p in phdrs if p.p_type == L.PT.DYNAMIC), None)
    if dynamic is None or not 0 < dynamic.p_filesz <= MAX_DYNAMIC:
        return None
    for load in phdrs:
        if load.p_type == L.PT.LOAD and load.p_flags & L.PF.W and \
                load.p_vaddr <= dynamic.p_vaddr < load.p_vaddr + load.p_memsz:
            return dynamic
    return None


def dynamic_evidence(core: Core, module: Module, elf: ElfFile) -> list[str]:
    """Evidence lines that ``module``'s relocated ``.dynamic`` in the core does not belong
    to ``elf`` (the file on disk now) as ld.so left it; empty when it does or cannot tell."""
    if module.load_bias == 0 or module.is_vdso:
        return []  # nothing to add: relocated and unrelocated values are the same
    try:
        dynamic = _writable_dynamic(elf.program_headers)
        if dynamic is None:
            return []
        on_disk = _entries(elf.read(dynamic.p_offset, dynamic.p_filesz, ".dynamic"))
        address = module.load_bias + dynamic.p_vaddr
        in_core = _entries(core.read_memory(address, dynamic.p_filesz))  # the core's only
    except CoredumpdError:
        return []  # not dumped (coredump_filter), or an unreadable file: no evidence
    return _compare(module, address, on_disk, in_core)


def _compare(module: Module, address: int, on_disk: list[tuple[int, int]],
             in_core: list[tuple[int, int]]) -> list[str]:
    bias = module.load_bias
    reverted, differs = [], []
    for (tag, file_value), (core_tag, core_value) in zip(on_disk, in_core):
        if tag != core_tag:
            differs.append(f"entry {tag:#x} in the file, {core_tag:#x} in the core")
        elif tag in ADJUSTED and core_value != file_value + bias:
            name = ADJUSTED[L.DT(tag)]
            if core_value == file_value:
                reverted.append(f"{name} {core_value:#x}")
            else:
                differs.append(f"{name} {core_value:#x} in the core, {file_value:#x} "
                               f"+ bias {bias:#x} from the file")
    if len(on_disk) != len(in_core):
        differs.append(f"{len(in_core)} entries in the core, {len(on_disk)} in the file")
    lines = []
    if reverted:
        lines.append(f"{module.path}: its .dynamic at {address:#x} in the core holds the "
                     f"file's own unrelocated values ({', '.join(reverted[:4])}), not them + "
                     f"the load bias {bias:#x} that the loader wrote there: the process's "
                     "relocated pages were discarded and read again from the file, which "
                     "a truncating rewrite of the mapped file (cp over it) does")
    if differs:
        lines.append(f"{module.path}: its .dynamic in the core, as the loader relocated it, "
                     f"is not the file's now ({'; '.join(differs[:4])}): the file changed "
                     "after it was loaded")
    return lines
