"""One crash on the kernel's coredump socket: the second front door.

The pipe handler (:mod:`coredumpd.pipeline.handler`) learns about a crash from
its argv and fd 0; here one accepted connection of ``coredumpd serve`` is one
crash, and the facts come from the connection's pidfd (``SO_PEERPIDFD``).
After that both doors are the same: the same :class:`CrashState`, the same
intake (:mod:`coredumpd.pipeline.intake`: stream, lz4 writer, limits) and the
same store path (:func:`coredumpd.pipeline.store_crash.finish`: index row,
journal, retention, sandboxed analysis).

Order, decided by the kernel's protocol (fs/coredump.c, coredump_sock_request()):

1. The kernel sends ``coredump_req`` and waits for our answer: the process is
   held, so /proc/PID is read now (facts, changed mapped objects), and the
   configuration and the index decide, before the kernel writes a byte:
   ``COREDUMP_KERNEL`` (stream it) or ``COREDUMP_REJECT`` (rate limited, or
   RLIMIT_CORE below a page — the kernel itself ignores RLIMIT_CORE on the
   socket).  A rejected crash still gets its row, at the cost of no dump.
2. With KERNEL the core streams in; the kernel reaps the process as soon as it
   has written the last byte (checked here: it does not wait for our close).
3. Connection closed, the rest is :mod:`store_crash`'s, as for the pipe.

PID reuse: /proc/PID is read by number, and a number can name another process
once the first is reaped.  The crashing process cannot be reaped while the
kernel waits for our ack, unless it is SIGKILLed while dumping; so after
reading /proc we check that the pidfd — which names the crashing process
itself, never a successor — still says ``Pid: PID`` (fdinfo; -1 once reaped).
If it does, the process was alive during every read, so PID was still its
number and everything read was its.  If not, the /proc facts are dropped
(``pidfd_check.verified`` false) and the row keeps what the core says.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from coredumpd.errors import CoredumpdError
from coredumpd.ingest import coredump_socket as S
from coredumpd.ingest import procfs
from coredumpd.ingest.args import RLIM_INFINITY, HandlerArgs
from coredumpd.ingest.changed import hold_changed_objects
from coredumpd.ingest.stream import CoreStream
from coredumpd.pipeline import store_crash
from coredumpd.pipeline.intake import core_wanted, drain, prepare_store, read_sender
from coredumpd.pipeline.state import CrashState

REJECT_EXIT_WAIT_MS = 500  # for the exit code (the signal) of a rejected crash
AFTER_RELEASE_NICE = 5  # as the pipe handler: the reaped process's parent goes first


class NotACrash(CoredumpdError):
    """The peer is not a process that the kernel is dumping (someone connected by hand)."""


def handle_connection(conn: socket.socket, config_path: str | None,
                      started: float | None = None) -> CrashState:
    """Serve the crash on ``conn`` (closed on return); its state (``status``, ``row_id``)."""
    pidfd = S.peer_pidfd(conn)
    try:
        info = S.pidfd_info(pidfd)
        if not info.dumping:
            raise NotACrash(f"peer pid {info.pid} is not dumping core (mask {info.coredump_mask})")
        crash = CrashState(_args(info, pidfd, config_path), started)
        crash.front_door, crash.args_source = "socket", "pidfd"
        flags = S.COREDUMP_KERNEL
        crash.timings_ms["worker"] = _since(crash.started)
        try:
            S.read_request(conn)
            _collect_held(crash, info, pidfd)
            crash.timings_ms["proc_read"] = _since(crash.started)
            flags = _decide(crash)
            crash.timings_ms["decided"] = _since(crash.started)
            S.send_ack(conn, flags)
            crash.timings_ms["acked"] = _since(crash.started)
            crash.decision = "kernel" if flags == S.COREDUMP_KERNEL else "reject"
            if flags == S.COREDUMP_KERNEL:
                _stream(crash, conn)
        except Exception as err:  # noqa: BLE001 - the row must still be written
            crash.problems.append(f"while the process was held: {type(err).__name__}: {err}")
        conn.close()
        crash.released = time.monotonic()
        crash.timings_ms["released"] = _since(crash.started)
        _after_release(crash, pidfd, flags)
    finally:
        conn.close()
        os.close(pidfd)
    crash.status = store_crash.finish(crash)
    return crash


def _since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


def _args(info: S.PidfdInfo, pidfd: int, config_path: str | None) -> HandlerArgs:
    """What the pipe handler's argv would say, from the pidfd (the rest after /proc)."""
    args = HandlerArgs()
    args.pid, args.uid, args.gid = info.pid, info.ruid, info.rgid
    args.timestamp = int(time.time())
    args.hostname = socket.gethostname()  # ours; %h would be the crasher's UTS name
    args.dump_mode = info.dump_mode()
    args.pidfd = pidfd
    args.config_path = config_path
    return args


