"""trap-instruction: the program executed ``ud2`` on purpose (``__builtin_trap``).

GCC and clang compile ``__builtin_trap()``, ``__builtin_unreachable()`` under
-fsanitize=unreachable traps, Rust panics with panic=abort in some builds and
the kernel-style BUG() macros to ``ud2`` (0f 0b), the instruction Intel
reserves to be undefined (SDM vol. 2, UD).  The kernel reports SIGILL
ILL_ILLOPN at its address.  It marks a check that failed, not a corrupted pc.
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation
from coredumpd.errors import CoredumpdError

RULE_ID = "trap-instruction"
UD2 = b"\x0f\x0b"
UD1_UD0 = (b"\x0f\xb9", b"\x0f\xff")


def check(ctx: AnalysisContext) -> list[Annotation]:
    fault = E.fault(ctx)
    pc = E.pc_of(ctx)
    if fault is None or pc is None or fault.signo != E.SIGILL or fault.code <= 0:
        return []
    mapping = ctx.space.mapping_at(pc)
    if mapping is None or not mapping.executable:
        return []  # executing data: bad-jump
    try:
        code = ctx.space.read(pc, 2)
    except CoredumpdError:
        return []
    if code != UD2 and code not in UD1_UD0:
        return []
    name = "ud2" if code == UD2 else "ud1/ud0"
    return [Annotation(
        RULE_ID,
        f"Deliberate trap ({name}, e.g. __builtin_trap) in "
        f"{E.plain_symbol(ctx, pc) or 'the code'}",
        "high",
        (fault.describe(), (f"pc {E.where(ctx, pc)} is '{name}' ({code.hex(' ')}): an "
         "undefined instruction compilers emit for __builtin_trap() and failed checks")),
        "The program stopped itself at a check compiled as a trap (__builtin_trap, "
        "-fsanitize=...-trap, a BUG()/unreachable macro): find the condition guarding it in "
        "the source of this function.",
    )]
