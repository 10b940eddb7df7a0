"""CFI lookup and rule evaluation, checked against binutils' ``readelf -wF``.

The oracle is independent: readelf interprets every FDE of real system
libraries into a table of CFA and register rules per location; we find each
FDE through ``.eh_frame_hdr`` (mapped at a non-zero bias, as in a process)
and evaluate our rules at the start and at the last byte of each row.
"""

from __future__ import annotations

import pathlib
import re
import struct
import subprocess

import pytest

from coredumpd.arch import for_machine, x86_64
from coredumpd.elf import layouts as L
from coredumpd.elf.elffile import ElfFile
from coredumpd.errors import FormatError, MemoryReadError
from coredumpd.unwind import cfa_program, cfi

BIAS = 0x7F1234560000
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
ARCH = x86_64.ARCH
REGISTER_NAMES = {name: number for number, name in enumerate(ARCH.dwarf_registers)}
REGISTER_NAMES["ra"] = ARCH.return_address_column


def rules_at(fde: cfi.Fde, pc: int) -> cfa_program.RuleRow:
    return cfa_program.rules_at(fde, pc, cfa_program.initial_row(fde.cie, ARCH.sp_column))


class ElfFileMemory:
    """An ELF file's PT_LOAD segments mapped at ``bias``: a process image from a file."""

    def __init__(self, path: str, bias: int = BIAS) -> None:
        self.data = pathlib.Path(path).read_bytes()
        self.bias = bias
        fields = L.EHDR.unpack_from(self.data)
        self.arch = for_machine(fields[2])
        phoff, phentsize, phnum = fields[5], fields[9], fields[10]
        self.segments: list[tuple[int, int, int, int]] = []
        self.eh_frame_hdr: int | None = None
        for index in range(phnum):
            p_type, _, offset, vaddr, _, filesz, memsz, _ = L.PHDR.unpack_from(
                self.data, phoff + index * phentsize)
            if p_type == L.PT.LOAD:
                self.segments.append((vaddr + bias, memsz, offset, filesz))
            elif p_type == L.PT.GNU_EH_FRAME:
                self.eh_frame_hdr = vaddr + bias
        self.reads = 0

    def read(self, address: int, size: int) -> bytes:
        self.reads += 1
        for start, memsz, offset, filesz in self.segments:
            if start <= address and address + size <= start + memsz:
                relative = address - start
                chunk = self.data[offset + relative:offset + min(relative + size, filesz)]
                return chunk + b"\0" * (size - len(chunk))
        raise MemoryReadError(address, size, "not mapped")


def parse_readelf_rows(path: str) -> dict[int, list[tuple[int, dict[str, str]]]]:
    """FDE start -> [(location, {column: rule})] from ``readelf -wF``."""
    output = subprocess.run(["readelf", "-wF", path], capture_output=True, text=True,
                            check=False).stdout  # exits 1 on libc (no stderr): output is complete
    tables: dict[int, list[tuple[int, dict[str, str]]]] = {}
    current: list[tuple[int, dict[str, str]]] | None = None
    columns: list[str] = []
    for line in output.splitlines():
        match = re.match(r"[0-9a-f]+ [0-9a-f]+ [0-9a-f]+ FDE cie=[0-9a-f]+ pc=([0-9a-f]+)\.\.", line)
        if match:
            current = tables.setdefault(int(match.group(1), 16), [])
            continue
        if " CIE " in line:
            current = None
            continue
        if line.startswith("   LOC"):
            columns = line.split()[1:]
            continue
        if current is not None and re.match(r"[0-9a-f]{16} ", line):
            cells = re.sub(r"r\d+ \((\w+)\)", r"\1", line).split()  # "r1 (rdx)" -> "rdx"
            current.append((int(cells[0], 16), dict(zip(columns, cells[1:], strict=True))))
    return tables


def describe_rule(rule: cfa_program.RegisterRule | None) -> str:
    """Our rule in readelf's notation (``u``, ``c-16``, ``exp``...)."""
    if rule is None or rule.rule is cfa_program.Rule.UNDEFINED:
        return "u"
    return {
        cfa_program.Rule.SAME_VALUE: lambda: "s",
        cfa_program.Rule.OFFSET: lambda: f"c{rule.value:+d}",
        cfa_program.Rule.VAL_OFFSET: lambda: f"v{rule.value:+d}",
        cfa_program.Rule.REGISTER: lambda: ARCH.dwarf_registers[rule.value],
        cfa_program.Rule.EXPRESSION: lambda: "exp",
        cfa_program.Rule.VAL_EXPRESSION: lambda: "vexp",
    }[rule.rule]()


def describe_cfa(row: cfa_program.RuleRow) -> str:
    if row.cfa_expression is not None:
        return "exp"
    return f"{ARCH.dwarf_registers[row.cfa_register]}{row.cfa_offset:+d}"


