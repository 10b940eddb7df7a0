"""``coredumpd serve``: the capture server on the kernel's coredump socket.

One process listens on an ``AF_UNIX`` ``SOCK_STREAM`` socket (its own, or the
one its supervisor holds: :mod:`coredumpd.pipeline.supervise`; never PID 1's)
and keeps ``workers`` forked workers waiting for a connection, i.e. a crash.
Each worker serves one crash
(:func:`coredumpd.pipeline.socket_handler.handle_connection`) and exits; the
server forks its successor.  So a crash finds a process that has already
imported everything, read the configuration (the server reads it once and
again only when the file changed: :class:`ConfigCache`), opened the index and
a spool file (:class:`coredumpd.pipeline.socket_handler.Ready`): the fork
(2.3 ms of a tiny core's 9.8 ms crash->reap, measured) and that preparation
(2.1 ms) happen before the crash instead of while the kernel holds it.  One
crash per worker keeps what the old one-fork-per-accept design gave: every
crash starts from the server's state, and what a worker allocates (a core's
head, lz4 blocks, the analysis's spawn) goes when it exits.

The workers wait in ``epoll`` with ``EPOLLEXCLUSIVE`` on the listening socket,
so a connection wakes one of them, not all (a thundering herd on 2 CPUs would
take time from the crashing process and the worker that got it).

Concurrency is ours to decide: at most ``workers`` crashes are served at once.
With all workers busy nobody accepts and further crashes wait in the kernel's
accept queue (``listen`` backlog :data:`BACKLOG`, capped by
net.core.somaxconn), each dumping process held by the kernel until its turn —
none is dropped, and memory stays bounded by the worker count (each worker
holds at most a small core's head and a few lz4 blocks; a small core itself
waits in an unnamed spool file).

The server's own crash must not go to its own socket: the kernel would
connect, and wait for an ack from the process that is busy dying.  The kernel
ignores RLIMIT_CORE for socket patterns (checked here, shared/FACTS.md), so the
server and its workers make themselves non-dumpable (``PR_SET_DUMPABLE`` 0):
their crash writes no core and they exit at once; the supervisor sees the exit,
puts the pipe handler back into core_pattern and restarts the server.  The
analysis jobs are exec'd, which makes them dumpable again: their crashes are
stored like any other.

On SIGTERM or SIGINT the server closes the workers' stop pipe: they serve
what is already queued (the supervisor has switched core_pattern back to the
pipe first, so nothing new arrives) and exit, the server forking more while
connections wait; then it exits.  If the server dies, the stop pipe closes
too: the workers serve one queued crash each and exit, and the rest stays in
the supervisor's socket for the next server.

Beside the capture workers, once they wait, the server starts the analysis
worker (:class:`AnalysisWorker`, ``python -m coredumpd.cli.worker``): the
process that runs ``corectl analyze`` for the ``corectl`` client with its
imports done.  It is a process of its own, with its own socket and poll: a
crash never waits for it.  It is restarted when it ends and stopped with the
server.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import select
import signal
import socket
import sys
import time

from coredumpd.paths import DEFAULT_CONFIG_PATH, listen_unix
from coredumpd.pipeline.socket_handler import (
    Loaded,
    Ready,
    file_identity,
    handle_connection,
    load_config_file,
    rehearse,
)
from coredumpd.report.journal import service_line, write_kmsg

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn (4096 by default since 5.4)
DEFAULT_WORKERS = max(4, 2 * (os.cpu_count() or 1))
PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h
PR_SET_DUMPABLE = 4
FORK_RETRIES = 50  # fork(2) failing with EAGAIN/ENOMEM: wait, do not drop the crash
CORE_PATTERN = "/proc/sys/kernel/core_pattern"
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
SOCKET_MODE = 0o600  # the kernel connects with its own credentials; nobody else may
WORKER_UNUSABLE = 3  # a worker's exit status: failed before it had a connection
UNUSABLE_PAUSE_SEC = 0.5
ANALYSIS_RESTART_MAX_SEC = 30.0


class _Stop(Exception):
    pass


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value})")


def make_undumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): a crash of this process writes no core (see above)."""
    _prctl(PR_SET_DUMPABLE, 0)


def bind_listener(path: str) -> socket.socket:
    """A listening socket at ``path`` (a stale file there is replaced), mode 0600,
    race-free (:func:`coredumpd.paths.listen_unix`)."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    return listen_unix(path, SOCKET_MODE, BACKLOG)


def preload() -> None:
    """Import what a crash needs, once, before the first fork."""
    import coredumpd.config
    import coredumpd.elf.notes
    import coredumpd.ingest.output
    import coredumpd.pipeline.socket_handler
    import coredumpd.store.index
    import coredumpd.store.lz4seek
    import coredumpd.store.naming
    import coredumpd.store.retention  # noqa: F401


class ConfigCache:
    """The configuration as the server read it; read again only when the file changed
    (its identity: device, inode, size, mtime, ctime), so that a worker does not parse
    it per crash.  A worker checks the identity again after accept (Ready.check)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.loaded: Loaded | None = None

    def get(self) -> Loaded:
        if self.loaded is None or \
                self.loaded[2] != file_identity(self.path or DEFAULT_CONFIG_PATH):
            self.loaded = load_config_file(self.path)
        return self.loaded


