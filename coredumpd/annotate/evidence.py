"""Small, shared readers for the rules: the fault, addresses, symbols and facts.

Rules read a clean model (docs/ARCHITECTURE.md), but facts come from a JSON
document that may lack any key (a bare core has ``facts == {}``), so every
accessor here returns None instead of raising.  The formatting helpers make
evidence lines look the same across rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coredumpd.annotate.context import AnalysisContext, ThreadTrace
from coredumpd.annotate.insn import DecodedInstruction, decode_one
from coredumpd.elf import layouts as L
from coredumpd.errors import CoredumpdError
from coredumpd.image.types import Mapping, Module
from coredumpd.values import Frozen

SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV = 4, 5, 6, 7, 8, 11
TITLE_MAX = 100  # characters of a message quoted in an annotation's title


class Fault(Frozen):
    """The fatal signal as NT_SIGINFO (or, lacking it, NT_PRSTATUS) tells it."""

    signo: int
    code: int
    address: int | None
    sender_pid: int | None
    sender_uid: int | None

    @property
    def name(self) -> str:
        return L.signal_name(self.signo)

    @property
    def code_name(self) -> str:
        return L.si_code_name(self.signo, self.code)

    def describe(self) -> str:
        text = f"signal {self.name} ({self.signo}), si_code {self.code_name} ({self.code})"
        if self.address is not None:
            text += f", fault address {self.address:#x}"
        return text


def fault(ctx: AnalysisContext) -> Fault | None:
    """The fatal signal of the crash, or None when the core does not say."""
    info = ctx.siginfo
    if info is not None:
        return Fault(info.si_signo, info.si_code, info.si_addr, info.si_pid, info.si_uid)
    thread = ctx.core.crashing_thread if ctx.core is not None else None
    if thread is None or not thread.prstatus.si_signo:
        return None
    status = thread.prstatus
    return Fault(status.si_signo or status.pr_cursig, status.si_code, None, None, None)


def registers(ctx: AnalysisContext) -> dict[str, int]:
    crashed = ctx.crashed
    return crashed.registers if crashed is not None else {}


def register(ctx: AnalysisContext, name: str) -> int | None:
    """The crashed thread's register ``name`` as an instruction names it (``eax``, ``r8d``)."""
    return ctx.space.arch.register_value(registers(ctx), name)


def pc_of(ctx: AnalysisContext) -> int | None:
    return registers(ctx).get(ctx.space.arch.pc_name)


def sp_of(ctx: AnalysisContext) -> int | None:
    return registers(ctx).get(ctx.space.arch.sp_name)


def sp_name(ctx: AnalysisContext) -> str:
    """The stack pointer's register name (``rsp``), for evidence lines."""
    return ctx.space.arch.sp_name


def instruction_at_pc(ctx: AnalysisContext) -> DecodedInstruction | None:
    pc = pc_of(ctx)
    return None if pc is None else decode_one(ctx.space, pc, registers(ctx))


def read_word(ctx: AnalysisContext, address: int) -> int | None:
    try:
        return int.from_bytes(ctx.space.read(address, 8), "little")
    except CoredumpdError:
        return None


def symbol_name(ctx: AnalysisContext, address: int, exact: bool = True) -> str | None:
    """``abort+368``-style name of ``address`` (a return address when ``exact`` is False)."""
    module = ctx.space.module_at(address)
    try:
        symbol = ctx.symbolizer.symbolize(module, address if exact else address - 1)
    except CoredumpdError:
        return None
    if symbol.name is None:
        return None
    # A return address is looked up at address - 1 (it may follow a noreturn call).
    return f"{symbol.name}+{symbol.offset + (0 if exact else 1):#x}"


def plain_symbol(ctx: AnalysisContext, address: int, exact: bool = True) -> str | None:
    """Function name only (no offset) of ``address``."""
    name = symbol_name(ctx, address, exact)
    return name.split("+", 1)[0] if name else None


def where(ctx: AnalysisContext, address: int, exact: bool = True) -> str:
    """``0x7f..a0 (abort+0x170 in libc.so.6)``: an address with what is there."""
    module = ctx.space.module_at(address)
    name = symbol_name(ctx, address, exact)
    inside = name or (f"offset {address - module.start:#x}" if module else None)
    if module is not None:
        return f"{address:#x} ({inside} in {module.path})"
    mapping = ctx.space.mapping_at(address)
    if mapping is not None:
        return f"{address:#x} (in {describe_mapping(mapping)})"
    return f"{address:#x} (not mapped)"


def describe_mapping(mapping: Mapping) -> str:
    path = mapping.path or "anonymous memory"
    return f"{path} {mapping.start:#x}-{mapping.end:#x} {mapping.perms}"


def module_of(ctx: AnalysisContext, address: int) -> Module | None:
    return ctx.space.module_at(address)


def is_libc(module: Module | None) -> bool:
    return module is not None and module.name.startswith("libc.so")


