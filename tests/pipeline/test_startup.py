"""What the handler does around the release of the kernel: imports before it (the
crashed process waits for them), the wait for the process to exit after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from coredumpd.pipeline import handler

HEAVY = ("coredumpd.ingest.output", "coredumpd.store.acl", "dataclasses", "inspect", "configparser", "sqlite3", "json", "concurrent.futures",
         "lz4.frame", "coredumpd.config", "coredumpd.elf.notes", "coredumpd.store.lz4seek",
         "coredumpd.store.index", "coredumpd.arch", "lief", "capstone", "elftools", "systemd")


def test_handler_module_imports_nothing_heavy():
    code = ("import sys; before = set(sys.modules); "
            "import coredumpd.pipeline.main, coredumpd.pipeline.handler; "
            "print('\\n'.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={}, cwd="/").stdout.split()
    assert "coredumpd.ingest.stream" in out  # the check sees our imports at all
    assert [name for name in out if name in HEAVY] == []


def _child(seconds: float) -> tuple[int, int]:
    pid = os.fork()
    if pid == 0:
        time.sleep(seconds)
        os._exit(0)
    return pid, os.pidfd_open(pid)


def test_wait_exited_sleeps_until_the_process_exits():
    """After close(fd 0) the handler sleeps on the crashed process's pidfd, so that
    the kernel finishes its exit without competing with our CPU work."""
    pid, pidfd = _child(0.3)
    try:
        waited = handler._wait_exited(pidfd, 5000)
        assert 200 < waited < 4000
    finally:
        os.close(pidfd)
        os.waitpid(pid, 0)


def test_wait_exited_is_bounded():
    """A process that does not exit (e.g. one stopped by a debugger) costs at most the timeout."""
    pid, pidfd = _child(60)
    try:
        waited = handler._wait_exited(pidfd, 50)
        assert 40 < waited < 2000
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(pidfd)
