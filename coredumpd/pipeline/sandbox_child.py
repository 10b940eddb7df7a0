"""The analysis process itself: ``python -I -B -m coredumpd.pipeline.sandbox_child``.

Started by :func:`coredumpd.pipeline.sandbox.run_analysis` (see its module for
the design): makes itself non-dumpable, imports the analysis while still root,
sets its limits and drops its privileges (:func:`confine`), then receives the
core fd and the facts over the socket given as ``--fd``, runs
:func:`coredumpd.analysis.analyze` and sends the result back as JSON
(:func:`serve`).  With ``--zygote 1`` it is a drain's zygote instead
(:mod:`.sandbox_zygote`), whose forked children run :func:`confine` and
:func:`serve` the same way.  :func:`child_main` takes that work as an argument: the tests' misbehaving
child (tests/support/sandbox_hooks.py) goes through the same steps.  Nothing from the core is read before the drop.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import resource
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any

from coredumpd.pipeline.sandbox import HEADER, failed
from coredumpd.pipeline.sandbox_cache import MAX_PASSED, PassedModuleCache
from coredumpd.pipeline.sandbox_zygote import CONTROL_MAX

# <linux/prctl.h>
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_KEEPCAPS = 8
PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000  # <linux/sched.h>
CLONE_NEWPID = 0x20000000
WAIT_STATUS = struct.Struct("=i")  # a wait status, from the namespace's init to its parent
assert WAIT_STATUS.size == 4
CAP_DAC_READ_SEARCH = 2  # <linux/capability.h>
LINUX_CAPABILITY_VERSION_3 = 0x20080522


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


# Imported (lazily) by the analysis.  Not pyelftools: only the tests use it (as an
# oracle), and preloading it cost every analysis ~15 ms.
THIRD_PARTY = ("capstone", "lz4")


# The layers above the analysis (docs/ARCHITECTURE.md): never imported by it.  Importing
# them anyway cost every sandbox ~100 ms of CPU (the handler's modules, SQLite, the
# journal, the fleet), the larger part of a small core's whole analysis.
ABOVE_ANALYSIS = ("coredumpd.cli", "coredumpd.pipeline", "coredumpd.fleet", "coredumpd.report",
                  "coredumpd.analysis.__main__")


def _preload(python: bool = False) -> None:
    """Import the analysis while we can still read the interpreter's files.

    After the drop, an import of a module not loaded yet fails when the
    interpreter's directories are root-only (e.g. pyenv under /root), so all
    of coredumpd and of the third-party modules it imports inside functions
    are imported now.  Where every directory of ``sys.path`` is open to all
    (:func:`_path_open_to_all`: /usr/lib/python3, a venv under /opt), the
    analysis imports what it uses when it uses it: about 70 ms of CPU less per
    crash (most analyses never import most rules' helpers, pystack, the
    stdlib list below).
    """
    _lookup_codecs()
    if not _path_open_to_all(sys.path):
        _import_everything(python)


def preload_all() -> None:
    """The zygote's imports (:mod:`.sandbox_zygote`): everything the analysis may
    import, pystack too, whatever the interpreter's directories allow: imported once
    per drain, not once per crash; then the first analysis's other work (the patterns
    compiled on first use, the demanglers: :func:`coredumpd.analysis.prepare`)."""
    _lookup_codecs()
    _import_everything(True)
    from coredumpd.analysis import prepare

    prepare()


def _lookup_codecs() -> None:
    import codecs
    for name in ("ascii", "latin-1", "utf-8", "utf-16", "utf-32", "idna", "cp437"):
        codecs.lookup(name)


def _import_everything(python: bool) -> None:
    import importlib
    for name in PRELOAD_STDLIB + THIRD_PARTY + (("pystack",) if python else ()):
        try:
            package = importlib.import_module(name)
        except ImportError:
            continue
        if name in THIRD_PARTY or name == "pystack":
            _import_all(package)
    _import_all(importlib.import_module("coredumpd"), skip=ABOVE_ANALYSIS)


def _path_open_to_all(paths: list[str]) -> bool:
    """Every existing directory of ``paths`` is readable and searchable by others, and
    its parents searchable: any user can import from it (a zip or a missing entry
    counts as open: nothing to read there)."""
    import stat as stat_module
    for path in paths:
        if not path or not os.path.isdir(path):
            if path and os.path.exists(path):
                return False  # a zip archive: its mode is not checked here
            continue
        directory = os.path.realpath(path)
        if os.stat(directory).st_mode & 0o005 != 0o005:
            return False
        while directory != "/":
            directory = os.path.dirname(directory)
            if not os.stat(directory).st_mode & stat_module.S_IXOTH:
                return False
    return True


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


def drop_privileges(uid: int | None, gid: int | None, read_all: bool,
                    groups: Sequence[int] = ()) -> None:
    """Drop to uid/gid with the supplementary ``groups``; ``read_all`` keeps
    CAP_DAC_READ_SEARCH alone.  The one function that gives up root: the sandbox's
    children and the analysis worker's (coredumpd.cli.worker) both call it.

    ``read_all`` is for crashes whose analysis only root will see (root, system uids,
    changed credentials): the modules of a root-only program can then still be
    read and symbolized, while writing, signalling, ptrace and the network
    stay out of reach.  A regular user's crash gets no capability at all.
    """
    if uid is not None and gid is not None:
        os.setgroups(list(groups))
        os.setresgid(gid, gid, gid)
        if read_all:
            _prctl(PR_SET_KEEPCAPS, 1)
        os.setresuid(uid, uid, uid)
        if os.getresuid() != (uid, uid, uid) or set(os.getgroups()) != set(groups):
            raise OSError("privileges were not dropped")
        if read_all:
            _keep_only_read_search()
            _prctl(PR_SET_KEEPCAPS, 0)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 0)  # setresuid reset it to suid_dumpable; make sure


def _receive(sock: socket.socket) -> tuple[dict[str, Any], int]:
    """The request and the core fd; the module cache entries' fds that follow the core's
    are put in the request as ``entry_fds`` (build-id hex -> fd)."""
    header, fds, _, _ = socket.recv_fds(sock, HEADER.size, 1 + MAX_PASSED)
    while len(header) < HEADER.size:
        more = sock.recv(HEADER.size - len(header))
        if not more:
            raise EOFError("request header cut short")
        header += more
    if not fds:
        raise EOFError("no core fd in the request")
    (length,) = HEADER.unpack(header)
    payload = bytearray()
    while len(payload) < length:
        more = sock.recv(min(1 << 20, length - len(payload)))
        if not more:
            raise EOFError("request cut short")
        payload += more
    request = json.loads(payload)
    names = request.get("module_cache") if isinstance(request, dict) else None
    if isinstance(names, list) and len(names) == len(fds) - 1:
        request["entry_fds"] = dict(zip(names, fds[1:], strict=True))
    else:
        for fd in fds[1:]:
            os.close(fd)
    return request, fds[0]


def _analyze_fd(core_fd: int, request: dict[str, Any]) -> dict[str, Any]:
    from coredumpd.analysis import analyze
    from coredumpd.model import Facts
    from coredumpd.store.lz4seek import open_core_source

    facts = request.get("facts")
    settings = request.get("debuginfod")
    client = None
    if isinstance(settings, dict) and isinstance(settings.get("cache"), str):
        from coredumpd.image.debuginfod import Debuginfod
        client = Debuginfod((), settings["cache"])  # the cache only
    entries = request.get("entry_fds")
    cache = PassedModuleCache({bytes.fromhex(name): fd for name, fd in entries.items()}) \
        if isinstance(entries, dict) else None
    source = open_core_source(core_fd)
    try:
        result = analyze(source, Facts.from_json(facts) if facts is not None else None,
                         request.get("exe"), request.get("root") or "/",
                         debuginfod=client, cache=cache).to_json()
    finally:
        source.close()
    if cache is not None:  # what the parent may derive and keep (sandbox_cache.py)
        result["module_lookups"] = cache.report()
    return result


Work = Callable[[dict[str, Any], socket.socket, int], dict[str, Any] | None]


def _analyze_request(request: dict[str, Any], _sock: socket.socket,
                     core_fd: int) -> dict[str, Any]:
    return _analyze_fd(core_fd, request)


def child_main(argv: list[str], work: Work = _analyze_request) -> int:
    """Limits, preload, drop, receive; then ``work(request, socket, core_fd)`` and send
    its result (None: ``work`` answered on the socket itself).  With ``--zygote 1``:
    become the zygote of a drain instead (:mod:`.sandbox_zygote`), whose forked
    children do the same with ``work``."""
    options = dict(zip(argv[0::2], argv[1::2], strict=False))
    sock = socket.socket(fileno=int(options["--fd"]))
    if "--zygote" in options:
        return zygote_main(sock, work)
    not_dumpable()
    _preload("--python" in options)  # a Python crash: pystack too (~24 ms)
    confine(options)
    return serve(options, sock, work)


def not_dumpable() -> None:
    """RLIMIT_CORE 0 and PR_SET_DUMPABLE 0 before anything else: a crash of this process
    never reaches a core handler (see :mod:`.sandbox`)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(PR_SET_DUMPABLE, 0)


