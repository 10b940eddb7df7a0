"""Operand-level decoding of the instruction at an address, for the rules.

:mod:`coredumpd.symbolize.disasm` gives text; the rules need to know *which*
memory operand an instruction used, whether it read or wrote it, and the
address it computed from the crashed thread's registers.  capstone's detail
mode gives operands and their access (``CS_AC_READ``/``CS_AC_WRITE``); what the
operands mean (how a machine's operand is reduced to plain values, how an
address is computed, which instructions touch memory through no operand) is the
architecture's (:meth:`coredumpd.arch.Arch.plain_operand` and its neighbours).

What capstone says about an instruction is reduced to a :data:`Plain` record (no
register values in it) and remembered by :mod:`coredumpd.symbolize.decoded`, so
that a warm analysis decodes without importing capstone.
"""

from __future__ import annotations

from coredumpd.arch import Arch, MemoryOperand, PlainOperand
from coredumpd.errors import CoredumpdError
from coredumpd.image.types import AddressSpace
from coredumpd.symbolize.decoded import MEMO
from coredumpd.symbolize.disasm import engine
from coredumpd.values import Frozen

# capstone's detail without its objects: (address, size, mnemonic, op_str, bytes,
# operands (Arch.plain_operand), names of registers read)
Plain = tuple[int, int, str, str, bytes, tuple[PlainOperand, ...], tuple[str, ...]]


class DecodedInstruction(Frozen):
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
        plain = _plain(arch, code, address)
        MEMO.put(key, plain or ())
    if not plain:  # remembered as () when capstone could not decode the bytes
        return None
    return _decoded(plain, registers or {}, arch)


def _plain(arch: Arch, code: bytes, address: int) -> Plain | None:
    """What capstone's detail mode says about the first instruction of ``code``."""
    import capstone  # type: ignore[import-untyped]

    try:
        cs = engine(arch.capstone_arch, arch.capstone_mode, detail=True)
        insn = next(cs.disasm(code, address, 1), None)
        if insn is None:
            return None
        operands = tuple(arch.plain_operand(insn, operand) for operand in insn.operands)
        read, _written = insn.regs_access()
        return (insn.address, insn.size, insn.mnemonic, insn.op_str, bytes(insn.bytes),
                operands, tuple(insn.reg_name(r) for r in read))
    except capstone.CsError:
        return None


def _read_code(space: AddressSpace, address: int) -> bytes:
    """Up to 15 bytes at ``address``, fewer when the end of readable memory is closer."""
    for size in (space.arch.max_instruction_size, 8, 4, 2, 1):
        try:
            return space.read(address, size)
        except CoredumpdError:
            continue
    return b""


def _decoded(plain: Plain, registers: dict[str, int], arch: Arch) -> DecodedInstruction:
    address, size, mnemonic, op_str, raw, operands, read = plain
    memory = tuple(arch.memory_operand(operand, _operand_text(op_str, len(operands), position),
                                       registers, address + size)
                   for position, operand in enumerate(operands) if operand[0])
    return DecodedInstruction(address, size, mnemonic, op_str, raw, memory, tuple(read),
                              arch.touches_memory_implicitly(mnemonic))


def _operand_text(op_str: str, count: int, position: int) -> str:
    """The text of operand ``position``; capstone joins operands with ", "."""
    parts = op_str.split(", ")
    return parts[position] if len(parts) == count else op_str


def is_canonical(address: int, address_bits: int) -> bool:
    """True when the bits of ``address`` from ``address_bits - 1`` up are all equal
    (``Arch.address_bits``; x86-64 4-level paging: 48, bits 63..47, SDM vol. 1, 3.3.7.1)."""
    top = address >> (address_bits - 1)
    return top in (0, (1 << (64 - address_bits + 1)) - 1)
