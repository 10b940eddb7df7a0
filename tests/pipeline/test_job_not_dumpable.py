"""A crash of the analysis job never comes back to our own handler.

The handler's pipe gives its descendants RLIMIT_CORE 1 (the kernel's own guard
against a handler's recursive dumps), but ``coredumpd serve`` is no pipe helper:
the jobs its capture workers start are exec'd, hence dumpable, with whatever
RLIMIT_CORE the service has.  A job that crashed would send its core to our own
socket, and its crash's marker would stay queued for the next drain, whose job
takes the oldest crash first: the same crash again.  So the job makes itself
not dumpable as soon as it has work to do.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from coredumpd.pipeline import analysis_queue
from tests.pipeline.test_drain import JOB, Store
from tests.support import kernel

FLOCK = "73 "  # x86_64 syscall number, first field of /proc/PID/syscall


def _children(pid: int) -> list[int]:
    return [int(child) for child in
            pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_crashed_analysis_job_leaves_no_core(tmp_path: pathlib.Path) -> None:
    """Both processes of a queued crash's job: the one that holds the drain lock and the
    drain it forked (here waiting, in flock(2), for its own crash, which the test holds,
    after it analysed the other)."""
    if not kernel.can_swap_core_pattern() or shutil.which("prlimit") is None:
        pytest.skip("core_pattern cannot be set here, or no prlimit(1)")
    store = Store(tmp_path, 2)
    held = analysis_queue.claim(store.markers[0])  # the drain waits for it, in flock(2)
    assert held is not None
    cores = tempfile.mkdtemp(prefix="cdjob-cores-", dir="/tmp")
    try:
        with kernel.core_pattern(f"{cores}/core.%P"):
            job = subprocess.Popen(
                ["prlimit", "--core=unlimited", sys.executable, "-m", JOB, "--id", store.ids[0], "--config",
                 store.config_path, "--queued", store.markers[0]],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                cwd="/")
            drain = None
            try:
                deadline = time.monotonic() + 120
                while drain is None:
                    assert job.poll() is None and time.monotonic() < deadline
                    drain = next((child for child in _children(job.pid) if pathlib.Path(
                        f"/proc/{child}/syscall").read_text().startswith(FLOCK)), None)
                    time.sleep(0.05)
                os.kill(job.pid, signal.SIGSEGV)  # the lock's holder, waiting for the drain
                assert job.wait(30) == -signal.SIGSEGV
                os.kill(drain, signal.SIGSEGV)
                while pathlib.Path(f"/proc/{drain}").exists():
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            finally:
                job.kill()
                job.communicate()
        assert os.listdir(cores) == [], f"job {job.pid}, its drain {drain}"
    finally:
        os.close(held)
        store.close()
        shutil.rmtree(cores, ignore_errors=True)
