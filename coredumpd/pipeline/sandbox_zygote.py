"""The sandbox zygote: one pre-imported root process that forks a drain's sandbox children.

Starting the sandbox child (:mod:`.sandbox_child`) costs an interpreter and the
analysis' imports, ~100-120 ms of CPU, more than a small core's analysis itself.
A drain (:func:`coredumpd.pipeline.analyze_job.drain`) analyses many crashes one
after the other, so it starts the sandbox once, as a zygote::

    python -I -B -m coredumpd.pipeline.sandbox_child --zygote 1 --fd N

started like a child (empty environment, cwd /, its own session) that makes
itself non-dumpable, imports the whole analysis (as root: see
:func:`.sandbox_child._preload`) and then only waits on its control socket
(``SOCK_SEQPACKET``, the drain's job holds the other end).  **It never reads
core data**: per crash it receives the child's end of the request socket and
the write end of a stderr pipe, the options of :func:`.sandbox.child_options`,
and forks.  The forked child, before it reads anything of the crash, closes
everything but stdin/stdout (/dev/null), stderr (the pipe) and the request
socket (fd 3), starts its own session, then goes through exactly the steps of
a started child: :func:`.sandbox_child.confine` (a PID namespace of its own,
limits, a new network namespace, the drop to the crash's analysis credentials, no_new_privs,
non-dumpable) and :func:`.sandbox_child.serve` (receive the core's and the
module cache entries' fds, analyse, answer).  The job supervises it as it
would a started child: the same deadline, result cap and process-group kill
(:func:`.sandbox.run_analysis`).

The zygote's side is :func:`.sandbox_child.zygote_main` (one module with the steps
its children share with started ones); this module is the job's side.  The zygote
reaps each child and reports its exit status and CPU; a child that
crashes, hangs or answers garbage costs that crash's analysis only.  A child
cannot reach the zygote: the control socket is closed before the drop, the
zygote is root (no signal, no ptrace from the analysis user) and reads nothing
a child writes.  When the zygote cannot fork (it died, or never started), the
crash's child is started as its own interpreter, as without a zygote.

Forked children share their zygote's address space layout and hash secret, so a
zygote forks the children of one set of analysis credentials only, and at most
:data:`FORKS_MAX` of them; then a new one is started (:class:`Zygote`).
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

CONTROL_MAX = 4096  # bytes of one control message
START_TIMEOUT_S = 60.0  # for the zygote's imports (~0.3 s of CPU here)
FAILURES_MAX = 3  # zygotes of one drain that failed to start or died (then: no more)
# Children forked by one zygote before the next child gets a new one (a new
# interpreter: new address space layout, new hash secret).  A zygote start costs
# about two started sandboxes' CPU, a fork saves most of one: 32 keeps nearly all
# of the saving (measured: commit message).
FORKS_MAX = 32

Credentials = tuple[str | None, str | None, bool]  # --uid, --gid, --read-all


def credentials(options: dict[str, str]) -> Credentials:
    """Who a child with ``options`` (:func:`.sandbox.child_options`) runs as."""
    return options.get("--uid"), options.get("--gid"), "--read-all" in options


class Zygote:
    """The job's side: starts a zygote for the credentials of the child asked for, counts
    their CPU.

    One zygote at a time, serving one set of analysis credentials: its children share
    its address space layout and hash secret (fork(2) copies them), so one that a core
    took over learns those of the next children of the same zygote, and they must be
    children of the same uid only (which could not attack each other: not dumpable,
    the same limits).  A child of other credentials than the zygote's is started (its
    own interpreter) the first time, and gets a zygote of its own (the old one ends)
    when the next crash has those credentials too: crashes of alternating users cost
    what they cost without a zygote, a run of one user's crashes forks.  After
    :data:`FORKS_MAX` children a zygote is replaced by a new one, so that a layout
    learnt is good for that many analyses at most."""

    def __init__(self, child_command: Sequence[str] = ("-m", "coredumpd.pipeline.sandbox_child"),
                 forks_max: int = FORKS_MAX) -> None:
        self.child_command = tuple(child_command)
        self.forks_max = forks_max
        self.process: subprocess.Popen[bytes] | None = None
        self.control: socket.socket | None = None
        self.key: Credentials | None = None  # whose children the zygote forks
        self.last_key: Credentials | None = None  # the credentials asked for last
        self.starts = 0
        self.failures = 0  # zygotes that did not start or died
        self.forked = 0  # children forked, by all zygotes
        self.forked_here = 0  # children forked by the zygote running
        self.cpu_ms = 0  # the children's and the zygote's CPU reported, not yet taken
        self.zygote_cpu_ms = 0  # the zygote's own CPU at its last report
        self.reaped_ms = 0  # CPU our RUSAGE_CHILDREN got from reaping zygotes (counted already)

    def fork(self, request_fd: int, options: dict[str, str], deadline: float
             ) -> ForkedChild | None:
        """A child forked with ``options`` on the request socket ``request_fd``, or None
        when no zygote of its credentials forks it (the caller starts one)."""
        if not self._zygote_for(credentials(options)):
            return None
        assert self.control is not None
        stderr_read, stderr_write = os.pipe()
        try:
            self.control.settimeout(max(0.001, deadline - time.monotonic()))
            socket.send_fds(self.control, [json.dumps(options).encode()],
                            [request_fd, stderr_write])
            reply = json.loads(self.control.recv(CONTROL_MAX) or b"null")
            pid = reply.get("pid") if isinstance(reply, dict) and "status" not in reply else None
            if not isinstance(pid, int) or pid <= 0:
                raise OSError(f"the zygote answered {reply!r}")
        except (OSError, ValueError, KeyError):
            os.close(stderr_read)
            self.close(failed=True)
            return None
        finally:
            os.close(stderr_write)
        self.forked += 1
        self.forked_here += 1
        return ForkedChild(self, pid, stderr_read)

    def _zygote_for(self, key: Credentials) -> bool:
        """A running zygote for ``key`` (see the class), or False."""
        previous, self.last_key = self.last_key, key
        if self.control is not None and self.key != key and previous != key:
            return False  # the first of other credentials: started, the zygote kept
        if self.control is not None and (self.key != key or self.forked_here >= self.forks_max):
            self.close()
        self.key = key
        return self.start()

    def start(self) -> bool:
        """Start the zygote and wait until it has imported everything; False when it
        cannot be had (none is started after :data:`FAILURES_MAX` failures)."""
        if self.control is not None:
            return True
        if self.failures >= FAILURES_MAX:
            return False
        self.starts += 1
        self.forked_here = 0
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-B", *self.child_command, "--zygote", "1",
                 "--fd", str(theirs.fileno())], pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={}, cwd="/", start_new_session=True)
        except OSError:
            ours.close()
            self.failures += 1
            return False
        finally:
            theirs.close()
        self.control = ours
        self.zygote_cpu_ms = 0
        try:
            ours.settimeout(START_TIMEOUT_S)
            if json.loads(ours.recv(CONTROL_MAX) or b"null") != {"ready": True}:
                raise OSError("the zygote did not start")
        except (OSError, ValueError):
            self.close(failed=True)
            return False
        return True

    def report(self, reply: Any) -> int | None:
        """The exit status in a zygote's report (counting the CPU it gives), or None."""
        if not isinstance(reply, dict) or not isinstance(reply.get("status"), int):
            return None
        child_ms, zygote_ms = reply.get("cpu_ms"), reply.get("zygote_cpu_ms")
        if isinstance(child_ms, int) and isinstance(zygote_ms, int):
            self.cpu_ms += child_ms + max(0, zygote_ms - self.zygote_cpu_ms)
            self.zygote_cpu_ms = zygote_ms
        return os.waitstatus_to_exitcode(reply["status"])

    def take_cpu_ms(self) -> int:
        """The CPU of the children and of the zygote since the last call."""
        taken, self.cpu_ms = self.cpu_ms, 0
        return taken

    def close(self, failed: bool = False) -> None:
        """End the zygote (it exits when its control socket closes) and reap it;
        ``failed``: it did not start or died (counted against :data:`FAILURES_MAX`)."""
        if failed:
            self.failures += 1
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.process is not None:
            before = _children_cpu_ms()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.reaped_ms += _children_cpu_ms() - before
            self.process = None