class AnalysisWorker:
    """The analysis worker's process on ``path`` (:mod:`coredumpd.cli.worker`): restarted
    when it ends, after a pause that doubles while it keeps ending within a minute."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid: int | None = None
        self.started = 0.0
        self.delay = 0.0

    def start(self) -> None:
        argv = [sys.executable, "-m", "coredumpd.cli.worker", "--socket", self.path,
                "--delay", f"{self.delay:g}"]
        try:  # stdin /dev/null, stdout and stderr ours; no signal blocked
            self.pid = os.posix_spawn(sys.executable, argv, os.environ, setsigmask=(),
                                      file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull,
                                                     os.O_RDONLY, 0)])
        except OSError as err:
            write_kmsg(service_line(os.getpid(), f"analysis worker not started: {err}"))
            return
        self.started = time.monotonic()

    def ended(self, status: int, restart: bool) -> None:
        self.pid = None
        if not restart:
            return
        quick = time.monotonic() - self.started < 60
        self.delay = min(ANALYSIS_RESTART_MAX_SEC, max(0.5, 2 * self.delay)) if quick else 0.0
        if status != 0:  # 0: it left for new code (coredumpd.cli.worker)
            write_kmsg(service_line(os.getpid(), (
                f"analysis worker ended ({_describe_status(status)}); restarting in "
                f"{self.delay:g}s")))
        self.start()

    def stop(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


class Server:
    """``workers`` pre-forked workers, one crash each (module docstring)."""

    def __init__(self, listener: socket.socket, config_path: str | None,
                 workers: int = DEFAULT_WORKERS, analyze_socket: str | None = None) -> None:
        self.listener = listener
        self.config_path = config_path
        self.workers = max(1, workers)
        self.children: set[int] = set()
        self.forked = 0
        self.config = ConfigCache(config_path)
        self.stop_r, self.stop_w = os.pipe2(os.O_CLOEXEC)
        self.analysis = AnalysisWorker(analyze_socket) if analyze_socket else None
        self.stopping = False

    def run(self, ready_fd: int | None = None) -> int:
        """Serve until SIGTERM/SIGINT; then serve the queue, wait for the workers, return 0."""
        for signo in STOP_SIGNALS:
            signal.signal(signo, _raise_stop)
        self.listener.setblocking(False)  # workers accept after epoll; another may win
        gc.freeze()  # the imported objects stay out of the workers' collections (fewer
        # pages copied on write)
        try:
            self._fill()
            _notify_ready(ready_fd)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            if self.analysis is not None:
                self.analysis.start()
            while True:
                self._reap(block=True)
                self._fill()
        except _Stop:
            pass
        for signo in STOP_SIGNALS:
            signal.signal(signo, signal.SIG_IGN)
        self.stopping = True
        os.close(self.stop_w)  # the workers serve the queue and exit
        self.stop_w = -1
        if self.analysis is not None:
            self.analysis.stop()
        while self.children or self._analysing():
            self._reap(block=True)
            if _queued(self.listener):
                self._fill()
        os.close(self.stop_r)
        return 0

    def _fill(self) -> None:
        """Fork workers up to ``workers``, the stop signals held meanwhile (a child
        forked but not yet counted would not be waited for)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            while len(self.children) < self.workers:
                self._fork_worker()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _analysing(self) -> bool:
        return self.analysis is not None and self.analysis.pid is not None

    def _reap(self, block: bool) -> None:
        while self.children or self._analysing():
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                if self.analysis is not None:
                    self.analysis.pid = None
                return
            if pid == 0:
                return
            if self.analysis is not None and pid == self.analysis.pid:
                self.analysis.ended(status, restart=not self.stopping)
                if block:
                    return
                continue
            self.children.discard(pid)
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == WORKER_UNUSABLE:
                time.sleep(UNUSABLE_PAUSE_SEC)  # it said why on kmsg; do not fork in a loop
            if os.WIFSIGNALED(status):
                write_kmsg(service_line(os.getpid(), (
                    f"capture worker {pid} killed by signal {os.WTERMSIG(status)};"
                    " a crash it was serving may have no row")))
            if block:
                return

    def _fork_worker(self) -> None:
        loaded = self.config.get()
        pid = _fork()
        if pid == 0:
            _worker(self.listener, self.stop_r, self.stop_w, self.config_path, loaded)
        self.children.add(pid)
        self.forked += 1


def _queued(listener: socket.socket) -> bool:
    """A connection waits in the accept queue."""
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    return bool(poller.poll(0))


def _fork() -> int:
    """os.fork(), retried while the system is out of processes or memory."""
    for _attempt in range(FORK_RETRIES):
        try:
            return os.fork()
        except (BlockingIOError, MemoryError):
            time.sleep(0.1)
    return os.fork()


