"""signal-sent: another process sent the fatal signal (kill(2), tgkill(2), sigqueue(3)).

A signal sent by a process carries si_code <= 0 (SI_USER from kill(),
SI_TKILL from tgkill(), SI_QUEUE from sigqueue(); include/uapi/asm-generic/
siginfo.h) with the sender's pid and real uid (pid as seen in the receiver's
PID namespace).  A signal the process sent itself (raise(), abort()) is not
this rule's business: its sender is one of its own threads.  The handler
records the sender's command at dump time if it was still alive
(``facts.sender``).
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation

RULE_ID = "signal-sent"


def check(ctx: AnalysisContext) -> list[Annotation]:
    fault = E.fault(ctx)
    if fault is None or fault.code > 0 or fault.sender_pid is None:
        return []
    own = E.thread_tids(ctx)
    if fault.sender_pid in own or fault.sender_pid == E.global_pid(ctx):
        return []  # raise()/abort()/pthread_kill() by the process itself
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
        RULE_ID,
        f"{fault.name} was sent by another process (pid {fault.sender_pid})",
        "high",
        tuple(lines),
        "The process did not fault: it was killed on purpose with a signal that dumps core. "
        "Find out why the sender did it (a watchdog, a supervisor's timeout, an admin's kill "
        "-SEGV/-ABRT/-QUIT).",
    )]


def _sender_line(sender: dict[str, object], si_pid: int) -> str:
    """The handler's record of the sender; its pid may be the host's view of si_pid."""
    cmdline = sender.get("cmdline")
    command = " ".join(map(str, cmdline)) if isinstance(cmdline, list) else None
    pid = sender.get("pid")
    host = f" (pid {pid} on the host)" if isinstance(pid, int) and pid != si_pid else ""
    return (f"sender{host}: {sender.get('comm') or '?'} ({sender.get('exe') or 'exe unknown'})"
            + (f", command line {command!r}" if command else "")
            + (f", uid {sender['uid']}" if sender.get("uid") is not None else ""))
