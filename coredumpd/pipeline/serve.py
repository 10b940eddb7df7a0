"""``coredumpd serve``: the capture server on the kernel's coredump socket.

One process listens on an ``AF_UNIX`` ``SOCK_STREAM`` socket (its own, or the
one its supervisor holds: :mod:`coredumpd.pipeline.supervise`; never PID 1's)
and forks one worker per accepted connection, i.e. per crash
(:func:`coredumpd.pipeline.socket_handler.handle_connection`).  The server has
imported everything a crash needs before it accepts, so a worker starts in the
time of a fork instead of an interpreter start.

Concurrency is ours to decide: at most ``workers`` crashes are served at once.
With all workers busy the server stops accepting and further crashes wait in
the kernel's accept queue (``listen`` backlog :data:`BACKLOG`, capped by
net.core.somaxconn), each dumping process held by the kernel until its turn —
none is dropped, and memory stays bounded by the worker count (each worker
holds at most the core's head and a few lz4 blocks).

The server's own crash must not go to its own socket: the kernel would
connect, and wait for an ack from the process that is busy dying.  The kernel
ignores RLIMIT_CORE for socket patterns (checked here, shared/FACTS.md), so the
server and its workers make themselves non-dumpable (``PR_SET_DUMPABLE`` 0):
their crash writes no core and they exit at once; the supervisor sees the exit,
puts the pipe handler back into core_pattern and restarts the server.  The
analysis jobs are exec'd, which makes them dumpable again: their crashes are
stored like any other.

On SIGTERM or SIGINT the server stops accepting, serves what is already queued
(the supervisor has switched core_pattern back to the pipe first, so nothing
new arrives), waits for its workers and exits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import time

from coredumpd.report.journal import kmsg_line, write_kmsg

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn (4096 by default since 5.4)
DEFAULT_WORKERS = max(4, 2 * (os.cpu_count() or 1))
PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h
PR_SET_DUMPABLE = 4
FORK_RETRIES = 50  # fork(2) failing with EAGAIN/ENOMEM: wait, do not drop the crash
CORE_PATTERN = "/proc/sys/kernel/core_pattern"
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
SOCKET_MODE = 0o600  # the kernel connects with its own credentials; nobody else may


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
    """A listening socket at ``path`` (a stale file there is replaced), mode 0600."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    temp = f"{path}.{os.getpid()}.new"
    try:
        os.unlink(temp)
    except FileNotFoundError:
        pass
    old_umask = os.umask(0o177)
    try:
        listener.bind(temp)
    finally:
        os.umask(old_umask)
    os.chmod(temp, SOCKET_MODE)
    listener.listen(BACKLOG)
    os.replace(temp, path)  # atomically: a kernel connecting never finds no file
    return listener


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


class Server:
    """The accept loop: one forked worker per crash, at most ``workers`` at once."""

    def __init__(self, listener: socket.socket, config_path: str | None,
                 workers: int = DEFAULT_WORKERS) -> None:
        self.listener = listener
        self.config_path = config_path
        self.workers = max(1, workers)
        self.children: set[int] = set()
        self.served = 0

    def run(self, ready_fd: int | None = None) -> int:
        """Serve until SIGTERM/SIGINT; then serve the queue, wait for the workers, return 0."""
        for signo in STOP_SIGNALS:
            signal.signal(signo, _raise_stop)
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            _notify_ready(ready_fd)
            while True:
                self._wait_for_slot()
                conn, _ = self.listener.accept()
                self._fork_worker(conn)
        except _Stop:
            pass
        for signo in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signo, signal.SIG_IGN)
        self._serve_queue()
        while self.children:
            self._reap(block=True)
        return 0

    def _serve_queue(self) -> None:
        """Crashes already in the accept queue when the stop came are still served."""
        self.listener.setblocking(False)
        while True:
            self._wait_for_slot()
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(True)
            self._fork_worker(conn)

    def _wait_for_slot(self) -> None:
        self._reap(block=False)
        while len(self.children) >= self.workers:
            self._reap(block=True)

    def _reap(self, block: bool) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            if os.WIFSIGNALED(status):
                write_kmsg(kmsg_line(pid, "coredumpd-serve", 0, os.WTERMSIG(status),
                                     "a capture worker died; its crash may have no row"))
            if block:
                return

    def _fork_worker(self, conn: socket.socket) -> None:
        started = time.monotonic()
        pid = _fork()
        if pid == 0:
            _worker(self.listener, conn, self.config_path, started)
        conn.close()
        self.children.add(pid)
        self.served += 1


def _fork() -> int:
    """os.fork(), retried while the system is out of processes or memory."""
    for _attempt in range(FORK_RETRIES):
        try:
            return os.fork()
        except (BlockingIOError, MemoryError):
            time.sleep(0.1)
    return os.fork()


def _worker(listener: socket.socket, conn: socket.socket, config_path: str | None,
            started: float) -> None:
    """In the forked child: serve one crash and exit (never returns)."""
    status = 1
    try:
        for signo in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signo, signal.SIG_DFL)
        listener.close()
        from coredumpd.pipeline.socket_handler import handle_connection
        status = handle_connection(conn, config_path, started).status
    except Exception as err:  # noqa: BLE001 - a worker reports to kmsg, never raises
        write_kmsg(kmsg_line(os.getpid(), "coredumpd-serve", 0, 0,
                             f"capture worker failed: {type(err).__name__}: {err}"))
    finally:
        os._exit(status)


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
    write_kmsg(kmsg_line(os.getpid(), "coredumpd-serve", 0, 0,
                         "supervisor gone; core_pattern back to the pipe handler"))


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
          fallback: str | None = None) -> int:
    """``coredumpd serve``: the server on ``socket_path``, or on an inherited ``listen_fd``
    bound there (by the supervisor).

    ``fallback``: the pipe pattern to put back if the supervisor (our parent) dies
    before us — it would not be there to do it when we end.  We get SIGTERM then
    (PR_SET_PDEATHSIG), serve the queue, and switch core_pattern from our socket
    back to ``fallback`` on the way out."""
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
    server = Server(listener, config_path, workers)
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
