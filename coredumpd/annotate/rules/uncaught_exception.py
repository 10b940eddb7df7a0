"""uncaught-exception: a C++ exception that nothing caught ended in std::terminate().

When ``_Unwind_RaiseException`` finds no handler, libstdc++'s ``__cxa_throw``
(libsupc++/eh_throw.cc) marks the exception caught (``__cxa_begin_catch``) and
calls ``std::terminate()``; an exception leaving a ``noexcept`` function gets
there through ``__cxa_call_terminate`` (eh_personality.cc) before the stack
is unwound.  The default handler, ``__gnu_cxx::__verbose_terminate_handler``,
prints "terminate called after throwing an instance of …" to a stderr that is
usually gone, and calls ``abort()``.

The rule needs both a terminate path on the crashed thread's stack and the
exception itself: libstdc++'s header in front of the thrown object
(:mod:`coredumpd.annotate.cxxabi`), found through the registers the unwinder
recovered for the runtime's frames (``__cxa_throw`` keeps ``&unwindHeader``
in a callee-saved register across the calls) or the words of their stack,
and recognized by its ``exception_class``.  ``std::terminate()`` without an
exception, or an ``abort()`` from C++ code, is no uncaught exception.
"""

from __future__ import annotations

from collections.abc import Iterator

from coredumpd.annotate import cxxabi
from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation, ThreadTrace
from coredumpd.image.types import Module

RULE_ID = "uncaught-exception"
TERMINATE_FUNCTIONS = frozenset({
    "std::terminate()", "__cxxabiv1::__terminate(void (*)())", "__cxa_call_terminate",
    "__gnu_cxx::__verbose_terminate_handler()", "std::__terminate()",
})
THROW_FUNCTIONS = frozenset({
    "__cxa_throw", "__cxa_rethrow", "_Unwind_RaiseException", "_Unwind_Resume_or_Rethrow",
    "std::rethrow_exception(std::__exception_ptr::exception_ptr)",
})
PERSONALITY = frozenset({"__gxx_personality_v0"})
ANCHORS = TERMINATE_FUNCTIONS | THROW_FUNCTIONS | PERSONALITY
ABORT_FUNCTIONS = frozenset({"abort"})
RUNTIME_LIBRARIES = ("libstdc++.so", "libgcc_s.so", "libc++abi.so")
MAX_STACK_WORDS = 4096
ADVICE = ("Catch the exception where it can be handled (or let main() catch and report it), "
          "or fix what made the throw site throw; its type and message say what failed. An "
          "exception leaving a noexcept function or a destructor always terminates.")


def check(ctx: AnalysisContext) -> list[Annotation]:
    thread = ctx.crashed
    if thread is None:
        return []
    path = _terminate_path(thread)
    if path is None:
        return []
    abort, outermost = path
    found = _find_exception(ctx, thread, outermost)
    if found is None:
        return []  # std::terminate() without an exception, or one this runtime does not make
    exception, where = found
    lines = [
        _path_line(thread, abort, outermost),
        (f"a C++ exception header at {exception.unwind_header - cxxabi.UNWIND_HEADER_OFFSET:#x}"
         f" (libstdc++ __cxa_exception; unwindHeader.exception_class \"GNUCC++\\0\" at "
         f"{exception.unwind_header:#x}), {'its dependent ' if exception.dependent else ''}"
         f"{where}"),
        (f"type: {exception.type_name} (std::type_info at {exception.type_info:#x}, name "
         f"\"{exception.mangled_type}\"{_bases_text(exception)})"),
    ]
    if exception.dependent is not None:
        lines.append(f"reached through a dependent exception (std::rethrow_exception; "
                     f"exception_class \"GNUCC++\\1\" at {exception.dependent:#x}) that "
                     "points to it: the type and message are the original exception's")
    if exception.message is not None:
        lines.append(f"what(): \"{E.one_line(exception.message)}\" ({exception.message_source})")
    else:
        lines.append("what(): not readable from the core (a type whose message libstdc++'s "
                     "layouts do not describe)")
    if E.first_named(thread, PERSONALITY, abort) is not None:
        lines.append("std::terminate() was called by the personality routine "
                     "(__gxx_personality_v0) while it looked for a handler: the exception "
                     "reached a noexcept function (or a destructor) on its way up")
    lines.append(_site_line(thread, outermost))
    return [Annotation(RULE_ID, _title(exception), "high", tuple(lines), ADVICE)]