def _children_cpu_ms() -> int:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((usage.ru_utime + usage.ru_stime) * 1000)


class ForkedChild:
    """A sandbox child forked by the zygote (:class:`.sandbox.SandboxChild`)."""

    def __init__(self, zygote: Zygote, pid: int, stderr_fd: int) -> None:
        self.zygote = zygote
        self.pid = pid
        self.stderr_fd = stderr_fd
        self.status: int | None = None

    def wait(self, timeout: float) -> int | None:
        """The zygote's report of this child's end; a zygote gone meanwhile: the child's
        group is killed and counted as killed."""
        if self.status is not None:
            return self.status
        control = self.zygote.control
        try:
            if control is None:
                raise OSError("no zygote")
            control.settimeout(max(0.001, timeout))
            reply = json.loads(control.recv(CONTROL_MAX) or b"null")
            if not isinstance(reply, dict) or reply.get("pid") != self.pid:
                raise OSError("the zygote ended")
            self.status = self.zygote.report(reply)
            if self.status is None:
                raise OSError("the zygote ended")
        except TimeoutError:
            return None
        except (OSError, ValueError):
            self.zygote.close(failed=True)
            try:
                os.killpg(self.pid, 9)
            except ProcessLookupError:
                pass
            self.status = -9
        return self.status

    def close(self) -> None:
        if self.stderr_fd >= 0:
            os.close(self.stderr_fd)
            self.stderr_fd = -1
