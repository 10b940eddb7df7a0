"""Our crashes in systemd's own coredumpctl; corectl unaffected by foreign entries.

systemd's coredumpctl comes from Debian's systemd-coredump package unpacked
with dpkg -x (tests/cli/systemd_tools.py), never installed: installing it
would rewrite kernel.core_pattern.  journald is the real daemon, a private
one (tests/support/journald.py): coredumpctl reads its files with -D.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time

import jsonschema
import pytest

from coredumpd.cli.corectl import ExitStatus, main
from coredumpd.report import schema
from tests.cli import systemd_tools
from tests.cli.conftest import SEGV, crash_table
from tests.support import journald

pytestmark = pytest.mark.kernel


def _session_journal() -> journald.PrivateJournal:
    journal = journald.session_journal()
    if journal is None:
        pytest.skip("no private systemd-journald (needs root, unshare, systemd-journald)")
    return journal


def _wait_for_coredumpctl(directory: str, pid: int) -> str:
    """coredumpctl info PID once journald has stored the entry: the analysed row says it
    was sent, journald may still be reading its queue.  (Entries lost with the row saying
    "sent" were those of a private journald that had exited idle: tests/support/journald.py.)"""
    deadline = time.monotonic() + 30
    result = systemd_tools.run_coredumpctl("-D", directory, "info", str(pid))
    while result.returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        result = systemd_tools.run_coredumpctl("-D", directory, "info", str(pid))
    if result.returncode != 0:  # what the journal holds, for the diagnosis
        journal = subprocess.run(["journalctl", "-D", directory, "-o", "json",
                                  f"COREDUMP_PID={pid}"], capture_output=True, text=True,
                                 check=False)
        files = sorted(os.listdir(directory)) if os.path.isdir(directory) else "no directory"
        try:
            alive: object = _session_journal().alive
        except RuntimeError as err:  # it exited: why
            alive = err
        raise AssertionError(f"{result.stderr}; journalctl -D: {journal.stdout[:2000]!r} "
                             f"{journal.stderr[:500]!r}; files {files}; journald alive: {alive}")
    return result.stdout


def test_our_crash_shows_in_systemd_coredumpctl(fresh_store, programs_dir) -> None:
    directory = _session_journal().directory  # fresh_store's entries go there
    systemd_tools.coredumpctl()  # download before taking the core_pattern lock
    from tests.support.crash import compile_c

    program = compile_c(SEGV, programs_dir, name="interop")
    row = fresh_store.crash([program], timeout=120)
    assert row["path_taken"]["journal"] == "sent", row["path_taken"]
    info = _wait_for_coredumpctl(directory, row["pid"])
    assert f"PID: {row['pid']} (interop)" in info
    assert "Signal: 11 (SEGV)" in info
    assert f"Executable: {program}" in info
    listing = systemd_tools.run_coredumpctl("-D", directory, "list", str(row["pid"]))
    assert listing.returncode == 0, listing.stderr
    line = listing.stdout.splitlines()[-1].split()
    assert str(row["pid"]) in line and "SIGSEGV" in line and program in line
    # systemd's coredumpctl reads our seekable lz4 (a standard frame + a skippable one)
    systemd_copy = os.path.join(programs_dir, "systemd-core")
    ours = os.path.join(programs_dir, "corectl-core")
    dumped = systemd_tools.run_coredumpctl("-D", directory, "dump", str(row["pid"]), "-o",
                                           systemd_copy)
    assert dumped.returncode == 0, dumped.stderr
    assert main(["--config", fresh_store.config_path, "dump", row["id"], "-o", ours],
                env={}) == ExitStatus.OK
    with open(systemd_copy, "rb") as theirs, open(ours, "rb") as mine:
        assert theirs.read() == mine.read()


def test_foreign_journal_entries_do_not_disturb_corectl(fresh_store, programs_dir,
                                                       private_journal, capsys) -> None:
    """systemd 252's coredumpctl aborts on an entry without COREDUMP_UID; corectl
    reads its own index, not the journal, so the same entry cannot reach it.  (In a
    journal of this test's own: no other test's coredumpctl may meet that entry.)"""
    from tests.support.crash import compile_c

    foreign_pid = 4_000_000 + os.getpid() % 100_000  # no such PID: only our entry has it
    # util-linux's logger sends the entry through libsystemd (sd_journal_sendv), not our code
    fields = (f"MESSAGE=Process {foreign_pid} (foreign) dumped core.\n"
              "MESSAGE_ID=fc2e22bc6ee647b6b90729ab34a250b1\nPRIORITY=2\n"
              f"COREDUMP_PID={foreign_pid}\nCOREDUMP_SIGNAL=11\nCOREDUMP_COMM=foreign\n")
    private_journal.run_as_default(["logger", "--journald"], input=fields, check=True)
    private_journal.wait_entry(f"COREDUMP_PID={foreign_pid}")
    row = fresh_store.crash([compile_c(SEGV, programs_dir, name="neighbour")], timeout=120)
    argv = ["--config", fresh_store.config_path, "--json", "list"]
    assert main(argv, env={}) == ExitStatus.OK
    entries = json.loads(capsys.readouterr().out)
    assert [e["pid"] for e in entries] == [row["pid"]]
    systemd = systemd_tools.run_coredumpctl("-D", private_journal.directory, "list",
                                            str(foreign_pid))
    # Recorded, not required: a later systemd may have fixed parse_uid().
    print("systemd coredumpctl on the foreign entry:", systemd.returncode, systemd.stderr)


def test_malformed_index_rows_do_not_stop_corectl(fresh_store, programs_dir, capsys) -> None:
    from tests.support.crash import compile_c

    row = fresh_store.crash([compile_c(SEGV, programs_dir, name="victim")], timeout=120)
    index_path = os.path.join(fresh_store.directory, "index.sqlite")
    with sqlite3.connect(index_path) as db:
        table = crash_table(db)
        db.execute(f"UPDATE {table} SET analysis = ?, facts = ?, root_cause = NULL, "
                   "core_state = 'bogus' WHERE id = ?", ("{broken", "[", row["id"]))
    config = ["--config", fresh_store.config_path]
    assert main([*config, "--json", "list"], env={}) == ExitStatus.OK
    entries = json.loads(capsys.readouterr().out)
    jsonschema.validate(entries, schema.LIST)
    assert entries[0]["core_state"] == "missing" and entries[0]["root_cause"] is None
    assert main([*config, "--json", "show", row["id"]], env={}) == ExitStatus.OK
    show = json.loads(capsys.readouterr().out)
    jsonschema.validate(show, schema.SHOW)
    assert any("not valid JSON" in problem for problem in show["problems"])
    assert main([*config, "--no-pager", "show", row["id"]], env={}) == ExitStatus.OK
    assert "index column analysis is not valid JSON" in capsys.readouterr().out

