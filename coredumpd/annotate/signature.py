"""A stable signature of a crash, for grouping repeats of the same bug.

Like ABRT's satyr (``sr_thread_normalize``, lib/normalize.c) and Sentry's
grouping (``sentry/grouping/enhancer`` "-app" rules for libc), the top frames
of the crashing thread are taken *after* dropping the frames that only say
"how" the process died — ``raise``, ``abort``, ``__assert_fail``, malloc's
consistency checks, ``__stack_chk_fail`` — so that two different assertions
do not share a signature and one assertion always gets the same one.

Unsymbolized frames in glibc, the loader or the C++ runtime are dropped too:
their offsets change with every update of those libraries.

Language runtimes add their own machinery between the bug and abort(), and
it is skipped the same way (Socorro's ``irrelevant_signature_re.txt`` and
``prefix_signature_re.txt`` are the reference): the C++ terminate path and
the exception runtime (``std::terminate()``, ``__cxa_throw``, the unwinder,
``std::__throw_*`` helpers), and Rust's panic machinery — ``std::panicking``,
``core::panicking``, the panic runtimes, ``expect_failed``/``unwrap_failed``
and, in a thread that panicked, every frame of std/core/alloc above the
code that panicked (:mod:`coredumpd.annotate.rustpanic`) — plus Rust's
process start (``std::rt::lang_start``, the ``FnOnce::call_once`` shim).
Two panics in one function then group together, a panic elsewhere does not.

A frame is named ``module!function``; without a symbol,
``module+0xOFFSET`` with the offset from the module's load bias (a
link-time address: the same for every run despite ASLR).  The signal number
is part of the hash, the absolute addresses and symbol offsets are not (a
rebuild moves code but keeps the bug).
"""

from __future__ import annotations

import hashlib
import re

from coredumpd.annotate import rustpanic
from coredumpd.annotate.context import AnalysisContext, ThreadTrace
from coredumpd.annotate.evidence import fault
from coredumpd.patterns import Pattern

TOP_FRAMES = 3
# GCC's clones of one function: foo.cold, foo.isra.0, foo.part.1, foo.constprop.0.  (The
# patterns are tried only on names that could match: most crashes never compile them.)
CLONE_SUFFIX = Pattern(r"(\.(cold|isra|part|constprop|lto_priv|localalias)(\.\d+)?)+$")

# Frames that belong to the crash machinery, never to the bug (satyr's
# normalize.c lists and Sentry's "-group" libc rules, for glibc 2.36 names).
SKIPPED = frozenset({
    "raise", "gsignal", "abort", "__pthread_kill_implementation", "__pthread_kill_internal",
    "pthread_kill", "__pthread_kill", "__restore_rt",
    "__assert_fail", "__assert_fail_base", "__assert_perror_fail", "__libc_message",
    "__libc_fatal", "__fortify_fail", "__chk_fail", "__stack_chk_fail",
    "__stack_chk_fail_local", "malloc_printerr", "_int_free", "_int_malloc", "_int_realloc",
    "_int_memalign", "malloc_consolidate", "unlink_chunk", "tcache_double_free_verify",
    "__libc_free", "__libc_malloc", "__libc_realloc", "__libc_calloc", "free", "malloc",
    "realloc", "calloc", "cfree", "munmap_chunk", "__GI_abort", "__GI_raise",
    "_ZN9__gnu_cxx27__verbose_terminate_handlerEv", "__gnu_cxx::__verbose_terminate_handler",
    "std::terminate", "__cxa_throw", "__cxa_rethrow", "std::__terminate",
    "__cxxabiv1::__terminate",
    # the bottom of every stack: process and thread start
    "__libc_start_main", "__libc_start_call_main", "_start", "start_thread", "clone",
    "clone3",
})
RUNTIME_MACHINERY = Pattern(r"""^(?:
    std::terminate\(\) | std::__terminate\(\) | __cxxabiv1::__terminate\(.*\)
  | __gnu_cxx::__verbose_terminate_handler\(\)
  | __cxa_(?:throw|rethrow|call_terminate|call_unexpected|begin_catch|end_catch)
  | __gxx_personality_v0 | _Unwind_\w+ | std::rethrow_exception\(.*\) | std::__throw_\w+\(.*\)
  | (?:std|core)::panicking::.* | (?:__rustc::)?rust_begin_unwind | (?:__rustc::)?rust_panic
  | (?:__rustc::)?__rust_(?:start_panic|abort|panic_cleanup|drop_panic|foreign_exception)
  | panic_abort::.* | panic_unwind::.* | std::process::abort | std::sys::(?:pal::unix::)?abort_internal
  | std::sys::backtrace::__rust_(?:end|begin)_short_backtrace.*
  | core::option::(?:expect_failed|unwrap_failed) | core::result::unwrap_failed
  | core::cell::panic_already_\w+ | core::slice::index::slice_\w+_fail | core::str::slice_error_fail\w*
  | std::rt::lang_start(?:_internal)?(?:::.*)? | core::ops::function::FnOnce::call_once.*
)$""", re.VERBOSE)
# What every name RUNTIME_MACHINERY matches starts with
MACHINERY_STARTS = ("std::", "core::", "__cxxabiv1::", "__gnu_cxx::", "__cxa_", "__gxx_personality_v0",
                    "_Unwind_", "__rustc::", "rust_", "__rust_", "panic_abort::", "panic_unwind::")
