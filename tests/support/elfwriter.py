"""A tiny ELF64 core writer, to build well-formed, malformed and truncated cores in tests.

Uses the same declared layouts as the reader (coredumpd.elf.layouts), but
packs every field explicitly, so a test can lie about any of them.  Layouts
follow the kernel's fs/binfmt_elf.c (notes first, page-aligned segment data).
"""

from __future__ import annotations

import dataclasses
import struct

from coredumpd.arch import x86_64
from coredumpd.elf import layouts as L

PAGE = 4096


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def note(name: str, note_type: int, desc: bytes, descsz: int | None = None) -> bytes:
    """One note; ``descsz`` overrides the declared size (to lie)."""
    raw_name = name.encode() + b"\0"
    header = L.NHDR.pack(len(raw_name), len(desc) if descsz is None else descsz, note_type)
    padded_name = raw_name + bytes(_align(len(raw_name), 4) - len(raw_name))
    return header + padded_name + desc + bytes(_align(len(desc), 4) - len(desc))


def prstatus(tid: int, registers: dict[str, int] | None = None, signo: int = 11) -> bytes:
    """NT_PRSTATUS descriptor (struct elf_prstatus, x86-64)."""
    registers = registers or {}
    regs = [registers.get(name, 0) for name in x86_64.PRSTATUS_REGISTERS]
    return x86_64.PRSTATUS.pack(signo, 0, 0, signo, 0, 0, tid, 1, tid, tid,
                           0, 0, 0, 0, 0, 0, 0, 0, *regs, 1)


def prpsinfo(pid: int, fname: str = "prog", psargs: str = "prog") -> bytes:
    return L.PRPSINFO.pack(0, b"R", 0, 0, 0, 0, 0, pid, 1, pid, pid,
                           fname.encode(), psargs.encode())


def siginfo(signo: int, code: int, addr: int = 0, errno: int = 0) -> bytes:
    """NT_SIGINFO in the kernel's order: si_signo, si_errno, si_code, union."""
    head = L.SIGINFO_HEAD.pack(signo, errno, code)
    union = L.SIGINFO_FAULT.pack(addr)
    return head + union + bytes(L.SIGINFO_SIZE - len(head) - len(union))


def auxv(pairs: list[tuple[int, int]]) -> bytes:
    return b"".join(L.AUXV_ENTRY.pack(a, v) for a, v in [*pairs, (0, 0)])


def file_note(entries: list[tuple[int, int, int, str]], page_size: int = PAGE,
              count: int | None = None) -> bytes:
    """NT_FILE from (start, end, file_offset_bytes, path); ``count`` overrides (to lie)."""
    head = L.NT_FILE_HEAD.pack(len(entries) if count is None else count, page_size)
    table = b"".join(L.NT_FILE_ENTRY.pack(s, e, o // page_size) for s, e, o, _ in entries)
    names = b"".join(path.encode() + b"\0" for *_, path in entries)
    return head + table + names


@dataclasses.dataclass
class Load:
    """One PT_LOAD: ``data`` is what is written (filesz), ``memsz`` defaults to len(data)."""

    vaddr: int
    data: bytes
    memsz: int | None = None
    flags: int = int(L.PF.R | L.PF.W)


def core(notes: list[bytes], loads: list[Load], pn_xnum: bool = False,
         extra_phdrs: int = 0, section_header: str = "end", sh_info: int | None = None) -> bytes:
    """A complete core: ELF header, phdrs (PT_NOTE first), notes, page-aligned data.

    ``pn_xnum`` stores the phdr count in section header 0 (elf(5)), placed where
    the kernel puts it, after the segment data (``section_header="end"``,
    fs/binfmt_elf.c elf_core_write_extra_data()), or between the program headers
    and the notes (``"early"``); ``sh_info`` overrides the count written there (to
    lie).  ``extra_phdrs`` adds PT_NULL headers (to reach PN_XNUM counts cheaply).
    """
    phnum = 1 + len(loads) + extra_phdrs
    note_data = b"".join(notes)
    phoff = L.EHDR.size
    early = pn_xnum and section_header == "early"
    notes_offset = phoff + phnum * L.PHDR.size + (L.SHDR.size if early else 0)
    offset = _align(notes_offset + len(note_data), PAGE)
    phdrs = [L.PHDR.pack(L.PT.NOTE, 0, notes_offset, 0, 0, len(note_data), 0, 4)]
    body = bytearray()
    for load in loads:
        memsz = len(load.data) if load.memsz is None else load.memsz
        phdrs.append(L.PHDR.pack(L.PT.LOAD, load.flags, offset + len(body), load.vaddr, 0,
                                 len(load.data), memsz, PAGE))
        body += load.data + bytes(_align(len(load.data), PAGE) - len(load.data))
    phdrs += [L.PHDR.pack(L.PT.NULL, 0, 0, 0, 0, 0, 0, 0)] * extra_phdrs
    shoff = 0
    if pn_xnum:
        shoff = phoff + phnum * L.PHDR.size if early else offset + len(body)
    ident = L.ELFMAG + bytes([L.ELFCLASS64, L.ELFDATA2LSB, 1]) + bytes(9)
    ehdr = L.EHDR.pack(ident, L.ET.CORE, L.EM_X86_64, 1, 0, phoff, shoff, 0, L.EHDR.size,
                       L.PHDR.size, L.PN_XNUM if pn_xnum else phnum,
                       L.SHDR.size if pn_xnum else 0, 1 if pn_xnum else 0, 0)
    shdr = L.SHDR.pack(0, 0, 0, 0, 0, 0, 0, phnum if sh_info is None else sh_info, 0, 0) \
        if pn_xnum else b""
    head = ehdr + b"".join(phdrs) + (shdr if early else b"") + note_data
    tail = shdr if pn_xnum and not early else b""
    return head + bytes(offset - len(head)) + bytes(body) + tail


def simple_core(tids: tuple[int, ...] = (100, 101), stack: bytes = b"\x11" * PAGE,
                stack_at: int = 0x7FFF0000) -> bytes:
    """A plausible two-thread SIGSEGV core with one stack segment and one file mapping."""
    notes = []
    for index, tid in enumerate(tids):
        notes.append(note("CORE", L.NT.PRSTATUS,
                          prstatus(tid, {"rip": 0x401000 + index, "rsp": stack_at + 64})))
        if index == 0:
            notes += [note("CORE", L.NT.PRPSINFO, prpsinfo(tids[0])),
                      note("CORE", L.NT.SIGINFO, siginfo(11, 1, 0x10)),
                      note("CORE", L.NT.AUXV, auxv([(L.AT.PAGESZ, PAGE), (L.AT.ENTRY, 0x401000)])),
                      note("CORE", L.NT.FILE, file_note([(0x400000, 0x402000, 0, "/bin/prog")]))]
        notes.append(note("CORE", L.NT.PRFPREG, bytes(512)))
    loads = [Load(0x400000, b"\x7fELF" + bytes(PAGE - 4), memsz=2 * PAGE, flags=int(L.PF.R | L.PF.X)),
             Load(stack_at, stack)]
    return core(notes, loads)


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)