def confine(options: dict[str, str], status_fd: int | None = None) -> None:
    """Every protection of the sandbox, in order: a PID namespace of its own (root only;
    ``status_fd``: we are its init already, forked so by the zygote, and the analysis'
    status goes there), the limits, then the drop to ``--uid``/``--gid`` (``--read-all``:
    CAP_DAC_READ_SEARCH kept).  The one place where a sandbox process (started, or forked
    by the zygote) gives up root."""
    if status_fd is not None and os.getpid() == 1:
        become_init(status_fd)
    elif os.geteuid() == 0:
        enter_pid_namespace()
    _set_limits(int(options["--memory-max"]), int(options["--cpu-seconds"]))
    uid = int(options["--uid"]) if "--uid" in options else None
    gid = int(options["--gid"]) if "--gid" in options else None
    drop_privileges(uid, gid, "--read-all" in options)


def enter_pid_namespace() -> None:
    """Go on as PID 2 of a new PID namespace, whose init is our child; return there.

    Everything the analysis forks stays in that namespace, even after setsid(): when the
    namespace's init exits, the kernel SIGKILLs every process left in it and waits for
    them (pid_namespaces(7), kernel/pid_namespace.c zap_pid_ns_processes).  A process
    group ends with its members only, and a grandchild that started its own session
    would live on as the analysis uid (with CAP_DAC_READ_SEARCH for AnalysisUser),
    able to signal the next sandboxes of that uid.

    Three processes, two of them waiting only, as root (the analysis user can signal
    neither): this one (the relay, the pid our parent knows, leader of the process
    group the sandbox kills on timeout) forks the init; the init forks the analysis,
    reaps what is orphaned to it, and at the analysis' end sends its wait status to the
    relay and exits (taking the namespace with it); the relay then ends the same way
    the analysis did.  The analysis is not the init itself: a namespace's init ignores
    the signals it has no handler for, from inside and from the kernel (SIGXCPU of
    RLIMIT_CPU, SIGABRT of abort()), kernel/signal.c sig_task_ignored().  The zygote's
    children need no relay: the zygote forks each into a new namespace
    (:func:`new_pid_namespace`), and reads the status itself (:func:`passed_status`).
    Each fork of a process that imported the analysis costs ~2 ms of CPU here.
    """
    new_pid_namespace()
    status_read, status_write = os.pipe()
    init = os.fork()
    if init != 0:
        os.close(status_write)
        _relay(init, status_read)
    os.close(status_read)
    become_init(status_write)


