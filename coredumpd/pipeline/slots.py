"""Back-pressure: at most a few handlers (and analysis jobs) work at the same time.

In a crash storm the kernel starts one handler per crash at once, up to
``kernel.core_pipe_limit`` of them (:mod:`coredumpd.pipeline.install` sets it
high, because over it the kernel drops the crash without telling any handler).
Each working handler costs tens of MiB (the interpreter, then the lz4 writer,
SQLite and the model), so a handler first takes one of
:func:`handler_slots` slots and waits, before it reads anything, while all are
taken.  Waiting costs little: an interpreter that has imported nothing but this
module (about 3 MiB private memory, measured), and the kernel holds the crashed
process meanwhile (its dump blocks on our pipe, /proc/PID stays), so waiting
loses nothing but time.  The analysis jobs, which outlive the handlers, take an
analysis slot the same way (:func:`analysis_slots`).

A slot is an exclusive flock(2) on ``/run/coredumpd/KIND.N``, held until the
process exits: the kernel releases it whatever way the process ends, so a
killed handler never leaks a slot.  flock cannot wait for "any of N", so one
waiter at a time (the holder of ``KIND.gate``) polls the slots; the others
sleep in flock on the gate.  When no slot directory can be had, nobody waits:
back-pressure must never become a way to lose a crash.

Imported by the handler before anything else: only os, fcntl and time.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time

SLOT_DIRECTORY = "/run/coredumpd"
POLL_S = 0.01  # how often the first waiter looks for a free slot
HANDLER_SLOTS_MIN = 4  # a tiny core should not wait behind two big ones on 2 CPUs
HANDLER_SLOTS_MAX = 16
_held: dict[str, int] = {}  # kind -> fd of the slot this process holds


def handler_slots() -> int:
    """Working handlers at once: one per CPU, 4 to 16 (each ~40-50 MiB at its peak)."""
    return min(HANDLER_SLOTS_MAX, max(HANDLER_SLOTS_MIN, os.cpu_count() or 1))


def analysis_slots() -> int:
    """Analysis jobs at once: one per CPU but one, at least one.

    A CPU stays free for the next crash's capture.  Niceness is not enough: on two
    CPUs, two busy loops at nice 15 (or SCHED_IDLE) took a tiny core's crash->reap
    from 12.6 to 19.2 ms (17.5 ms), one loop left it at 12.4 ms (medians of 12
    interleaved crashes, measured for issue 15): the dumping process and the
    handler run side by side when a CPU is free, one after the other otherwise.
    """
    return max(1, (os.cpu_count() or 1) - 1)


def protect_standard_fds() -> None:
    """The kernel starts the handler with fds 1 and 2 closed (FACTS.md): fill them with
    /dev/null before opening anything, so that no file of ours becomes "stdout"."""
    for target in (1, 2):
        try:
            os.fstat(target)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)
            if null != target:
                os.dup2(null, target)
                os.close(null)


def hold_slot(kind: str, count: int, directory: str = SLOT_DIRECTORY) -> bool:
    """Wait for one of ``count`` slots of ``kind`` and keep it until exit (once per
    process: a second call returns at once).  False when there is no slot directory
    (nobody waits then)."""
    if kind in _held:
        return True
    try:
        dir_fd = _open_directory(directory)
    except OSError:
        return False
    try:
        slots: list[int] = []
        gate = held = -1
        try:
            slots.extend(_open_file(dir_fd, f"{kind}.{number}") for number in range(count))
            held = _try_slots(slots)
            if held < 0:
                gate = _open_file(dir_fd, f"{kind}.gate")
                fcntl.flock(gate, fcntl.LOCK_EX)  # the others queue here, asleep
                while (held := _try_slots(slots)) < 0:
                    time.sleep(POLL_S)
        finally:
            if gate >= 0:
                os.close(gate)
            for fd in slots:
                if fd != held:
                    os.close(fd)
        _held[kind] = held
        return True
    except OSError:
        return False
    finally:
        os.close(dir_fd)


def release_slot(kind: str) -> None:
    """Give back the slot of ``kind`` before the process ends (work that needs no slot,
    such as waiting for the fleet database, must not keep one from others)."""
    fd = _held.pop(kind, None)
    if fd is not None and fd >= 0:
        os.close(fd)  # closing the only descriptor of the open file drops its flock


def _try_slots(slots: list[int]) -> int:
    for fd in slots:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            continue
    return -1


def _open_directory(directory: str) -> int:
    """The slot directory, made root-only when missing; refused if others may write it."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        raise PermissionError(f"{directory} is not ours alone")
    return fd


def _open_file(dir_fd: int, name: str) -> int:
    return os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                   dir_fd=dir_fd)
