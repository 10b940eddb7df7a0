"""A DWARF expression evaluator for call-frame information.

Evaluates the stack-machine expressions found in ``DW_CFA_def_cfa_expression``,
``DW_CFA_expression`` and ``DW_CFA_val_expression`` (DWARF 5, section 2.5 and
6.4.2): what glibc and binutils emit on x86-64 — the PLT's CFA expression
(``breg7 rsp+8; breg16 rip+0; lit15; and; lit11; ge; lit3; shl; plus``) and
``__restore_rt``'s signal-frame rules (``breg7 rsp+N; deref``) — and the rest
of the operations that make sense without debug information.

Input is hostile: every operand read is bounds-checked, the number of steps is
capped, stack underflow and bad branch targets raise
:class:`~coredumpd.errors.FormatError`.  Arithmetic is modulo 2**64; the
comparisons and ``div``/``shra`` are signed, as DWARF 5 section 2.5.1.4 says.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from coredumpd.errors import FormatError, LimitExceeded

MASK = (1 << 64) - 1
MAX_STACK = 1024

RegisterReader = Callable[[int], int]  # DWARF register number -> value (or raises)
MemoryReader = Callable[[int, int], bytes]  # address, size -> exactly size bytes

# Operation codes (DWARF 5, section 7.7.1, table 7.9).
DW_OP_addr = 0x03
DW_OP_deref = 0x06
DW_OP_const1u = 0x08
DW_OP_const1s = 0x09
DW_OP_const2u = 0x0A
DW_OP_const2s = 0x0B
DW_OP_const4u = 0x0C
DW_OP_const4s = 0x0D
DW_OP_const8u = 0x0E
DW_OP_const8s = 0x0F
DW_OP_constu = 0x10
DW_OP_consts = 0x11
DW_OP_dup = 0x12
DW_OP_drop = 0x13
DW_OP_over = 0x14
DW_OP_pick = 0x15
DW_OP_swap = 0x16
DW_OP_rot = 0x17
DW_OP_abs = 0x19
DW_OP_and = 0x1A
DW_OP_div = 0x1B
DW_OP_minus = 0x1C
DW_OP_mod = 0x1D
DW_OP_mul = 0x1E
DW_OP_neg = 0x1F
DW_OP_not = 0x20
DW_OP_or = 0x21
DW_OP_plus = 0x22
DW_OP_plus_uconst = 0x23
DW_OP_shl = 0x24
DW_OP_shr = 0x25
DW_OP_shra = 0x26
DW_OP_xor = 0x27
DW_OP_bra = 0x28
DW_OP_eq = 0x29
DW_OP_ge = 0x2A
DW_OP_gt = 0x2B
DW_OP_le = 0x2C
DW_OP_lt = 0x2D
DW_OP_ne = 0x2E
DW_OP_skip = 0x2F
DW_OP_lit0 = 0x30
DW_OP_lit31 = 0x4F
DW_OP_breg0 = 0x70
DW_OP_breg31 = 0x8F
DW_OP_bregx = 0x92
DW_OP_deref_size = 0x94
DW_OP_nop = 0x96
DW_OP_stack_value = 0x9F

_FIXED_CONSTANTS = {
    DW_OP_const1u: struct.Struct("<B"), DW_OP_const1s: struct.Struct("<b"),
    DW_OP_const2u: struct.Struct("<H"), DW_OP_const2s: struct.Struct("<h"),
    DW_OP_const4u: struct.Struct("<I"), DW_OP_const4s: struct.Struct("<i"),
    DW_OP_const8u: struct.Struct("<Q"), DW_OP_const8s: struct.Struct("<q"),
    DW_OP_addr: struct.Struct("<Q"),
}


def _signed(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


def read_uleb128(data: bytes, position: int) -> tuple[int, int]:
    """Decode an unsigned LEB128 at ``position``; returns (value, next position)."""
    result = shift = 0
    while True:
        if position >= len(data):
            raise FormatError("LEB128 runs past the end of its block", position)
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result & MASK if shift > 64 else result, position
        if shift > 70:
            raise FormatError("LEB128 longer than 10 bytes", position)


def read_sleb128(data: bytes, position: int) -> tuple[int, int]:
    """Decode a signed LEB128 at ``position``; returns (value, next position)."""
    start = position
    value, position = read_uleb128(data, position)
    bits = 7 * (position - start)
    if data[position - 1] & 0x40:
        value -= 1 << bits
    return value, position


def _binary(op: int, a: int, b: int) -> int:
    """``a OP b`` where ``b`` was on top of the stack (DWARF 5, 2.5.1.4)."""
    if op == DW_OP_and:
        return a & b
    if op == DW_OP_or:
        return a | b
    if op == DW_OP_xor:
        return a ^ b
    if op == DW_OP_plus:
        return (a + b) & MASK
    if op == DW_OP_minus:
        return (a - b) & MASK
    if op == DW_OP_mul:
        return (a * b) & MASK
    if op in (DW_OP_div, DW_OP_mod):
        if b == 0:
            raise FormatError("DWARF expression divides by zero")
        if op == DW_OP_mod:
            return a % b
        quotient = abs(_signed(a)) // abs(_signed(b))
        negative = (_signed(a) < 0) != (_signed(b) < 0)
        return (-quotient if negative else quotient) & MASK
    if op == DW_OP_shl:
        return (a << b) & MASK if b < 64 else 0
    if op == DW_OP_shr:
        return a >> b if b < 64 else 0
    if op == DW_OP_shra:
        return (_signed(a) >> min(b, 63)) & MASK
    return _compare(op, _signed(a), _signed(b))


def _compare(op: int, a: int, b: int) -> int:
    result = {DW_OP_eq: a == b, DW_OP_ge: a >= b, DW_OP_gt: a > b,
              DW_OP_le: a <= b, DW_OP_lt: a < b, DW_OP_ne: a != b}[op]
    return int(result)


_BINARY_OPS = frozenset((DW_OP_and, DW_OP_or, DW_OP_xor, DW_OP_plus, DW_OP_minus, DW_OP_mul,
                         DW_OP_div, DW_OP_mod, DW_OP_shl, DW_OP_shr, DW_OP_shra, DW_OP_eq,
                         DW_OP_ge, DW_OP_gt, DW_OP_le, DW_OP_lt, DW_OP_ne))


class _Machine:
    """One evaluation: the stack, the position, the step budget."""

    def __init__(self, expr: bytes, registers: RegisterReader, memory: MemoryReader,
                 max_steps: int) -> None:
        self.expr = expr
        self.registers = registers
        self.memory = memory
        self.max_steps = max_steps
        self.stack: list[int] = []
        self.position = 0

    def pop(self) -> int:
        if not self.stack:
            raise FormatError("DWARF expression pops an empty stack", self.position)
        return self.stack.pop()

    def push(self, value: int) -> None:
        if len(self.stack) >= MAX_STACK:
            raise FormatError("DWARF expression stack overflows", self.position)
        self.stack.append(value & MASK)

    def fixed(self, layout: struct.Struct) -> int:
        end = self.position + layout.size
        if end > len(self.expr):
            raise FormatError("DWARF expression operand runs past its block", self.position)
        (value,) = layout.unpack_from(self.expr, self.position)
        self.position = end
        return int(value)

    def uleb(self) -> int:
        value, self.position = read_uleb128(self.expr, self.position)
        return value

    def sleb(self) -> int:
        value, self.position = read_sleb128(self.expr, self.position)
        return value

    def deref(self, size: int) -> None:
        if not 1 <= size <= 8:
            raise FormatError(f"DW_OP_deref_size of {size} bytes", self.position)
        data = self.memory(self.pop(), size)
        self.push(int.from_bytes(data, "little"))

    def run(self) -> int:
        steps = 0
        while self.position < len(self.expr):
            steps += 1
            if steps > self.max_steps:
                raise LimitExceeded(f"DWARF expression ran over {self.max_steps} steps")
            op = self.expr[self.position]
            self.position += 1
            self.step(op)
        if not self.stack:
            raise FormatError("DWARF expression leaves an empty stack")
        return self.stack[-1]

    def step(self, op: int) -> None:  # one flat dispatch reads like the table
        if DW_OP_lit0 <= op <= DW_OP_lit31:
            self.push(op - DW_OP_lit0)
        elif DW_OP_breg0 <= op <= DW_OP_breg31:
            register = op - DW_OP_breg0
            self.push(self.registers(register) + self.sleb())
        elif op == DW_OP_bregx:
            register = self.uleb()
            self.push(self.registers(register) + self.sleb())
        elif op in _FIXED_CONSTANTS:
            self.push(self.fixed(_FIXED_CONSTANTS[op]))
        elif op == DW_OP_constu:
            self.push(self.uleb())
        elif op == DW_OP_consts:
            self.push(self.sleb())
        elif op in _BINARY_OPS:
            b, a = self.pop(), self.pop()
            self.push(_binary(op, a, b))
        elif op == DW_OP_plus_uconst:
            self.push(self.pop() + self.uleb())
        elif op == DW_OP_deref:
            self.deref(8)
        elif op == DW_OP_deref_size:
            self.deref(self.fixed(_FIXED_CONSTANTS[DW_OP_const1u]))
        else:
            self.stack_op(op)

    def stack_op(self, op: int) -> None:
        if op == DW_OP_dup:
            self.push(self._peek(0))
        elif op == DW_OP_drop:
            self.pop()
        elif op == DW_OP_over:
            self.push(self._peek(1))
        elif op == DW_OP_pick:
            self.push(self._peek(self.fixed(_FIXED_CONSTANTS[DW_OP_const1u])))
        elif op == DW_OP_swap:
            b, a = self.pop(), self.pop()
            self.stack += [b, a]
        elif op == DW_OP_rot:
            c, b, a = self.pop(), self.pop(), self.pop()
            self.stack += [c, a, b]
        elif op in (DW_OP_abs, DW_OP_neg, DW_OP_not):
            value = _signed(self.pop())
            self.push(abs(value) if op == DW_OP_abs else -value if op == DW_OP_neg else ~value)
        elif op in (DW_OP_skip, DW_OP_bra):
            self.branch(op)
        elif op in (DW_OP_nop, DW_OP_stack_value):
            pass  # stack_value: the value is already on top; CFI reads the top anyway
        else:
            raise FormatError(f"unsupported DWARF expression op {op:#x}", self.position - 1)

    def _peek(self, depth: int) -> int:
        if depth >= len(self.stack):
            raise FormatError("DWARF expression reads below its stack", self.position)
        return self.stack[-1 - depth]

    def branch(self, op: int) -> None:
        offset = self.fixed(_FIXED_CONSTANTS[DW_OP_const2s])
        if op == DW_OP_bra and self.pop() == 0:
            return
        target = self.position + offset
        if not 0 <= target <= len(self.expr):
            raise FormatError(f"DWARF expression branches to {target} outside its block",
                              self.position)
        self.position = target


def evaluate(expr: bytes, registers: RegisterReader, memory: MemoryReader,
             initial: tuple[int, ...] = (), max_steps: int = 10_000) -> int:
    """Run ``expr`` and return the value on top of the stack.

    ``initial`` is pushed first (the CFA, for ``DW_CFA_expression`` and
    ``DW_CFA_val_expression``; nothing for ``DW_CFA_def_cfa_expression``).
    Raises FormatError (bad expression), LimitExceeded (``max_steps``) or
    whatever ``registers``/``memory`` raise (MemoryReadError, KeyError-free
    by contract: callers raise FormatError for unknown registers).
    """
    machine = _Machine(expr, registers, memory, max_steps)
    for value in initial:
        machine.push(value)
    return machine.run()
