"""The analysis worker of ``coredumpd serve``: ``corectl analyze`` without the start-up.

``python -m coredumpd.cli.worker --socket PATH``, started (and restarted) by
the capture server (:mod:`coredumpd.pipeline.serve`) as a process of its own:
it shares neither the capture workers' epoll nor their processes.  It imports
corectl and the whole analysis once, then listens on ``PATH`` (mode 0666: any
local user may connect) for the ``corectl`` client (:mod:`coredumpd.cli.client`,
which describes the frames).  Per connection, as root:

* the peer's credentials from the kernel: ``SO_PEERCRED`` (pid, uid, gid),
  ``SO_PEERGROUPS``, ``SO_PEERPIDFD``; refused (the client then runs the command
  itself) when :data:`MAX_CHILDREN` commands run already, when our code changed
  on disk since we imported it (we then exit once idle, and the server starts a
  worker with the new code), or when the child would be less confined than the
  client (:func:`check_confinement`): another namespace of any kind or another
  root directory (its paths would not name our files, its network is not
  ours), a seccomp filter, another LSM label, or other capabilities than the
  child's (a root client that gave some up would get all of ours back);
* its cgroups (/proc/PID/cgroup), resource limits (/proc/PID/limits; in the child
  never above our own hard limits either), nice value and OOM score (the server's,
  OOMScoreAdjust=-500, must not shield a user's analysis), read while the pidfd
  proves the pid still names it;
* fork a child that, before it reads a byte of the request: moves into the client's
  cgroups (:mod:`coredumpd.cli.cgroups`: the limits of the client's slice are the
  command's, not the service's; refused when it cannot), takes those limits,
  drops to the peer's uid, gid and groups with the sandbox's own
  :func:`coredumpd.pipeline.sandbox_child.drop_privileges` (``PR_SET_NO_NEW_PRIVS``,
  not dumpable), and asks for SIGKILL should we die.  Only then it reads the
  request: fds 0, 1, 2 and the working directory, argv, environment, umask and
  how the client's standard streams encode; and it runs ``corectl.main(argv, env)``
  there, for ``analyze`` only, handing text meant for a pager back to the client.

The worker itself runs at nice 0 (or the server's nice value, when higher), not at
the server's ``Nice=-5``: what it does for a client is the client's work, and each
child takes its client's nice value anyway.  It waits in ``poll`` for connections, its children's pidfds
(reaped: the exit status goes to the client) and the clients' hang-ups: a
client that is interrupted (Ctrl-C) or dies closes its connection, and its
child is killed.  SIGTERM (the server stopping) kills the running children and
ends the worker; the server's death does too (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import resource
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from coredumpd.cli import cgroups, client
from coredumpd.paths import listen_unix
from coredumpd.pipeline.sandbox_child import _prctl, drop_privileges
from coredumpd.values import Value

MAX_CHILDREN = max(2, os.cpu_count() or 1)
# Commands of one user (but root) at a time: a user whose commands never end (a CORE
# that is a FIFO, a pipe nobody reads) must not take every slot from the others.
USER_CHILDREN_MAX = max(1, MAX_CHILDREN // 2)
SOCKET_MODE = 0o666  # any local user; each gets its own credentials (module docstring)
BACKLOG = 64
SO_PEERGROUPS = 59  # <asm-generic/socket.h>
SO_PEERPIDFD = 77
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_DUMPABLE = 4
GROUPS_BUFFER = 1024  # bytes: CPython's getsockopt limit, 256 groups
LIMITS_COUNT = 16  # RLIM_NLIMITS, <asm-generic/resource.h>
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PRELOAD_NICENESS = 10
RECEIVE_TIMEOUT_SEC = 10.0
# Refusals said on stderr (the server's log, the journal) per window, the rest counted:
# any local user may connect in a loop, and the service's log is not theirs to fill.
REFUSAL_LOG_BURST = 10
REFUSAL_LOG_WINDOW_SEC = 60.0
# /proc/PID/ns entries (a kernel without one of them: skipped)
NAMESPACES = ("mnt", "net", "ipc", "uts", "pid", "user", "cgroup", "time")


class Refused(Exception):
    """Why a client is not served here (it then runs the command itself)."""


class Peer(Value):
    """Who connected, from the kernel."""

    pid: int
    uid: int
    gid: int
    groups: list[int]
    memberships: list[cgroups.Membership]
    limits: dict[int, tuple[int, int]]
    nice: int
    oom_score_adj: int


def read_peer(conn: socket.socket) -> Peer:
    """The peer of ``conn`` and what it may have; Refused when it cannot be served here."""
    pid, uid, gid = (int.from_bytes(chunk, sys.byteorder, signed=True) for chunk in (
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)[i:i + 4] for i in (0, 4, 8)))
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, GROUPS_BUFFER)
        pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as err:
        raise Refused(f"pid {pid}: its groups or pidfd: {err.strerror}") from err
    try:
        groups = [int.from_bytes(raw[i:i + 4], sys.byteorder) for i in range(0, len(raw), 4)]
        check_confinement(pid, uid)
        memberships = cgroups.read_memberships(pid)
        limits = read_limits(pid)
        nice = os.getpriority(os.PRIO_PROCESS, pid)
        with open(f"/proc/{pid}/oom_score_adj", encoding="ascii") as handle:
            oom_score_adj = int(handle.read())
        if select.select([pidfd], [], [], 0)[0]:  # it exited: the pid may be another's
            raise Refused(f"pid {pid}: gone")
    except OSError as err:
        raise Refused(f"pid {pid}: {err.strerror or err}") from err
    finally:
        os.close(pidfd)
    return Peer(pid, uid, gid, groups, memberships, limits, nice, oom_score_adj)


def check_confinement(pid: int, uid: int) -> None:
    """Refused unless the child, which runs in our namespaces, with our root directory,
    no seccomp filter, our LSM label and (uid 0) all our capabilities or (any other uid)
    none, would be confined as ``pid`` is.  Namespaces and root by path, never by stat(2)
    of the client's root (a FUSE root directory would hang us)."""
    proc = f"/proc/{pid}"
    for name in NAMESPACES:
        try:
            same = os.readlink(f"{proc}/ns/{name}") == os.readlink(f"/proc/self/ns/{name}")
        except FileNotFoundError:
            if os.path.exists(proc):
                continue  # this kernel has no such namespace
            raise
        if not same:
            raise Refused(f"pid {pid}: another {'mount' if name == 'mnt' else name} namespace")
    if os.readlink(f"{proc}/root") != os.readlink("/proc/self/root"):
        raise Refused(f"pid {pid}: another root directory")
    theirs, ours = _status(pid), _status("self")
    if theirs.get("Seccomp", "0") != "0":
        raise Refused(f"pid {pid}: under a seccomp filter")
    wanted = {name: ours.get(name) for name in ("CapEff", "CapPrm", "CapBnd")} if uid == 0 \
        else {"CapEff": "0" * len(ours.get("CapEff", ""))}
    if any(theirs.get(name) != value for name, value in wanted.items()):
        raise Refused(f"pid {pid}: other capabilities than its analysis would have")
    if _lsm_label(str(pid)) != _lsm_label("self"):
        raise Refused(f"pid {pid}: another security label")