def new_pid_namespace(own: int | None = None) -> None:
    """Our next child is the init of a new PID namespace (unshare(2), CAP_SYS_ADMIN).
    ``own``: a descriptor of our own PID namespace, for a process that does it again:
    unshare(CLONE_NEWPID) fails with EINVAL once our children's namespace is not ours,
    and setns(2) to our own puts it back (kernel/pid_namespace.c pidns_install)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if own is not None and libc.setns(own, CLONE_NEWPID) != 0:
        raise OSError(ctypes.get_errno(), "setns(CLONE_NEWPID)")
    if libc.unshare(CLONE_NEWPID) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWPID)")


def become_init(status_write: int) -> None:
    """As the init of a new PID namespace: fork the analysis and return in it; the
    init itself waits (:func:`_init`), and dies with its parent."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # our parent killed: the namespace goes too
    analysis = os.fork()
    if analysis != 0:
        _init(analysis, status_write)
    os.close(status_write)


def _keep_only(*fds: int) -> None:
    """Close every descriptor but ``fds`` (the waiting processes hold no socket or core)."""
    last = 0
    for fd in sorted(fds):
        os.closerange(last, fd)
        last = fd + 1
    os.closerange(last, os.sysconf("SC_OPEN_MAX"))


def _init(analysis: int, status_write: int) -> None:
    """PID 1 of the sandbox's namespace: reap until the analysis ends, pass on its
    status, exit (never returns)."""
    _keep_only(2, status_write)
    try:
        while True:
            pid, status = os.wait()
            if pid == analysis:
                os.write(status_write, WAIT_STATUS.pack(status))
                break
    finally:
        os._exit(0)


