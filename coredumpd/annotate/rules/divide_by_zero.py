"""divide-by-zero: integer division by zero (SIGFPE FPE_INTDIV).

x86 ``div``/``idiv`` raise #DE both for a zero divisor and for a quotient
that does not fit (INT_MIN / -1); the kernel reports both as SIGFPE
FPE_INTDIV (arch/x86/kernel/traps.c ``do_error_trap`` → ``math_error`` is
for x87/SSE; #DE goes through ``do_trap`` with FPE_INTDIV).  The rule reads
the divisor operand from the instruction and the registers and fires only
when it is zero; the overflow case gets its own id, ``division-overflow``
(rules/division_overflow.py).
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation
from coredumpd.annotate.insn import DecodedInstruction
from coredumpd.errors import CoredumpdError

RULE_ID = "divide-by-zero"
FPE_INTDIV = 1
SIZES = {"byte": 1, "word": 2, "dword": 4, "qword": 8}


def check(ctx: AnalysisContext) -> list[Annotation]:
    found = divisor(ctx)
    if found is None:
        return []
    instruction, text, value = found
    if value != 0:
        return []
    fault = E.fault(ctx)
    assert fault is not None
    return [Annotation(
        RULE_ID,
        f"Integer division by zero in {E.plain_symbol(ctx, instruction.address) or 'the code'}",
        "high",
        (fault.describe(),
         f"faulting instruction at {E.where(ctx, instruction.address)}",
         f"  {instruction.describe()}",
         f"divisor {text} = 0"),
        "Check the divisor before dividing (a count, size or length that can be zero).",
    )]


def divisor(ctx: AnalysisContext) -> tuple[DecodedInstruction, str, int] | None:
    """(instruction, divisor operand text, its value) for a SIGFPE FPE_INTDIV at div/idiv."""
    fault = E.fault(ctx)
    if fault is None or fault.signo != E.SIGFPE or fault.code != FPE_INTDIV:
        return None
    instruction = E.instruction_at_pc(ctx)
    if instruction is None or instruction.mnemonic not in ("div", "idiv"):
        return None
    value = _operand_value(ctx, instruction)
    return None if value is None else (instruction, instruction.op_str, value)


def _operand_value(ctx: AnalysisContext, instruction: DecodedInstruction) -> int | None:
    if instruction.memory:
        operand = instruction.memory[0]
        size = next((n for word, n in SIZES.items() if operand.text.startswith(word)), 8)
        if operand.address is None:
            return None
        try:
            return int.from_bytes(ctx.space.read(operand.address, size), "little")
        except CoredumpdError:
            return None
    return E.register(ctx, instruction.op_str.strip())