def _collect_held(crash: CrashState, info: S.PidfdInfo, pidfd: int) -> None:
    """/proc/PID while the kernel waits for our ack, then the pidfd check (docstring)."""
    pid = info.pid
    crash.proc = procfs.collect_process(pid, crash.missing)
    if crash.proc.get("maps"):
        crash.held = hold_changed_objects(pid, crash.proc, crash.missing)
    check = crash.pidfd_check = verify_pidfd(pidfd, pid)
    if not check["verified"]:
        crash.problems.append(f"/proc/{pid} may not be the crashed process ({check});"
                              " /proc facts not recorded")
        crash.proc, crash.held, crash.proc_pid = {}, {}, None
        return
    _fill_args_from_proc(crash.args, crash.proc)


def verify_pidfd(pidfd: int, pid: int) -> dict[str, Any]:
    """Whether ``pidfd`` still names a live process numbered ``pid`` (fdinfo ``Pid:``;
    -1 once it was reaped): ``verified`` and how it was found (module docstring)."""
    check: dict[str, Any] = {"pidfd": pidfd, "how": "pidfd fdinfo Pid after reading /proc"}
    try:
        check["pidfd_pid"] = procfs.pidfd_pid(pidfd)
    except (OSError, ValueError) as err:
        check["error"] = str(err)
    check["verified"] = check.get("pidfd_pid") == pid
    return check


def _fill_args_from_proc(args: HandlerArgs, proc: dict[str, Any]) -> None:
    """``%p`` from NSpid, ``%c`` from the soft RLIMIT_CORE."""
    nspid = (proc.get("status") or {}).get("NSpid") or []
    if nspid:
        args.ns_pid = int(nspid[-1])
    soft = ((proc.get("limits") or {}).get("Max core file size") or [None])[0]
    if soft == "unlimited":
        args.rlimit_core = RLIM_INFINITY
    elif soft is not None and soft.isdigit():
        args.rlimit_core = int(soft)


def _decide(crash: CrashState) -> int:
    """KERNEL, or REJECT for a crash whose core would not be kept (row written anyway)."""
    if not core_wanted(crash):
        return S.COREDUMP_REJECT
    try:
        from coredumpd.store.index import Index
        index = Index(crash.load_config().index_path)
    except CoredumpdError as err:
        crash.problems.append(f"rate limit not checked before the dump: {err}")
        return S.COREDUMP_KERNEL
    try:
        store_crash.apply_rate_limit(crash, index)
    finally:
        index.close()
    return S.COREDUMP_REJECT if crash.skip_core else S.COREDUMP_KERNEL


def _stream(crash: CrashState, conn: socket.socket) -> None:
    crash.core_stream = CoreStream(conn.fileno())
    crash.stream = crash.core_stream.result
    prepare_store(crash)
    drain(crash)
    read_sender(crash)


def _exit_signal(crash: CrashState, pidfd: int) -> int | None:
    """The signal of a rejected crash (no core, no NT_SIGINFO): the exit code that the
    pidfd gives once the process has exited and been reaped (its parent's wait)."""
    deadline = time.monotonic() + REJECT_EXIT_WAIT_MS / 1000
    try:
        S.wait_exit(pidfd, REJECT_EXIT_WAIT_MS)
        while True:
            info = S.pidfd_info(pidfd)
            if info.exited or time.monotonic() > deadline:
                break
            time.sleep(0.002)
    except OSError as err:
        crash.problems.append(f"signal of the rejected crash: {err}")
        return None
    if not info.exited:
        crash.problems.append(f"signal of the rejected crash: pid {info.pid} not reaped "
                              f"within {REJECT_EXIT_WAIT_MS} ms")
    return info.exit_signal()


def _after_release(crash: CrashState, pidfd: int, flags: int) -> None:
    """Notes, tid, and the signal: from the core, or for a rejected one the exit code."""
    crash.stream.decode_notes()
    if crash.stream.threads:
        crash.args.tid = crash.stream.threads[0].tid
    if flags != S.COREDUMP_KERNEL:
        crash.args.signal = _exit_signal(crash, pidfd)
    try:
        os.nice(AFTER_RELEASE_NICE)
    except OSError:
        pass
    if crash.dir_fd < 0:  # no core was streamed: the row still needs the store
        from coredumpd.ingest.output import open_directory
        try:
            crash.dir_fd = open_directory(crash.load_config().directory)
        except CoredumpdError as err:
            crash.problems.append(str(err))
