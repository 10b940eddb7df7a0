"""Run :func:`coredumpd.analysis.analyze` in a separate, unprivileged process.

The analysis parses a core written by the process that crashed, with lief,
capstone and our own DWARF code: the place where a handler running as root is
most exposed (systemd-coredump CVE-2022-4415, CVE-2025-4598; apport's list).
So it runs in a child process that

* is started with ``sys.executable -I -B -m coredumpd.pipeline.sandbox``, an
  empty environment, cwd ``/``, in its own session (process group);
* sets its limits first: ``RLIMIT_AS`` (AnalysisMemoryMax), ``RLIMIT_CPU``,
  ``RLIMIT_CORE`` 0 and ``PR_SET_DUMPABLE`` 0 — with a pipe core_pattern the
  kernel ignores RLIMIT_CORE (only the value 1 stops it, fs/coredump.c), so it
  is the non-dumpable flag that keeps a crash of the analysis from ever coming
  back to our own handler (``__get_dumpable() == 0`` makes ``do_coredump``
  return before anything is piped);
* imports the whole analysis code while still root (the interpreter may live in
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

The parent reads the result (JSON, at most :data:`RESULT_MAX` bytes) from the
same socket, with a wall-clock deadline (AnalysisTimeoutSec) after which the
child's whole process group is killed.  Whatever goes wrong — crash, hang,
memory cap, garbage output — :func:`run_analysis` returns
``{"state": "failed", "error": "analysis failed: <reason>"}``; it never raises
for a bad core, so the caller keeps the stored core and its index row.

Test hook: when the *parent's* environment has ``COREDUMPD_SANDBOX_TEST_HOOK``
(``crash``, ``hang``, ``sleep``, ``oom``, ``big-result``, ``garbage``,
``ids``, ``exit``), the child runs that misbehaviour instead of the analysis.
Only tests set it; the kernel starts the handler with an empty environment,
so it cannot be set in production.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import pwd
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from coredumpd.config import Config

RESULT_MAX = 32 << 20  # bytes of JSON accepted from the child
STDERR_TAIL = 2000  # bytes of the child's stderr kept for the error message
SYSTEM_UID_MAX = 999  # Debian's login.defs SYS_UID_MAX; systemd's SYSTEM_UID_MAX
TEST_HOOK_ENV = "COREDUMPD_SANDBOX_TEST_HOOK"
HEADER = struct.Struct("<Q")  # length of the request JSON that follows
assert HEADER.size == 8

# <linux/prctl.h>
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_GET_DUMPABLE = 3
PR_SET_KEEPCAPS = 8
CLONE_NEWNET = 0x40000000  # <linux/sched.h>
CAP_DAC_READ_SEARCH = 2  # <linux/capability.h>
LINUX_CAPABILITY_VERSION_3 = 0x20080522


def failed(reason: str, started: float | None = None) -> dict[str, Any]:
    """The result recorded when the analysis could not produce one."""
    result: dict[str, Any] = {"version": 1, "state": "failed",
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


def _child_argv(config: Config, fd: int, creds: tuple[int, int] | None,
                read_all: bool) -> list[str]:
    cpu = max(1, int(config.analysis_timeout) + 1)
    argv = [sys.executable, "-I", "-B", "-m", "coredumpd.pipeline.sandbox",
            "--fd", str(fd), "--memory-max", str(config.analysis_memory_max),
            "--cpu-seconds", str(cpu)]
    if creds is not None:
        argv += ["--uid", str(creds[0]), "--gid", str(creds[1])]
    if read_all:
        argv.append("--read-all")  # last: the options before it come in pairs
    return argv


def _regular_user(facts: dict[str, Any] | None) -> bool:
    """A crash of a regular uid that kept its credentials (its own analysis)."""
    args = (facts or {}).get("args") or {}
    uid = args.get("uid")
    return isinstance(uid, int) and SYSTEM_UID_MAX < uid < 2**32 - 1 and \
        args.get("dump_mode") in (None, 1)


def run_analysis(config: Config, core_path: str, facts: dict[str, Any] | None,
                 exe: str | None, root: str = "/") -> dict[str, Any]:
    """Analyse ``core_path`` (raw ELF or our seekable lz4) in the sandbox.

    Returns the analysis result dict (docs/ARCHITECTURE.md), or a ``failed``
    result saying why.  Never raises for a bad core or a misbehaving child.
    """
    started = time.monotonic()
    try:
        creds = analysis_credentials(config, facts)
        core_fd = _open_core(core_path)
    except (LookupError, OSError) as err:
        return failed(f"cannot start: {err}", started)
    request = {"facts": facts, "exe": exe, "root": root,
               "hook": os.environ.get(TEST_HOOK_ENV)}
    try:
        read_all = creds is not None and not _regular_user(facts)
        return _supervise(config, core_fd, request, creds, read_all, started)
    finally:
        os.close(core_fd)


def _supervise(config: Config, core_fd: int, request: dict[str, Any],
               creds: tuple[int, int] | None, read_all: bool,
               started: float) -> dict[str, Any]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = started + config.analysis_timeout
    try:
        child = subprocess.Popen(
            _child_argv(config, theirs.fileno(), creds, read_all), pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={}, cwd="/", start_new_session=True)
    except OSError as err:
        ours.close()
        theirs.close()
        return failed(f"cannot start: {err}", started)
    theirs.close()
    try:
        output, stderr, timed_out = _exchange(ours, child, core_fd, request, deadline)
    finally:
        ours.close()
    if timed_out:
        _kill_group(child)
        return failed(f"timed out after {config.analysis_timeout:g} s (AnalysisTimeoutSec)",
                      started)
    if len(output) > RESULT_MAX:
        _kill_group(child)
        return failed(f"result larger than {RESULT_MAX} bytes", started)
    return _verdict(child.returncode, output, stderr, config, started)


def _exchange(sock: socket.socket, child: subprocess.Popen[bytes], core_fd: int,
              request: dict[str, Any], deadline: float) -> tuple[bytes, bytes, bool]:
    """Send the request, collect result and stderr until both end and the child exits."""
    payload = json.dumps(request, default=str).encode()
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        socket.send_fds(sock, [HEADER.pack(len(payload))], [core_fd])
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the child died or stalled before reading; its exit status says why
    assert child.stderr is not None
    output, stderr = _collect(sock, child.stderr.fileno(), deadline)
    if output is None:
        return b"", stderr, True
    if len(output) > RESULT_MAX:
        return output, stderr, False  # the caller kills the child, still writing
    try:
        child.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return b"", stderr, True
    finally:
        child.stderr.close()
    return output, stderr, False


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


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's process group (it is a session leader), then reap it."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()
    if child.stderr is not None:
        child.stderr.close()


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
    if not isinstance(result, dict) or result.get("state") not in ("done", "failed"):
        return failed("invalid result from the analysis process: no state", started)
    if result["state"] == "failed":
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


# --------------------------------------------------------------------------
# The child side: python -m coredumpd.pipeline.sandbox --fd N ...
# --------------------------------------------------------------------------

def _prctl(option: int, value: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    result = int(libc.prctl(option, value, 0, 0, 0))
    if result < 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value})")
    return result


def _set_limits(memory_max: int, cpu_seconds: int) -> None:
    """Limits first, while nothing from the core has been read (setrlimit(2)).

    RLIMIT_FSIZE 0: the analysis writes no file (CPython ignores SIGXFSZ, so
    a write fails with EFBIG).  A new, empty network namespace (unshare(2),
    needs root): no socket of the analysis reaches any network.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(PR_SET_DUMPABLE, 0)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_max, memory_max))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")


