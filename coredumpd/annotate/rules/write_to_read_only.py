"""write-to-read-only: a store into memory mapped without write permission.

SIGSEGV SEGV_ACCERR (the page is mapped but the access is not allowed,
arch/x86/mm/fault.c ``bad_area_access_error``) on an instruction that writes
its memory operand, at an address whose mapping lacks ``w``: typically a
write into a string literal (.rodata), into code, or into memory protected
with mprotect(2) (a guard or a read-only after relocation page, RELRO).
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation

RULE_ID = "write-to-read-only"
SEGV_ACCERR = 2


def check(ctx: AnalysisContext) -> list[Annotation]:
    fault = E.fault(ctx)
    if fault is None or fault.signo != E.SIGSEGV or fault.code != SEGV_ACCERR:
        return []
    if fault.address is None or fault.address == E.pc_of(ctx):
        return []
    mapping = ctx.space.mapping_at(fault.address)
    instruction = E.instruction_at_pc(ctx)
    if mapping is None or mapping.writable or instruction is None:
        return []
    if mapping.perms.startswith("---"):
        return []  # a guard page: stack-overflow or an overrun, not a write to read-only data
    writes = [op for op in instruction.memory if op.writes]
    if not writes:
        return []
    section = _what(ctx, mapping.path, mapping.perms)
    return [Annotation(
        RULE_ID,
        f"Write to read-only memory ({section})",
        "high",
        (fault.describe(), f"faulting instruction at {E.where(ctx, instruction.address)}",
         f"  {instruction.describe()}",
         (f"{writes[0].access} of {writes[0].text} at {fault.address:#x}, in "
         f"{E.describe_mapping(mapping)}")),
        "The code wrote through a pointer to read-only memory: a string literal or const "
        "data (copy it into a writable buffer first), code, or a page protected with "
        "mprotect().",
    )]


def _what(ctx: AnalysisContext, path: str | None, perms: str) -> str:
    if path is None:
        return f"anonymous {perms} memory"
    if "x" in perms:
        return f"code of {path}"
    return f"read-only data of {path}, e.g. a string literal or const object"
