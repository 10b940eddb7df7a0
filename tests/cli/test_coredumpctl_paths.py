"""systemd's coredumpctl reads the entry of every path through the handler.

Issue 13: coredumpctl 252 aborted ("Assertion 's' failed … parse_uid()") on an
entry the handler wrote without COREDUMP_UID.  Here one private journal
(tests/support/journald.py) takes an entry from each path — an ordinary
crash, missing arguments (ids from NT_PRPSINFO), neither arguments nor notes,
a truncated core, a rate-limited crash, Storage=none, a namespace's PID 1,
and journald killed and started again — and ``coredumpctl list``, ``info``
and ``dump`` run over each of them.  None may abort; each shows the right
PID; ``dump`` gives the stored core wherever one is stored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.cli import systemd_tools
from tests.cli.conftest import SEGV
from tests.pipeline import handler_support as S
from tests.support.crash import compile_c, registered_handler
from tests.support.kernel import core_pattern, raw_core_pattern

pytestmark = pytest.mark.kernel

MESSAGE_ID = "MESSAGE_ID=fc2e22bc6ee647b6b90729ab34a250b1"


def _raw_core(program: str, directory: str) -> tuple[str, int]:
    """A core of ``program`` as the kernel writes it, through a plain cat handler."""
    with core_pattern(raw_core_pattern(directory), 16):
        proc = subprocess.Popen([program], preexec_fn=_unlimited)  # noqa: PLW1509
        proc.wait(60)
    path = os.path.join(directory, f"core.{proc.pid}")
    size = -1
    for _ in range(300):  # the cat handler may still be writing after the reap
        if os.path.exists(path) and os.path.getsize(path) == size > 0:
            return path, proc.pid
        size = os.path.getsize(path) if os.path.exists(path) else -1
        time.sleep(0.1)
    raise AssertionError(f"no raw core at {path}")


def _unlimited() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)


def _by_hand(handler, core: str, args: list[str]) -> dict:
    """The handler run as the kernel would, with ``args``; the one row it indexed."""
    assert S.run_as_kernel(core, args, handler.config_path, timeout=60) == 0
    deadline = time.monotonic() + 60
    rows: list = []
    while time.monotonic() < deadline:
        if os.path.exists(handler.config.index_path):
            rows = [row for row in S.rows(handler) if row["analysis_state"] != "pending"]
            if rows:
                return rows[-1]
        time.sleep(0.1)
    raise AssertionError(f"no row in {handler.directory}: {rows}")


def _namespace_init(handler, program: str) -> dict:
    """``program`` as PID 1 of a new PID namespace; its row (not unshare's)."""
    outer = handler.crash(["/usr/bin/unshare", "-fp", "--mount-proc", program], timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        inits = [row for row in S.rows(handler)
                 if row["ns_pid"] == 1 and row["pid"] != outer["pid"]]
        if inits and inits[0]["analysis_state"] != "pending":
            return inits[0]
        time.sleep(0.1)
    raise AssertionError("no row of the namespace's PID 1")


def _not_aborted(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode >= 0 and result.returncode != 134, (
        f"coredumpctl {what} died: {result.returncode} {result.stderr}")
    assert "Assertion" not in result.stderr, result.stderr


def test_coredumpctl_reads_the_entry_of_every_path(private_journal, programs_dir, tmp_path):
    systemd_tools.coredumpctl()  # fetched before any core_pattern lock
    namespace = private_journal.namespace
    programs = {name: compile_c(source, programs_dir, name=name)
                for name, source in (("normal", SEGV), ("ratelimited", SEGV),
                                     ("nostorage", SEGV), ("init", SEGV),
                                     ("whiledown", SEGV), ("afterup", SEGV),
                                     ("big", S.BIG.replace("atol(argv[1])", "8")),
                                     ("noargs", SEGV))}
    raw, raw_pid = _raw_core(programs["noargs"], str(tmp_path))
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(50000))
    rows: dict[str, dict] = {}
    quick = {"journal_namespace": namespace, "analysis": False, "rate_limit_burst": 100}
    with registered_handler(tmp_path / "a", journal_namespace=namespace) as handler:
        rows["normal"] = handler.crash([programs["normal"]], timeout=120)
    with registered_handler(tmp_path / "b", **quick) as handler:
        rows["missing arguments"] = _by_hand(handler, raw, [])
    with registered_handler(tmp_path / "c", **quick) as handler:
        rows["no ids at all"] = _by_hand(handler, str(garbage), [])
    with registered_handler(tmp_path / "d", **{**quick, "external_size_max": "1M"}) as handler:
        rows["truncated"] = handler.crash([programs["big"]])
    with registered_handler(tmp_path / "e", **{**quick, "rate_limit_burst": 1}) as handler:
        handler.crash([programs["ratelimited"]])
        rows["rate-limited"] = handler.crash([programs["ratelimited"]])
    with registered_handler(tmp_path / "f", **{**quick, "storage": "none"}) as handler:
        rows["Storage=none"] = handler.crash([programs["nostorage"]])
    with registered_handler(tmp_path / "g", **quick) as handler:
        rows["PID 1"] = _namespace_init(handler, programs["init"])
        private_journal.stop(signal.SIGKILL)  # journald crashes
        rows["journald down"] = handler.crash([programs["whiledown"]])
        private_journal.start()
        rows["journald back"] = handler.crash([programs["afterup"]])

    assert rows["missing arguments"]["pid"] == raw_pid  # NT_PRPSINFO's pr_pid
    assert rows["truncated"]["core_state"] == "truncated"
    assert rows["rate-limited"]["core_state"] == rows["Storage=none"]["core_state"] == "none"
    assert rows["PID 1"]["ns_pid"] == 1
    down = rows.pop("journald down")  # stored all the same, and said so in the kernel log
    assert down["core_state"] == "present" and os.path.exists(down["core_path"])
    assert down["path_taken"]["journal"].startswith("unreachable")
    assert down["path_taken"]["kmsg"] == "written"
    unlisted = rows.pop("no ids at all")  # journaled, but not as a coredump entry
    entry = private_journal.wait_entry(f"COREDUMP_ID={unlisted['id']}")
    assert "MESSAGE_ID" not in entry and "None" not in entry["MESSAGE"]

    directory = private_journal.directory
    for row in rows.values():
        private_journal.wait_entry(MESSAGE_ID, f"COREDUMP_ID={row['id']}")
    listing = systemd_tools.run_coredumpctl("-D", directory, "list")
    _not_aborted(listing, "list")
    assert listing.returncode == 0, listing.stderr
    listed = {line.split()[4] for line in listing.stdout.splitlines()[1:] if line.strip()}
    assert {str(row["pid"]) for row in rows.values()} <= listed, listing.stdout
    assert str(down["pid"]) not in listed
    for what, row in rows.items():
        _check_one(directory, what, row, tmp_path)


def _check_one(directory: str, what: str, row: dict, tmp_path) -> None:
    pid = str(row["pid"])
    listing = systemd_tools.run_coredumpctl("-D", directory, "list", pid)
    _not_aborted(listing, f"list {pid} ({what})")
    assert listing.returncode == 0 and pid in listing.stdout, (what, listing)
    info = systemd_tools.run_coredumpctl("-D", directory, "info", pid)
    _not_aborted(info, f"info {pid} ({what})")
    assert info.returncode == 0, (what, info.stderr)
    assert f"PID: {pid} (" in info.stdout, (what, info.stdout)
    dumped = tmp_path / f"dump-{pid}"
    dump = systemd_tools.run_coredumpctl("-D", directory, "dump", pid, "-o", str(dumped))
    _not_aborted(dump, f"dump {pid} ({what})")
    if not row["core_path"]:  # nothing stored: coredumpctl says so, as for systemd's own
        assert dump.returncode != 0 and "no core" in dump.stderr, (what, dump.stderr)
        return
    assert dump.returncode == 0, (what, dump.stderr)
    stored = subprocess.run(["lz4", "-d", "-c", row["core_path"]], capture_output=True,
                            check=True).stdout
    assert dumped.read_bytes() == stored, what
