"""bad-jump: the program counter left the code (NULL or corrupted function pointer).

When a ``call`` through a NULL or garbage function pointer lands on an address
that is unmapped or not executable, the CPU faults *fetching* the instruction:
SIGSEGV with si_addr == pc (SEGV_MAPERR, or SEGV_ACCERR for a non-executable
mapping under NX).  The call already pushed its return address, so ``[rsp]``
names the caller — the way gdb's "bt" recovers frame #1 in this case.  A
``ret`` to a smashed return address looks the same but has no call before
``[rsp]``.
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation
from coredumpd.symbolize import disasm

RULE_ID = "bad-jump"


def check(ctx: AnalysisContext) -> list[Annotation]:
    fault = E.fault(ctx)
    pc, sp = E.pc_of(ctx), E.sp_of(ctx)
    if fault is None or pc is None or sp is None or fault.code <= 0:
        return []
    if fault.signo not in (E.SIGSEGV, E.SIGBUS, E.SIGILL):
        return []
    mapping = ctx.space.mapping_at(pc)
    if mapping is not None and mapping.executable:
        return []
    if fault.address is not None and fault.address != pc and fault.code != 0x80:
        return []  # a data access fault whose pc happens to be odd: not this rule
    where = "not mapped" if mapping is None else f"in {E.describe_mapping(mapping)}, not executable"
    lines = [fault.describe(), f"pc = {pc:#x}: {where}"]
    caller = _caller(ctx, sp)
    lines.extend(caller)
    kind = "NULL function pointer" if pc < 0x10000 else "corrupted code pointer"
    return [Annotation(
        RULE_ID,
        f"Jump to a non-executable address {pc:#x} ({kind})",
        "high" if len(caller) > 1 else "medium",
        tuple(lines),
        "The program called or returned through a bad code pointer. Look at the caller named "
        "above: which function pointer (callback, vtable, PLT/GOT slot) did it call through, and "
        "how did that pointer become " + ("NULL" if pc < 0x10000 else "garbage (use-after-free "
                                          "or an overflow?)") + ".",
    )]


def _caller(ctx: AnalysisContext, sp: int) -> list[str]:
    """Evidence about the return address at [rsp], if it follows a call instruction."""
    return_address = E.read_word(ctx, sp)
    if return_address is None:
        return [f"[{E.sp_name(ctx)}] at {sp:#x} is not in the core: the caller is unknown"]
    where = E.where(ctx, return_address, False)
    lines = [f"[{E.sp_name(ctx)}] = {return_address:#x}: return address {where}"]
    call = disasm.call_before(ctx.space, return_address)
    if call is None:
        return [lines[0] + " — no call instruction precedes it (a return through a smashed "
                "stack?)"]
    lines.append(f"called from {E.where(ctx, call.address)}: {call.mnemonic} {call.op_str}")
    return lines
