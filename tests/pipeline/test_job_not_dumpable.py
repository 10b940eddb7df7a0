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


def test_a_crashed_analysis_job_leaves_no_core(tmp_path: pathlib.Path) -> None:
    if not kernel.can_swap_core_pattern() or shutil.which("prlimit") is None:
        pytest.skip("core_pattern cannot be set here, or no prlimit(1)")
    store = Store(tmp_path, 1)
    held = analysis_queue.claim(store.markers[0])  # the job waits for it, in flock(2)
    assert held is not None
    cores = tempfile.mkdtemp(prefix="cdjob-cores-", dir="/tmp")
    try:
        with kernel.core_pattern(f"{cores}/core.%P"):
            job = subprocess.Popen(
                ["prlimit", "--core=unlimited", sys.executable, "-m", JOB, "--id", store.ids[0], "--config",
                 store.config_path, "--queued", store.markers[0]],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                cwd="/")
            try:
                deadline = time.monotonic() + 120
                while not pathlib.Path(f"/proc/{job.pid}/syscall").read_text().startswith(
                        FLOCK):
                    assert job.poll() is None and time.monotonic() < deadline
                    time.sleep(0.05)
                os.kill(job.pid, signal.SIGSEGV)
                assert job.wait(30) == -signal.SIGSEGV
            finally:
                job.kill()
                job.communicate()
        assert os.listdir(cores) == [], f"job {job.pid}"
    finally:
        os.close(held)
        store.close()
        shutil.rmtree(cores, ignore_errors=True)
