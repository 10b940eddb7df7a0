"""The kernel's core_pattern handler: store every crash, then let the kernel go.

Phase 1, while the kernel holds the crashed process (fs/coredump.c: the dump
waits for the pipe, then wait_for_dump_helpers() waits until we close it):
read /proc/PID, read the core from fd 0 — a small one (<= 8 MiB) into an
unnamed spool file in the store (:mod:`coredumpd.ingest.spool`), a big one
streamed into an unnamed file in the store through the lz4 writer — open the mapped ELF objects that changed on disk, read the signal
sender.  Only then fd 0 is closed — the kernel reaps the process at that
moment (FACTS.md: 3 ms vs 2 s), so phase 1 imports and does as little as
possible: for a small core, nothing but os, struct, fcntl and our ingest
modules (no configuration, lz4 writer or note decoders: ``dataclasses``
alone costs more than the rest of phase 1).

Phase 2, the process gone: finish the lz4 index, fsync, link under systemd's
name, ACL, index row, retention, a /dev/kmsg line when the crasher is PID 1 or
journald, and the crash queued for its analysis and journal entry: a detached, niced
job (:mod:`coredumpd.pipeline.analyze_job`) is started unless one of the store holds
every drain lock (:mod:`coredumpd.pipeline.analysis_queue`).  Nothing here needs PID 1
or journald.

The kernel starts us with fds 1 and 2 closed, an empty environment, cwd /
and RLIMIT_CORE 1 (FACTS.md).  Before phase 1 the handler holds one of a few
slots (:mod:`coredumpd.pipeline.slots`; ``main()`` waits for it before even
importing this module): in a storm the rest wait, small, while the kernel
holds their processes.
"""

from __future__ import annotations

import fcntl
import os
import time

from coredumpd.ingest import procfs
from coredumpd.ingest.args import parse_args
from coredumpd.ingest.changed import hold_changed_objects
from coredumpd.ingest.spool import open_spool
from coredumpd.ingest.stream import CoreStream
from coredumpd.pipeline import slots
from coredumpd.pipeline.intake import (
    core_wanted,
    drain,
    hold_small_core,
    prepare_store,
    read_sender,
    store_buffered,
)
from coredumpd.pipeline.state import CrashState

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # include/uapi/linux/fcntl.h
PIPE_SIZE = 1 << 20
REAP_WAIT_MS = 100  # at most this long for the released process to exit (a ptraced one may not)
AFTER_RELEASE_NICE = 5  # phase 2 must not take the CPU from the reaped process's parent
# A spool is not worth the room the index row and the core need on a nearly full
# file system: below this much free space the small core waits in memory instead.
SPOOL_MIN_FREE = 64 << 20


def _sanitize_process() -> None:
    """fds 1/2 to /dev/null before anything can print; cwd /; private umask."""
    null = os.open("/dev/null", os.O_RDWR)
    for target in (1, 2):
        if null != target:
            os.dup2(null, target)
    if null > 2:
        os.close(null)
    os.chdir("/")
    os.umask(0o027)