# Standard modules that parsers commonly import lazily (MiniDebugInfo is xz,
# compressed debug sections are zlib/zstd, build-ids are hashed).
PRELOAD_STDLIB = ("zlib", "lzma", "bz2", "hashlib", "binascii", "unicodedata", "bisect",
                  "heapq", "functools", "itertools", "collections", "dataclasses", "enum",
                  "struct", "mmap", "io", "re", "json", "logging", "traceback", "errno",
                  "stat", "shutil", "tempfile", "subprocess", "glob", "fnmatch", "difflib",
                  "pprint", "textwrap", "string", "copy", "weakref", "contextlib", "operator",
                  "typing", "datetime", "base64", "gzip", "zipfile", "shlex", "locale",
                  "importlib.resources", "importlib.metadata", "ctypes.util", "typing_extensions")


THIRD_PARTY = ("elftools", "capstone", "lz4")  # imported (lazily) by the analysis; not lief (2.5 s)


def _preload() -> None:
    """Import the analysis while we can still read the interpreter's files.

    After the drop, an import of a module not loaded yet fails when the
    interpreter's directories are root-only (e.g. pyenv under /root), so all
    of coredumpd and of the parsers it imports inside functions (pyelftools
    pulls in ``pprint`` from its construct copy) are imported now.
    """
    import codecs
    import importlib

    for name in ("ascii", "latin-1", "utf-8", "utf-16", "utf-32", "idna", "cp437"):
        codecs.lookup(name)
    for name in PRELOAD_STDLIB + THIRD_PARTY:
        try:
            package = importlib.import_module(name)
        except ImportError:
            continue
        if name in THIRD_PARTY:
            _import_all(package)
    _import_all(importlib.import_module("coredumpd"), skip=("coredumpd.cli",))


