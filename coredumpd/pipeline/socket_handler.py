"""One crash on the kernel's coredump socket: the second front door.

The pipe handler (:mod:`coredumpd.pipeline.handler`) learns about a crash from
its argv and fd 0; here one accepted connection of ``coredumpd serve`` is one
crash, and the facts come from the connection's pidfd (``SO_PEERPIDFD``).
After that both doors are the same: the same :class:`CrashState`, the same
intake (:mod:`coredumpd.pipeline.intake`: stream, lz4 writer, limits) and the
same store path (:func:`coredumpd.pipeline.store_crash.finish`: index row,
journal, retention, sandboxed analysis).

A worker of ``coredumpd serve`` is forked before its crash arrives and readies
what does not depend on it (:class:`Ready`: the configuration, the index
connection, a spool file), so that after ``accept`` only the crash's own work
stands between the kernel and its release.  Order, decided by the kernel's
protocol (fs/coredump.c: coredump_sock_request(), do_coredump()):

1. The kernel sends ``coredump_req`` and waits for our answer; the process is
   held.  What the decision needs is read first — /proc/PID/comm, exe and
   limits — and the configuration and the index decide: ``COREDUMP_REJECT``
   (rate limited, or RLIMIT_CORE below a page — the kernel itself ignores
   RLIMIT_CORE on the socket) or ``COREDUMP_KERNEL``.
2. REJECT: the rest of /proc/PID is read, then the ack: a rejected crash still
   gets its row, at the cost of no dump.
3. KERNEL: acked at once with ``COREDUMP_WAIT`` too: the kernel then keeps the
   process (and /proc/PID) until we close the connection, not only until it
   has written the last byte (without WAIT it reaps it then, checked here).  So
   the rest of /proc/PID is read while the kernel writes the core — on the
   other CPU — and a small core (<= 8 MiB) is then copied into the spool file
   as for the pipe (:func:`coredumpd.pipeline.intake.hold_small_core`) and
   compressed after the release, a big one streamed into the lz4 writer.
   Measured on the tiny core (bench/socket_capture.py, medians from accept):
   before, /proc then ack at 5.6 ms and the release at 9.5 ms; now the ack at
   0.7 ms, /proc read at 1.4 ms, the release at 2.7-3.5 ms.
4. Connection closed: the kernel reaps the process; the rest is
   :mod:`store_crash`'s, as for the pipe.

PID reuse: /proc/PID is read by number, and a number can name another process
once the first is reaped.  The crashing process cannot be reaped while the
kernel waits for our ack or (WAIT) our close, unless it is SIGKILLed while
dumping; so after reading /proc we check that the pidfd — which names the
crashing process itself, never a successor — still says ``Pid: PID`` (fdinfo;
-1 once reaped).  If it does, the process was alive during every read, so PID
was still its number and everything read was its.  If not, the /proc facts are
dropped (``pidfd_check.verified`` false) and the row keeps what the core says.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from coredumpd.config import Config
from coredumpd.errors import CoredumpdError
from coredumpd.ingest import coredump_socket as S
from coredumpd.ingest import procfs
from coredumpd.ingest.args import RLIM_INFINITY, HandlerArgs
from coredumpd.ingest.changed import hold_changed_objects
from coredumpd.ingest.spool import has_room, open_spool_in
from coredumpd.ingest.stream import CoreStream
from coredumpd.paths import DEFAULT_CONFIG_PATH
from coredumpd.pipeline import store_crash
from coredumpd.pipeline.intake import (
    core_wanted,
    drain,
    hold_small_core,
    prepare_store,
    read_sender,
    store_buffered,
)
from coredumpd.pipeline.state import CrashState, read_config
from coredumpd.store.index import Index

REJECT_EXIT_WAIT_MS = 500  # for the exit code (the signal) of a rejected crash
AFTER_RELEASE_NICE = 5  # as the pipe handler: the reaped process's parent goes first
SPOOL_MIN_FREE = 64 << 20  # as the pipe handler: on a nearly full disk, memory instead


class NotACrash(CoredumpdError):
    """The peer is not a process that the kernel is dumping (someone connected by hand)."""


def file_identity(path: str) -> tuple[int, ...]:
    """What changes when the file at ``path`` is edited or replaced (the errno if none)."""
    try:
        info = os.stat(path)
    except OSError as err:
        return (err.errno or 0,)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


Loaded = tuple[Config, tuple[str, ...], tuple[int, ...]]  # config, its errors, file identity
STABLE_READS = 3


def load_config_file(path: str | None) -> Loaded:
    """:func:`read_config` with the file's identity, read again (up to STABLE_READS
    times) when the file changed while it was read: an editor writing it in place must
    not leave a worker with a half-read file (the defaults: another store)."""
    name = path or DEFAULT_CONFIG_PATH
    for _attempt in range(STABLE_READS):
        identity = file_identity(name)
        config, errors = read_config(path)
        if file_identity(name) == identity:
            break
    return config, errors, identity


class Ready:
    """What a worker opens before its crash arrives: the configuration (as the server
    read it: ``loaded``, and the file's identity then), the index, a spool file.

    :meth:`check` after ``accept`` costs a few stat calls: whatever changed since
    (the configuration edited, the index replaced, the disk filled) is done again."""

    def __init__(self, config_path: str | None, loaded: Loaded | None = None) -> None:
        self.config_path = config_path
        self.config, self.config_errors, self.identity = loaded or load_config_file(config_path)
        self.index: Index | None = None
        self.index_error = ""
        self.index_identity: tuple[int, ...] = ()
        self._open_index()
        self.spool_fd = open_spool_in(self.config.directory, SPOOL_MIN_FREE)

    def _open_index(self) -> None:
        path = self.config.index_path
        try:
            self.index = Index(path)
            self.index_identity = file_identity(path)[:2]
        except CoredumpdError as err:
            self.index, self.index_error = None, str(err)

    def check(self) -> Ready:
        """Self, or — the configuration changed — a new Ready; reopened what went stale."""
        if file_identity(self.config_path or DEFAULT_CONFIG_PATH) != self.identity:
            self.close()
            return Ready(self.config_path)
        if self.index is None or file_identity(self.config.index_path)[:2] != self.index_identity:
            if self.index is not None:
                self.index.close()
            self._open_index()
        if self.spool_fd >= 0 and not has_room(self.spool_fd, SPOOL_MIN_FREE):
            os.close(self.spool_fd)
            self.spool_fd = -1
        return self

    def take_spool(self) -> int:
        """The spool file, now the crash's (-1: none, the core waits in memory)."""
        fd, self.spool_fd = self.spool_fd, -1
        return fd

    def close(self) -> None:
        if self.index is not None:
            self.index.close()
            self.index = None
        if self.spool_fd >= 0:
            os.close(self.spool_fd)
            self.spool_fd = -1


def handle_connection(conn: socket.socket, ready: Ready,
                      started: float | None = None) -> CrashState:
    """Serve the crash on ``conn`` (closed on return); its state (``status``, ``row_id``)."""
    pidfd = S.peer_pidfd(conn)
    try:
        info = S.pidfd_info(pidfd)
        if not info.dumping:
            raise NotACrash(f"peer pid {info.pid} is not dumping core (mask {info.coredump_mask})")
        crash = CrashState(_args(info, pidfd, ready.config_path), started)
        crash.adopt_config(ready.config, ready.config_errors)
        crash.front_door, crash.args_source = "socket", "pidfd"
        flags = S.COREDUMP_KERNEL
        try:
            S.read_request(conn)
            _read_decisive(crash, info.pid)
            flags = _decide(crash, ready)
            crash.timings_ms["decided"] = _since(crash.started)
            crash.decision = "kernel" if flags == S.COREDUMP_KERNEL else "reject"
            if flags == S.COREDUMP_KERNEL:
                S.send_ack(conn, flags | S.COREDUMP_WAIT)  # held until we close (docstring)
                crash.timings_ms["acked"] = _since(crash.started)
                _collect_held(crash, info, pidfd)
                crash.timings_ms["proc_read"] = _since(crash.started)
                _stream(crash, conn, ready.take_spool())
            else:
                _collect_held(crash, info, pidfd)
                crash.timings_ms["proc_read"] = _since(crash.started)
                S.send_ack(conn, flags)
                crash.timings_ms["acked"] = _since(crash.started)
        except Exception as err:  # noqa: BLE001 - the row must still be written
            crash.problems.append(f"while the process was held: {type(err).__name__}: {err}")
        conn.close()
        crash.released = time.monotonic()
        crash.timings_ms["released"] = _since(crash.started)
        _after_release(crash, pidfd, flags)
    finally:
        conn.close()
        os.close(pidfd)
        ready.close()
    crash.status = store_crash.finish(crash)
    return crash


_CPU0 = [0.0]


def rehearse(ready: Ready) -> None:
    """Run the held phase's code once on our own process before a crash arrives: a forked
    worker's first run of any code copies the pages it writes (reference counts), and
    the index prepares its rate-limit query.  Measured: the worker's CPU time from
    accept to the release went from 3.1 to 2.2 ms (medians, tiny core)."""
    own = os.getpid()
    pidfd = os.pidfd_open(own)
    try:
        info = S.pidfd_info(pidfd)
        crash = CrashState(_args(info, pidfd, ready.config_path))
        crash.adopt_config(ready.config, ready.config_errors)
        _read_decisive(crash, own)
        if ready.index is not None:
            ready.index.count_recent("", 0)
        crash.proc = procfs.collect_process(own, crash.missing)
        verify_pidfd(pidfd, own)
        _fill_args_from_proc(crash.args, crash.proc)
    finally:
        os.close(pidfd)


def _since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


def _cpu() -> float:
    return round((time.process_time() - _CPU0[0]) * 1000, 3)


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


def _read_decisive(crash: CrashState, pid: int) -> None:
    """What the decision needs, before anything else: comm and exe (the rate limit's
    key) and limits (RLIMIT_CORE); :func:`_collect_held` reads them again with the rest."""
    get = procfs.Collector({}).get
    crash.proc = {
        "comm": get("comm", lambda: procfs.read_comm(pid)),
        "exe": get("exe", lambda: os.readlink(procfs.proc(pid, "exe"))),
        "limits": get("limits", lambda: procfs.read_limits(pid)),
    }
    _fill_args_from_proc(crash.args, crash.proc)


def _collect_held(crash: CrashState, info: S.PidfdInfo, pidfd: int) -> None:
    """/proc/PID while the kernel holds the process, then the pidfd check (docstring)."""
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


def _decide(crash: CrashState, ready: Ready) -> int:
    """KERNEL, or REJECT for a crash whose core would not be kept (row written anyway)."""
    if not core_wanted(crash):
        return S.COREDUMP_REJECT
    if ready.index is None:
        crash.problems.append(f"rate limit not checked before the dump: {ready.index_error}")
        return S.COREDUMP_KERNEL
    store_crash.apply_rate_limit(crash, ready.index)
    return S.COREDUMP_REJECT if crash.skip_core else S.COREDUMP_KERNEL


def _stream(crash: CrashState, conn: socket.socket, spool_fd: int) -> None:
    """The core: a small one into the spool (stored after the release), a big one
    through the lz4 writer now; then the signal's sender, while /proc still has it."""
    crash.core_stream = CoreStream(conn.fileno())
    crash.stream = crash.core_stream.result
    if not hold_small_core(crash, spool_fd):
        prepare_store(crash)
        drain(crash)
    crash.timings_ms["streamed"] = _since(crash.started)
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
    """The held small core into the store; notes, tid, and the signal: from the core,
    or for a rejected one the exit code."""
    try:
        os.nice(AFTER_RELEASE_NICE)
    except OSError:
        pass
    if flags == S.COREDUMP_KERNEL:
        try:
            store_buffered(crash)
        except Exception as err:  # noqa: BLE001 - the row must still be written
            crash.problems.append(f"storing the held core: {type(err).__name__}: {err}")
    crash.stream.decode_notes()
    if crash.stream.threads:
        crash.args.tid = crash.stream.threads[0].tid
    if flags != S.COREDUMP_KERNEL:
        crash.args.signal = _exit_signal(crash, pidfd)
    if crash.dir_fd < 0:  # no core was streamed: the row still needs the store
        from coredumpd.ingest.output import open_directory
        try:
            crash.dir_fd = open_directory(crash.load_config().directory)
        except CoredumpdError as err:
            crash.problems.append(str(err))