def check_library(path: str, every: int = 1) -> int:
    """Compare every row of every ``every``-th FDE of ``path``; returns the rows checked."""
    memory = ElfFileMemory(path)
    assert memory.eh_frame_hdr is not None
    hdr = cfi.EhFrameHdr(memory.read, memory.eh_frame_hdr)
    cies: dict[int, cfi.Cie] = {}
    checked = 0
    for start, rows in list(parse_readelf_rows(path).items())[::every]:
        fde_address = hdr.lookup(start + BIAS)
        assert fde_address is not None, hex(start)
        fde = cfi.parse_fde(memory.read, fde_address, cies)
        assert fde.pc_begin == start + BIAS
        if not rows:
            continue  # readelf prints no table for an FDE without instructions
        ends = [location for location, _ in rows[1:]] + [fde.pc_end - BIAS]
        for (location, cells), end in zip(rows, ends, strict=True):
            for pc in {location, end - 1}:
                row = rules_at(fde, pc + BIAS)
                assert describe_cfa(row) == cells["CFA"], (hex(pc), cells)
                for column, expected in cells.items():
                    if column == "CFA":
                        continue
                    rule = row.registers.get(REGISTER_NAMES[column])
                    assert describe_rule(rule) == expected, (hex(pc), column, cells)
                checked += 1
    return checked


def test_libc_every_fde_matches_readelf() -> None:
    assert check_library(LIBC) > 10_000


@pytest.mark.parametrize(("path", "every"), [("/lib64/ld-linux-x86-64.so.2", 1),
                                             ("/usr/bin/python3", 10)])
def test_other_objects_match_readelf(path: str, every: int) -> None:
    real = pathlib.Path(path).resolve()
    if not real.exists():
        pytest.skip(f"{path} not installed")
    assert check_library(str(real), every) > 100


def test_restore_rt_is_a_signal_frame_with_expressions() -> None:
    """glibc's __restore_rt: 'zRS' CIE, CFA and every register by DWARF expression."""
    memory = ElfFileMemory(LIBC)
    # __restore_rt is a local symbol: find its FDE by the 'S' augmentation.
    assert memory.eh_frame_hdr is not None
    hdr = cfi.EhFrameHdr(memory.read, memory.eh_frame_hdr)
    cies: dict[int, cfi.Cie] = {}
    signal_fdes = []
    for index in range(hdr.count):
        _, fde_address = hdr.entry(index)
        fde = cfi.parse_fde(memory.read, fde_address, cies)
        if fde.cie.signal_frame:
            signal_fdes.append(fde)
    assert len(signal_fdes) == 1
    row = rules_at(signal_fdes[0], signal_fdes[0].pc_begin + 1)
    assert row.cfa_expression is not None
    assert row.registers[ARCH.return_address_column].rule is cfa_program.Rule.EXPRESSION


def test_lying_table_is_detected() -> None:
    """A table entry pointing into the middle of .eh_frame gives a FormatError, not garbage."""
    memory = ElfFileMemory(LIBC)
    assert memory.eh_frame_hdr is not None
    hdr = cfi.EhFrameHdr(memory.read, memory.eh_frame_hdr)
    _, fde_address = hdr.entry(10)
    with pytest.raises(FormatError):
        for shift in range(1, 8):
            cfi.parse_fde(memory.read, fde_address + shift, {})


def test_encoded_pointers() -> None:
    bases = cfi.Bases(data=0x1000, text=0x2000, func=0x3000)
    data = struct.pack("<i", -16)
    assert cfi.read_encoded(data, 0, 0x1B, 0x500, bases) == (0x500 - 16, 4)  # pcrel sdata4
    assert cfi.read_encoded(data, 0, 0x3B, 0x500, bases) == (0x1000 - 16, 4)  # datarel sdata4
    assert cfi.read_encoded(b"\x80\x01", 0, 0x01, 0, bases) == (128, 2)  # uleb128
    assert cfi.read_encoded(b"\x7f", 0, 0x09, 0, bases) == ((1 << 64) - 1, 1)  # sleb128 -1
    memory = {0x1010: struct.pack("<Q", 0xDEADBEEF)}
    pointer = struct.pack("<I", 0x10)
    value, _ = cfi.read_encoded(pointer, 0, 0x80 | 0x30 | 0x03, 0, bases,
                                lambda address, size: memory[address])
    assert value == 0xDEADBEEF  # indirect datarel udata4
    with pytest.raises(FormatError):
        cfi.read_encoded(b"\x00", 0, 0x0B, 0, bases)