def _import_all(package: Any, skip: tuple[str, ...] = ()) -> None:
    import importlib
    import pkgutil

    for module in pkgutil.walk_packages(getattr(package, "__path__", []), package.__name__ + "."):
        if module.name.startswith(skip) or ".tests" in module.name:
            continue
        try:
            importlib.import_module(module.name)
        except Exception:  # noqa: BLE001, S110 - a broken module shows up when it is used
            pass


class _CapHeader(ctypes.Structure):  # <linux/capability.h> __user_cap_header_struct
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):  # __user_cap_data_struct (two of them in version 3)
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _keep_only_read_search() -> None:
    """capset(2): effective = permitted = {CAP_DAC_READ_SEARCH}, nothing else."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = 1 << CAP_DAC_READ_SEARCH
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _drop_privileges(uid: int | None, gid: int | None, read_all: bool) -> None:
    """Drop to uid/gid; ``read_all`` keeps CAP_DAC_READ_SEARCH alone.

    That is for crashes whose analysis only root will see (root, system uids,
    changed credentials): the modules of a root-only program can then still be
    read and symbolized, while writing, signalling, ptrace and the network
    stay out of reach.  A regular user's crash gets no capability at all.
    """
    if uid is not None and gid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        if read_all:
            _prctl(PR_SET_KEEPCAPS, 1)
        os.setresuid(uid, uid, uid)
        if os.getresuid() != (uid, uid, uid) or os.getgroups():
            raise OSError("privileges were not dropped")
        if read_all:
            _keep_only_read_search()
            _prctl(PR_SET_KEEPCAPS, 0)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 0)  # setresuid reset it to suid_dumpable; make sure


def _receive(sock: socket.socket) -> tuple[dict[str, Any], int]:
    header, fds, _, _ = socket.recv_fds(sock, HEADER.size, 1)
    while len(header) < HEADER.size:
        more = sock.recv(HEADER.size - len(header))
        if not more:
            raise EOFError("request header cut short")
        header += more
    if len(fds) != 1:
        raise EOFError("no core fd in the request")
    (length,) = HEADER.unpack(header)
    payload = bytearray()
    while len(payload) < length:
        more = sock.recv(min(1 << 20, length - len(payload)))
        if not more:
            raise EOFError("request cut short")
        payload += more
    return json.loads(payload), fds[0]


class FdSource:
    """A ByteSource over an open raw core file descriptor (``os.pread``)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._size = os.fstat(fd).st_size

    @property
    def size(self) -> int:
        return self._size

    def pread(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError(f"negative offset or size: {offset}, {size}")
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        os.close(self._fd)


ELF_MAGIC = b"\x7fELF"
LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"  # lz4 frame format, 0x184D2204 little-endian


def open_fd_source(fd: int) -> Any:
    """A ByteSource over ``fd``: raw ELF core, or our seekable lz4 file."""
    magic = os.pread(fd, 4, 0)
    if magic == ELF_MAGIC:
        return FdSource(fd)
    if magic == LZ4_FRAME_MAGIC:
        from coredumpd.store.lz4seek import SeekableLz4Reader

        return SeekableLz4Reader(fd)
    raise ValueError(f"not an ELF core nor an lz4 file (magic {magic.hex()})")


def _analyze_fd(core_fd: int, request: dict[str, Any]) -> dict[str, Any]:
    from coredumpd.analysis import analyze

    source = open_fd_source(core_fd)
    try:
        result: dict[str, Any] = analyze(source, request.get("facts"), request.get("exe"),
                                         request.get("root") or "/")
        return result
    finally:
        source.close()


def _run_hook(hook: str, sock: socket.socket, core_fd: int) -> dict[str, Any] | None:
    """Misbehave on purpose (tests only, see the module docstring)."""
    if hook.startswith("orphan:"):  # a grandchild that outlives us, then hang
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", hook.partition(":")[2]])
        hook = "sleep"
    if hook == "crash":
        ctypes.string_at(0)  # SIGSEGV in the interpreter, like a lief bug would
    elif hook == "hang":
        while True:
            pass
    elif hook == "sleep":
        time.sleep(1e6)
    elif hook == "oom":
        hoard = []
        while True:
            hoard.append(bytearray(64 << 20))
    elif hook == "exit":
        os._exit(3)
    elif hook == "garbage":
        sock.sendall(b"{not json")
        return None
    elif hook == "big-result":
        return {"state": "done", "padding": "x" * (RESULT_MAX + 1)}
    elif hook == "ids":
        return {"state": "done", "ids": _identity(core_fd)}
    raise ValueError(f"unknown {TEST_HOOK_ENV}={hook!r}")


def _identity(core_fd: int) -> dict[str, Any]:
    """What the sandbox looks like from inside (for the tests)."""
    try:
        os.close(os.open(f"/proc/self/fd/{core_fd}", os.O_RDONLY))
        reopen = "opened"
    except OSError as err:
        reopen = errno.errorcode.get(err.errno or 0, str(err))
    try:
        os.listdir("/root")
        read_root = "yes"
    except OSError as err:
        read_root = errno.errorcode.get(err.errno or 0, str(err))
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=1).close()
        network = "connected"
    except OSError as err:
        network = errno.errorcode.get(err.errno or 0, str(err))
    return {"core_magic": os.pread(core_fd, 4, 0).hex(), "reopen_core": reopen,
            "read_root": read_root, "network": network,
            "rlimit_fsize": resource.getrlimit(resource.RLIMIT_FSIZE),
            "resuid": os.getresuid(), "resgid": os.getresgid(), "groups": os.getgroups(),
            "no_new_privs": _prctl(PR_GET_NO_NEW_PRIVS, 0),
            "dumpable": _prctl(PR_GET_DUMPABLE, 0),
            "rlimit_as": resource.getrlimit(resource.RLIMIT_AS),
            "rlimit_core": resource.getrlimit(resource.RLIMIT_CORE),
            "rlimit_cpu": resource.getrlimit(resource.RLIMIT_CPU),
            "pgid_is_pid": os.getpgid(0) == os.getpid(), "cwd": os.getcwd(),
            "environ": dict(os.environ), "fds": sorted(int(n) for n in os.listdir("/proc/self/fd")),
            "status": open("/proc/self/status", encoding="ascii").read()}


def _child_main(argv: list[str]) -> int:
    options = dict(zip(argv[0::2], argv[1::2], strict=False))
    sock = socket.socket(fileno=int(options["--fd"]))
    _set_limits(int(options["--memory-max"]), int(options["--cpu-seconds"]))
    _preload()
    uid = int(options["--uid"]) if "--uid" in options else None
    gid = int(options["--gid"]) if "--gid" in options else None
    _drop_privileges(uid, gid, "--read-all" in argv)
    request, core_fd = _receive(sock)
    try:
        hook = request.get("hook")
        result = _run_hook(hook, sock, core_fd) if hook else _analyze_fd(core_fd, request)
    except MemoryError:
        result = failed(f"out of memory (AnalysisMemoryMax={options['--memory-max']})")
    except Exception as err:  # noqa: BLE001 - analyze() must not raise; say what did
        result = failed(f"uncaught {type(err).__name__}: {err}")
    if result is not None:
        sock.sendall(json.dumps(result, default=str).encode())
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
