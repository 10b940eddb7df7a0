"""RLIMIT_CORE 0 through both front doors: a row and a journal entry, no core.

The kernel ignores RLIMIT_CORE for pipe and socket patterns: it is coredumpd that
honours it, as systemd-coredump does ("Resource limits disable core dumping"):
the crash is recorded, its core is not kept.  The pipe handler gets the limit as
``%c`` and still has to read the dump; the socket server reads it from /proc
while the kernel waits and rejects the dump before a byte is written.  Private
store and private journald (never the machine's).
"""

from __future__ import annotations

import os
import resource
import subprocess

import pytest

from coredumpd.ingest import coredump_socket
from tests.cli import systemd_tools
from tests.pipeline.test_serve import serving
from tests.support.crash import compile_c, registered_handler

pytestmark = pytest.mark.kernel

TINY = "int main(void){ *(volatile int *)0 = 1; }"
MESSAGE_ID = "MESSAGE_ID=fc2e22bc6ee647b6b90729ab34a250b1"


def _no_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _crash_without_core(exe: str) -> int:
    proc = subprocess.Popen([exe], stdout=subprocess.DEVNULL, preexec_fn=_no_core)  # noqa: PLW1509
    assert proc.wait(60) == -11
    return proc.pid


@pytest.mark.parametrize("door", ["pipe", "socket"])
def test_rlimit_core_zero_gives_a_row_and_an_entry_without_a_core(tmp_path, private_journal,
                                                                  door):
    if door == "socket" and not coredump_socket.kernel_supports_socket():
        pytest.skip("no coredump socket before Linux 6.16")
    systemd_tools.coredumpctl()  # fetched before any core_pattern lock
    exe = compile_c(TINY, tmp_path, name=f"nocore{door}")
    config = {"analysis": False, "journal_namespace": private_journal.namespace}
    if door == "pipe":
        with registered_handler(tmp_path, **config) as handler:
            row = handler.crash([exe], rlimit_core=0, wait_analysis=False)
    else:
        with serving(tmp_path, **config) as (handler, _supervisor):
            row = handler.wait_row(_crash_without_core(exe), wait_analysis=False)
        assert row["facts"]["decision"] == "reject"  # no dump was written at all
    assert row["facts"]["front_door"] == door
    assert row["rlimit_core"] == 0 and row["signal"] == 11
    assert row["core_state"] == "none" and not row["core_path"]
    assert row["core_reason"].startswith("resource limits disable core dumping")
    assert not [name for name in os.listdir(handler.directory) if name.startswith("core.")]
    entry = private_journal.wait_entry(MESSAGE_ID, f"COREDUMP_ID={row['id']}")
    assert entry["COREDUMP_RLIMIT"] == "0" and entry["COREDUMP_PID"] == str(row["pid"])
    assert "COREDUMP_FILENAME" not in entry
    info = systemd_tools.run_coredumpctl("-D", private_journal.directory, "info",
                                         str(row["pid"]))
    assert info.returncode == 0, info.stderr
    assert "Storage: none" in info.stdout, info.stdout
