"""abort-hlt: glibc's ``abort()`` could not kill the process and executed ``hlt``.

glibc 2.36 stdlib/abort.c: ``abort()`` unblocks SIGABRT and ``raise(SIGABRT)``;
if the process survives it resets the action to SIG_DFL and raises again; if
it still survives it executes ``ABORT_INSTRUCTION`` (sysdeps/x86/abort-instr.h:
``hlt``).  ``hlt`` is privileged: in user mode the CPU raises #GP, and the
kernel's ``do_general_protection()`` (arch/x86/kernel/traps.c) sends SIGSEGV
with si_code SI_KERNEL and address 0.  So a SIGSEGV from ``abort()`` means
SIGABRT was not delivered even with its action reset to SIG_DFL (so a
handler or SIG_IGN cannot be the reason): the process was PID 1 of a PID
namespace (the kernel drops default-action signals sent to it,
kernel/signal.c ``sig_task_ignored`` with SIGNAL_UNKILLABLE), or a seccomp
filter (or an LSM) refused the ``tgkill`` that ``raise()`` makes.
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation
from coredumpd.elf.layouts import SI
from coredumpd.errors import CoredumpdError

RULE_ID = "abort-hlt"
ABORT_FUNCTIONS = frozenset({"abort", "__GI_abort", "__libc_abort"})
SECCOMP_MODE_FILTER = 2  # /proc/PID/status "Seccomp:" (Documentation/userspace-api/seccomp_filter)


def check(ctx: AnalysisContext) -> list[Annotation]:
    fault = E.fault(ctx)
    pc = E.pc_of(ctx)
    if fault is None or pc is None or not _is_gp_fault(fault):
        return []
    hlt = ctx.space.arch.abort_instruction  # f4 on x86-64
    if hlt is None:
        return []
    try:
        if ctx.space.read(pc, len(hlt)) != hlt:
            return []
    except CoredumpdError:
        return []
    function = E.plain_symbol(ctx, pc)
    module = E.module_of(ctx, pc)
    if function not in ABORT_FUNCTIONS and not (function is None and E.is_libc(module)):
        return []
    lines = [
        fault.describe(),
        f"pc {E.where(ctx, pc)} is a 'hlt' instruction (f4): glibc's ABORT_INSTRUCTION",
        ("hlt is privileged: the CPU raised a general protection fault, and the kernel "
        "turned it into SIGSEGV (SI_KERNEL, address 0)"),
    ]
    caller = E.first_frame_outside_libc(ctx)
    if caller:
        lines.append(f"abort() was called from {caller}")
    blockers = blocking_reasons(ctx)
    lines.extend(blockers or ["what blocked SIGABRT is not recorded (no facts for this core)"
                              if not ctx.facts else "no recorded fact explains why SIGABRT "
                              "was not delivered"])
    return [Annotation(
        RULE_ID,
        "abort() could not deliver SIGABRT and fell through to its last resort (hlt)",
        "high" if function in ABORT_FUNCTIONS else "medium",
        tuple(line for line in lines if line),
        "The SIGSEGV is a symptom: the program called abort() (look at the frames below abort "
        "and at the abort message). Fix what blocked SIGABRT: run a real init (tini, "
        "dumb-init, docker --init) as PID 1 of the namespace, or allow tgkill/kill in the "
        "seccomp filter.",
    )]


def _is_gp_fault(fault: E.Fault) -> bool:
    return fault.signo == E.SIGSEGV and fault.code == SI.KERNEL and not fault.address


def blocking_reasons(ctx: AnalysisContext) -> list[str]:
    """What the facts say kept SIGABRT from killing the process."""
    reasons = []
    if E.namespace_pid(ctx) == 1:
        pids = E.ns_pids(ctx)
        shown = f" (NSpid {' '.join(map(str, pids))})" if pids else " (pid 1 in the core)"
        reasons.append(f"the process was PID 1 of its PID namespace{shown}: the kernel does "
                       "not deliver signals whose action is the default to it")
    seccomp = E.fact(ctx, "proc", "status", "Seccomp")
    if seccomp == SECCOMP_MODE_FILTER or seccomp == str(SECCOMP_MODE_FILTER):
        reasons.append("a seccomp filter was active (Seccomp: 2): it may have refused the "
                       "tgkill()/kill() that raise(SIGABRT) makes")
    return reasons
