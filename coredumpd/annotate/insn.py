"""Operand-level decoding of one x86-64 instruction, for the rules.

The engine comes from the space's architecture (:mod:`coredumpd.arch`); the
operand model below (capstone's ``x86`` operands, ``e``/``d`` subregisters)
is x86's: another machine brings its own.

:mod:`coredumpd.symbolize.disasm` gives text; the rules need to know *which*
memory operand an instruction used, whether it read or wrote it, and the
address it computed from the crashed thread's registers.  capstone's detail
mode gives operands and their access (``CS_AC_READ``/``CS_AC_WRITE``); the
effective address is ``base + index * scale + disp`` (Intel SDM vol. 1,
3.7.5 "Specifying an Offset"), with ``rip`` meaning the next instruction.

What capstone says about an instruction is reduced to a :data:`Plain` record (no
register values in it) and remembered by :mod:`coredumpd.symbolize.decoded`, so
that a warm analysis decodes without importing capstone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from coredumpd.errors import CoredumpdError
from coredumpd.image.types import AddressSpace
from coredumpd.symbolize.decoded import MEMO
from coredumpd.symbolize.disasm import engine

# capstone's x86 detail without its objects: (address, size, mnemonic, op_str, bytes,
# operands as (memory?, access, base, index, scale, disp), names of registers read)
Operand = tuple[bool, int, str | None, str | None, int, int]
Plain = tuple[int, int, str, str, bytes, tuple[Operand, ...], tuple[str, ...]]
CS_AC_READ, CS_AC_WRITE = 1, 2  # capstone.h cs_ac_type


@dataclasses.dataclass(frozen=True)
class MemoryOperand:
    """One memory operand: its text, how it is accessed, and its address if computable."""

    text: str
    reads: bool
    writes: bool
    base: str | None
    index: str | None
    address: int | None  # None when a register it uses is unknown

    @property
    def access(self) -> str:
        return "write" if self.writes and not self.reads else (
            "read-modify-write" if self.writes else "read")


@dataclasses.dataclass(frozen=True)
class DecodedInstruction:
    address: int
    size: int
    mnemonic: str
    op_str: str
    raw: bytes
    memory: tuple[MemoryOperand, ...]
    registers_read: tuple[str, ...]
    implicit_memory: bool  # push/pop/call/ret/string ops touch memory without an operand

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()

    def describe(self) -> str:
        return f"{self.address:#x}: {self.raw.hex(' ')}  {self.text}"


def decode_one(space: AddressSpace, address: int,
               registers: dict[str, int] | None = None) -> DecodedInstruction | None:
    """Decode the instruction at ``address``; None when its bytes cannot be read or decoded."""
    code = _read_code(space, address)
    if not code:
        return None
    arch = space.arch
    key = ("detail", arch.capstone_arch, arch.capstone_mode, address, code)
    plain = MEMO.get(key)
    if plain is None:
        plain = _plain(arch.capstone_arch, arch.capstone_mode, code, address)
        MEMO.put(key, plain or ())
    if not plain:  # remembered as () when capstone could not decode the bytes
        return None
    return _decoded(plain, registers or {}, arch.pc_name)


def _plain(capstone_arch: str, capstone_mode: str, code: bytes, address: int) -> Plain | None:
    """What capstone's detail mode says about the first instruction of ``code``."""
    import capstone  # type: ignore[import-untyped]
    from capstone import x86

    try:
        cs = engine(capstone_arch, capstone_mode, detail=True)
        insn = next(cs.disasm(code, address, 1), None)
        if insn is None:
            return None
        operands = tuple(_plain_operand(insn, operand, x86.X86_OP_MEM)
                         for operand in insn.operands)
        read, _written = insn.regs_access()
        return (insn.address, insn.size, insn.mnemonic, insn.op_str, bytes(insn.bytes),
                operands, tuple(insn.reg_name(r) for r in read))
    except capstone.CsError:
        return None


def _plain_operand(insn: Any, operand: Any, memory_type: int) -> Operand:
    if operand.type != memory_type:
        return (False, operand.access, None, None, 0, 0)
    mem = operand.mem
    return (True, operand.access, insn.reg_name(mem.base) if mem.base else None,
            insn.reg_name(mem.index) if mem.index else None, mem.scale, mem.disp)


def _read_code(space: AddressSpace, address: int) -> bytes:
    """Up to 15 bytes at ``address``, fewer when the end of readable memory is closer."""
    for size in (space.arch.max_instruction_size, 8, 4, 2, 1):
        try:
            return space.read(address, size)
        except CoredumpdError:
            continue
    return b""


def _decoded(plain: Plain, registers: dict[str, int], pc_name: str) -> DecodedInstruction:
    address, size, mnemonic, op_str, raw, operands, read = plain
    memory = [_memory_operand(op_str, len(operands), position, operand, registers,
                              address + size, pc_name)
              for position, operand in enumerate(operands) if operand[0]]
    implicit = mnemonic.split()[0] in _IMPLICIT_MEMORY or any(
        mnemonic.startswith(prefix) for prefix in ("rep", "movs", "stos", "lods", "scas",
                                                   "cmps"))
    return DecodedInstruction(address, size, mnemonic, op_str, raw, tuple(memory),
                              tuple(read), implicit)


_IMPLICIT_MEMORY = frozenset({"push", "pop", "call", "ret", "enter", "leave", "pushf",
                              "popf", "pushfq", "popfq"})


def _memory_operand(op_str: str, count: int, position: int, operand: Operand,
                    registers: dict[str, int], next_pc: int, pc_name: str) -> MemoryOperand:
    _memory, access, base, index, index_scale, disp = operand
    address: int | None = disp
    for name, scale in ((base, 1), (index, index_scale)):
        if name is None or address is None:
            continue
        value = next_pc if name == pc_name else register_value(registers, name)
        address = None if value is None else address + value * scale
    if address is not None:
        address &= (1 << 64) - 1
    return MemoryOperand(_operand_text(op_str, count, position), bool(access & CS_AC_READ),
                         bool(access & CS_AC_WRITE), base, index, address)


def _operand_text(op_str: str, count: int, position: int) -> str:
    """The text of operand ``position``; capstone joins operands with ", "."""
    parts = op_str.split(", ")
    return parts[position] if len(parts) == count else op_str


_SUBREGISTERS = {"e": 32, "": 64}


def register_value(registers: dict[str, int], name: str) -> int | None:
    """Value of a 64- or 32-bit general register (``rax``, ``eax``, ``r8d``) from prstatus."""
    if name in registers:
        return registers[name]
    if name.startswith("e") and "r" + name[1:] in registers:
        return registers["r" + name[1:]] & 0xFFFFFFFF
    if name.startswith("r") and name.endswith("d") and name[:-1] in registers:
        return registers[name[:-1]] & 0xFFFFFFFF
    return None


def is_canonical(address: int, address_bits: int) -> bool:
    """True when the bits of ``address`` from ``address_bits - 1`` up are all equal
    (``Arch.address_bits``; x86-64 4-level paging: 48, bits 63..47, SDM vol. 1, 3.3.7.1)."""
    top = address >> (address_bits - 1)
    return top in (0, (1 << (64 - address_bits + 1)) - 1)
