"""The CFA program: DW_CFA_* instructions of a CIE and an FDE run into the rules at one pc.

DWARF 5 section 6.4.2, with the GNU extensions of binutils'
``include/dwarf2.def``; the FDEs and CIEs come from :mod:`coredumpd.unwind.cfi`.
The program never assumes a machine: the CFA register before any
``DW_CFA_def_cfa`` is the caller's (the architecture's stack pointer).
"""

from __future__ import annotations

import enum
import struct
from typing import Any

from coredumpd.errors import FormatError
from coredumpd.unwind.cfi import Bases, Cie, Fde, read_encoded
from coredumpd.unwind.dwarf_expr import MASK, read_sleb128, read_uleb128
from coredumpd.values import Frozen, Value, replace

MAX_STATE_STACK = 64  # nested DW_CFA_remember_state


class Rule(enum.Enum):
    """How to recover a register of the caller (DWARF 5, 6.4.1)."""

    UNDEFINED = "undefined"
    SAME_VALUE = "same"
    OFFSET = "offset"  # saved at CFA + N
    VAL_OFFSET = "val_offset"  # value is CFA + N
    REGISTER = "register"  # in register N
    EXPRESSION = "expression"  # saved at the address the expression computes
    VAL_EXPRESSION = "val_expression"  # value is what the expression computes


class RegisterRule(Frozen):
    rule: Rule
    value: int = 0  # offset or register number
    expression: bytes = b""


class RuleRow(Value):
    """The CFA rule and register rules in effect at one pc."""

    cfa_register: int  # DWARF number (the stack pointer until a CIE says otherwise)
    cfa_offset: int = 0
    cfa_expression: bytes | None = None
    registers: dict[int, RegisterRule] = {}  # noqa: RUF012 - one per instance (values.py)
    args_size: int = 0

    def copy(self) -> RuleRow:
        return replace(self, registers=dict(self.registers))


# Operands of the non-primary DW_CFA_* instructions (DWARF 5, 6.4.2; GNU extensions from
# binutils' include/dwarf2.def): r register (ULEB128), u ULEB128, s SLEB128, b block
# (ULEB128 length + bytes), a address (the FDE's pointer encoding), 1/2/4/8 fixed size.
_OPERANDS = {
    0x00: "", 0x01: "a", 0x02: "1", 0x03: "2", 0x04: "4", 0x05: "ru", 0x06: "r", 0x07: "r",
    0x08: "r", 0x09: "rr", 0x0A: "", 0x0B: "", 0x0C: "ru", 0x0D: "r", 0x0E: "u", 0x0F: "b",
    0x10: "rb", 0x11: "rs", 0x12: "rs", 0x13: "s", 0x14: "ru", 0x15: "rs", 0x16: "rb",
    0x1D: "8",  # DW_CFA_MIPS_advance_loc8
    0x2D: "",  # DW_CFA_GNU_window_save (SPARC) / AArch64 negate_ra_state: nothing on x86-64
    0x2E: "u",  # DW_CFA_GNU_args_size
    0x2F: "ru",  # DW_CFA_GNU_negative_offset_extended
}
_FIXED_OPERANDS = {"1": struct.Struct("<B"), "2": struct.Struct("<H"), "4": struct.Struct("<I"),
                   "8": struct.Struct("<Q")}


