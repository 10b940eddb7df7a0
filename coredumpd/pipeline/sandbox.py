"""Run :func:`coredumpd.analysis.analyze` in a separate, unprivileged process.

The analysis parses a core written by the process that crashed, with our own
ELF, CFI and DWARF readers and capstone: the place where a handler running as
root is most exposed (systemd-coredump CVE-2022-4415, CVE-2025-4598; apport's
list).
So it runs in a child process that

* is started with ``sys.executable -I -B -m coredumpd.pipeline.sandbox_child``, an
  empty environment, cwd ``/``, in its own session (process group) — or, in a
  drain of queued crashes, forked in the same state by the drain's zygote, a root
  process that imported the analysis once and reads no core
  (:mod:`coredumpd.pipeline.sandbox_zygote`);
* goes on in a PID namespace of its own (:func:`.sandbox_child.enter_pid_namespace`):
  the process we started or the zygote forked waits there, the namespace's init
  waits under it, and the analysis is the init's child; whatever the analysis
  forks, in whatever session, is killed by the kernel when the init exits at the
  analysis' end, so nothing outlives the sandbox as its uid;
* sets its limits (:func:`.sandbox_child.confine`, for started and forked children
  alike): ``RLIMIT_AS`` (AnalysisMemoryMax), ``RLIMIT_CPU``,
  ``RLIMIT_CORE`` 0 and ``PR_SET_DUMPABLE`` 0 — with a pipe core_pattern the
  kernel ignores RLIMIT_CORE (only the value 1 stops it, fs/coredump.c), so it
  is the non-dumpable flag that keeps a crash of the analysis from ever coming
  back to our own handler (``__get_dumpable() == 0`` makes ``do_coredump``
  return before anything is piped);
* imports the whole analysis code while still root — a started child after making
  itself non-dumpable, before the limits; the zygote before it forks (the interpreter may live in
  a directory that only root can traverse, e.g. a pyenv under ``/root``), then
  drops to the crashing uid — or to ``AnalysisUser`` for root, system uids
  (< 1000) and processes that changed credentials (dump mode 2):
  ``setgroups([])``, ``setresgid``, ``setresuid``, ``PR_SET_NO_NEW_PRIVS``;
  setresuid away from root clears every capability (capabilities(7));
* only then receives its input over a socketpair: the core as an fd (opened by
  the parent before any drop with ``O_NOFOLLOW``; cores are root-only 0640)
  with ``SCM_RIGHTS``, and the facts as JSON.  Being non-dumpable, no process
  of the crashing user can ptrace it or open ``/proc/PID/fd`` to reach that fd
  (ptrace_may_access(), kernel/ptrace.c).

With the core come read-only fds of the module cache entries of the system
files the process mapped; the child never writes the cache, the parent derives
what it lacked from the files alone (:mod:`coredumpd.pipeline.sandbox_cache`).

The parent reads the result (JSON, at most :data:`RESULT_MAX` bytes) from the
same socket, with a wall-clock deadline (AnalysisTimeoutSec) after which the
child's whole process group is killed (its namespace's init with it, and so
everything in the namespace).  Whatever goes wrong — crash, hang,
memory cap, garbage output — :func:`run_analysis` returns
``{"state": "failed", "error": "analysis failed: <reason>"}``; it never raises
for a bad core, so the caller keeps the stored core and its index row.

The tests start another child module (``child_command``: tests/support/sandbox_hooks.py)
that goes through the same limits, preload and drop, then misbehaves on purpose
instead of analysing.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol

from coredumpd.config import Config
from coredumpd.model import AnalysisResult, AnalysisState

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from coredumpd.pipeline.sandbox_cache import Offer

RESULT_MAX = 32 << 20  # bytes of JSON accepted from the child
STDERR_TAIL = 2000  # bytes of the child's stderr kept for the error message
SYSTEM_UID_MAX = 999  # Debian's login.defs SYS_UID_MAX; systemd's SYSTEM_UID_MAX
CHILD_MODULE = "coredumpd.pipeline.sandbox_child"
KILLED_WAIT_S = 30.0  # for a SIGKILLed child to be reaped (it cannot refuse)
HEADER = struct.Struct("<Q")  # length of the request JSON that follows
assert HEADER.size == 8



def failed(reason: str, started: float | None = None) -> dict[str, Any]:
    """The result recorded when the analysis could not produce one."""
    result: dict[str, Any] = {"version": AnalysisResult.VERSION,
                              "state": AnalysisState.FAILED.value,
                              "error": f"analysis failed: {reason}"}
    if started is not None:
        result["duration_ms"] = int((time.monotonic() - started) * 1000)
    return result


def analysis_credentials(config: Config, facts: dict[str, Any] | None) -> tuple[int, int] | None:
    """(uid, gid) the analysis runs as, or None when we cannot change (not root).

    The crashing uid when it is a regular user and the process did not change
    credentials (dump mode 1, see ``%d`` in core(5)); ``config.analysis_user``
    otherwise.  Never root.
    """
    if os.geteuid() != 0:
        return None
    args = (facts or {}).get("args") or {}
    uid, gid = args.get("uid"), args.get("gid")
    if _regular_user(facts) and isinstance(uid, int):
        return uid, gid if isinstance(gid, int) and 0 < gid < 2**32 - 1 else uid
    try:
        entry = pwd.getpwnam(config.analysis_user)
    except KeyError:
        raise LookupError(f"AnalysisUser={config.analysis_user} does not exist") from None
    if entry.pw_uid == 0:
        raise LookupError(f"AnalysisUser={config.analysis_user} is root")
    return entry.pw_uid, entry.pw_gid


def _open_core(core_path: str) -> int:
    """Open the core read-only without following a symlink at the last component.

    ``/proc/self/fd/N`` (an unlinked core the analysis job inherited, e.g.
    Storage=none or rate limited) is a magic link that O_NOFOLLOW refuses: the
    descriptor is duplicated instead.
    """
    prefix = "/proc/self/fd/"
    if core_path.startswith(prefix) and core_path[len(prefix):].isdigit():
        return os.dup(int(core_path[len(prefix):]))
    return os.open(core_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)


def child_options(config: Config, creds: tuple[int, int] | None, read_all: bool,
                  python: bool = False) -> dict[str, str]:
    """What a sandbox child is told before it has read anything (:func:`.sandbox_child.confine`):
    its limits, its credentials, whether it keeps CAP_DAC_READ_SEARCH, whether pystack
    is preloaded.  The same options whether it is started or forked by the zygote."""
    cpu = max(1, int(config.analysis_timeout) + 1)
    options = {"--memory-max": str(config.analysis_memory_max), "--cpu-seconds": str(cpu)}
    if creds is not None:
        options |= {"--uid": str(creds[0]), "--gid": str(creds[1])}
    if python:
        options["--python"] = "1"  # preload pystack before the drop
    if read_all:
        options["--read-all"] = "1"
    return options


def _child_argv(fd: int, options: dict[str, str], child_command: Sequence[str]) -> list[str]:
    argv = [sys.executable, "-I", "-B", *child_command, "--fd", str(fd)]
    for name, value in options.items():
        argv += [name, value]
    return argv


PYTHON_NAME = re.compile(r"python\d*(\.\d+)*m?|libpython\d.*\.so.*")


def looks_like_python(facts: dict[str, Any] | None, exe: str | None) -> bool:
    """The crashed program is a CPython interpreter, by the names of its executable
    and of its mapped files (``python3.11``, ``libpython3.11.so.1.0``).

    Names only: the parent runs as root and parses nothing the crashed process
    wrote.  The analysis itself decides by the ``_PyRuntime`` symbol
    (coredumpd/analysis/python.py); a guess wrong either way costs a copy of the
    core or a problem line, never a wrong frame.
    """
    proc = (facts or {}).get("proc") or {}
    paths = [exe, proc.get("exe")] + [entry.get("path") for entry in proc.get("maps") or []
                                      if isinstance(entry, dict)]
    return any(isinstance(path, str) and PYTHON_NAME.fullmatch(path.rsplit("/", 1)[-1])
               for path in paths)


def _core_for_pystack(core_fd: int, config: Config) -> int:
    """A sealed memfd with the raw core, in place of ``core_fd`` (closed), for pystack.

    pystack opens the core by path: inside the sandbox a root-only core cannot be
    reopened through /proc/self/fd (EACCES) and a stored core is lz4, which the
    child cannot decompress into a file (RLIMIT_FSIZE 0 makes even a memfd write
    fail with EFBIG).  A memfd made here is mode 0777 and sealed.  Costs the core's
    size in memory for the analysis' duration, and the decompression.  On any
    failure the original descriptor is kept (the analysis then says why there are
    no Python frames).
    """
    from coredumpd.errors import CoredumpdError
    from coredumpd.source import ByteSource, RawFileSource, copy_to_memfd
    from coredumpd.store.lz4reader import SeekableLz4Reader

    try:
        source: ByteSource
        if os.pread(core_fd, 4, 0) == b"\x7fELF":
            source = RawFileSource("the core", os.dup(core_fd))  # closes its own dup
        else:
            source = SeekableLz4Reader(core_fd)  # reads a dup of it
    except (CoredumpdError, OSError):
        return core_fd
    try:
        copy = copy_to_memfd(source, limit=config.analysis_memory_max)
    except (CoredumpdError, OSError):
        return core_fd
    finally:
        source.close()
    os.close(core_fd)
    return copy


def _regular_user(facts: dict[str, Any] | None) -> bool:
    """A crash of a regular uid that kept its credentials (its own analysis)."""
    args = (facts or {}).get("args") or {}
    uid = args.get("uid")
    return isinstance(uid, int) and SYSTEM_UID_MAX < uid < 2**32 - 1 and \
        args.get("dump_mode") in (None, 1)


def run_analysis(config: Config, core_path: str, facts: dict[str, Any] | None,
                 exe: str | None, root: str = "/",
                 child_command: Sequence[str] = ("-m", CHILD_MODULE),
                 debuginfod: dict[str, Any] | None = None,
                 entries: Offer | None = None, zygote: Forker | None = None) -> dict[str, Any]:
    """Analyse ``core_path`` (raw ELF or our seekable lz4) in the sandbox.

    Returns the analysis result dict (docs/ARCHITECTURE.md), or a ``failed``
    result saying why.  Never raises for a bad core or a misbehaving child.
    ``child_command``: what the child's interpreter runs (``-m MODULE [ARG...]``).
    ``debuginfod``: ``Debuginfod.settings()`` — the child reads that cache, fetches nothing
    (the caller fetched what was missing: the child has no network business).
    ``entries``: module cache entries passed to the child as read-only fds
    (:mod:`coredumpd.pipeline.sandbox_cache`); the result then holds
    ``module_lookups``, the child's report for :meth:`Offer.remember`.
    ``zygote``: a drain's pre-imported root process (:mod:`.sandbox_zygote`) that forks
    the child instead of starting an interpreter (when it runs ``child_command``;
    a child is started as without one when the zygote cannot fork).
    """
    started = time.monotonic()
    try:
        creds = analysis_credentials(config, facts)
        core_fd = _open_core(core_path)
    except (LookupError, OSError) as err:
        return failed(f"cannot start: {err}", started)
    python = looks_like_python(facts, exe)
    if python:
        core_fd = _core_for_pystack(core_fd, config)
    request: dict[str, Any] = {"facts": facts, "exe": exe, "root": root,
                               "debuginfod": debuginfod}
    if entries is not None:
        request["module_cache"] = entries.build_ids
    read_all = creds is not None and not _regular_user(facts)
    options = child_options(config, creds, read_all, python)
    if zygote is not None and tuple(zygote.child_command) != tuple(child_command):
        zygote = None
    try:
        return _supervise(config, [core_fd, *(entries.fds if entries else [])], request,
                          options, child_command, started, zygote)
    finally:
        os.close(core_fd)


class Forker(Protocol):
    """What forks sandbox children instead of starting them (:class:`.sandbox_zygote.Zygote`;
    named here, not imported: the zygote's children import this module)."""

    child_command: tuple[str, ...]

    def fork(self, request_fd: int, options: dict[str, str], deadline: float
             ) -> SandboxChild | None:
        """A child forked with ``options`` on ``request_fd``, or None: start one."""


class SandboxChild(Protocol):
    """A running sandbox child, however it was started."""

    pid: int  # also its process group: it leads its own session
    stderr_fd: int  # the read end of its stderr

    def wait(self, timeout: float) -> int | None:
        """Its exit status (negative: killed by that signal), None after ``timeout`` s."""

    def close(self) -> None:
        """Close our end of its stderr."""


class _Started:
    """A child started as its own interpreter (subprocess)."""

    def __init__(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        self.pid = child.pid
        assert child.stderr is not None
        self.stderr_fd = child.stderr.fileno()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self.child.stderr is not None:
            self.child.stderr.close()


def _start(options: dict[str, str], child_command: Sequence[str], fd: int
           ) -> SandboxChild:
    return _Started(subprocess.Popen(
        _child_argv(fd, options, child_command), pass_fds=[fd],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={}, cwd="/", start_new_session=True))


def _supervise(config: Config, fds: list[int], request: dict[str, Any],
               options: dict[str, str], child_command: Sequence[str], started: float,
               zygote: Forker | None = None) -> dict[str, Any]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = started + config.analysis_timeout
    try:
        forked = zygote.fork(theirs.fileno(), options, deadline) if zygote else None
        child = forked if forked is not None else \
            _start(options, child_command, theirs.fileno())
    except OSError as err:
        ours.close()
        theirs.close()
        return failed(f"cannot start: {err}", started)
    theirs.close()
    try:
        output, stderr, status = _exchange(ours, child, fds, request, deadline)
    finally:
        ours.close()
    if status is None:
        _kill_group(child)
        return failed(f"timed out after {config.analysis_timeout:g} s (AnalysisTimeoutSec)",
                      started)
    if len(output) > RESULT_MAX:
        _kill_group(child)
        return failed(f"result larger than {RESULT_MAX} bytes", started)
    return _verdict(status, output, stderr, config, started)


def _exchange(sock: socket.socket, child: SandboxChild, fds: list[int],
              request: dict[str, Any], deadline: float) -> tuple[bytes, bytes, int | None]:
    """Send the request (with the core's fd first), collect result and stderr until both
    end and the child exits; (output, stderr, exit status or None when timed out)."""
    payload = json.dumps(request, default=str).encode()
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        socket.send_fds(sock, [HEADER.pack(len(payload))], fds)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the child died or stalled before reading; its exit status says why
    output, stderr = _collect(sock, child.stderr_fd, deadline)
    if output is None:
        return b"", stderr, None
    if len(output) > RESULT_MAX:
        return output, stderr, 0  # the caller kills the child, still writing
    try:
        status = child.wait(max(0.0, deadline - time.monotonic()))
    finally:
        child.close()
    return (output, stderr, status) if status is not None else (b"", stderr, None)


def _collect(sock: socket.socket, err_fd: int, deadline: float) -> tuple[bytes | None, bytes]:
    """Read the socket (capped at RESULT_MAX + 1) and stderr (tail) until EOF on both.

    Returns (None, stderr) when the deadline passed first.
    """
    chunks: list[bytes] = []
    size = 0
    stderr = b""
    poller = select.poll()
    open_fds = {sock.fileno(), err_fd}
    for fd in open_fds:
        poller.register(fd, select.POLLIN)
    while open_fds:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, stderr
        for fd, _ in poller.poll(remaining * 1000):
            data = os.read(fd, 1 << 16) if size <= RESULT_MAX or fd == err_fd else b""
            if fd == err_fd:
                stderr = (stderr + data)[-STDERR_TAIL:]
            elif data:
                chunks.append(data)
                size += len(data)
            if not data or (fd != err_fd and size > RESULT_MAX):
                poller.unregister(fd)
                open_fds.discard(fd)
    return b"".join(chunks), stderr


def _kill_group(child: SandboxChild) -> None:
    """SIGKILL the child's process group (it is a session leader), then reap it."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait(KILLED_WAIT_S)
    child.close()


def _verdict(status: int, output: bytes, stderr: bytes, config: Config,
             started: float) -> dict[str, Any]:
    """Turn the child's exit status and output into a result dict."""
    if status < 0:
        return failed(_signal_reason(-status, config), started)
    if not output:
        last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        detail = f": {last[0]!r}" if last else ""
        return failed(f"exited with status {status} without a result{detail}", started)
    try:
        result = json.loads(output)
    except (ValueError, RecursionError) as err:
        return failed(f"invalid result from the analysis process: {err}", started)
    if not isinstance(result, dict) or \
            result.get("state") not in (AnalysisState.DONE, AnalysisState.FAILED):
        return failed("invalid result from the analysis process: no state", started)
    if result["state"] == AnalysisState.FAILED:
        result.setdefault("duration_ms", int((time.monotonic() - started) * 1000))
    return result


def _signal_reason(signo: int, config: Config) -> str:
    try:
        name = signal.Signals(signo).name
    except ValueError:
        name = f"signal {signo}"
    if signo == signal.SIGXCPU:
        return f"CPU time limit reached ({name})"
    if signo == signal.SIGKILL:
        return (f"killed by {name} (CPU or memory limit, AnalysisMemoryMax="
                f"{config.analysis_memory_max})")
    return f"killed by {name}"
