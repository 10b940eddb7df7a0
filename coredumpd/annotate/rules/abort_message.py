"""abort-message: the message glibc kept for ``abort()``, read from the core.

glibc stores the text of a fatal message in ``__abort_msg`` (GLIBC_PRIVATE,
stdlib/abort.c) just before aborting, "so that it is included in core dumps":
``struct abort_msg_s { unsigned int size; char msg[0]; }`` (include/stdlib.h),
a fresh mmap()ed block whose ``size`` is the whole allocation.  Writers in
glibc 2.36: ``__assert_fail_base`` (assert/assert.c), and ``__libc_message``
(sysdeps/posix/libc_fatal.c) used by malloc_printerr (malloc/malloc.c),
``__stack_chk_fail`` (debug/stack_chk_fail.c) and ``__chk_fail``
(debug/chk_fail.c).  The message says which of these it was.
"""

from __future__ import annotations

import re
import struct

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation
from coredumpd.errors import CoredumpdError
from coredumpd.patterns import Pattern

RULE_ID = "abort-message"
ABORT_MSG_SYMBOL = "__abort_msg"
ABORT_MSG_S = struct.Struct("<I")  # unsigned int size; then char msg[]
assert ABORT_MSG_S.size == 4
MAX_MESSAGE = 4096
CHUNK = 256

# (kind, title, advice, pattern): first match wins.  The patterns are compiled when a
# message is found: most crashes have none.
KINDS = (
    ("assertion", "An assertion failed",
     "Fix the condition the assertion checks; the message gives the file, line and function.",
     Pattern(r"Assertion `.*' failed|Assertion .* failed", re.DOTALL)),
    ("stack-smashing", "The stack protector found a corrupted stack frame",
     ("A buffer on the stack was overrun in the function that returned (the frame under "
     "__stack_chk_fail); rebuild with -fsanitize=address to find the write."),
     Pattern(r"stack smashing detected")),
    ("fortify", "A _FORTIFY_SOURCE check found a buffer overflow",
     ("A string or memory function was called with a length larger than its destination "
     "(the frame under __chk_fail names the *_chk function); fix the size passed."),
     Pattern(r"buffer overflow detected|longjmp causes uninitialized stack frame|"
             r"invalid fd|fortify_fail")),
    ("heap-corruption", "malloc detected heap corruption",
     ("The heap was corrupted earlier (double free, use after free, buffer overrun on the "
     "heap); the frames here are where it was detected, not where it happened. Run under "
     "valgrind or rebuild with -fsanitize=address."),
     Pattern(r"^(free|malloc|realloc|calloc|munmap_chunk|malloc_consolidate|_int_\w+|"
             r"tcache_\w+|memalign|corrupted|double free|pvalloc|mremap_chunk|"
             r"malloc\(\)|free\(\))|double free|corrupted (size|double-linked|top)|"
             r"unaligned (tcache|fastbin) chunk|invalid (pointer|size|next size)",
             re.MULTILINE)),
)
OTHER = ("fatal-error", "glibc stopped the process with a fatal error message",
         "Read the message: it names the failed check.")


def check(ctx: AnalysisContext) -> list[Annotation]:
    location = ctx.symbolizer.address_of(ABORT_MSG_SYMBOL)
    if location is None:
        return []
    pointer = E.read_word(ctx, location)
    if not pointer:
        return []
    message = read_abort_message(ctx, pointer)
    if not message:
        return []
    kind, title, advice = classify(message)
    lines = [f"glibc abort message ({kind}): \"{E.one_line(message)}\"",
             (f"read from struct abort_msg_s at {pointer:#x}, pointed to by "
             f"{ABORT_MSG_SYMBOL} at {location:#x}")]
    caller = E.first_frame_outside_libc(ctx, SKIP)
    if caller:
        lines.append(f"raised from {caller}")
    return [Annotation(RULE_ID, f"{title}: {_summary(message)}", "high", tuple(lines), advice)]


def read_abort_message(ctx: AnalysisContext, pointer: int) -> str | None:
    """The NUL-terminated ``msg`` of the abort_msg_s at ``pointer`` (bounded by its size)."""
    try:
        (size,) = ABORT_MSG_S.unpack(ctx.space.read(pointer, ABORT_MSG_S.size))
    except CoredumpdError:
        return None
    limit = min(max(size - ABORT_MSG_S.size, 0), MAX_MESSAGE)
    data = b""
    address = pointer + ABORT_MSG_S.size
    while len(data) < limit and b"\0" not in data:
        try:
            data += ctx.space.read(address + len(data), min(CHUNK, limit - len(data)))
        except CoredumpdError:
            break
    text = data.split(b"\0", 1)[0].decode("utf-8", "backslashreplace").rstrip("\n")
    return text or None


def classify(message: str) -> tuple[str, str, str]:
    for kind, title, advice, pattern in KINDS:
        if pattern.search(message):
            return kind, title, advice
    return OTHER


ASSERTION = Pattern(r"Assertion `(?P<expression>.*)' failed", re.DOTALL)


def _summary(message: str) -> str:
    """The assertion's expression, or the message, cut to E.TITLE_MAX characters."""
    match = ASSERTION.search(message)
    return E.shortened(E.one_line(match.group("expression") if match else message))


SKIP = frozenset({"abort", "raise", "gsignal", "__pthread_kill_implementation",
                  "__pthread_kill_internal", "pthread_kill", "__libc_message",
                  "__assert_fail_base", "__assert_fail", "malloc_printerr", "__fortify_fail",
                  "__chk_fail", "__stack_chk_fail", "__libc_fatal"})
