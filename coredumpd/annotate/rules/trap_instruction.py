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


def check(ctx: AnalysisContext) -> list[Annotation]:
    fault = E.fault(ctx)
    pc = E.pc_of(ctx)
    if fault is None or pc is None or fault.signo != E.SIGILL or fault.code <= 0:
        return []
    mapping = ctx.space.mapping_at(pc)
    if mapping is None or not mapping.executable:
        return []  # executing data: bad-jump
    found = _trap_at(ctx, pc)
    if found is None:
        return []
    code, name = found
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


def _trap_at(ctx: AnalysisContext, pc: int) -> tuple[bytes, str] | None:
    """The deliberate-trap instruction at ``pc`` (``Arch.trap_instructions``), or None."""
    for code, name in ctx.space.arch.trap_instructions.items():
        try:
            if ctx.space.read(pc, len(code)) == code:
                return code, name
        except CoredumpdError:
            return None
    return None
