"""The supervisor that ``coredumpd install --socket`` starts and ``uninstall`` stops.

On a machine whose PID 1 is not systemd (or where coredumpd.service is not
installed), ``install --socket`` starts ``coredumpd serve --supervise`` itself,
detached (its own session, output to /dev/null), and records it in the file
of saved values next to the previous core_pattern: its PID and its start time
in clock ticks (/proc/PID/stat field 22), so that ``uninstall`` stops that
process and never another one that got its PID later.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from coredumpd.ingest import procfs
from coredumpd.pipeline import saved

CORE_PATTERN = "/proc/sys/kernel/core_pattern"
STOP_TIMEOUT_SEC = 60.0


def running_supervisor(saved_path: str) -> int | None:
    """The PID of the supervisor that install started, if that very process still runs."""
    record = saved.load(saved_path).get("supervisor")
    if not isinstance(record, dict):
        return None
    pid = record.get("pid")
    try:
        if isinstance(pid, int) and procfs.start_time_ticks(pid) == record.get("start_ticks"):
            return pid
    except (OSError, ValueError, IndexError):
        pass
    return None


def start_supervisor(saved_path: str, config_path: str | None, socket_path: str,
                     handler: str | None = None, wait_sec: float = 30.0) -> bool:
    """Start ``coredumpd serve --supervise``, record it; True once core_pattern is the
    socket (the server accepts) within ``wait_sec``."""
    argv = [sys.executable, "-m", "coredumpd.pipeline.main", "serve", "--supervise",
            "--socket", socket_path]
    if config_path:
        argv += ["--config", os.path.abspath(config_path)]
    if handler:
        argv += ["--handler", handler]
    process = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    values = saved.load(saved_path)
    values["supervisor"] = {"pid": process.pid,
                            "start_ticks": procfs.start_time_ticks(process.pid)}
    saved.write(saved_path, values)
    deadline = time.monotonic() + wait_sec
    wanted = f"@@{os.path.abspath(socket_path)}"
    while time.monotonic() < deadline and process.poll() is None:
        with open(CORE_PATTERN, encoding="utf-8") as handle:
            if handle.read().rstrip("\n") == wanted:
                return True
        time.sleep(0.05)
    return False


def stop_supervisor(saved_path: str) -> bool:
    """SIGTERM the supervisor install started (it puts the pipe back and stops its
    server), wait for it; True if one was stopped."""
    pid = running_supervisor(saved_path)
    if pid is None:
        return False
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(int(STOP_TIMEOUT_SEC * 1000)):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)
    values = saved.load(saved_path)
    values.pop("supervisor", None)
    if values:
        saved.write(saved_path, values)
    return True
