"""null-deref: a read or write through a NULL (or nearly NULL) pointer.

The kernel never maps the first ``vm.mmap_min_addr`` bytes (65536 by default,
Documentation/admin-guide/sysctl/vm.rst), so a SIGSEGV whose si_addr is in
the first 64 KiB is a dereference of NULL plus a small offset (a struct
member, an array element).  The faulting instruction's memory operand says
whether it was a read or a write and which register held the pointer.
Executing at such an address is a bad jump instead (rules/bad_jump.py).
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation
from coredumpd.annotate.insn import DecodedInstruction
from coredumpd.arch import MemoryOperand

RULE_ID = "null-deref"
NULL_PAGE_LIMIT = 0x10000  # vm.mmap_min_addr default


def check(ctx: AnalysisContext) -> list[Annotation]:
    fault = E.fault(ctx)
    pc = E.pc_of(ctx)
    if fault is None or fault.signo not in (E.SIGSEGV, E.SIGBUS) or fault.code <= 0:
        return []
    if fault.address is None or fault.address >= NULL_PAGE_LIMIT or pc is None:
        return []
    if fault.code == 0x80 or pc == fault.address:  # SI_KERNEL: general-protection; pc: bad-jump
        return []
    instruction = E.instruction_at_pc(ctx)
    lines = [fault.describe() + " (inside the never-mapped first 64 KiB)",
             f"faulting instruction at {E.where(ctx, pc)}"]
    access = "access"
    if instruction is not None:
        lines.append(f"  {instruction.describe()}")
        operand = _operand_near(instruction, fault.address)
        if operand is not None:
            access = operand.access
            lines.append(f"{access} of {operand.text}" + _pointer_register(ctx, operand))
        elif instruction.implicit_memory:
            access = "stack or string access"
    return [Annotation(
        RULE_ID,
        f"NULL pointer dereference ({access} at {fault.address:#x})",
        "high" if access in ("read", "write", "read-modify-write") else "medium",
        tuple(lines),
        "A pointer was NULL where the code expected a valid object"
        + (f" (offset {fault.address:#x} into it)" if fault.address else "")
        + ": check the value returned by the call that produced it (allocation, lookup, "
        "parse) and the error path that let NULL through.",
    )]


def _operand_near(instruction: DecodedInstruction, address: int) -> MemoryOperand | None:
    """The memory operand whose computed address is the fault address (or the only one)."""
    for operand in instruction.memory:
        if operand.address is not None and operand.address >> 12 == address >> 12:
            return operand
    return instruction.memory[0] if len(instruction.memory) == 1 else None


def _pointer_register(ctx: AnalysisContext, operand: MemoryOperand) -> str:
    parts = []
    for name in (operand.base, operand.index):
        if name and name != ctx.space.arch.pc_name:  # pc-relative: not a pointer
            value = E.register(ctx, name)
            if value is not None:
                parts.append(f"{name} = {value:#x}")
    return f" ({', '.join(parts)})" if parts else ""
