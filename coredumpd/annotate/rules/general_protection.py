"""general-protection: a #GP fault other than abort()'s hlt.

arch/x86/kernel/traps.c ``do_general_protection()`` sends SIGSEGV with
si_code SI_KERNEL and si_addr 0 for any user-mode #GP: most often a memory
operand whose address is non-canonical (bits 63..47 not all equal, Intel SDM
vol. 1 3.3.7.1) — a pointer overwritten with data such as 0x4141414141414141
— or an aligned SSE access (movaps, movdqa) to a misaligned address.  The
kernel does not report the address, so the rule recomputes it from the
instruction and the registers.  ``hlt`` in abort() is rules/abort_hlt.py.
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation
from coredumpd.annotate.insn import DecodedInstruction, is_canonical
from coredumpd.arch import MemoryOperand
from coredumpd.elf.layouts import SI

RULE_ID = "general-protection"
ALIGNED_SSE = ("movaps", "movapd", "movdqa", "movntdq", "movntps", "movntpd")


def check(ctx: AnalysisContext) -> list[Annotation]:
    fault = E.fault(ctx)
    if fault is None or fault.signo != E.SIGSEGV or fault.code != SI.KERNEL or fault.address:
        return []
    instruction = E.instruction_at_pc(ctx)
    if instruction is None or instruction.mnemonic == "hlt":
        return []
    lines = [fault.describe(), f"faulting instruction at {E.where(ctx, instruction.address)}",
             f"  {instruction.describe()}"]
    target = _branch_target(ctx, instruction)
    bits = ctx.space.arch.address_bits
    if target is not None and not is_canonical(target, bits):
        lines.append(f"{instruction.mnemonic} to {target:#x}: non-canonical target address")
        title, advice = ((f"General protection fault: {instruction.mnemonic} to non-canonical "
                         f"address {target:#x}"),
                         ("A code pointer (function pointer, vtable entry or return address) "
                         "held garbage: an overflow or use-after-free overwrote it."))
    else:
        title, advice = _explain(instruction.mnemonic, instruction.memory, lines, bits)
    return [Annotation(RULE_ID, title, "high" if len(lines) > 3 else "low", tuple(lines),
                       advice)]


def _branch_target(ctx: AnalysisContext, instruction: DecodedInstruction) -> int | None:
    """Where a ``ret``, or an indirect ``call``/``jmp``, was about to go."""
    sp = E.sp_of(ctx)
    if instruction.mnemonic.startswith("ret") and sp is not None:
        return E.read_word(ctx, sp)
    if instruction.mnemonic not in ("call", "jmp"):
        return None
    if instruction.memory:
        address = instruction.memory[0].address
        return None if address is None else E.read_word(ctx, address)
    return E.register(ctx, instruction.op_str.strip())


def _explain(mnemonic: str, operands: tuple[MemoryOperand, ...], lines: list[str],
             address_bits: int) -> tuple[str, str]:
    for operand in operands:
        if operand.address is None:
            continue
        if not is_canonical(operand.address, address_bits):
            lines.append(f"{operand.access} of {operand.text} = {operand.address:#x}: "
                         f"non-canonical address (bits 63..{address_bits - 1} differ)")
            return (f"General protection fault: non-canonical address {operand.address:#x}",
                    ("A pointer held garbage (often data written over it: a buffer overflow, a "
                    "use-after-free, uninitialised memory). Find where the register's value "
                    "came from in the frames below."))
        if mnemonic.startswith(ALIGNED_SSE) and operand.address % 16:
            lines.append(f"{operand.text} = {operand.address:#x} is not 16-byte aligned, "
                         f"which {mnemonic} requires")
            return ("General protection fault: misaligned SSE access",
                    ("An aligned vector instruction met a misaligned address: the stack was "
                    "misaligned (an asm or a signal handler?) or a struct lacks alignment."))
    return ("General protection fault in user mode",
            ("The CPU refused this instruction (privileged or with a bad operand); "
            "check its operands in the disassembly."))