class _Program:
    """Executes CFA instructions into a :class:`RuleRow` (DWARF 5, 6.4.2)."""

    def __init__(self, cie: Cie, initial: RuleRow, target: int, location: int) -> None:
        self.cie = cie
        self.row = initial.copy()
        self.initial = initial
        self.target = target
        self.location = location
        self.saved: list[RuleRow] = []

    def run(self, code: bytes, bases: Bases) -> RuleRow:
        position = 0
        while position < len(code):
            op = code[position]
            position += 1
            high, low = op & 0xC0, op & 0x3F
            if high == 0x40:  # DW_CFA_advance_loc
                if not self.advance(low * self.cie.code_align):
                    break
            elif high == 0x80:  # DW_CFA_offset
                offset, position = read_uleb128(code, position)
                self.set(low, Rule.OFFSET, offset * self.cie.data_align)
            elif high == 0xC0:  # DW_CFA_restore
                self.restore(low)
            else:
                if op not in _OPERANDS:
                    raise FormatError(f"unknown DW_CFA instruction {op:#x}")
                operands, position = self.operands(_OPERANDS[op], code, position, bases)
                if not self.execute(op, operands):
                    break
        return self.row

    def operands(self, kinds: str, code: bytes, position: int, bases: Bases) -> \
            tuple[list[Any], int]:
        values: list[Any] = []
        for kind in kinds:
            value: Any
            if kind in "ru":
                value, position = read_uleb128(code, position)
            elif kind == "s":
                value, position = read_sleb128(code, position)
            elif kind == "b":
                length, position = read_uleb128(code, position)
                if position + length > len(code):
                    raise FormatError("DW_CFA expression block runs past its FDE")
                value, position = code[position:position + length], position + length
            elif kind == "a":
                value, position = read_encoded(code, position, self.cie.fde_encoding & 0x7F, 0,
                                               bases)
            else:
                layout = _FIXED_OPERANDS[kind]
                if position + layout.size > len(code):
                    raise FormatError("DW_CFA operand runs past its FDE")
                (value,), position = layout.unpack_from(code, position), position + layout.size
            values.append(value)
        return values, position

    def execute(self, op: int, args: list[Any]) -> bool:
        """Apply one instruction; False once the location passed the target."""
        data_align = self.cie.data_align
        match op:
            case 0x01:  # DW_CFA_set_loc
                self.location = args[0]
                return bool(self.location <= self.target)
            case 0x02 | 0x03 | 0x04 | 0x1D:  # DW_CFA_advance_loc1/2/4/8
                return self.advance(args[0] * self.cie.code_align)
            case 0x05 | 0x11:  # DW_CFA_offset_extended(_sf)
                self.set(args[0], Rule.OFFSET, args[1] * data_align)
            case 0x2F:  # DW_CFA_GNU_negative_offset_extended
                self.set(args[0], Rule.OFFSET, -args[1] * data_align)
            case 0x14 | 0x15:  # DW_CFA_val_offset(_sf)
                self.set(args[0], Rule.VAL_OFFSET, args[1] * data_align)
            case 0x06:  # DW_CFA_restore_extended
                self.restore(args[0])
            case 0x07 | 0x08:  # DW_CFA_undefined, DW_CFA_same_value
                self.set(args[0], Rule.UNDEFINED if op == 0x07 else Rule.SAME_VALUE)
            case 0x09:  # DW_CFA_register
                self.set(args[0], Rule.REGISTER, args[1])
            case 0x0A:  # DW_CFA_remember_state
                self.remember_state()
            case 0x0B:  # DW_CFA_restore_state
                self.restore_state()
            case 0x0C | 0x12:  # DW_CFA_def_cfa(_sf)
                offset = args[1] if op == 0x0C else args[1] * data_align
                self.row.cfa_register, self.row.cfa_offset = args[0], offset
                self.row.cfa_expression = None
            case 0x0D:  # DW_CFA_def_cfa_register
                self.row.cfa_register, self.row.cfa_expression = args[0], None
            case 0x0E | 0x13:  # DW_CFA_def_cfa_offset(_sf)
                self.row.cfa_offset = args[0] if op == 0x0E else args[0] * data_align
            case 0x0F:  # DW_CFA_def_cfa_expression
                self.row.cfa_expression = args[0]
            case 0x10 | 0x16:  # DW_CFA_expression, DW_CFA_val_expression
                rule = Rule.EXPRESSION if op == 0x10 else Rule.VAL_EXPRESSION
                self.set(args[0], rule, 0, args[1])
            case 0x2E:  # DW_CFA_GNU_args_size
                self.row.args_size = args[0]
        return True

    def advance(self, delta: int) -> bool:
        self.location += delta
        return self.location <= self.target

    def set(self, register: int, rule: Rule, value: int = 0, expression: bytes = b"") -> None:
        self.row.registers[register] = RegisterRule(rule, value, expression)

    def restore(self, register: int) -> None:
        if register in self.initial.registers:
            self.row.registers[register] = self.initial.registers[register]
        else:
            self.row.registers.pop(register, None)

    def remember_state(self) -> None:
        if len(self.saved) >= MAX_STATE_STACK:
            raise FormatError("DW_CFA_remember_state nested too deep")
        self.saved.append(self.row.copy())

    def restore_state(self) -> None:
        if not self.saved:
            raise FormatError("DW_CFA_restore_state without remember_state")
        args_size = self.row.args_size  # GNU_args_size is not part of the saved state (libgcc)
        self.row = self.saved.pop()
        self.row.args_size = args_size


def initial_row(cie: Cie, stack_pointer: int) -> RuleRow:
    """The rules the CIE's initial instructions establish (DW_CFA_restore's target).

    ``stack_pointer``: the architecture's DWARF number for it (``Arch.sp_column``).
    """
    return _Program(cie, RuleRow(stack_pointer), MASK, 0).run(cie.instructions, Bases())


def rules_at(fde: Fde, pc: int, initial: RuleRow) -> RuleRow:
    """The row of the CFI table for ``pc`` inside ``fde``, from the CIE's ``initial`` row."""
    program = _Program(fde.cie, initial, pc, fde.pc_begin)
    return program.run(fde.instructions, Bases(func=fde.pc_begin))
