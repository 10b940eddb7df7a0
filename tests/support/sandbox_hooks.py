"""The sandbox child with a misbehaviour instead of the analysis (tests only).

``python -I -B -m tests.support.sandbox_hooks HOOK --fd N ...``: started by
``coredumpd.pipeline.sandbox.run_analysis(..., child_command=command(HOOK))``,
it goes through the product child's own steps
(:func:`coredumpd.pipeline.sandbox_child.child_main`: limits, preload, privilege
drop, request), then misbehaves for real: ``crash`` (SIGSEGV in the
interpreter), ``hang``, ``sleep``, ``orphan:N`` (a grandchild ``sleep N``, then
sleep), ``escape:N`` (a grandchild that leaves our session and descriptors behind
and runs ``sleep N``, while we answer), ``oom``, ``exit``, ``garbage``,
``big-result``, ``lie`` and ``answer`` (module lookups, or a whole answer, of the
test's making: what a child a core took over could send), or ``ids`` (report what
the sandbox looks like from inside).
"""

from __future__ import annotations

import ctypes
import errno
import os
import pathlib
import resource
import socket
import sys
import time
from typing import Any

from coredumpd.pipeline import sandbox_child as child
from coredumpd.pipeline.sandbox import RESULT_MAX

MODULE = "tests.support.sandbox_hooks"
PR_GET_DUMPABLE = 3  # <linux/prctl.h>
PR_GET_NO_NEW_PRIVS = 39


def command(hook: str) -> tuple[str, ...]:
    """The ``child_command`` of run_analysis that runs ``hook``."""
    return ("-m", MODULE, hook)


def run_hook(hook: str, sock: socket.socket, core_fd: int,
             request: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Misbehave on purpose."""
    if hook == "lie":  # a child taken over by its core: a report of its own making
        return {"state": "done", "module_lookups": ((request or {}).get("facts") or {})["lies"]}
    if hook == "answer":  # the same: an answer of its own making, whole
        answer: dict[str, Any] = ((request or {}).get("facts") or {})["answer"]
        return answer
    if hook == "entries":
        return {"state": "done", "entries": {name: _try_entry(fd) for name, fd in
                                             ((request or {}).get("entry_fds") or {}).items()}}
    if hook.startswith("escape:"):  # a compromised analysis leaving a process behind
        return {"state": "done", "escaped": _escape(hook.partition(":")[2])}
    if hook.startswith("orphan:"):  # a grandchild that outlives us, then hang
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", hook.partition(":")[2]])
        hook = "sleep"
    if hook == "crash":
        ctypes.string_at(0)  # SIGSEGV in the interpreter, like a bug in a C extension would
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
    raise ValueError(f"unknown hook {hook!r}")


def _escape(marker: str) -> int:
    """Fork a grandchild that starts its own session, closes every descriptor (nothing
    ties it to the sandbox any more) and execs ``sleep MARKER``; its pid as we see it."""
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        os.closerange(0, ready_write)
        os.closerange(ready_write + 1, 1 << 16)
        os.set_inheritable(ready_write, False)
        os.execv("/bin/sleep", ["sleep", marker])  # the exec closes the pipe: ready
    os.close(ready_write)
    os.read(ready_read, 1)
    os.close(ready_read)
    return pid


def _layout() -> dict[str, int]:
    """What a child taken over would learn of its address space and hash secret: where
    libc is, and a str's hash.  (Not the interpreter's own image: Debian's python3 is
    not a PIE, at the same address in every process.)"""
    libc = ctypes.CDLL(None)
    return {"libc": ctypes.cast(libc.getpid, ctypes.c_void_p).value or 0,
            "hash": hash("coredumpd")}


def _errno(action: Any) -> str:
    try:
        action()
    except OSError as err:
        return errno.errorcode.get(err.errno or 0, str(err))
    return "ok"


def _try_entry(fd: int) -> dict[str, str]:
    """What the child can do with a module cache entry's descriptor."""
    directory = os.path.dirname(os.readlink(f"/proc/self/fd/{fd}"))
    return {"read": _errno(lambda: os.pread(fd, 16, 0)),
            "write": _errno(lambda: os.pwrite(fd, b"poison", 0)),
            "reopen": _errno(lambda: os.close(os.open(f"/proc/self/fd/{fd}", os.O_WRONLY))),
            "directory": _errno(lambda: os.listdir(directory))}


def _identity(core_fd: int) -> dict[str, Any]:
    """What the sandbox looks like from inside."""
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
            "no_new_privs": child._prctl(PR_GET_NO_NEW_PRIVS, 0),
            "dumpable": child._prctl(PR_GET_DUMPABLE, 0),
            "rlimit_as": resource.getrlimit(resource.RLIMIT_AS),
            "rlimit_core": resource.getrlimit(resource.RLIMIT_CORE),
            "rlimit_cpu": resource.getrlimit(resource.RLIMIT_CPU),
            "pgid_is_pid": os.getpgid(0) == os.getpid(), "cwd": os.getcwd(),
            "pid": os.getpid(), "pid_namespace": os.readlink("/proc/self/ns/pid"),
            "layout": _layout(),
            "ppid": os.getppid(),
            "environ": dict(os.environ), "fds": sorted(int(n) for n in os.listdir("/proc/self/fd")),
            "status": pathlib.Path("/proc/self/status").read_text(encoding="ascii")}


if __name__ == "__main__":
    hook_name = sys.argv[1]
    sys.exit(child.child_main(sys.argv[2:], lambda request, sock, core_fd:
                              run_hook(hook_name, sock, core_fd, request)))