def _relay(init: int, status_read: int) -> None:
    """Wait for the namespace's init, then end as the analysis did (never returns)."""
    _keep_only(2, status_read)
    status = 1 << 8
    try:
        _, status = os.waitpid(init, 0)
        status = passed_status(status_read, status)
        if os.WIFSIGNALED(status):
            signo = os.WTERMSIG(status)
            if signo not in (signal.SIGKILL, signal.SIGSTOP):  # their action is fixed
                signal.signal(signo, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signo])
            os.kill(os.getpid(), signo)  # not dumpable, RLIMIT_CORE 0: no core
    finally:
        os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def passed_status(status_read: int, init_status: int) -> int:
    """The analysis' wait status that its init passed on (read once the init was reaped),
    else the init's own (it died before: killed)."""
    passed = os.read(status_read, WAIT_STATUS.size)
    if len(passed) == WAIT_STATUS.size:
        (status,) = WAIT_STATUS.unpack(passed)
        return int(status)
    return init_status


def serve(options: dict[str, str], sock: socket.socket, work: Work) -> int:
    """Receive the request and the core, run ``work``, send its result (confined)."""
    request, core_fd = _receive(sock)
    try:
        result = work(request, sock, core_fd)
    except MemoryError:
        result = failed(f"out of memory (AnalysisMemoryMax={options['--memory-max']})")
    except Exception as err:  # noqa: BLE001 - analyze() must not raise; say what did
        result = failed(f"uncaught {type(err).__name__}: {err}")
    if result is not None:
        sock.sendall(json.dumps(result, default=str).encode())
    sock.close()
    return 0


# The zygote's side of coredumpd.pipeline.sandbox_zygote (the job's side is there).
REQUEST_FD = 3  # where a forked child finds its request socket, as a started one does


def zygote_main(control: socket.socket, work: Work) -> int:
    """The zygote: non-dumpable, everything imported, then fork one child per request
    until the control socket ends."""
    import gc

    not_dumpable()
    preload_all()
    gc.freeze()  # the imported objects stay shared with the children (no copy on write)
    own_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC) \
        if os.geteuid() == 0 else None
    control.send(json.dumps({"ready": True}).encode())
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, CONTROL_MAX, 2)
        except OSError:
            return 0
        if not message or len(fds) != 2:
            return 0
        options = json.loads(message)
        try:
            pid, status_read = _fork_init(options, fds[0], fds[1], own_namespace, work)
        except OSError:
            return 0  # the job then starts its children: they say why they fail
        finally:
            for fd in fds:
                os.close(fd)
        try:
            control.send(json.dumps({"pid": pid}).encode())
            _, status, usage = os.wait4(pid, 0)
            if status_read is not None:
                status = passed_status(status_read, status)
                os.close(status_read)
            own = resource.getrusage(resource.RUSAGE_SELF)
            control.send(json.dumps({
                "pid": pid, "status": status,
                "cpu_ms": round((usage.ru_utime + usage.ru_stime) * 1000),
                "zygote_cpu_ms": round((own.ru_utime + own.ru_stime) * 1000)}).encode())
        except OSError:
            return 0


def _fork_init(options: dict[str, str], request_fd: int, stderr_fd: int,
               own_namespace: int | None, work: Work) -> tuple[int, int | None]:
    """Fork the child (as root: the init of a new PID namespace, see
    :func:`enter_pid_namespace`); (its pid, the read end of its analysis' status)."""
    if own_namespace is None:
        pid = os.fork()
        if pid == 0:
            _forked_child(options, request_fd, stderr_fd, None, work)
        return pid, None
    new_pid_namespace(own_namespace)
    status_read, status_write = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            os.close(status_read)
            _forked_child(options, request_fd, stderr_fd, status_write, work)
    except OSError:
        os.close(status_read)
        raise
    finally:
        os.close(status_write)  # in the zygote (the child never returns)
    return pid, status_read


def _forked_child(options: dict[str, str], request_fd: int, stderr_fd: int,
                  status_write: int | None, work: Work) -> None:
    """In the forked child: the fds and session of a started child, then its steps."""
    status = 1
    try:
        os.setsid()
        if status_write is not None:  # out of the way of the dup2s below
            status_write = fcntl.fcntl(status_write, fcntl.F_DUPFD_CLOEXEC, REQUEST_FD + 2)
        os.dup2(stderr_fd, 2)
        os.dup2(request_fd, REQUEST_FD)
        if status_write is not None:  # the status pipe at 4, closed by the analysis
            os.dup2(status_write, REQUEST_FD + 1, inheritable=False)
            status_write = REQUEST_FD + 1
        os.closerange(REQUEST_FD + 1 + (status_write is not None),
                      os.sysconf("SC_OPEN_MAX"))  # the control socket too
        confine(options, status_write)
        status = serve(options, socket.socket(fileno=REQUEST_FD), work)
    except BaseException:  # noqa: BLE001 - said on stderr; the job reads its tail
        import traceback
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(status)


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