# ---- facts (docs/ARCHITECTURE.md "Facts recorded at dump time") ----

def fact(ctx: AnalysisContext, *keys: str) -> Any:
    """``facts[k1][k2]...`` or None when any level is missing or not a dict."""
    node: Any = ctx.facts
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def ns_pids(ctx: AnalysisContext) -> list[int] | None:
    """NSpid from /proc/PID/status: the pid in each nested namespace, outermost first."""
    value = fact(ctx, "proc", "status", "NSpid")
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return value
    if isinstance(value, str):
        try:
            return [int(part) for part in value.split()]
        except ValueError:
            return None
    return None


def global_pid(ctx: AnalysisContext) -> int | None:
    value = fact(ctx, "args", "pid")
    return value if isinstance(value, int) else None


def namespace_pid(ctx: AnalysisContext) -> int | None:
    """The crashed process's pid in its own namespace: NSpid, %p, or NT_PRSTATUS.

    The kernel fills pr_pid with task_pid_vnr() of the dumping task itself
    (fs/binfmt_elf.c fill_prstatus), i.e. the pid in the crasher's namespace.
    """
    pids = ns_pids(ctx)
    if pids:
        return pids[-1]
    value = fact(ctx, "args", "ns_pid")
    if isinstance(value, int):
        return value
    thread = ctx.core.crashing_thread if ctx.core is not None else None
    return thread.prstatus.pr_pid if thread is not None else None


def signal_mask(ctx: AnalysisContext, field: str) -> int | None:
    """SigIgn/SigBlk/SigCgt/SigPnd as an int (hex string in /proc/PID/status)."""
    value = fact(ctx, "proc", "status", field)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


def in_mask(mask: int | None, signo: int) -> bool:
    """Bit ``signo - 1`` of a /proc signal mask (fs/proc/array.c render_sigset_t)."""
    return mask is not None and bool(mask >> (signo - 1) & 1)


def thread_tids(ctx: AnalysisContext) -> set[int]:
    """Namespace tids of every thread in the core (pr_pid of each NT_PRSTATUS)."""
    if ctx.core is None:
        return set()
    return {thread.prstatus.pr_pid for thread in ctx.core.threads}


def comm(ctx: AnalysisContext) -> str:
    for value in (fact(ctx, "proc", "comm"), fact(ctx, "args", "comm")):
        if isinstance(value, str) and value:
            return value
    info = ctx.core.prpsinfo if ctx.core is not None else None
    return info.pr_fname if info is not None else "?"



def first_frame_outside_libc(ctx: AnalysisContext, skip: frozenset[str] = frozenset()) -> str | None:
    """``frame #5 reset_stdio+0x38 (aborter.c:8) in /path``: the first crashed-thread frame
    outside glibc (and not named in ``skip``): the code that called into the C library."""
    thread = ctx.crashed
    if thread is None:
        return None
    for position, (symbol, module) in enumerate(zip(thread.symbols, thread.modules)):
        if module is None or is_libc(module) or symbol.name in skip:
            continue
        return describe_frame(thread, position)
    return None


# ---- frames and messages of the crashed thread, for evidence lines ----

def describe_frame(thread: ThreadTrace, position: int, unnamed: str | None = None) -> str:
    """``frame #5 reset_stdio+0x38 (aborter.c:8) in /path``: the frame at ``position``
    (``unnamed``, else its pc, when no symbol names it; no path outside every module)."""
    frame, symbol, module = (thread.frames[position], thread.symbols[position],
                             thread.modules[position])
    name = f"{symbol.name}+{symbol.offset:#x}" if symbol.name else (unnamed or f"{frame.pc:#x}")
    place = f" ({symbol.file}:{symbol.line})" if symbol.file and symbol.line else ""
    inside = f" in {module.path}" if module is not None else ""
    return f"frame #{frame.index} {name}{place}{inside}"


def first_named(thread: ThreadTrace, names: frozenset[str], start: int = 0) -> int | None:
    """The position of the youngest frame from ``start`` whose function is in ``names``."""
    return next((position for position in range(start, len(thread.symbols))
                 if thread.symbols[position].name in names), None)


def runtime_frames_above(thread: ThreadTrace, position: int,
                         is_runtime: Callable[[int], bool]) -> range:
    """The positions of the unbroken run of callers of ``position`` that ``is_runtime``
    claims: a language runtime's frames between abort() and the code that made it
    abort, which is the frame at the run's ``stop`` (when the stack goes that far)."""
    stop = position + 1
    while stop < len(thread.frames) and is_runtime(stop):
        stop += 1
    return range(position + 1, stop)


def one_line(text: str) -> str:
    """A message from the process (an abort message, what(), a panic) on one line."""
    return " ".join(text.split("\n")).strip()


def shortened(text: str, limit: int = TITLE_MAX) -> str:
    """``text`` cut to ``limit`` characters, the last of them an ellipsis."""
    return text if len(text) <= limit else text[:limit - 1] + "…"