def _widen_pipe() -> None:
    """Ask for a 1 MiB pipe (fcntl(2) F_SETPIPE_SZ; root may exceed pipe-max-size):
    the kernel's default 64 KiB means a context switch every 16 pages."""
    try:
        fcntl.fcntl(0, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # not a pipe (run by hand) or no memory: the default size works too


def handle(argv: list[str], started: float | None = None) -> int:
    """Run the handler for the kernel's ``argv`` (without argv[0]); exit status.

    ``started``: the monotonic time the process started, if the caller took it."""
    return run(argv, started).status


def run(argv: list[str], started: float | None = None) -> CrashState:
    """:func:`handle`, returning the crash's state (``status``, ``row_id``...)."""
    _sanitize_process()
    slots.hold_slot("handler", slots.handler_slots())  # at once if main() took it
    _widen_pipe()
    crash = CrashState(parse_args(argv), started)
    try:
        _phase_held(crash)
    except Exception as err:  # noqa: BLE001 - the core must still be stored
        crash.problems.append(f"while the process was held: {type(err).__name__}: {err}")
    finally:
        _release_kernel(crash)
    try:
        store_buffered(crash)
    except Exception as err:  # noqa: BLE001
        crash.problems.append(f"storing the buffered core: {type(err).__name__}: {err}")
    crash.stream.decode_notes()
    from coredumpd.pipeline import store_crash  # heavy imports only now
    crash.status = store_crash.finish(crash)
    return crash


def _phase_held(crash: CrashState) -> None:
    """While the kernel holds the process: /proc, the core (whole if small), the sender.

    A small core is only buffered here; config, store and lz4 writer (and their
    imports) wait until the kernel has been released, unless the core is big.
    """
    _check_pidfd(crash)
    if crash.proc_pid is not None:
        crash.proc = procfs.collect_process(crash.proc_pid, crash.missing)
    crash.core_stream = CoreStream(0)
    crash.stream = crash.core_stream.result
    if core_wanted(crash) and not _hold_small_core(crash):
        prepare_store(crash)
        drain(crash)
    read_sender(crash)
    if crash.proc_pid is not None and crash.proc.get("maps"):
        crash.held = hold_changed_objects(crash.proc_pid, crash.proc, crash.missing)


def _hold_small_core(crash: CrashState) -> bool:
    """Copy a small core into a spool file (in memory only when no spool file can be
    had, e.g. before the storage directory exists); True when all of it was read."""
    return hold_small_core(crash, open_spool(crash.args.config_path, min_free=SPOOL_MIN_FREE))


def _check_pidfd(crash: CrashState) -> None:
    """Make sure /proc/PID is the process the kernel called us for.

    With ``%F`` the kernel gives a pidfd of the crashing process: its fdinfo
    ``Pid:`` must be ``%P``.  Without one, the process must have started
    before the crash time ``%t`` (PID reuse would give a younger process).
    """
    args = crash.args
    check: dict[str, Any] = {"pidfd": args.pidfd}
    if args.pidfd is not None and args.pid is not None:
        try:
            check["pidfd_pid"] = procfs.pidfd_pid(args.pidfd)  # None: not a pidfd at all
        except (OSError, ValueError) as err:
            check["error"] = str(err)
        if check.get("pidfd_pid") is not None:
            check["verified"] = check["pidfd_pid"] == args.pid
    if "verified" not in check and args.pid is not None and args.timestamp is not None:
        try:
            ticks = procfs.start_time_ticks(args.pid)
            start_us = procfs.boot_time_us() + ticks * 1_000_000 // os.sysconf("SC_CLK_TCK")
            check["start_time_us"] = start_us
            check["verified"] = start_us // 1_000_000 <= args.timestamp + 1
        except (OSError, ValueError, IndexError) as err:
            check["error"] = str(err)
    crash.pidfd_check = check
    if check.get("verified") is False:
        crash.problems.append(f"/proc/{args.pid} is not the crashed process ({check});"
                              " /proc facts not recorded")
        crash.proc_pid = None


def _release_kernel(crash: CrashState) -> None:
    """Close the pipe: the kernel reaps the crashed process now.

    Then wait (bounded) until it has exited before working on: measured here,
    a handler busy on the CPU right after closing fd 0 delayed a tiny core's
    crash->reap from ~16 ms to ~40 ms on two CPUs (the woken process waits
    behind us), and ``nice`` alone did not help enough.
    """
    try:
        os.close(0)
    except OSError:
        pass
    crash.released = time.monotonic()
    pidfd = crash.pidfd_check.get("pidfd") if crash.pidfd_check.get("pidfd_pid") is not None \
        else None
    if pidfd is not None:  # it was a pidfd: ours to wait on and close
        crash.reap_wait_ms = _wait_exited(pidfd, REAP_WAIT_MS)
        try:
            os.close(pidfd)
        except OSError:
            pass
    try:
        os.nice(AFTER_RELEASE_NICE)
    except OSError:
        pass


def _wait_exited(pidfd: int, timeout_ms: int) -> float:
    """Sleep until the pidfd's process has exited (POLLIN) or ``timeout_ms``; ms waited."""
    import select
    started = time.monotonic()
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll(timeout_ms)
    except OSError:
        pass
    return (time.monotonic() - started) * 1000
