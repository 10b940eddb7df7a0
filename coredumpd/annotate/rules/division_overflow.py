"""division-overflow: a signed division whose quotient does not fit (INT_MIN / -1).

x86 ``idiv`` raises #DE when the quotient overflows, which the kernel reports
exactly like a division by zero (SIGFPE FPE_INTDIV); the divisor is then -1
(Intel SDM vol. 2, IDIV: "#DE If the source operand (divisor) is 0 or if the
quotient is too large for the designated register").
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation
from coredumpd.annotate.rules.divide_by_zero import divisor

RULE_ID = "division-overflow"


def check(ctx: AnalysisContext) -> list[Annotation]:
    found = divisor(ctx)
    if found is None or found[2] == 0:
        return []
    instruction, text, value = found
    fault = E.fault(ctx)
    assert fault is not None
    return [Annotation(
        RULE_ID,
        "Integer division overflow (the quotient does not fit, e.g. INT_MIN / -1)",
        "high" if instruction.mnemonic == "idiv" else "medium",
        (fault.describe(), f"faulting instruction at {E.where(ctx, instruction.address)}",
         f"  {instruction.describe()}", f"divisor {text} = {value:#x} (not zero)"),
        "Guard signed divisions (and %) against the most negative value divided by -1.",
    )]
