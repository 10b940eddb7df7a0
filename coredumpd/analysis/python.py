"""Python frames of a CPython process: file, line and function of the script, beside
the interpreter's own frames.

A crash of ``python3`` unwinds to ``_PyEval_EvalFrameDefault`` and its helpers;
the user wrote Python and wants the Python stack.  pystack (Bloomberg, PyPI)
reads it from the core: the interpreter state (``_PyRuntime``), each thread's
frame objects, their code objects and line tables, for CPython 2.7 and 3.6 to
3.14.  It is a maintained library made for exactly this, so it is used as is
(``get_process_threads_for_core`` with native reporting off: our own unwinder
gives the native frames).  Measured on this machine's python 3.11 (a 5 MB core
of a script four functions deep): 24 ms to import pystack, 7 ms to read the
stacks.

pystack opens the core by path.  A raw core file is given as ``/proc/self/fd/N``;
a stored (lz4) core is first copied, decompressed, into a sealed memfd
(:func:`coredumpd.source.copy_to_memfd`), which costs its size in memory
while pystack reads it.  In the sandbox, where RLIMIT_FSIZE is 0 and a root-only
core cannot be reopened, the sandbox's parent makes that memfd for a crash it
takes for Python (pipeline/sandbox.py).

Interleaving: in CPython 3.11+ one ``_PyEval_EvalFrameDefault`` call runs
Python-to-Python calls without recursing in C; pystack marks the first frame of
each such call ``is_entry``.  So the Python frames, cut at each entry frame, are
one group per evaluation-loop frame: each group goes just before (inner to) its
``_PyEval_EvalFrameDefault``, innermost first, as pystack's own ``--native``
output places them.  When the counts differ (a folded recursion of the loop, a
thread the unwinder could not finish), all Python frames go before the innermost
evaluation-loop frame, in order.

pystack's C++ side logs through the ``logging`` module (logger ``pystack._pystack``).
With no handler configured, logging's last resort writes WARNING and above to
stderr, so a hostile or truncated core put "Failed to read PyObject data from
address …" on the terminal of ``corectl analyze`` and in the analysis child's stderr.
:func:`read_stacks` keeps those warnings instead, and the analysis says them in
``problems`` (a reading that failed, or one that succeeded with warnings).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from coredumpd.errors import CoredumpdError, FormatError
from coredumpd.model import Frame, Thread
from coredumpd.source import ByteSource, copy_to_memfd, file_descriptor

RUNTIME_SYMBOL = "_PyRuntime"  # CPython's global runtime state (Include/internal/pycore_runtime.h)
LANGUAGE = "python"
TRUST = "interpreter"  # read from the interpreter's frame objects, not unwound
COPY_MAX = 2 << 30  # bytes of a compressed core decompressed for pystack (RAM, as a memfd)
PYSTACK_LOGGER = "pystack._pystack"  # pystack's src/pystack/_pystack/logging.cpp


def interpreter_executable(space: Any, symbolizer: Any) -> str | None:
    """The file pystack must read as the executable, when the process runs CPython
    (the executable or a mapped libpython defines ``_PyRuntime``); else None."""
    modules = [module for module in space.modules
               if module.is_main or module.name.startswith("libpython")]
    if not any(symbolizer.address_of(RUNTIME_SYMBOL, module) is not None for module in modules):
        return None
    main = next((module for module in modules if module.is_main), None)
    if main is None or main.host_path is None:
        raise CoredumpdError("the interpreter's executable is not readable here")
    return str(main.host_path)


@contextlib.contextmanager
def core_path(source: ByteSource, memory_limit: int | None = None) -> Iterator[str]:
    """A path pystack can open for the core of ``source`` (see the module docstring)."""
    fd = file_descriptor(source)
    if fd is not None:
        yield f"/proc/self/fd/{fd}"
        return
    copy = copy_to_memfd(source, limit=memory_limit)
    try:
        yield f"/proc/self/fd/{copy}"
    finally:
        os.close(copy)


class _Kept(logging.Handler):
    """Log records of WARNING and above, kept as text (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _pystack_warnings() -> Iterator[list[str]]:
    """pystack's warnings while the block runs, kept instead of printed on stderr: a
    handler on its logger means logging's last resort is not used (handlers that the
    program configured still get them)."""
    logger, kept = logging.getLogger(PYSTACK_LOGGER), _Kept()
    logger.addHandler(kept)
    try:
        yield kept.messages
    finally:
        logger.removeHandler(kept)


def summary(warnings: list[str]) -> str:
    """``"Failed to read PyObject data from address 0x… (and 2 more)"``."""
    more = f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""
    return f"{warnings[0]}{more}"


def read_stacks(path: str, executable: str, warnings: list[str] | None = None) -> list[Any]:
    """pystack's threads (``PyThread``) of the core at ``path``; pystack's errors (a core
    whose interpreter state it cannot read) become :class:`FormatError`, which names its
    first warning too.  pystack's warnings go to ``warnings``, never to stderr."""
    from pystack import _pystack  # the C++ extension: ~24 ms to import, so only here
    from pystack.errors import PystackError

    with _pystack_warnings() as said:
        try:
            threads: list[Any] = _pystack.get_process_threads_for_core(
                path, executable, None, _pystack.NativeReportingMode.OFF)
        except (PystackError, RuntimeError, OSError) as err:
            also = f" (pystack warned: {summary(said)})" if said else ""
            raise FormatError(f"pystack: {type(err).__name__}: {err}{also}") from err
    if warnings is not None:
        warnings.extend(said)
    return threads


def python_frames(thread: Any) -> list[tuple[bool, Frame]]:
    """A pystack thread's frames, innermost first, as (is_entry, record)."""
    frames = []
    for frame in thread.frames:  # outermost first; shim frames left out
        location = frame.code.location
        record = Frame(index=0, pc=None, symbol=frame.code.scope, file=frame.code.filename,
                       line=location.lineno if location.lineno > 0 else None,
                       trust=TRUST, language=LANGUAGE)
        frames.append((bool(frame.is_entry), record))
    frames.reverse()
    return frames


def groups(frames: list[tuple[bool, Frame]]) -> list[list[Frame]]:
    """Innermost first: the frames of each evaluation-loop call (ends at an entry frame)."""
    result: list[list[Frame]] = []
    current: list[Frame] = []
    for is_entry, record in frames:
        current.append(record)
        if is_entry:
            result.append(current)
            current = []
    if current:
        result.append(current)
    return result


def interleave(native: list[Frame], python: list[list[Frame]],
               is_eval: Any) -> list[Frame]:
    """``native`` with the Python groups placed before their evaluation-loop frames."""
    loops = [position for position, frame in enumerate(native)
             if not frame.inlined and frame.symbol and is_eval(frame.symbol)]
    folded = any(native[position].repeat > 1 for position in loops)
    if not loops:
        merged = native + [frame for group in python for frame in group]
    elif len(loops) != len(python) or folded:
        start = _group_start(native, loops[0])
        merged = native[:start] + [f for group in python for f in group] + native[start:]
    else:
        merged = []
        previous = 0
        for position, group in zip(loops, python, strict=True):
            start = _group_start(native, position)
            merged += native[previous:start] + group
            previous = start
        merged += native[previous:]
    for index, frame in enumerate(merged):
        frame.index = index
    return merged


def _group_start(native: list[Frame], position: int) -> int:
    """Where the frames of the physical frame at ``position`` start (its inlined calls
    come before it)."""
    while position > 0 and native[position - 1].inlined and \
            native[position - 1].pc == native[position].pc:
        position -= 1
    return position


def add_python_frames(source: ByteSource, space: Any, symbolizer: Any,
                      threads: list[Thread], memory_limit: int | None = COPY_MAX,
                      problems: list[str] | None = None) -> int:
    """Put each thread's Python frames among its native ones; the number of Python frames
    added.  Raises (the caller's stage turns that into a problem line) when the process
    is CPython and its stacks cannot be read; a reading with warnings (some objects out
    of reach: the frames may be incomplete) is a line in ``problems``.  Does nothing
    for other processes."""
    executable = interpreter_executable(space, symbolizer)
    if executable is None:
        return 0
    from pystack import _pystack

    warnings: list[str] = []
    with core_path(source, memory_limit) as path:
        stacks = read_stacks(path, executable, warnings)
    if warnings and problems is not None:
        problems.append(f"python frames: pystack read the interpreter with warnings, the "
                        f"Python frames may be incomplete: {summary(warnings)}")
    by_tid = {thread.tid: thread for thread in threads}
    added = 0
    for stack in stacks:
        thread = by_tid.get(stack.tid)
        frames = python_frames(stack)
        if thread is None or not frames:
            continue
        version = stack.python_version

        def is_eval(symbol: str, version: Any = version) -> bool:
            return bool(_pystack.is_eval_frame(symbol, version))

        thread.frames = interleave(thread.frames, groups(frames), is_eval)
        added += len(frames)
    return added
