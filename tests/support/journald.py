"""systemd-journald for the tests: private ones, never the host's journal.

A test that causes journal entries sends them to a journal of its own: a
``systemd-journald NAMESPACE`` (a journal namespace, as systemd's
``LogNamespace=``) started in a private mount namespace where ``/var/log``
and ``/run/log`` are bind mounts of a temporary directory.  Its journal files
land there, while its socket ``/run/systemd/journal.NAMESPACE/socket`` stays
on the host's ``/run``, where the handler the kernel starts (in the initial
namespaces) reaches it through ``JournalNamespace=NAMESPACE``.  Nothing
reaches the host's journal files or its journald.

A namespace's journald exits after 30 s without a datagram, a stream or a
varlink client (systemd's journald-server.c: ``server_is_idle()``,
``IDLE_TIMEOUT_USEC``).  Under systemd that costs nothing: the socket belongs to
``systemd-journald@NAMESPACE.socket`` (PID 1), whose queue outlives the daemon
and starts it again.  Here journald made its socket itself, so an idle exit
would refuse every later entry (ECONNREFUSED) and drop, unread, those that
reach its queue while it exits (their ``send`` said "sent").  So each
PrivateJournal holds one idle stdout-stream connection to its journald for as
long as it runs: a connected stream keeps it from being idle; it writes nothing.

- :class:`PrivateJournal` — one such journald: ``start()``, ``stop()``,
  ``close()``; ``entries(*matches)`` and ``wait_entry(...)`` read it back with
  ``journalctl -D``; ``directory`` is what ``coredumpctl -D`` reads.
- :func:`session_journal` — one private journald shared by the whole run,
  started on first use; ``tests.support.crash.write_config`` points every
  configuration at it unless the test says otherwise.
- :func:`deaf_namespace` / :func:`unserved_namespace` — a namespace whose
  socket never reads (its queue full), or that nobody serves.

``python -m tests.support.journald`` starts the host's journald when none
listens (root only): that is for ``setup.sh``'s demo, the product's real use,
never for tests.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Self

JOURNAL_SOCKET = "/run/systemd/journal/socket"
JOURNALD = "/lib/systemd/systemd-journald"
RUNTIME = "/run/systemd/journal.{namespace}"
STDOUT = "stdout"  # the stream socket beside the native one in RUNTIME
PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h
# In the private mount namespace: the temporary directory's log/ and run/ over
# /var/log and /run/log (where they exist), then the namespaced journald itself.
PRIVATE_MOUNTS = ('mount --bind "$1" /var/log && '
                  '{ [ ! -d /run/log ] || mount --bind "$2" /run/log; } && '
                  'exec "$3" "$4"')
# A program that logs to the default journal (libsystemd's sd_journal_send, logger
# --journald) writes into this private one: in a private mount namespace, a tmpfs over
# /run/systemd holds a journal/socket that is a bind mount of ours (staged first: the
# tmpfs hides it).
AS_DEFAULT = ('mount --bind "$1" "$2" && mount -t tmpfs tmpfs /run/systemd && '
              'mkdir /run/systemd/journal && : > /run/systemd/journal/socket && '
              'mount --bind "$2/socket" /run/systemd/journal/socket && shift 2 && exec "$@"')
_NUMBERS = itertools.count()
# journald makes /run/systemd/journal.NAMESPACE; /run/systemd itself goes again
# at the end if it was not there before (a machine without systemd).
_RUN_SYSTEMD_EXISTED = os.path.isdir("/run/systemd")


def listening(path: str = JOURNAL_SOCKET) -> bool:
    """True when a process accepts datagrams on the journal socket ``path``.

    A socket file can outlive its journald (``/run`` is not a tmpfs on every
    machine): connecting a datagram socket is refused when none listens.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def ensure(wait_s: float = 10.0) -> bool:
    """The host's journald for setup.sh's demo: start one unless one listens."""
    if listening():
        return True
    if os.geteuid() != 0 or not os.access(JOURNALD, os.X_OK):
        return False
    subprocess.Popen([JOURNALD], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _wait_listening(JOURNAL_SOCKET, wait_s)


def _wait_listening(path: str, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if listening(path):
            return True
        time.sleep(0.02)
    return False


def unserved_namespace() -> str:
    """A journal namespace name unique to this process that no journald serves."""
    return f"coredumpd-test-{os.getpid()}-{next(_NUMBERS)}"


def socket_path(namespace: str) -> str:
    from coredumpd.report.journal import journal_socket_path
    return journal_socket_path(namespace)


def can_run_private() -> bool:
    return os.geteuid() == 0 and os.access(JOURNALD, os.X_OK) and shutil.which("unshare") \
        is not None


def _die_with_parent() -> None:
    """The journald goes when the test run goes, even killed (prctl(2) PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class PrivateJournal:
    """A systemd-journald of its own journal namespace, files in a temporary directory."""

    def __init__(self, namespace: str | None = None) -> None:
        self.namespace = namespace or unserved_namespace()
        self.root = tempfile.mkdtemp(prefix="cdjournal")
        os.makedirs(os.path.join(self.root, "log", "journal"))
        os.makedirs(os.path.join(self.root, "run"))
        self.process: subprocess.Popen[bytes] | None = None
        self._keepalive: socket.socket | None = None

    @property
    def socket_path(self) -> str:
        return socket_path(self.namespace)

    @property
    def runtime_directory(self) -> str:
        return RUNTIME.format(namespace=self.namespace)

    @property
    def directory(self) -> str:
        """The namespace's journal directory (``/var/log/journal/MACHINE-ID.NAMESPACE``
        as journald saw it), for ``journalctl -D`` and ``coredumpctl -D``."""
        pattern = os.path.join(self.root, "log", "journal", f"*.{self.namespace}")
        found = glob.glob(pattern)
        return found[0] if found else pattern.replace("*", _machine_id())

    def start(self, wait_s: float = 15.0) -> Self:
        """Start the journald; return once it listens on its socket."""
        if self.process is not None and self.process.poll() is None:
            return self
        log = open(os.path.join(self.root, "journald.log"), "ab")  # noqa: SIM115
        with log:
            self.process = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", PRIVATE_MOUNTS, "sh",
                 os.path.join(self.root, "log"), os.path.join(self.root, "run"), JOURNALD,
                 self.namespace], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_die_with_parent)  # noqa: PLW1509
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and self.process.poll() is None:
            if listening(self.socket_path) and self._hold_stream():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"private journald {self.namespace} did not start: "
                           f"{self.log_text()[-500:]}")

    def _hold_stream(self) -> bool:
        """Connect the stream that keeps the journald from exiting idle (module docstring)."""
        stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            stream.connect(os.path.join(self.runtime_directory, STDOUT))
        except OSError:
            stream.close()
            return False
        self._keepalive = stream
        return True

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the journald (its socket file stays, refusing connections, as after a crash)."""
        if self._keepalive is not None:
            self._keepalive.close()
            self._keepalive = None
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        """Stop it and remove everything it made: its files, its /run directory."""
        self.stop()
        _remove_runtime(self.runtime_directory)
        shutil.rmtree(self.root, ignore_errors=True)

    def run_as_default(self, argv: list[str], check: bool = True,
                       **options: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` with this journal as its default journal (see AS_DEFAULT);
        ``options`` go to subprocess.run (``input=``, ``capture_output=``...)."""
        stage = tempfile.mkdtemp(dir=self.root)
        try:
            return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                   AS_DEFAULT, "sh", self.runtime_directory, stage, *argv],
                                  text=True, check=check, **options)
        finally:
            os.rmdir(stage)

    def log_text(self) -> str:
        try:
            with open(os.path.join(self.root, "journald.log"), encoding="utf-8",
                      errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def entries(self, *matches: str) -> list[dict[str, Any]]:
        """Every entry matching ``FIELD=VALUE`` ``matches``, oldest first, as journalctl's JSON."""
        if not os.path.isdir(self.directory):
            return []
        out = subprocess.run(["journalctl", "-D", self.directory, "-o", "json", "--all",
                              "--no-pager", *matches], capture_output=True, text=True,
                             check=False)
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    def wait_entry(self, *matches: str, timeout: float = 30) -> dict[str, Any]:
        """The newest entry matching ``matches``, waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.entries(*matches)
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no entry {' '.join(matches)} in the private journal "
                                     f"{self.namespace}")
            time.sleep(0.05)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remove_runtime(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    if not _RUN_SYSTEMD_EXISTED:
        with contextlib.suppress(OSError):  # still in use: the last one removes it
            os.rmdir("/run/systemd")


def _machine_id() -> str:
    try:
        with open("/etc/machine-id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return "*"


_session: list[PrivateJournal | None] = []


def session_journal() -> PrivateJournal | None:
    """The run's shared private journald, started on first use; None where none can run
    (not root, no systemd-journald): then configurations say Journal=no.

    Raises RuntimeError once it has exited: the entries of every later crash would be
    refused and go to /dev/kmsg, which no test checks."""
    if _session and _session[0] is not None and not _session[0].alive:
        dead = _session[0]
        raise RuntimeError(f"the run's private journald {dead.namespace} exited "
                           f"(status {dead.process.returncode if dead.process else None}): "
                           f"{dead.log_text()[-500:]}")
    if not _session:
        journal = None
        if can_run_private():
            journal = PrivateJournal()
            try:
                journal.start()
            except RuntimeError as err:
                print(f"tests.support.journald: {err}", file=sys.stderr)
                journal.close()
                journal = None
            else:
                atexit.register(close_session)
        _session.append(journal)
    return _session[0]


def close_session() -> None:
    """Stop the shared private journald (the end of the run, or at exit)."""
    if _session and _session[0] is not None:
        _session[0].close()
        _session[0] = None


@contextlib.contextmanager
def deaf_namespace(fill: int | None = None) -> Iterator[str]:
    """A journal namespace whose socket is bound by a datagram socket that never
    reads, its queue filled (``fill`` datagrams at most; full by default)."""
    namespace = unserved_namespace()
    runtime = RUNTIME.format(namespace=namespace)
    os.makedirs(runtime)
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        deaf.bind(socket_path(namespace))
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.setblocking(False)
        try:
            for _ in range(sys.maxsize if fill is None else fill):
                sender.sendto(b"MESSAGE=filler\n", socket_path(namespace))
        except BlockingIOError:
            pass
        finally:
            sender.close()
        yield namespace
    finally:
        deaf.close()
        _remove_runtime(runtime)


if __name__ == "__main__":
    ok = ensure()
    if not ok:
        print(f"no systemd-journald listens on {JOURNAL_SOCKET}", file=sys.stderr)
    sys.exit(0 if ok else 1)
