"""A configuration typo never loses a crash (issue 9).

``coredumpd install`` refuses a file it cannot read (tests/pipeline/test_install.py),
so a bad value reaches the handler only through an edit after install: that is
what this test does, through the real kernel and the installed launcher.  The
value keeps its default, the row and /dev/kmsg say so, and the core is stored.
"""

from __future__ import annotations

import os
import pathlib
import resource
import shutil
import subprocess
import tempfile
import time

import pytest

from coredumpd.store.index import Index
from tests.hardening.storm import verify_core
from tests.support.crash import compile_c, installed, write_config

pytestmark = pytest.mark.kernel


def _kmsg_at_end() -> int:
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(fd, 0, os.SEEK_END)
    return fd


def _kmsg_lines(fd: int) -> list[str]:
    """The records written since :func:`_kmsg_at_end` (one per read, printk's format)."""
    lines = []
    while True:
        try:
            record = os.read(fd, 8192)
        except BlockingIOError:
            return lines
        except BrokenPipeError:  # overwritten while we read: go on with the next
            continue
        lines.append(record.decode("utf-8", "replace").split(";", 1)[-1])


def _wait_row(index_path: str, pid: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(index_path):
            with Index(index_path) as index:
                rows = [record.to_json() for record in index.find([str(pid)])]
            if rows and rows[-1]["analysis_state"] != "pending":
                return rows[-1]
        time.sleep(0.1)
    raise TimeoutError(f"no analysed row for pid {pid}")


def test_typo_after_install_keeps_the_default_and_stores_the_core(tmp_path):
    store = tmp_path / "store"
    short = pathlib.Path(tempfile.mkdtemp(prefix="cdc", dir="/tmp"))  # 127-byte pattern
    config = short / "c.conf"
    write_config(config, str(store))  # [Coredump], Directory=, the private journal: 3 lines
    assert len(config.read_text().splitlines()) == 3
    program = compile_c("int main(void) { *(volatile int *)0 = 1; return 0; }", tmp_path)
    kmsg = _kmsg_at_end()
    try:
        with installed(str(config)):
            with config.open("a") as handle:  # the administrator's edit, after install
                handle.write("RateLimitBurst=abc\n")
            crasher = subprocess.run(
                [program], check=False, preexec_fn=lambda: resource.setrlimit(
                    resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)))
        assert crasher.returncode == -11
        pid = _find_pid(store, program)
        row = _wait_row(os.path.join(store, "index.sqlite"), pid)
        lines = _kmsg_lines(kmsg)
    finally:
        os.close(kmsg)
        shutil.rmtree(short, ignore_errors=True)
    complaint = (f"{config} line 4: RateLimitBurst=abc: invalid number 'abc' (expected a whole"
                 " number, e.g. 10); the default RateLimitBurst=10 is used")
    assert row["core_state"] == "present" and verify_core(row) is None
    assert f"configuration: {complaint}" in row["facts"]["problems"]
    assert row["analysis_state"] == "done"
    ours = [line for line in lines if f"Process {pid} " in line]
    assert any(complaint in line and f"index row {row['id']}" in line for line in ours), ours


def _find_pid(store: pathlib.Path, program: str) -> int:
    """The crash's PID, from the index (subprocess.run does not say it)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (store / "index.sqlite").exists():
            with Index(str(store / "index.sqlite")) as index:
                rows = list(index.find([program]))
            if rows:
                return int(rows[-1].pid)
        time.sleep(0.1)
    raise TimeoutError(f"no row for {program}")