def _terminate_path(thread: ThreadTrace) -> tuple[int, int] | None:
    """(position of abort, of the outermost C++-runtime frame) when the C++ runtime called
    abort(): only runtime frames between abort and a named throw/terminate function."""
    abort = E.first_named(thread, ABORT_FUNCTIONS)
    if abort is None:
        return None
    runtime = E.runtime_frames_above(thread, abort,
                                     lambda position: _is_runtime(thread, position))
    if not any(thread.symbols[position].name in ANCHORS for position in runtime):
        return None
    return abort, runtime.stop - 1


def _path_line(thread: ThreadTrace, abort: int, outermost: int) -> str:
    named = [f"#{thread.frames[position].index} {thread.symbols[position].name}"
             for position in range(abort + 1, outermost + 1) if thread.symbols[position].name]
    return (f"abort() (frame #{thread.frames[abort].index}) was called by the C++ runtime: "
            + " <- ".join(named))


def _is_runtime(thread: ThreadTrace, position: int) -> bool:
    module = thread.modules[position]
    name = thread.symbols[position].name
    return (name in ANCHORS or (module is not None and module.name.startswith(RUNTIME_LIBRARIES)))


def _find_exception(ctx: AnalysisContext, thread: ThreadTrace,
                    outermost: int) -> tuple[cxxabi.ThrownException, str] | None:
    si_vtable = _si_class_vtable(ctx, thread, outermost)
    seen: set[int] = set()
    for value, where in _candidates(ctx, thread, outermost):
        # a pointer to the unwind header, to the thrown object, or to the whole header
        for header in (value, value - cxxabi.UNWIND_HEADER_SIZE,
                       value - cxxabi.UNWIND_HEADER_SIZE + cxxabi.REFCOUNTED_HEADER_SIZE):
            if header in seen:
                continue
            seen.add(header)
            exception = cxxabi.exception_at(ctx.space, header, si_vtable)
            if exception is not None:
                return exception, where
    return None


def _candidates(ctx: AnalysisContext, thread: ThreadTrace,
                outermost: int) -> Iterator[tuple[int, str]]:
    """Register values of the runtime's frames (outermost first: __cxa_throw's own), then
    the words of the stack they use."""
    for position in range(outermost, -1, -1):
        frame, symbol = thread.frames[position], thread.symbols[position]
        for register, value in frame.registers.items():
            yield value, (f"held in {register} of frame #{frame.index} "
                          f"{symbol.name or '??'}")
    low = thread.frames[0].sp
    top = thread.frames[outermost].cfa or thread.frames[outermost].sp
    for address in range(low, min(top, low + 8 * MAX_STACK_WORDS), 8):
        word = cxxabi.read_word(ctx.space, address)
        if word is not None:
            yield word, f"pointed to from the stack at {address:#x}"


def _si_class_vtable(ctx: AnalysisContext, thread: ThreadTrace, outermost: int) -> int | None:
    runtime = _cxx_runtime(thread, outermost)
    return ctx.symbolizer.address_of(cxxabi.SI_CLASS_VTABLE, runtime)


def _cxx_runtime(thread: ThreadTrace, outermost: int) -> Module | None:
    for module in thread.modules[:outermost + 1]:
        if module is not None and module.name.startswith(("libstdc++.so", "libc++abi.so")):
            return module
    return None


def _site_line(thread: ThreadTrace, outermost: int) -> str:
    position = outermost + 1
    if position >= len(thread.frames):
        return "the throw site is not on the stack (unwinding stopped in the C++ runtime)"
    called = thread.symbols[outermost].name or "the C++ runtime"
    return f"thrown from {E.describe_frame(thread, position)} (it called {called})"


def _bases_text(exception: cxxabi.ThrownException) -> str:
    if not exception.bases:
        return ""
    return ", derived from " + " <- ".join(cxxabi.demangle_type(base)
                                            for base in exception.bases)


def _title(exception: cxxabi.ThrownException) -> str:
    title = f"Uncaught C++ exception {exception.type_name}"
    if exception.message is not None:
        title += f": {E.shortened(E.one_line(exception.message))}"
    return title
