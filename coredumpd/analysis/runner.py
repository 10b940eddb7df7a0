"""analyze(): a stored core and its dump-time facts -> the analysis result record.

Stages, each isolated so that one failing never loses the others (STYLE.md
"Degrade, never lose"):

1. the core model (:class:`coredumpd.elf.core.Core`) — fatal if the ELF
   header cannot be read;
2. the address space and modules (:mod:`coredumpd.image.space`) — fatal for
   unwinding, the signal and registers are still reported;
3. each thread unwound (crashed thread first, at most ``Caps.max_threads``)
   and symbolized frame by frame;
4. the root-cause rules and the crash signature (:mod:`coredumpd.annotate`,
   imported lazily: their absence is a problem, not a failure);
5. the disassembly around the crash pc;
6. for a CPython process, the Python frames among the native ones
   (:mod:`coredumpd.analysis.python`, pystack).

Never raises on a bad core: ``state`` becomes ``failed`` with ``error`` and
the partial result stays.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from typing import Any

from coredumpd import model
from coredumpd.analysis import python, shape
from coredumpd.annotate.context import AnalysisContext, Symbolizer, ThreadTrace
from coredumpd.elf.core import Core, ThreadState
from coredumpd.image.debuginfod import Debuginfod
from coredumpd.image.types import AddressSpace, Module
from coredumpd.model import (
    AnalysisResult,
    AnalysisState,
    DisassemblyLine,
    Facts,
    SignalInfo,
    Thread,
)
from coredumpd.source import ByteSource
from coredumpd.store.modcache import ModuleCache
from coredumpd.symbolize import decoded, disasm
from coredumpd.symbolize.types import Symbol
from coredumpd.unwind.types import Caps, Frame
from coredumpd.unwind.unwinder import Unwinder

log = logging.getLogger(__name__)

DISASSEMBLY_BEFORE = 8
DISASSEMBLY_AFTER = 8
SIGNATURE_FALLBACK_FRAMES = 5


class NoSymbols:
    """Stands in when :mod:`coredumpd.symbolize.symbols` cannot be used: names stay unknown."""

    def symbolize(self, module: Module | None, lookup_pc: int) -> Symbol:
        return Symbol(None)

    def address_of(self, name: str, module: Module | None = None) -> int | None:
        return None


class CachedSymbolizer:
    """Memoizes symbolize() per (module, pc): threads share most of their frames."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.cache: dict[tuple[int, int, bool], Symbol] = {}

    def symbolize(self, module: Module | None, lookup_pc: int, lines: bool = True) -> Symbol:
        key = (id(module), lookup_pc, lines)
        symbol = self.cache.get(key)
        if symbol is None:
            symbol = self.cache[key] = self.inner.symbolize(module, lookup_pc, lines)
        return symbol

    def address_of(self, name: str, module: Module | None = None) -> int | None:
        result = self.inner.address_of(name, module)
        return int(result) if result is not None else None

    def close(self) -> None:
        self.cache.clear()
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()


def _stage(problems: list[str], what: str, action: Callable[[], Any], default: Any = None) -> Any:
    """Run one stage; an exception becomes a line in ``problems`` and ``default``."""
    try:
        return action()
    except Exception as err:  # a hostile core must never lose the analysis
        log.debug("analysis stage %s failed", what, exc_info=True)
        problems.append(f"{what}: {type(err).__name__}: {err}")
        return default


def _thread_names(core: Core, facts: Facts) -> dict[int, str]:
    names: dict[int, str] = {}
    for thread in core.threads:
        if thread.name:
            names[thread.tid] = thread.name
    for entry in (facts.proc or {}).get("threads") or []:
        if isinstance(entry, dict) and isinstance(entry.get("tid"), int) and entry.get("comm"):
            names[entry["tid"]] = str(entry["comm"])
    if core.threads and core.threads[0].tid not in names and core.prpsinfo is not None:
        names[core.threads[0].tid] = core.prpsinfo.pr_fname
    return names


def make_symbolizer(space: AddressSpace, problems: list[str],
                    cache: ModuleCache | None = None) -> CachedSymbolizer:
    try:
        symbols = importlib.import_module("coredumpd.symbolize.symbols")
        return CachedSymbolizer(symbols.Symbolizer(space, cache=cache))
    except Exception as err:  # noqa: BLE001 - symbols are an optional stage
        problems.append(f"symbolizer unavailable: {type(err).__name__}: {err}")
        return CachedSymbolizer(NoSymbols())


def _symbol_pc(frame: Frame) -> int:
    """The address to symbolize: ``lookup_pc``, but a signal trampoline's own pc.

    A handler returns to the first byte of ``__restore_rt``; ``pc - 1`` is the
    padding ``nop`` before it, outside the symbol (glibc's libc_sigaction.c).
    """
    return frame.pc if frame.signal_frame else frame.lookup_pc