def test_cfa_program_state_ops() -> None:
    """remember/restore_state, negative offsets, val_offset, GNU_args_size, advance_loc4."""
    cie = cfi.Cie(0, 1, "zR", 1, -8, 16, 0x1B, 0xFF, False,
                  bytes([0x0C, 7, 8, 0x90, 1]))  # def_cfa rsp+8; offset ra c-8
    program = bytes([
        0x0E, 16,                 # def_cfa_offset 16
        0x86, 2,                  # offset rbp c-16
        0x0A,                     # remember_state
        0x0D, 6,                  # def_cfa_register rbp
        0x2E, 32,                 # GNU_args_size 32
        0x44,                     # advance_loc 4 -> 0x104
        0x0B,                     # restore_state
        0x2F, 3, 2,               # GNU_negative_offset_extended rbx -(2*-8)=+16
        0x14, 12, 1,              # val_offset r12 v-8
        0x04, 0x00, 0x01, 0, 0,   # advance_loc4 0x100 -> 0x204
        0xC6,                     # restore rbp
    ])
    fde = cfi.Fde(0, cie, 0x100, 0x300, program)
    before = rules_at(fde, 0x100)
    assert (before.cfa_register, before.cfa_offset, before.args_size) == (6, 16, 32)
    assert describe_rule(before.registers[6]) == "c-16"
    after = rules_at(fde, 0x104)
    assert (after.cfa_register, after.cfa_offset, after.args_size) == (7, 16, 32)
    assert describe_rule(after.registers[3]) == "c+16"
    assert describe_rule(after.registers[12]) == "v-8"
    assert 6 in after.registers
    assert 6 not in rules_at(fde, 0x204).registers


def test_hostile_records() -> None:
    """Absurd lengths and truncated programs raise FormatError."""
    huge = struct.pack("<I", 0x7FFFFFF0)
    with pytest.raises(FormatError):
        cfi.read_record(lambda address, size: huge[:size], 0)
    cie = cfi.Cie(0, 1, "zR", 1, -8, 16, 0x1B, 0xFF, False, b"")
    for program in (bytes([0x0B]), bytes([0x10, 3, 50, 1]), bytes([0x03, 1]), bytes([0x3F])):
        fde = cfi.Fde(0, cie, 0, 0x100, program)
        with pytest.raises(FormatError):
            rules_at(fde, 0x50)


def test_section_index_agrees_with_the_hdr_table() -> None:
    """The whole-section index (static executables, .debug_frame) finds what the hdr finds."""
    memory = ElfFileMemory(LIBC)
    assert memory.eh_frame_hdr is not None
    hdr = cfi.EhFrameHdr(memory.read, memory.eh_frame_hdr)
    with ElfFile.open(LIBC) as elf:
        section = elf.section(".eh_frame")
        assert section is not None
        index = cfi.SectionIndex(elf.section_data(section), section.sh_addr + BIAS, True)
    assert len(index.entries) == hdr.count
    cies: dict[int, cfi.Cie] = {}
    for number in range(0, hdr.count, 7):
        location, address = hdr.entry(number)
        expected = cfi.parse_fde(memory.read, address, cies)
        for pc in (location, expected.pc_end - 1):
            found = index.find(pc)
            assert found is not None and (found.pc_begin, found.pc_end) == \
                (expected.pc_begin, expected.pc_end)
            assert found.instructions == expected.instructions
    assert index.find(BIAS) is None


def test_debug_frame_section_matches_readelf(tmp_path: pathlib.Path) -> None:
    """A .debug_frame (gcc -g without unwind tables), read at a bias, against readelf."""
    source = tmp_path / "f.c"
    source.write_text("int g(int);\nint f(int x) { return g(x * 2) + g(x) + 1; }\n"
                      "int h(int x) { int a[40]; a[x] = x; return f(a[3]) + a[x + 1]; }\n")
    binary = tmp_path / "f.so"
    subprocess.run(["gcc", "-g", "-O2", "-shared", "-fPIC", "-fno-asynchronous-unwind-tables",
                    "-fno-unwind-tables", "-o", str(binary), str(source)], check=True)
    output = subprocess.run(["readelf", "--debug-dump=frames-interp", str(binary)],
                            capture_output=True, text=True, check=False).stdout
    assert ".debug_frame" in output
    with ElfFile.open(str(binary)) as elf:
        section = elf.section(".debug_frame")
        assert section is not None
        index = cfi.SectionIndex(elf.section_data(section), 0, False, bias=BIAS)
    starts = [int(m.group(1), 16) for m in re.finditer(r"FDE cie=\w+ pc=([0-9a-f]+)\.\.",
                                                        output)]
    assert starts and sorted(starts) == [begin - BIAS for begin, _, _ in index.entries]
    for start in starts:
        fde = index.find(start + BIAS)
        assert fde is not None and fde.pc_begin == start + BIAS
        assert rules_at(fde, fde.pc_end - 1).cfa_register == 7
