"""signal-sent: the fatal signal was sent on purpose (kill(2), tgkill(2), sigqueue(3)).

A signal sent by a process carries si_code <= 0 (SI_USER from kill(),
SI_TKILL from tgkill(), SI_QUEUE from sigqueue(); include/uapi/asm-generic/
siginfo.h) with the sender's pid and real uid (pid as seen in the receiver's
PID namespace).  The handler records the sender's command at dump time if it
was still alive (``facts.sender``).

The sender may be the process itself (``kill(getpid(), …)``, ``raise()``,
``pthread_kill()``; perl's ``kill "SEGV", $$``, bash's ``kill -ABRT $$``):
si_pid is then its own pid (the kernel puts the sender's tgid there,
kernel/signal.c ``prepare_kill_siginfo``).  The function that sent it is the
caller of the C library's sending call, found on the stack of the thread that
made it.  ``abort()`` also raises its SIGABRT itself, but that is an abort,
told by the abort rules: with ``abort`` on the stack this rule stays silent
(CONTRACT.md).
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation, ThreadTrace

RULE_ID = "signal-sent"
# glibc 2.36's functions between a program and the kill/tgkill system call
# (signal/kill.c, sysdeps/posix/raise.c, nptl/pthread_kill.c, sysdeps/unix/sysv/linux/sigqueue.c)
SENDING_FUNCTIONS = frozenset({
    "kill", "raise", "gsignal", "tgkill", "tkill", "killpg", "sigqueue", "pthread_kill",
    "__pthread_kill_implementation", "__pthread_kill_internal", "pthread_sigqueue",
    "syscall",
})
ABORT_FUNCTIONS = frozenset({"abort", "__GI_abort", "__libc_abort"})
SELF_ADVICE = ("The process did not fault: it sent the signal to itself on purpose. Look at "
               "the code that sent it (a deliberate crash, an in-process watchdog, a test, a "
               "script's kill of its own $$) and at why it decided to.")
OTHER_ADVICE = ("The process did not fault: it was killed on purpose with a signal that dumps "
                "core. Find out why the sender did it (a watchdog, a supervisor's timeout, an "
                "admin's kill -SEGV/-ABRT/-QUIT).")


def check(ctx: AnalysisContext) -> list[Annotation]:
    fault = E.fault(ctx)
    if fault is None or fault.code > 0 or fault.sender_pid is None:
        return []
    if _is_own_pid(ctx, fault.sender_pid):
        return _self_sent(ctx, fault)
    lines = [(f"{fault.name} was sent with {fault.code_name} by pid {fault.sender_pid}, "
             f"uid {fault.sender_uid}")]
    sender = E.fact(ctx, "sender")
    if isinstance(sender, dict) and (sender.get("comm") or sender.get("exe")
                                     or sender.get("cmdline")):
        lines.append(_sender_line(sender, fault.sender_pid))
    elif fault.sender_pid == 0:
        lines.append("pid 0: sent by the kernel or from another PID namespace")
    else:
        lines.append("the sender had exited by dump time (or was in another PID namespace)")
    return [Annotation(
        RULE_ID, f"{fault.name} was sent by another process (pid {fault.sender_pid})", "high",
        tuple(lines), OTHER_ADVICE)]


def _is_own_pid(ctx: AnalysisContext, pid: int) -> bool:
    return pid != 0 and (pid in E.thread_tids(ctx) or pid == E.global_pid(ctx)
                         or pid == E.namespace_pid(ctx))


def _self_sent(ctx: AnalysisContext, fault: E.Fault) -> list[Annotation]:
    crashed = ctx.crashed
    if crashed is not None and any(symbol.name in ABORT_FUNCTIONS for symbol in crashed.symbols):
        return []  # abort()'s own raise(SIGABRT): an abort, not a kill
    lines = [(f"{fault.name} was sent with {fault.code_name} by pid {fault.sender_pid}, "
             f"uid {fault.sender_uid}: the process's own pid")]
    found = _sending_call(ctx)
    if found is None:
        lines.append("no thread's stack holds the call that sent it (kill, raise, tgkill, "
                     "pthread_kill, sigqueue)")
        title = f"{fault.name} was sent by the process itself"
    else:
        thread, call, caller = found
        lines.append(f"thread {thread.tid}: frame #{thread.frames[call].index} "
                     f"{thread.symbols[call].name}() sent it")
        lines.append(f"called from {_describe(thread, caller)}")
        title = (f"{fault.name} was sent by the process itself: {thread.symbols[call].name}() "
                 f"called from {_function(thread, caller)}")
    return [Annotation(RULE_ID, title, "high", tuple(lines), SELF_ADVICE)]


def _sending_call(ctx: AnalysisContext) -> tuple[ThreadTrace, int, int] | None:
    """(thread, outermost sending frame, its caller) on the crashed thread, else any thread:
    kill(getpid()) from one thread may be delivered to another (the sender is then on
    its stack only if it had not left kill() when the kernel stopped it for the dump)."""
    threads = sorted(ctx.threads, key=lambda thread: not thread.crashed)
    for thread in threads:
        call = None
        for position, symbol in enumerate(thread.symbols):
            if symbol.name in SENDING_FUNCTIONS and E.is_libc(thread.modules[position]):
                call = position
            elif call is not None:
                return thread, call, position
    return None


def _function(thread: ThreadTrace, position: int) -> str:
    symbol, module = thread.symbols[position], thread.modules[position]
    if symbol.name:
        return symbol.name
    frame = thread.frames[position]
    return f"{module.name}+{frame.pc - module.load_bias:#x}" if module else f"{frame.pc:#x}"


def _describe(thread: ThreadTrace, position: int) -> str:
    return E.describe_frame(thread, position, unnamed=_function(thread, position))


def _sender_line(sender: dict[str, object], si_pid: int) -> str:
    """The handler's record of the sender; its pid may be the host's view of si_pid."""
    cmdline = sender.get("cmdline")
    command = " ".join(map(str, cmdline)) if isinstance(cmdline, list) else None
    pid = sender.get("pid")
    host = f" (pid {pid} on the host)" if isinstance(pid, int) and pid != si_pid else ""
    return (f"sender{host}: {sender.get('comm') or '?'} ({sender.get('exe') or 'exe unknown'})"
            + (f", command line {command!r}" if command else "")
            + (f", uid {sender['uid']}" if sender.get("uid") is not None else ""))