def _symbolize(symbolizer: Symbolizer, module: Module | None, pc: int,
               problems: list[str]) -> Symbol:
    symbol: Symbol = _stage(problems, f"symbolizing {pc:#x}",
                            lambda: symbolizer.symbolize(module, pc), Symbol(None))
    return symbol


def trace_thread(space: AddressSpace, symbolizer: Symbolizer, thread: ThreadState,
                 crashed: bool, name: str | None, unwinder: Unwinder,
                 problems: list[str]) -> ThreadTrace:
    """Unwind and symbolize one thread; never raises."""
    result = _stage(problems, f"unwinding thread {thread.tid}",
                    lambda: unwinder.unwind(thread.registers))
    frames: list[Frame] = result.frames if result else []
    stop = result.stop_reason if result else "unwinding failed"
    lookups = [_symbol_pc(frame) for frame in frames]
    modules = [space.module_at(pc) for pc in lookups]
    symbols = [_symbolize(symbolizer, module, pc, problems)
               for pc, module in zip(lookups, modules, strict=True)]
    return ThreadTrace(thread.tid, name, crashed, dict(thread.registers), frames, symbols,
                       modules, stop)


def thread_record(trace: ThreadTrace) -> Thread:
    return Thread(
        tid=trace.tid, crashed=trace.crashed, name=trace.name,
        stop_reason=trace.stop_reason, registers=trace.registers,
        frames=frame_records(trace))


def frame_records(trace: ThreadTrace) -> list[model.Frame]:
    """The thread's frames as gdb numbers them: inlined calls are frames of their own.

    A folded run or cycle of physical frames (``repeat``, ``cycle``) stays folded: its
    frames with their inlined calls are a cycle of that many shown frames.
    """
    physical = list(zip(trace.frames, trace.modules, trace.symbols, strict=True))
    records: list[model.Frame] = []
    position = 0
    while position < len(physical):
        first = physical[position][0]
        span = first.cycle if first.repeat > 1 and first.cycle > 1 else 1
        group = [record for frame, module, symbol in physical[position:position + span]
                 for record in shape.frame_records(frame, module, symbol)]
        if first.repeat > 1 and len(group) > span:
            for record in group:
                record.repeat, record.cycle = first.repeat, len(group)
        records += group
        position += span
    for index, record in enumerate(records):
        record.index = index
    return records


def number_as_shown(traces: list[ThreadTrace], threads: list[Thread]) -> None:
    """Give each unwound frame the number its record is shown with, so that a rule's
    "frame #N" is the report's #N although inlined calls and Python frames (frames of
    their own in the report) come between the physical frames."""
    for trace, thread in zip(traces, threads, strict=True):
        physical = [record for record in thread.frames
                    if not record.inlined and not record.language]
        for frame, record in zip(trace.frames, physical, strict=True):
            frame.index = record.index


def _annotate(ctx: AnalysisContext, result: AnalysisResult) -> None:
    problems = result.problems
    try:
        engine = importlib.import_module("coredumpd.annotate.engine")
    except ImportError as err:
        problems.append(f"rules unavailable: {err}")
    else:
        annotations = _stage(problems, "rules", lambda: engine.run_rules(ctx, problems), [])
        result.annotations = list(annotations)
    try:
        signature = importlib.import_module("coredumpd.annotate.signature")
    except ImportError as err:
        problems.append(f"crash signature unavailable: {err}")
        return
    result.signature = _stage(problems, "signature", lambda: signature.crash_signature(ctx))
    frames_of = getattr(signature, "signature_frames", None)
    if frames_of is not None:
        result.signature_frames = _stage(problems, "signature frames",
                                         lambda: list(frames_of(ctx)), [])
    elif ctx.crashed is not None:  # until signature.py says which frames it hashed
        names = [symbol.name for symbol in ctx.crashed.symbols if symbol.name]
        result.signature_frames = names[:SIGNATURE_FALLBACK_FRAMES]


def _disassemble(space: AddressSpace, crashed: ThreadTrace) -> list[DisassemblyLine]:
    if not crashed.frames:
        return []
    pc = crashed.frames[0].pc
    symbol = crashed.symbols[0]
    start = pc - symbol.offset if symbol.name else None
    instructions = disasm.around(space, pc, DISASSEMBLY_BEFORE, DISASSEMBLY_AFTER, start)
    return [shape.instruction_record(instruction, pc) for instruction in instructions]


def _ordered_threads(core: Core, caps: Caps, problems: list[str]) -> list[ThreadState]:
    threads = list(core.threads)  # Core puts the crashing thread first
    if len(threads) > caps.max_threads:
        problems.append(f"{len(threads) - caps.max_threads} threads not unwound "
                        f"(cap of {caps.max_threads})")
        threads = threads[:caps.max_threads]
    return threads


