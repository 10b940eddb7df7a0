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


def _checkout(path) -> str:
    """A directory that looks like another coredumpd checkout."""
    (path / "tests" / "support").mkdir(parents=True)
    (path / "tests" / "support" / "hostcheck.py").write_text("")
    return str(path)


def test_crashes_in_another_checkout_are_noted_whoever_stored_them(tmp_path) -> None:
    """The machine's coredumpd (installed from this checkout: its _CMDLINE names us)
    stored a crash of another checkout's test run: not this run's change."""
    other = _checkout(tmp_path / "wt-other")
    server = {"_CMDLINE": f"{hostcheck.REPO}/.venv/bin/python3 -m coredumpd.pipeline.main",
              "COREDUMP_PID": "10"}
    by_cwd = {**server, "COREDUMP_CWD": other}
    by_pwd = {**server, "COREDUMP_CWD": "/", "COREDUMP_ENVIRON": f"HOME=/root\nPWD={other}"}
    here = {**server, "COREDUMP_CWD": hostcheck.REPO,
            "COREDUMP_ENVIRON": f"PWD={hostcheck.REPO}"}
    not_a_checkout = {**server, "COREDUMP_CWD": str(tmp_path)}
    changed, notes = hostcheck.differences(_state(), _state(
        {"c1": by_cwd, "c2": by_pwd, "c3": here, "c4": not_a_checkout}))
    assert len(notes) == 2 and all(other in note for note in notes)
    assert len(changed) == 2


def test_store_rows_of_another_checkout_are_noted(tmp_path) -> None:
    other = _checkout(tmp_path / "wt-other")
    before = {"files": ["index.sqlite", "saved-sysctl"], "rows": {"crashes": [["a", 1]]},
              "others": {}}
    theirs = {"files": [*before["files"], "core.x.lz4"],
              "rows": {"crashes": [["a", 1], ["b", 2]]}, "others": {"b": [other, "core.x.lz4"]}}
    changed, notes = hostcheck.differences(_state(store=before), _state(store=theirs))
    assert changed == [] and len(notes) == 1 and "new row b (pid 2)" in notes[0]
    analysed = {**theirs, "files": [*theirs["files"], "cache", "cache/1234.mod"]}
    assert hostcheck.differences(_state(store=before), _state(store=analysed))[0] == []
    cache_only = {**before, "files": [*before["files"], "cache", "cache/1234.mod"]}
    assert len(hostcheck.differences(_state(store=before), _state(store=cache_only))[0]) == 1
    ours = {**theirs, "rows": {"crashes": [["a", 1], ["b", 2], ["c", 3]]}}
    stray_file = {**theirs, "files": [*theirs["files"], "core.y.lz4"]}
    row_gone = {**theirs, "rows": {"crashes": [["b", 2]]}}
    for after in (ours, stray_file, row_gone):
        changed, notes = hostcheck.differences(_state(store=before), _state(store=after))
        assert len(changed) == 1 and changed[0].startswith("/var/lib/coredumpd: was"), after


def test_real_host_snapshots_agree() -> None:
    first = hostcheck.snapshot()
    second = hostcheck.snapshot()
    assert first.sysctls.keys() == set(hostcheck.SYSCTLS)
    assert first.store == second.store and first.sysctls == second.sysctls