def _status(pid: str | int) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as handle:
        fields = (line.partition(":") for line in handle.read().splitlines())
        return {name: value.strip() for name, _colon, value in fields}


def _lsm_label(pid: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/attr/current", "rb") as handle:
            return handle.read()
    except OSError:  # EINVAL: no LSM with labels
        return None


def _limit_value(text: str) -> int:
    return resource.RLIM_INFINITY if text == "unlimited" else int(text)


def read_limits(pid: int) -> dict[int, tuple[int, int]]:
    """The resource limits of ``pid``, from /proc/PID/limits: one line per limit in
    the order of their numbers, soft and hard in fixed columns (fs/proc/base.c
    proc_pid_limits).  Not prlimit(2): another user's process takes CAP_SYS_RESOURCE."""
    with open(f"/proc/{pid}/limits", encoding="ascii") as handle:
        lines = handle.read().splitlines()[1:]
    if len(lines) != LIMITS_COUNT:
        raise OSError(f"/proc/{pid}/limits has {len(lines)} limits")
    return {number: (_limit_value(line[25:45].strip()), _limit_value(line[45:65].strip()))
            for number, line in enumerate(lines)}


def code_files() -> dict[str, tuple[int, int]]:
    """(mtime, size) of the files of every coredumpd module imported."""
    files = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (name == "coredumpd" or name.startswith("coredumpd.")) and isinstance(path, str):
            with contextlib.suppress(OSError):
                status = os.stat(path)
                files[path] = (status.st_mtime_ns, status.st_size)
    return files


def code_changed(files: dict[str, tuple[int, int]]) -> bool:
    for path, seen in files.items():
        try:
            status = os.stat(path)
        except OSError:
            return True
        if (status.st_mtime_ns, status.st_size) != seen:
            return True
    return False


class Running(Value):
    """A child running one client's command."""

    pid: int
    pidfd: int
    conn: socket.socket
    uid: int
    client_gone: bool = False


class Worker:
    """Accepts clients and runs one forked child per command (module docstring)."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.files = code_files()
        self.identity = client.identity()
        self.running: dict[int, Running] = {}  # by pidfd
        self.by_conn: dict[int, Running] = {}  # by the connection's fd
        self.poller = select.poll()
        self.stale = False
        self.retired: set[int] = set()  # fds closed during this round of events
        self.stopping = False
        self.wakeup_r = self.wakeup_w = -1
        self.refusals_logged = 0  # in the window that started at refusal_window
        self.refusal_window = -REFUSAL_LOG_WINDOW_SEC
        self.refusals_unlogged = 0

    def serve(self) -> int:
        """Until SIGTERM/SIGINT, or idle once the code changed.

        The signals set a flag and wake ``poll`` through the wakeup fd: an exception
        raised by a handler would be lost where it lands in code whose exceptions
        Python ignores (fork's at-fork hooks, finalizers), and the worker would
        outlive a server that stopped."""
        self.wakeup_r, self.wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wakeup_w)
        for signo in STOP_SIGNALS:
            signal.signal(signo, self._on_stop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        self.listener.setblocking(False)
        self.poller.register(self.listener, select.POLLIN)
        self.poller.register(self.wakeup_r, select.POLLIN)
        try:
            while not self.stopping and not (self.stale and not self.running):
                self.retired.clear()
                for fd, _events in self.poller.poll():
                    if fd not in self.retired:  # else its number may be a new file's
                        self._event(fd)
        finally:
            self._stop()
        return 0

    def _on_stop(self, signo: int, frame: object) -> None:
        self.stopping = True

    def _event(self, fd: int) -> None:
        if fd == self.wakeup_r:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wakeup_r, 64)
        elif self.stopping:
            return
        elif fd == self.listener.fileno():
            self._accept()
        elif fd in self.running:
            self._reap(self.running[fd])
        elif fd in self.by_conn:
            self._hang_up(self.by_conn[fd])

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        try:
            conn.setblocking(True)
            peer = self._admit(conn)
            pid = os.fork()
        except Refused as err:
            self._refuse(conn, str(err))
            return
        except OSError as err:
            self._refuse(conn, f"cannot fork: {err.strerror}")
            return
        if pid == 0:
            self._child(conn, peer)
        self._started(pid, conn, peer.uid)

    def _refuse(self, conn: socket.socket, reason: str) -> None:
        """Tell the client; log it unless :data:`REFUSAL_LOG_BURST` lines were logged in
        this window already (the next line logged says how many were not)."""
        _refuse(conn, reason)
        now = time.monotonic()
        if now - self.refusal_window >= REFUSAL_LOG_WINDOW_SEC:
            self.refusal_window, self.refusals_logged = now, 0
        if self.refusals_logged >= REFUSAL_LOG_BURST:
            self.refusals_unlogged += 1
            return
        self.refusals_logged += 1
        unlogged = f" ({self.refusals_unlogged} more refused, not logged)" \
            if self.refusals_unlogged else ""
        self.refusals_unlogged = 0
        sys.stderr.write(f"coredumpd analysis worker: refused: {reason}{unlogged}\n")
        sys.stderr.flush()

    def _admit(self, conn: socket.socket) -> Peer:
        if self.stale or code_changed(self.files):
            self._go_stale()
            raise Refused("coredumpd's code changed since the worker started")
        if len(self.running) >= MAX_CHILDREN:
            raise Refused(f"busy: {MAX_CHILDREN} commands running")
        peer = read_peer(conn)
        if peer.uid != 0 and sum(running.uid == peer.uid for running in self.running.values()) \
                >= USER_CHILDREN_MAX:
            raise Refused(f"busy: {USER_CHILDREN_MAX} commands of uid {peer.uid} running")
        return peer

    def _go_stale(self) -> None:
        if not self.stale:
            self.stale = True
            self.poller.unregister(self.listener)

    def _started(self, pid: int, conn: socket.socket, uid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # cannot watch it: it must not run unwatched
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            conn.close()
            return
        running = Running(pid, pidfd, conn, uid)
        self.running[pidfd] = running
        self.by_conn[conn.fileno()] = running
        self.poller.register(pidfd, select.POLLIN)
        self.poller.register(conn, select.POLLRDHUP)

    def _hang_up(self, running: Running) -> None:
        """The client closed (Ctrl-C, exit, death): its command is killed."""
        self.poller.unregister(running.conn)
        del self.by_conn[running.conn.fileno()]
        self.retired.add(running.conn.fileno())
        running.client_gone = True
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(running.pidfd, signal.SIGKILL)

    def _reap(self, running: Running) -> None:
        _, status = os.waitpid(running.pid, 0)
        self.poller.unregister(running.pidfd)
        os.close(running.pidfd)
        del self.running[running.pidfd]
        self.retired.update((running.pidfd, running.conn.fileno()))
        if not running.client_gone:
            self.poller.unregister(running.conn)
            del self.by_conn[running.conn.fileno()]
            frame = (client.KILLED, os.WTERMSIG(status)) if os.WIFSIGNALED(status) \
                else (client.EXIT, os.WEXITSTATUS(status))
            with contextlib.suppress(OSError):  # the client reads: a full buffer is its end
                running.conn.send(client.encode(frame), socket.MSG_DONTWAIT)
        running.conn.close()

    def _stop(self) -> None:
        for running in list(self.running.values()):
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(running.pidfd, signal.SIGKILL)
        for running in list(self.running.values()):
            running.client_gone = True
            self._reap(running)

    def _child(self, conn: socket.socket, peer: Peer) -> NoReturn:
        """In the forked child: become the peer, then run its command (never returns)."""
        status = client.ERROR_STATUS
        started = False
        try:
            self._close_ours()
            become(peer, self_pid=os.getppid())
            request, fds = receive(conn)
            check_request(request, self.identity)
            adopt(request, fds)
            conn.sendall(client.encode((client.STARTED,)))
            started = True
            status = run_command(request[3], _handoff_to(conn))
        except Refused as err:
            _refuse(conn, str(err))
        except BaseException as err:  # noqa: BLE001 - the child says why, then exits
            if not started:
                _refuse(conn, f"{type(err).__name__}: {err}")
        finally:
            os._exit(status)

    def _close_ours(self) -> None:
        """The worker's descriptors that the child must not keep (the others' too)."""
        for signo in STOP_SIGNALS:
            signal.signal(signo, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.close(self.wakeup_r)
        os.close(self.wakeup_w)
        self.listener.close()
        for running in self.running.values():
            os.close(running.pidfd)
            running.conn.close()


def _refuse(conn: socket.socket, reason: str) -> None:
    """Tell the client why (it then runs the command itself) and close."""
    with contextlib.suppress(OSError):
        conn.send(client.encode((client.REFUSED, reason)), socket.MSG_DONTWAIT)
    conn.close()


def become(peer: Peer, self_pid: int) -> None:
    """The peer's cgroups, limits, nice value, credentials; SIGKILL when the worker dies."""
    try:
        cgroups.join(peer.memberships, cgroups.cgroup_mounts())
    except OSError as err:
        raise Refused(f"cannot join the cgroups of pid {peer.pid}: {err}") from err
    for limit, (soft, hard) in peer.limits.items():
        _soft, our_hard = resource.getrlimit(limit)  # raising it would need CAP_SYS_RESOURCE
        resource.setrlimit(limit, (_at_most(soft, our_hard), _at_most(hard, our_hard)))
    os.setpriority(os.PRIO_PROCESS, 0, peer.nice)
    with open("/proc/self/oom_score_adj", "w", encoding="ascii") as handle:
        handle.write(str(peer.oom_score_adj))  # not the server's (OOMScoreAdjust=)
    drop_privileges(peer.uid, peer.gid, read_all=False, groups=peer.groups)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the drop, which clears it
    if os.getppid() != self_pid:
        raise Refused("the worker ended")


def _at_most(value: int, limit: int) -> int:
    if limit == resource.RLIM_INFINITY:
        return value
    return limit if value == resource.RLIM_INFINITY else min(value, limit)


def receive(conn: socket.socket) -> tuple[tuple[Any, ...], list[int]]:
    """The client's request frame and the four fds that came with it, within
    :data:`RECEIVE_TIMEOUT_SEC` (a client that sends nothing does not keep a slot)."""
    conn.settimeout(RECEIVE_TIMEOUT_SEC)
    header, fds, _flags, _address = socket.recv_fds(conn, 4, 8)
    if not header:
        raise Refused("no request")
    if len(header) < 4:
        header += client.read_exactly(conn, 4 - len(header)) or b""
    size = int.from_bytes(header, "little")
    if size > client.FRAME_MAX:
        raise Refused("request too large")
    import marshal

    request = marshal.loads(client.read_exactly(conn, size) or b"")
    if len(fds) != 4:
        raise Refused(f"{len(fds)} descriptors instead of 4")
    conn.settimeout(None)
    return request, fds


def check_request(request: Any, identity: tuple[str, str]) -> None:
    """The request is a well-formed ``analyze`` of a client of our own code."""
    if not (isinstance(request, tuple) and len(request) == 7 and request[0] == client.REQUEST
            and request[1] == client.PROTOCOL):
        raise Refused("not a request of this protocol")
    if request[2] != identity:
        raise Refused(f"another coredumpd: {request[2]!r}, this worker runs {identity!r}")
    argv, env = request[3], request[4]
    if not (isinstance(argv, list) and all(isinstance(arg, str) for arg in argv)
            and client.is_analyze(argv)):
        raise Refused("not an analyze command")
    if not (isinstance(env, dict) and all(isinstance(key, str) and isinstance(value, str)
                                          for key, value in env.items())):
        raise Refused("bad environment")


def adopt(request: tuple[Any, ...], fds: list[int]) -> None:
    """The client's working directory, umask, standard streams and environment."""
    os.fchdir(fds[3])
    os.close(fds[3])
    os.umask(int(request[5]) & 0o777)
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
        os.close(fd)
    specs = request[6]
    sys.stdin = _stream(0, "r", specs[0])
    sys.stdout = _stream(1, "w", specs[1])
    sys.stderr = _stream(2, "w", specs[2])
    os.environ.clear()
    os.environ.update(request[4])
    time.tzset()
    import tempfile

    tempfile.tempdir = None  # chosen again from the client's TMPDIR


def _stream(fd: int, mode: str, spec: Any) -> io.TextIOWrapper:
    """A standard stream on ``fd`` made as the client's Python made its own
    (Python/pylifecycle.c create_stdio: newline "\\n" on POSIX)."""
    encoding, errors, line_buffering, write_through = spec
    buffer = open(fd, mode + "b", closefd=False)  # noqa: SIM115 - the stream owns it
    return io.TextIOWrapper(buffer, encoding=str(encoding), errors=str(errors), newline="\n",
                            line_buffering=bool(line_buffering),
                            write_through=bool(write_through))


def _handoff_to(conn: socket.socket) -> Callable[[list[str], str], None]:
    def handoff(command: list[str], text: str) -> None:
        sys.stdout.flush()
        conn.sendall(client.encode((client.PAGE, command, text)))
    return handoff


def run_command(argv: list[str], handoff: Callable[[list[str], str], None]) -> int:
    """``corectl.main(argv)`` with our (the client's) streams; its exit status."""
    from coredumpd.cli import corectl, output

    output.handoff = handoff
    status = corectl.main(argv, os.environ)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = 120  # what Python's exit does when the final flush fails
    return status


def preload() -> None:
    """Import what ``corectl analyze`` may import, once (the point of this process)."""
    import codecs
    import importlib
    import pkgutil

    import coredumpd

    for name in ("ascii", "latin-1", "utf-8", "utf-16", "utf-32", "idna"):
        codecs.lookup(name)
    for module in pkgutil.walk_packages(coredumpd.__path__, "coredumpd."):
        if module.name.endswith("__main__"):
            continue
        with contextlib.suppress(Exception):  # a broken module shows when it is used
            importlib.import_module(module.name)
    for name in ("capstone", "lz4.block", "lz4.frame", "pystack", "pystack.engine",
                 "subprocess", "shlex", "tempfile", "marshal"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    from coredumpd.analysis import prepare
    from coredumpd.cli import corectl

    with contextlib.suppress(Exception):  # without it the children do that work themselves
        prepare()  # the first analysis's lazy work: patterns, rules, demanglers
    corectl.parser()  # built once, for every child


def bind(path: str) -> socket.socket:
    """A listening socket at ``path`` (a stale one replaced), mode 0666, race-free
    (:func:`coredumpd.paths.listen_unix`: no chmod by path)."""
    return listen_unix(path, SOCKET_MODE, BACKLOG)


def main(argv: list[str]) -> int:
    """``python -m coredumpd.cli.worker --socket PATH [--delay SECONDS]``."""
    options = dict(zip(argv[0::2], argv[1::2], strict=False))
    # Nothing of the server's but stdin, stdout and stderr: a descriptor it let us
    # inherit (the supervisor's listening socket, --listen-fd) would reach the
    # children that run as our clients.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    server = os.getppid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    _prctl(PR_SET_DUMPABLE, 0)  # as the server: our crash must not go to its socket
    if os.getppid() != server:
        return 1
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # until serve() handles them
    time.sleep(float(options.get("--delay", "0")))  # the server's back-off after a failure
    priority = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, min(19, priority + PRELOAD_NICENESS))
    preload()  # a second of CPU, niced: crashes being captured go first
    with contextlib.suppress(PermissionError):  # lowering it again takes CAP_SYS_NICE
        os.setpriority(os.PRIO_PROCESS, 0, max(0, priority))  # not the server's Nice=-5
    path = options["--socket"]
    listener = bind(path)
    bound = os.stat(path).st_ino
    gc.freeze()  # the imported objects stay out of the children's collections
    try:
        return Worker(listener).serve()
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == bound:  # not a successor's socket
                os.unlink(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
