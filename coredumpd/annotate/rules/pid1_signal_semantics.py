"""pid1-signal-semantics: the process was PID 1 of a PID namespace (a container's init).

pid_namespaces(7) "The namespace init process": only signals for which the
init process has established a handler can be sent to it by other members of
the namespace; the kernel also drops signals whose action is the default when
the init sends them to itself (kernel/signal.c ``sig_task_ignored``:
SIGNAL_UNKILLABLE).  So ``raise(SIGABRT)``, SIGTERM from ``docker stop`` and
SIGINT do nothing unless handled; and when the init dies, the kernel kills
every other process of the namespace with SIGKILL (``zap_pid_ns_processes``).
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation

RULE_ID = "pid1-signal-semantics"


def check(ctx: AnalysisContext) -> list[Annotation]:
    if E.namespace_pid(ctx) != 1:
        return []
    pids = E.ns_pids(ctx)
    global_pid = E.global_pid(ctx)
    if global_pid == 1 or (pids is not None and len(pids) < 2):
        return []  # the global init: init-crash says what that means
    lines = [_identity(ctx, pids, global_pid)]
    namespace = E.fact(ctx, "proc", "namespaces", "pid")
    if isinstance(namespace, dict) and namespace.get("id"):
        lines.append(f"PID namespace {namespace['id']} (same as init's: "
                     f"{namespace.get('same_as_init')})")
    fault = E.fault(ctx)
    if fault is not None:
        lines.append(f"it died of {fault.name}; every other process in the namespace was "
                     "killed with it")
    ignored = _default_action_signals(ctx)
    if ignored:
        lines.append(ignored)
    return [Annotation(
        RULE_ID,
        "The process was PID 1 of its PID namespace: default-action signals do not reach it",
        "high" if pids is not None or global_pid is not None else "medium",
        tuple(lines),
        "Run a real init as PID 1 of the container (tini, dumb-init, docker run --init) or "
        "install handlers for the signals the program relies on (SIGTERM, SIGINT, SIGABRT); "
        "abort() and kill() with default actions do not terminate a namespace init.",
    )]


def _identity(ctx: AnalysisContext, pids: list[int] | None, global_pid: int | None) -> str:
    comm = E.comm(ctx)
    if pids is not None:
        return f"{comm}: NSpid {' '.join(map(str, pids))} (pid {pids[0]} on the host, " \
               f"1 in its namespace)"
    if global_pid is not None:
        return f"{comm}: pid {global_pid} on the host, 1 in its namespace (%p)"
    return f"{comm}: NT_PRSTATUS pr_pid is 1 (the pid in its own namespace); host pid unknown"


def _default_action_signals(ctx: AnalysisContext) -> str | None:
    caught = E.signal_mask(ctx, "SigCgt")
    if caught is None:
        return None
    names = [name for signo, name in ((1, "SIGHUP"), (2, "SIGINT"), (6, "SIGABRT"),
                                      (15, "SIGTERM")) if not E.in_mask(caught, signo)]
    if not names:
        return None
    return f"no handler for {', '.join(names)} (SigCgt {E.fact(ctx, 'proc', 'status', 'SigCgt')})"\
        ": these were silently dropped if sent"