SYSTEM_LIBRARIES = ("libc.so", "ld-linux", "libpthread.so", "libstdc++.so", "libgcc_s.so")
SKIPPED_PREFIXES = ("__strcpy_chk", "__memcpy_chk", "__memset_chk", "__sprintf_chk",
                    "__snprintf_chk", "__vsnprintf_chk", "__read_chk", "__strcat_chk")


def crash_signature(ctx: AnalysisContext) -> str:
    """The sha1 hex signature of the crash in ``ctx`` (docs/ARCHITECTURE.md)."""
    return signature_of(ctx)[0]


def signature_frames(ctx: AnalysisContext) -> list[str]:
    """The normalized frames the signature hashes (``signature_frames`` in the result)."""
    return signature_of(ctx)[1]


def signature_of(ctx: AnalysisContext) -> tuple[str, list[str]]:
    """``(sha1 hex, normalized top frames)``: the hash covers the signal and the frames."""
    thread = ctx.crashed
    frames = normalized_frames(thread) if thread is not None else []
    info = fault(ctx)
    signal = str(info.signo) if info is not None else "?"
    text = "\n".join([f"signal {signal}", *frames])
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest(), frames


def normalized_frames(thread: ThreadTrace, count: int = TOP_FRAMES) -> list[str]:
    """The top ``count`` frames worth grouping on (all frames if every one is skipped)."""
    names = [_frame_name(thread, index) for index in range(len(thread.frames))]
    panicked = any(rustpanic.is_panicking(symbol.name) for symbol in thread.symbols)
    kept = [name for index, name in enumerate(names) if not _skipped(thread, index, panicked)]
    chosen = kept or names
    unique: list[str] = []
    for name in chosen:  # collapse recursion: a repeated frame counts once
        if not unique or unique[-1] != name:
            unique.append(name)
    return unique[:count]


def _skipped(thread: ThreadTrace, index: int, panicked: bool = False) -> bool:
    """Crash machinery by name (in a thread that panicked, all of Rust's standard library);
    or an unsymbolized frame inside the C library or loader, whose offset changes with
    every glibc update (Sentry: libc frames are not "in-app")."""
    name = _base_name(thread.symbols[index].name) if index < len(thread.symbols) else None
    if name is not None:
        return (name in SKIPPED or name.startswith(SKIPPED_PREFIXES)
                or is_runtime_machinery(name)
                or (panicked and rustpanic.is_runtime(name)))
    module = thread.modules[index] if index < len(thread.modules) else None
    return module is not None and module.name.startswith(SYSTEM_LIBRARIES)


def is_runtime_machinery(name: str) -> bool:
    """Exception or panic machinery of C++ or Rust (RUNTIME_MACHINERY)."""
    return name.startswith(MACHINERY_STARTS) and RUNTIME_MACHINERY.match(name) is not None


def _base_name(name: str | None) -> str | None:
    return CLONE_SUFFIX.sub("", name) if name and "." in name else name


def _frame_name(thread: ThreadTrace, index: int) -> str:
    frame = thread.frames[index]
    symbol = thread.symbols[index] if index < len(thread.symbols) else None
    module = thread.modules[index] if index < len(thread.modules) else None
    module_name = module.name if module is not None else "?"
    if symbol is not None and symbol.name:
        return f"{module_name}!{_base_name(symbol.name)}"
    if module is None:
        return "?"
    return f"{module_name}+{frame.lookup_pc - module.load_bias:#x}"
