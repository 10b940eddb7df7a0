"""init-crash: the global PID 1 (the system's init) crashed.

When init takes a fatal signal the kernel first dumps its core (do_coredump()
runs from get_signal() before do_group_exit()) and then panics: "Attempted to
kill init! exitcode=…" (kernel/exit.c ``do_exit`` → ``panic``).  systemd-coredump
cannot save such a core: since v229 it hands the core to a socket-activated
service, which needs PID 1 (incidents/systemd-pid1-segv-coredump.txt).
coredumpd's handler writes and indexes the core itself, so this record exists;
the rule says so and what follows for the system.
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation

RULE_ID = "init-crash"


def check(ctx: AnalysisContext) -> list[Annotation]:
    global_pid = E.global_pid(ctx)
    pids = E.ns_pids(ctx)
    if global_pid != 1 and not (pids is not None and pids == [1]):
        return []
    fault = E.fault(ctx)
    lines = [f"{E.comm(ctx)} ({E.fact(ctx, 'proc', 'exe') or 'exe unknown'}) was the global "
             f"PID 1 (%P = {global_pid}"
             + (f", NSpid {' '.join(map(str, pids))})" if pids else ")")]
    if fault is not None:
        lines.append(f"it died of {fault.describe()}")
    handler = E.fact(ctx, "handler_pid")
    lines.append("the coredumpd handler"
                 + (f" (pid {handler})" if isinstance(handler, int) else "")
                 + " stored and indexed this core itself, without PID 1, a socket-activated "
                 "service or the journal daemon")
    path = E.fact(ctx, "path_taken")
    if isinstance(path, dict) and path:
        lines.append("path taken: " + ", ".join(f"{key}={value}" for key, value in
                                               sorted(path.items())))
    lines.append("after the dump the kernel panics ('Attempted to kill init!') unless init "
                 "handles the signal: the machine rebooted or hung right after this crash")
    return [Annotation(
        RULE_ID,
        "The system's init (global PID 1) crashed",
        "high",
        tuple(lines),
        "Treat this as a system crash: check the previous boot's kernel log (journalctl -k -b -1)"
        " for the panic, debug the core with 'corectl debug', and make sure the core directory"
        " is on persistent storage so cores of PID 1 survive the reboot.",
    )]
