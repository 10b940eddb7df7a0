"""crash-in-allocator: a fault inside malloc/free/realloc (glibc's malloc/malloc.c).

The allocator trusts the chunk headers next to every block and the pointers
it is given.  A fault inside it (rather than one of its checks aborting with
a message: abort-message) means the heap metadata was overwritten (a buffer
overrun, a use after free) or the program passed a pointer that malloc never
returned.  The faulting frame is the allocator; the bug is in the caller or
earlier.
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation

RULE_ID = "crash-in-allocator"
TOP_FRAMES = 4  # the allocator's own call depth (free -> _int_free -> unlink_chunk ...)
ALLOCATOR = frozenset({
    "malloc", "free", "realloc", "calloc", "cfree", "memalign", "aligned_alloc",
    "posix_memalign", "valloc", "pvalloc", "malloc_usable_size", "__libc_malloc",
    "__libc_free", "__libc_realloc", "__libc_calloc", "__libc_memalign", "_int_malloc",
    "_int_free", "_int_realloc", "_int_memalign", "malloc_consolidate", "unlink_chunk",
    "tcache_get", "tcache_put", "tcache_init", "sysmalloc", "munmap_chunk", "mremap_chunk",
    "arena_get2", "heap_trim", "systrim",
})


def check(ctx: AnalysisContext) -> list[Annotation]:
    fault = E.fault(ctx)
    thread = ctx.crashed
    if fault is None or thread is None or fault.signo not in (E.SIGSEGV, E.SIGBUS):
        return []
    if fault.code <= 0 or not thread.frames:
        return []
    inside = _allocator_frames(ctx)
    if not inside:
        return []
    lines = [fault.describe(),
             "faulting frames in the C library's allocator: " + ", ".join(inside)]
    caller = E.first_frame_outside_libc(ctx)
    if caller:
        lines.append(f"called from {caller}")
    instruction = E.instruction_at_pc(ctx)
    if instruction is not None:
        lines.append(f"faulting instruction: {instruction.describe()}")
        for operand in instruction.memory:
            value = E.register(ctx, operand.base) if operand.base else None
            if value is not None and operand.base != ctx.space.arch.pc_name:
                lines.append(f"{operand.text}: {operand.base} = {value:#x}")
    entry = inside[-1].split(" ", 1)[1]
    return [Annotation(
        RULE_ID,
        f"Crash inside the memory allocator ({entry}): heap corruption or a bad pointer",
        "high",
        tuple(lines),
        "The heap's metadata was overwritten (an overrun or use after free elsewhere) or the "
        f"caller passed {entry}() a pointer malloc never returned. Run the program under "
        "valgrind or rebuild with -fsanitize=address to find the first bad write.",
    )]


def _allocator_frames(ctx: AnalysisContext) -> list[str]:
    """``#0 _int_free``-style names of the leading frames that are glibc allocator code."""
    thread = ctx.crashed
    assert thread is not None
    found = []
    for frame, symbol, module in list(zip(thread.frames, thread.symbols, thread.modules,
                                          strict=False))[:TOP_FRAMES]:
        if not E.is_libc(module) or symbol.name is None:
            break
        if symbol.name in ALLOCATOR:
            found.append(f"#{frame.index} {symbol.name}")
        elif found:
            break
    return found if found and found[0].startswith("#0 ") else []
