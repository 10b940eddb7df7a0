"""``coredumpd serve --supervise``: never a way to lose crashes.

A socket pattern with no server accepting loses every crash on the machine,
so core_pattern names the socket (``@@PATH``) only while a server accepts on
it, and the pipe handler at every other moment.  The supervisor is a small
process that

- holds the listening socket itself (bound before the first server starts;
  no socket activation by PID 1), so crashes queued in its accept queue
  survive a server's death and are served by the next server;
- starts ``coredumpd serve --listen-fd`` and, once it says it accepts (a byte
  on a pipe), switches core_pattern to ``@@PATH``;
- on the server's exit — SIGKILL, a crash (the server is not dumpable, see
  :mod:`coredumpd.pipeline.serve`), anything — puts the pipe pattern back at
  once (it waits on the server's pidfd), writes a /dev/kmsg line, and
  restarts the server after ``restart_sec`` (doubled on each quick failure,
  at most :data:`RESTART_MAX_SEC`);
- on SIGTERM/SIGINT puts the pipe pattern back first, then stops the server
  (which serves what is queued) and exits.

The pattern is changed only from the supervisor's own socket pattern to its
pipe pattern and back: a core_pattern that someone else wrote meanwhile is
left alone (except at start, where the pipe pattern is registered).  But that
someone may later write the socket pattern back (a test restoring what it
found, an administrator undoing an experiment) while no server accepts — the
server died while their pattern was in force, and the compare-and-swap to the
pipe rightly did nothing.  So the supervisor also looks at core_pattern every
:data:`RECHECK_SEC` while no server is ready (between restarts, and while a
new one starts) and puts its pipe pattern back over its own socket pattern:
one read of /proc/sys/kernel/core_pattern a second, where procfs offers no
notification of a sysctl change.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from coredumpd.errors import ConfigError
from coredumpd.paths import DEFAULT_SOCKET_PATH
from coredumpd.pipeline import install
from coredumpd.pipeline.serve import bind_listener
from coredumpd.report.journal import service_line, write_kmsg

DEFAULT_SOCKET = DEFAULT_SOCKET_PATH
READY_TIMEOUT_SEC = 30.0
RESTART_MAX_SEC = 30.0
STOP_TIMEOUT_SEC = 60.0
RECHECK_SEC = 1.0  # how often core_pattern is looked at while no server accepts


def socket_pattern(path: str) -> str:
    """``@@PATH`` (request mode); ConfigError when the kernel could not take it."""
    pattern = f"@@{os.path.abspath(path)}"
    if len(pattern.encode()) > install.PATTERN_MAX or any(ch.isspace() for ch in pattern):
        raise ConfigError(f"socket path unusable in core_pattern: {pattern!r}")
    return pattern


def read_pattern() -> str:
    with open(install.CORE_PATTERN, encoding="utf-8") as handle:
        return handle.read().rstrip("\n")


def write_pattern(pattern: str) -> None:
    with open(install.CORE_PATTERN, "w", encoding="utf-8") as handle:
        handle.write(pattern)


def switch_pattern(old: str, new: str) -> bool:
    """core_pattern ``old`` -> ``new``; False (nothing written) when it is not ``old``."""
    if read_pattern() != old:
        return False
    write_pattern(new)
    return True


class Supervisor:
    """Runs the server, keeping core_pattern on the pipe whenever it does not accept."""

    def __init__(self, socket_path: str, config_path: str | None, pipe: str,
                 workers: int, restart_sec: float = 1.0,
                 analyze_socket: str | None = None) -> None:
        self.socket_path = os.path.abspath(socket_path)
        self.config_path = config_path
        self.pipe = pipe
        self.socket = socket_pattern(self.socket_path)
        self.workers = workers
        self.restart_sec = restart_sec
        self.analyze_socket = analyze_socket  # None: the server's default
        self.stopping = False
        self.wakeup_r, self.wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def run(self) -> int:
        write_pattern(self.pipe)  # the safe state, before anything can fail
        listener = bind_listener(self.socket_path)
        signal.set_wakeup_fd(self.wakeup_w)
        for signo in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signo, self._on_stop)
        delay = self.restart_sec
        try:
            while not self.stopping:
                started = time.monotonic()
                status = self._run_server(listener.fileno())
                if self.stopping:
                    break
                write_kmsg(service_line(os.getpid(),
                                        f"capture server ended ({status}); core_pattern is "
                                        f"the pipe handler, restarting in {delay:g}s"))
                delay = self.restart_sec if time.monotonic() - started > 60 \
                    else min(RESTART_MAX_SEC, max(delay, 0.1) * 2)
                self._sleep(delay)
        finally:
            switch_pattern(self.socket, self.pipe)
            listener.close()
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        return 0

    def _on_stop(self, signo: int, frame: object) -> None:
        self.stopping = True

    def _sleep(self, seconds: float) -> None:
        """Sleep, woken early by SIGTERM/SIGINT; no server accepts meanwhile, so the
        pipe goes back over the socket pattern whoever wrote it (module docstring)."""
        poller = select.poll()
        poller.register(self.wakeup_r, select.POLLIN)
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            left = min(RECHECK_SEC, deadline - time.monotonic())
            poller.poll(max(1, int(left * 1000)))
            self._drain_wakeup()
            self._no_server()

    def _no_server(self) -> None:
        """No server accepts: our socket pattern, if someone put it back, becomes the pipe."""
        try:
            if switch_pattern(self.socket, self.pipe):
                write_kmsg(service_line(os.getpid(), "core_pattern named the socket while no "
                                        "capture server accepts; back to the pipe handler"))
        except OSError:
            pass  # tried again at the next look

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self.wakeup_r, 64):
                pass
        except BlockingIOError:
            pass

    def _server_argv(self, listen_fd: int, ready_fd: int) -> list[str]:
        argv = [sys.executable, "-m", "coredumpd.pipeline.main", "serve",
                "--listen-fd", str(listen_fd), "--socket", self.socket_path,
                "--ready-fd", str(ready_fd),
                "--workers", str(self.workers), "--fallback", self.pipe]
        if self.config_path:
            argv += ["--config", self.config_path]
        if self.analyze_socket is not None:
            argv += ["--analyze-socket", self.analyze_socket]
        return argv

    def _run_server(self, listen_fd: int) -> str:
        """One server's life: start, switch to the socket when ready, back when gone."""
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        try:
            server = subprocess.Popen(self._server_argv(listen_fd, ready_w),
                                      pass_fds=(listen_fd, ready_w), stdin=subprocess.DEVNULL)
        finally:
            os.close(ready_w)
        pidfd = os.pidfd_open(server.pid)
        try:
            self._watch(server, pidfd, ready_r)
        finally:
            switch_pattern(self.socket, self.pipe)  # first of all, whatever happened
            os.close(ready_r)
            os.close(pidfd)
            status = self._stop_server(server)
        return status

    def _watch(self, server: subprocess.Popen[bytes], pidfd: int, ready_r: int) -> None:
        """Until the server exits or we are told to stop; the socket pattern once ready."""
        poller = select.poll()
        for fd in (pidfd, ready_r, self.wakeup_r):
            poller.register(fd, select.POLLIN)
        ready_deadline = time.monotonic() + READY_TIMEOUT_SEC
        ready = False
        while not self.stopping:
            for fd, _events in poller.poll(int(RECHECK_SEC * 1000)):
                if fd == pidfd:
                    return
                if fd == ready_r and not ready:
                    ready = os.read(ready_r, 1) == b"R"
                    poller.unregister(ready_r)
                    if ready:
                        switch_pattern(self.pipe, self.socket)
                if fd == self.wakeup_r:
                    self._drain_wakeup()
            if not ready:
                self._no_server()
                if time.monotonic() > ready_deadline:
                    return  # never became ready: stopped and restarted

    def _stop_server(self, server: subprocess.Popen[bytes]) -> str:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(STOP_TIMEOUT_SEC)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        code = server.returncode
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def supervise(socket_path: str, config_path: str | None, handler: str | None,
              workers: int, restart_sec: float = 1.0, analyze_socket: str | None = None) -> int:
    """``coredumpd serve --supervise``; ``handler`` is the pipe handler to fall back on
    (default: the launcher ``coredumpd install`` writes, written now if missing)."""
    if handler is None:
        handler = os.path.join(install.LAUNCHER_DIR, "coredumpd")
        if not os.access(handler, os.X_OK):
            handler = install.write_launcher()
    pipe = install.build_pattern(handler, config_path)
    return Supervisor(socket_path, config_path, pipe, workers, restart_sec,
                      analyze_socket).run()