def _signal(core: Core, facts: Facts) -> SignalInfo | None:
    signo = core.threads[0].prstatus.pr_cursig if core.threads else None
    signo = signo or (facts.args or {}).get("signal")
    return shape.signal_record(core.siginfo, signo if isinstance(signo, int) else None)


def _analyze_core(core: Core, source: ByteSource, facts: Facts | None, exe: str | None,
                  root: str, caps: Caps, result: AnalysisResult,
                  debuginfod: Debuginfod | None = None,
                  cache: ModuleCache | None = None) -> None:
    problems = result.problems
    problems.extend(core.problems)
    result.crashed_tid = core.threads[0].tid if core.threads else None
    result.signal = _stage(problems, "signal", lambda: _signal(core, facts or Facts()))
    from coredumpd.image.space import build_address_space

    raw = facts.to_json() if facts is not None else {}  # rules and modules read the JSON
    space = build_address_space(core, raw, root, exe, debuginfod=debuginfod)
    symbolizer = make_symbolizer(space, problems, cache)
    unwinder = Unwinder(space, caps)
    decoded.load(cache)  # capstone's answers of earlier analyses: capstone stays unimported
    try:
        problems.extend(space.problems)
        result.modules = [shape.module_record(module) for module in space.modules]
        problems.extend(f"{module.path}: {problem}" for module in space.modules
                        for problem in module.problems)
        names = _thread_names(core, facts or Facts())
        traces = [trace_thread(space, symbolizer, thread, index == 0, names.get(thread.tid),
                               unwinder, problems)
                  for index, thread in enumerate(_ordered_threads(core, caps, problems))]
        result.threads = [thread_record(trace) for trace in traces]
        _stage(problems, "python frames",
               lambda: python.add_python_frames(source, space, symbolizer, result.threads,
                                                problems=problems))
        number_as_shown(traces, result.threads)
        ctx = AnalysisContext(core, raw, space, symbolizer, traces, core.siginfo)
        _annotate(ctx, result)
        if traces:
            result.disassembly = _stage(problems, "disassembly",
                                        lambda: _disassemble(space, traces[0]), [])
    finally:  # files of modules and debug files stay open otherwise (one analysis per
        symbolizer.close()  # process in the sandbox, but corectl and tests loop)
        unwinder.close()
        space.close()
        decoded.keep(cache)


# What analyze() imports only when it needs it, so that a process that runs no
# analysis, or a small one, does not pay for them; prepare() imports them all.
LAZY_MODULES = ("coredumpd.arch.x86_64", "coredumpd.image.space", "coredumpd.symbolize.symbols",
                "coredumpd.annotate.engine", "coredumpd.annotate.signature",
                "coredumpd.symbolize.lines", "coredumpd.symbolize.disasm")
OPTIONAL_MODULES = ("pystack._pystack", "pystack.errors", "capstone")  # Python frames, decoding


def prepare() -> None:
    """Do now what the first analysis in a process does and the next ones do not: import
    the modules analyze() imports when it needs them (the rules, the signature, the
    DWARF readers, pystack and capstone when installed), compile the patterns they
    declare (:mod:`coredumpd.patterns`), load the demanglers.  For a process that forks
    a child per analysis (the sandbox zygote, corectl's analysis worker): done once
    there, no child does it again.  A process that analyses once gains nothing."""
    from coredumpd import patterns

    for name in LAZY_MODULES:
        importlib.import_module(name)
    for name in OPTIONAL_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    importlib.import_module("coredumpd.annotate.engine").discover()
    importlib.import_module("coredumpd.symbolize.symbols").demangle("_Z1fv")
    patterns.compile_all()


def analyze(source: ByteSource, facts: Facts | None = None, exe: str | None = None,
            root: str = "/", caps: Caps | None = None,
            debuginfod: Debuginfod | None = None,
            cache: ModuleCache | None = None, core: Core | None = None) -> AnalysisResult:
    """Analyse one core; the result of docs/ARCHITECTURE.md.  Never raises.

    ``debuginfod``: a client (image/debuginfod.py) for the files this machine lacks.
    ``cache`` keeps what is derived from each module (symbol tables, answers) across
    analyses, by build-id (:mod:`coredumpd.store.modcache`); the result is the same.
    ``core``: the core of ``source`` when the caller has opened it already."""
    started = time.monotonic()
    result = AnalysisResult()
    try:
        if core is None:
            core = Core.open(source, expected_tid=facts.tid if facts is not None else None)
        _analyze_core(core, source, facts, exe, root, caps or Caps(), result, debuginfod,
                      cache)
    except Exception as err:  # the contract: a failed state, never a raise
        log.debug("analysis failed", exc_info=True)
        result.state = AnalysisState.FAILED
        result.error = f"{type(err).__name__}: {err}"
    result.duration_ms = int((time.monotonic() - started) * 1000)
    return result