def _worker(listener: socket.socket, stop_r: int, stop_w: int, config_path: str | None,
            loaded: Loaded) -> None:
    """In the forked child: get ready, wait for one crash, serve it and exit (never returns).

    Exit status :data:`WORKER_UNUSABLE` when it failed before it had a connection (the
    server then waits before forking the next: no fork loop on a persistent error)."""
    status = WORKER_UNUSABLE
    try:
        if stop_w >= 0:  # only the server's end: it closes when the server stops or dies
            os.close(stop_w)
        for signo in STOP_SIGNALS:
            signal.signal(signo, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        ready = _get_ready(listener, config_path, loaded)
        conn = _accept(listener, stop_r)
        status = 0
        if conn is not None:
            status = 1
            started = time.monotonic()
            listener.close()
            ready = ready.check() if ready is not None else Ready(config_path)
            status = handle_connection(conn, ready, started).status
    except Exception as err:  # noqa: BLE001 - a worker reports to kmsg, never raises
        write_kmsg(service_line(os.getpid(),
                                f"capture worker failed: {type(err).__name__}: {err}"))
    finally:
        os._exit(status)


def _get_ready(listener: socket.socket, config_path: str | None,
               loaded: Loaded) -> Ready | None:
    """The worker's :class:`Ready`, rehearsed unless a crash already waits; None when it
    could not be had now (it is tried again once the crash is there)."""
    try:
        ready = Ready(config_path, loaded)
    except Exception:  # noqa: BLE001
        return None
    if not _queued(listener):  # in a storm the crash goes first
        with contextlib.suppress(Exception):  # only a head start; the crash does not need it
            rehearse(ready)
    return ready


def _accept(listener: socket.socket, stop_r: int) -> socket.socket | None:
    """The next connection; None once the server stopped (``stop_r`` at EOF) and none waits."""
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
    poller.register(stop_r, select.EPOLLIN)
    stopping = False
    try:
        while True:
            try:
                conn, _ = listener.accept()
                conn.setblocking(True)
                return conn
            except (BlockingIOError, InterruptedError):
                if stopping:
                    return None
            for fd, _events in poller.poll():
                stopping = stopping or fd == stop_r
    finally:
        poller.close()


def _orphan_fallback(own: str, fallback: str) -> None:
    """Our supervisor is gone: core_pattern from our ``own`` back to ``fallback``."""
    try:
        with open(CORE_PATTERN, encoding="utf-8") as handle:
            if handle.read().rstrip("\n") != own:
                return
        with open(CORE_PATTERN, "w", encoding="utf-8") as handle:
            handle.write(fallback)
    except OSError:
        return
    write_kmsg(service_line(os.getpid(),
                            "capture server: supervisor gone; core_pattern back to the pipe"
                            " handler"))


def _raise_stop(signo: int, frame: object) -> None:
    raise _Stop()
def _notify_ready(ready_fd: int | None) -> None:
    """Tell the supervisor (a byte on ``ready_fd``) and systemd (``READY=1``) we accept."""
    if ready_fd is not None:
        try:
            os.write(ready_fd, b"R")
        finally:
            os.close(ready_fd)
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify:
        address = "\0" + notify[1:] if notify.startswith("@") else notify
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(b"READY=1", address)
            except OSError:
                pass


def serve(socket_path: str | None, config_path: str | None, workers: int,
          listen_fd: int | None = None, ready_fd: int | None = None,
          fallback: str | None = None, analyze_socket: str | None = None) -> int:
    """``coredumpd serve``: the server on ``socket_path``, or on an inherited ``listen_fd``
    bound there (by the supervisor).

    ``fallback``: the pipe pattern to put back if the supervisor (our parent) dies
    before us — it would not be there to do it when we end.  We get SIGTERM then
    (PR_SET_PDEATHSIG), serve the queue, and switch core_pattern from our socket
    back to ``fallback`` on the way out.  ``analyze_socket``: where the analysis worker
    listens (None: no analysis worker)."""
    make_undumpable()
    # Held until Server.run has its handlers: a SIGTERM now is served, not fatal.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    supervisor = os.getppid()
    if fallback is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor:  # it died before the prctl
            os.kill(os.getpid(), signal.SIGTERM)
    if listen_fd is not None:
        listener = socket.socket(fileno=listen_fd)
    elif socket_path is not None:
        listener = bind_listener(socket_path)
    else:
        raise ValueError("a socket path or a listening fd is needed")
    preload()
    server = Server(listener, config_path, workers, analyze_socket)
    try:
        return server.run(ready_fd)
    finally:
        if fallback is not None and socket_path is not None and os.getppid() != supervisor:
            _orphan_fallback(f"@@{os.path.abspath(socket_path)}", fallback)
        listener.close()
        if listen_fd is None and socket_path is not None:
            try:
                os.unlink(socket_path)
            except OSError:
                pass
        sys.stdout.flush()
