"""stack-overflow: a thread ran out of stack (usually unbounded recursion).

The main stack grows down until RLIMIT_STACK; below it the kernel keeps
``stack_guard_gap`` (256 pages, mm/mmap.c) free, and a fault there is
SIGSEGV SEGV_MAPERR at an address just under the ``[stack]`` mapping.  Thread
stacks made by glibc's pthread_create have a PROT_NONE guard page below them
(nptl/allocatestack.c), so overflowing one faults inside a ``---p`` mapping
right under the stack.  Either way the fault address is close to ``rsp``; or
``rsp`` itself is outside every mapping.  The kernel cannot run a handler on
an overflowed stack without sigaltstack(2), so the process dies.
"""

from __future__ import annotations

import itertools
from collections import Counter

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation, ThreadTrace
from coredumpd.image.types import Mapping

RULE_ID = "stack-overflow"
GUARD_GAP = 256 * 4096  # mm/mmap.c stack_guard_gap default
NEAR_SP = GUARD_GAP + 0x10000  # a frame may reserve a lot below rsp before touching it


def check(ctx: AnalysisContext) -> list[Annotation]:
    fault = E.fault(ctx)
    sp = E.sp_of(ctx)
    if fault is None or sp is None or fault.signo not in (E.SIGSEGV, E.SIGBUS):
        return []
    if fault.code <= 0:
        return []
    stack = _stack_of(ctx, sp, fault.address)
    if stack is None:
        return []
    lines = [fault.describe(), stack[1]]
    mapping = stack[0]
    lines.append(f"stack mapping {E.describe_mapping(mapping)} ({_size(mapping.end - mapping.start)}),"
                 f" {E.sp_name(ctx)} = {sp:#x} ({_size(max(mapping.end - sp, 0))} used)")
    recursion = _recursion(ctx.crashed)
    if recursion:
        lines.append(recursion)
    return [Annotation(
        RULE_ID,
        "Stack overflow" + (" (unbounded recursion)" if recursion else ""),
        "high",
        tuple(lines),
        "The thread used all of its stack: bound the recursion (or make it iterative), move "
        "large local arrays to the heap, or raise the stack size (ulimit -s, "
        "pthread_attr_setstacksize) if the depth is legitimate.",
    )]


def _stack_of(ctx: AnalysisContext, sp: int,
              address: int | None) -> tuple[Mapping, str] | None:
    """(the overflowed stack mapping, why) or None when the fault is not an overflow."""
    above = _mapping_above(ctx, address if address is not None else sp)
    if ctx.space.mapping_at(sp) is None and above is not None and above.start - sp <= NEAR_SP \
            and above.writable and (above.path is None or above.path == "[stack]"):
        return above, (f"{E.sp_name(ctx)} {sp:#x} is outside every mapping, "
                       f"{above.start - sp:#x} bytes " \
                      f"below the stack mapping")
    if address is None or above is None or abs(sp - address) > NEAR_SP:
        return None
    guard = ctx.space.mapping_at(address)
    if guard is not None and _is_guard(guard) and guard.end == above.start \
            and _is_stack(ctx, above):
        return above, (f"fault address {address:#x} is in the guard page " \
                      f"{guard.start:#x}-{guard.end:#x} ({guard.perms}) below a thread stack")
    if guard is None and above.start - address <= GUARD_GAP and _is_stack(ctx, above):
        return above, (f"fault address {address:#x} is {above.start - address:#x} bytes below " \
                      f"the stack, in the stack guard gap")
    return None


def _mapping_above(ctx: AnalysisContext, address: int) -> Mapping | None:
    """The lowest mapping that starts above ``address`` (the stack it ran off)."""
    candidates = [m for m in ctx.space.mappings if m.start > address]
    return min(candidates, key=lambda m: m.start) if candidates else None


def _is_guard(mapping: Mapping) -> bool:
    return mapping.perms.startswith("---") and mapping.path is None


def _is_stack(ctx: AnalysisContext, mapping: Mapping) -> bool:
    """``[stack]``, or a writable anonymous mapping holding some thread's rsp."""
    if mapping.path == "[stack]":
        return True
    if not mapping.writable or (mapping.path and not mapping.path.startswith("[")):
        return False
    sp = E.sp_name(ctx)
    return any(thread.registers.get(sp, -1) in mapping or
               thread.registers.get(sp, -1) + 0x1000 in mapping for thread in ctx.threads)


def _recursion(thread: ThreadTrace | None) -> str | None:
    """The function that repeats most in the unwound frames, with its depth and frame size."""
    if thread is None or not thread.frames:
        return None
    counts: Counter[str] = Counter()
    for frame, symbol in zip(thread.frames, thread.symbols):
        counts[symbol.name or f"{frame.pc:#x}"] += max(frame.repeat, 1)
    name, depth = counts.most_common(1)[0]
    if depth < 3:
        return None
    size = _frame_size(thread, name)
    capped = " (unwinding stopped: " + thread.stop_reason + ")" if thread.stop_reason else ""
    return f"recursion: {name} is on the stack {depth} times ({len(thread.frames)} frames " \
           f"after collapsing repeats{capped})" + (f", {size} bytes of stack per call"
                                                   if size else "")


def _frame_size(thread: ThreadTrace, name: str) -> int | None:
    cfas = [frame.cfa for frame, symbol in zip(thread.frames, thread.symbols)
            if (symbol.name or f"{frame.pc:#x}") == name and frame.cfa is not None
            and frame.repeat == 1]
    steps = {later - earlier for earlier, later in itertools.pairwise(cfas) if later > earlier}
    return min(steps) if steps else None


def _size(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB" if count >= 1 << 20 else f"{count / 1024:.0f} KiB"
