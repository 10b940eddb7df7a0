"""The end-of-run host check (tests/support/hostcheck.py) on states made up here,
and on the real host: two snapshots with nothing in between are equal."""

from __future__ import annotations

import os

from tests.support import hostcheck
from tests.support.hostcheck import HostState

SYSCTLS = {"kernel.core_pattern": "core", "kernel.core_pipe_limit": "0",
           "fs.suid_dumpable": "0"}
MINE = {"_CMDLINE": f"{hostcheck.REPO}/.venv/bin/python3 -m coredumpd.pipeline.analyze_job",
        "COREDUMP_PID": "7"}
OTHERS = {"_CMDLINE": "/elsewhere/.venv/bin/python3 -m coredumpd.pipeline.analyze_job",
          "COREDUMP_PID": "8"}
SYSTEMD = {"_CMDLINE": "/lib/systemd/systemd-coredump", "COREDUMP_PID": "9"}


def _state(journal=None, store=None, **sysctls) -> HostState:
    return HostState({**SYSCTLS, **sysctls}, dict(journal or {}), None, store)


def test_nothing_changed() -> None:
    before = _state({"c1": SYSTEMD})
    assert hostcheck.differences(before, _state({"c1": SYSTEMD})) == ([], [])


def test_each_kind_of_change_is_named() -> None:
    before = _state({"c1": SYSTEMD})
    after = _state({"c2": MINE, "c3": SYSTEMD}, {"files": ["index.sqlite"]},
                   **{"fs.suid_dumpable": "2"})
    changed, notes = hostcheck.differences(before, after)
    assert notes == []
    assert any("fs.suid_dumpable was '0', is now '2'" in line for line in changed)
    assert any("new coredump entry COREDUMP_PID=7" in line for line in changed)
    assert any("new coredump entry COREDUMP_PID=9" in line for line in changed)
    assert any("entry gone: COREDUMP_PID=9" in line for line in changed)
    assert any(line.startswith("/var/lib/coredumpd: was null") for line in changed)


def test_another_runs_entries_are_noted_not_counted(tmp_path) -> None:
    hostcheck.note_store(str(tmp_path / "store"))
    pytest_elsewhere = {"_CMDLINE": ".venv/bin/python -m pytest -q", "_PID": "1"}
    pytest_here = {**pytest_elsewhere, "_PID": str(os.getpid())}
    gone_writer = {"_CMDLINE": None, "COREDUMP_FILENAME": "/tmp/elsewhere/core.x.lz4"}
    our_store = {"_CMDLINE": None, "COREDUMP_FILENAME": f"{tmp_path}/store/core.x.lz4"}
    default_store = {"_CMDLINE": None, "COREDUMP_FILENAME": "/var/lib/coredumpd/core.x.lz4"}
    after = _state({"c4": OTHERS, "c5": pytest_elsewhere, "c6": gone_writer,
                    "c7": pytest_here, "c8": our_store, "c9": default_store, "c10": {}})
    changed, notes = hostcheck.differences(_state(), after)
    assert len(notes) == 3 and all("another run" in note for note in notes)
    assert len(changed) == 4  # ours, and what nobody can be shown to have written


def test_real_host_snapshots_agree() -> None:
    first = hostcheck.snapshot()
    second = hostcheck.snapshot()
    assert first.sysctls.keys() == set(hostcheck.SYSCTLS)
    assert first.store == second.store and first.sysctls == second.sysctls
