"""rust-panic: a Rust panic aborted the process (panic=abort, or a panic that cannot unwind).

With ``panic = "abort"`` every panic ends in ``std::process::abort()`` after the
panic hook printed "thread 'main' panicked at FILE:LINE:COL:" and the message
to a stderr that is usually gone.  With the default ``panic = "unwind"`` an
uncaught panic exits with status 101 and leaves no core; it aborts only when
it cannot unwind: out of an ``extern "C"`` function, or while another panic
is being cleaned up.  Either way the crashed thread holds abort() under the
panic machinery of std and core, and under them the code that panicked
(:mod:`coredumpd.annotate.rustpanic` says how each part is read).
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate import rustpanic
from coredumpd.annotate.context import AnalysisContext, Annotation, ThreadTrace

RULE_ID = "rust-panic"
ABORT_FUNCTIONS = frozenset({"abort"})
ADVICE = ("Fix the condition the panic reports at the panic site (the first frame of your "
          "code under the panic machinery): handle the None/Err, check the index, or let the "
          "error propagate with ? instead of unwrap()/expect().")


def check(ctx: AnalysisContext) -> list[Annotation]:
    thread = ctx.crashed
    if thread is None:
        return []
    found = _panic_frames(thread)
    if found is None:
        return []
    panicking, site = found
    names = [symbol.name or "" for symbol in thread.symbols]
    kind = rustpanic.kind_of(names[site - 1::-1] if site > 0 else [])
    words = rustpanic.stack_words(ctx.space, thread.frames[panicking].sp, _stack_top(thread,
                                                                                      site))
    location = rustpanic.find_location(ctx.space, words)
    exclude = frozenset(_file_pointers(ctx, location))
    message = rustpanic.find_message(ctx.space, words, exclude)
    lines = [(f"abort() was called by Rust's panic machinery: frame #"
             f"{thread.frames[panicking].index} {thread.symbols[panicking].name}")]
    if kind is not None:
        lines.append(f"kind: {kind[0]} (the panic started in {kind[1]})")
    if location is not None:
        lines.append(f"panicked at {location} (a core::panic::Location at "
                     f"{location.address:#x}, pointed to from the panic frames' stack)")
    if message is not None:
        lines.append(f"message: \"{E.one_line(message.text)}\" ({_message_source(thread, message)})")
    else:
        lines.append("message: not found on the panic frames' stack")
    lines.append(_site_line(thread, site))
    return [Annotation(RULE_ID, _title(kind, message), "high", tuple(lines), ADVICE)]


def _panic_frames(thread: ThreadTrace) -> tuple[int, int] | None:
    """(position of the youngest panicking frame, of the panic site) when abort() was
    called by the panic runtime: only Rust runtime frames between abort and the site."""
    abort = E.first_named(thread, ABORT_FUNCTIONS)
    if abort is None:
        return None
    runtime = E.runtime_frames_above(
        thread, abort, lambda position: rustpanic.is_runtime(thread.symbols[position].name))
    if runtime.stop == len(thread.frames):
        return None  # no site: unwinding stopped in the runtime
    panicking = next((position for position in runtime
                      if rustpanic.is_panicking(thread.symbols[position].name)), None)
    return (panicking, runtime.stop) if panicking is not None else None


def _stack_top(thread: ThreadTrace, site: int) -> int:
    """The panic frames' stack ends where the site's frame begins."""
    return thread.frames[site].sp


def _file_pointers(ctx: AnalysisContext, location: rustpanic.Location | None) -> list[int]:
    if location is None:
        return []
    pointer = rustpanic._word(ctx.space, location.address)
    return [pointer] if pointer is not None else []


def _message_source(thread: ThreadTrace, message: rustpanic.Text) -> str:
    position = rustpanic.frame_holding(thread, message.holder)
    frame = (f"frame #{thread.frames[position].index} {thread.symbols[position].name}"
             if position is not None else "the panic frames")
    what = ("a String on the heap, the payload the panic hook formatted" if message.owned
            else "a &str")
    return f"{what}, at {message.address:#x}, pointed to from {frame}'s stack at " \
        f"{message.holder:#x}"


def _site_line(thread: ThreadTrace, site: int) -> str:
    return f"panic site: {E.describe_frame(thread, site)}"


def _title(kind: tuple[str, str] | None, message: rustpanic.Text | None) -> str:
    title = "Rust panic"
    text = E.one_line(message.text) if message is not None else ""
    said = text.lower().startswith((kind[0].lower() if kind else "", "called `"))
    if kind is not None and not said:  # the message may already say it
        title += f": {kind[0]}"
    if text:
        title += f": {E.shortened(text)}"
    return title
