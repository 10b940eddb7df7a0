"""seccomp-violation: a seccomp filter killed the process for a system call.

A filter returning SECCOMP_RET_KILL_PROCESS or SECCOMP_RET_TRAP (with no
SIGSYS handler) ends the process with SIGSYS, si_code SYS_SECCOMP (1), and
the siginfo's ``_sigsys`` fields give the call's address, the syscall number
and the audit architecture (seccomp(2), kernel/seccomp.c
``seccomp_init_siginfo``).  Typical in containers and sandboxes whose profile
lacks a syscall that a new library version started to use.
"""

from __future__ import annotations

import functools
import re

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation

RULE_ID = "seccomp-violation"
SIGSYS = 31
SYS_SECCOMP = 1


def check(ctx: AnalysisContext) -> list[Annotation]:
    info = ctx.siginfo
    if info is None or info.si_signo != SIGSYS or info.si_code != SYS_SECCOMP:
        return []
    number = info.syscall
    arch = ctx.space.arch
    name = syscall_name(number, arch.syscall_header) \
        if number is not None and info.arch == arch.audit_arch else None
    call = f"{name} ({number})" if name else f"syscall {number}"
    lines = [f"signal SIGSYS, si_code SYS_SECCOMP: {call}, arch {info.arch or 0:#x}"]
    if info.call_addr is not None:
        lines.append(f"made at {E.where(ctx, info.call_addr)}")
    caller = E.first_frame_outside_libc(ctx)
    if caller:
        lines.append(f"called from {caller}")
    mode = E.fact(ctx, "proc", "status", "Seccomp")
    if mode is not None:
        lines.append(f"/proc/PID/status Seccomp: {mode}")
    return [Annotation(
        RULE_ID,
        f"A seccomp filter killed the process for {call}",
        "high",
        tuple(lines),
        f"The sandbox's seccomp profile does not allow {name or 'this system call'}: allow it "
        "in the profile (docker/podman --security-opt seccomp=..., systemd "
        "SystemCallFilter=) or avoid the call.",
    )]


@functools.cache
def _table(syscall_header: str) -> dict[int, str]:
    try:
        with open(syscall_header, encoding="ascii") as header:
            text = header.read(1 << 20)
    except OSError:
        return {}
    return {int(number): name for name, number in
            re.findall(r"^#define __NR_(\w+)\s+(\d+)\s*$", text, re.MULTILINE)}


def syscall_name(number: int, syscall_header: str) -> str | None:
    """The syscall's name from the architecture's kernel header, when installed."""
    return _table(syscall_header).get(number)
