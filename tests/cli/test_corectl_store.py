"""corectl on a store filled by real crashes: list, show, dump, debug, analyze."""

from __future__ import annotations

import json
import os
import pathlib
import pty
import subprocess
import sys

import jsonschema
import pytest

from coredumpd.cli.corectl import ExitStatus, main
from coredumpd.report import schema
from tests.cli.conftest import HOSTILE_NAME, CrashStore, crash_table, environment

pytestmark = pytest.mark.kernel
CORECTL = [sys.executable, "-m", "coredumpd.cli.corectl"]


def run(store: CrashStore, capsys: pytest.CaptureFixture[str], *args: str,
        env: dict[str, str] | None = None) -> tuple[int, str, str]:
    status = main(store.argv(*args), env=env or environment())
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def list_json(store: CrashStore, capsys: pytest.CaptureFixture[str], *args: str) -> list:
    status, out, _err = run(store, capsys, "--json", "list", *args)
    assert status == ExitStatus.OK
    return json.loads(out)


def test_list_json_follows_the_schema(crash_store: CrashStore,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    entries = list_json(crash_store, capsys)
    jsonschema.validate(entries, schema.LIST)
    by_pid = {e["pid"]: e for e in entries}
    for row in crash_store.rows.values():
        entry = by_pid[row["pid"]]
        assert entry["id"] == row["id"] and entry["uid"] == 0
        assert entry["core_state"] == "present"
    assert by_pid[crash_store.rows["abort"]["pid"]]["signal_name"] == "SIGABRT"
    assert by_pid[crash_store.rows["segv"]["pid"]]["signal_name"] == "SIGSEGV"
    stamps = [e["timestamp_us"] for e in entries]
    assert stamps == sorted(stamps)  # newest last


def test_list_text(crash_store: CrashStore, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(crash_store, capsys, "list")
    assert status == ExitStatus.OK and err == ""
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["TIME", "PID", "UID", "SIG", "COREFILE"]
    assert "\x1b" not in out  # piped: no colours, hostile name escaped
    assert "evil\\x1b[31mred" in out
    segv = next(line for line in lines if f" {crash_store.rows['segv']['pid']} " in line)
    assert " SEGV " in segv and " present " in segv and segv.rstrip().endswith(
        crash_store.rows["segv"]["root_cause"] or "-")


def test_list_selection(crash_store: CrashStore, capsys: pytest.CaptureFixture[str]) -> None:
    every = list_json(crash_store, capsys)
    assert list_json(crash_store, capsys, "-1") == every[-1:]
    assert list_json(crash_store, capsys, "-n", "2") == every[-2:]
    assert list_json(crash_store, capsys, "-r") == every[::-1]
    segv = crash_store.rows["segv"]
    assert [e["id"] for e in list_json(crash_store, capsys, str(segv["pid"]))] == [segv["id"]]
    assert [e["id"] for e in list_json(crash_store, capsys, segv["id"])] == [segv["id"]]
    assert [e["id"] for e in list_json(crash_store, capsys, "aborter")] == [
        crash_store.rows["abort"]["id"]]
    assert [e["id"] for e in list_json(crash_store, capsys, segv["exe"])] == [segv["id"]]
    assert {e["id"] for e in list_json(crash_store, capsys, "signal=6")} == {
        crash_store.rows["abort"]["id"]}
    _status, out, _ = run(crash_store, capsys, "--no-legend", "list")
    assert not out.startswith("TIME") and len(out.splitlines()) == len(every)


def test_list_nothing_matched(crash_store: CrashStore,
                              capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["no-such-comm"], ["--since", "tomorrow"], ["--until", "@1"]):
        status, out, err = run(crash_store, capsys, "list", *args)
        assert (status, out, err) == (ExitStatus.NO_MATCH, "", "No coredumps found.\n")


def test_show_json_follows_the_schema(crash_store: CrashStore,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    row = crash_store.rows["segv"]
    status, out, _ = run(crash_store, capsys, "--json", "show", str(row["pid"]))
    assert status == ExitStatus.OK
    show = json.loads(out)
    jsonschema.validate(show, schema.SHOW)
    assert show["id"] == row["id"] and show["signal_name"] == "SIGSEGV"
    assert show["core"]["state"] == "present" and show["core"]["size"] > 0
    assert show["analysis"]["state"] in ("done", "failed")
    if show["analysis"]["state"] == "done":
        crashed = [t for t in show["threads"] if t["crashed"]]
        assert crashed and crashed[0]["frames"][0]["symbol"] == "main"


def test_show_text_puts_the_root_cause_first(crash_store: CrashStore,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    row = crash_store.rows["segv"]
    status, out, _ = run(crash_store, capsys, "info", str(row["pid"]))
    assert status == ExitStatus.OK
    assert out.startswith("Root cause")
    assert f"PID: {row['pid']} (segv)" in out and "Signal: 11 (SIGSEGV)" in out
    assert "UID: 0 (root)" in out and "Thread " in out


def test_show_escapes_the_hostile_name(crash_store: CrashStore,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    row = crash_store.rows["hostile"]
    status, out, _ = run(crash_store, capsys, "show", row["id"])
    assert status == ExitStatus.OK
    assert "\x1b" not in out and "evil\\x1b[31mred" in out
    assert HOSTILE_NAME in json.loads(run(crash_store, capsys, "--json", "show",
                                          row["id"])[1])["exe"]


def test_dump_gives_the_bytes_lz4_gives(crash_store: CrashStore, tmp_path: pathlib.Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    row = crash_store.rows["abort"]
    target = tmp_path / "core"
    status, out, err = run(crash_store, capsys, "dump", row["id"], "-o", str(target))
    assert (status, out, err) == (ExitStatus.OK, "", "")
    reference = subprocess.run(["lz4", "-d", "-c", row["core_path"]], capture_output=True,
                               check=True).stdout
    data = target.read_bytes()
    assert data[:4] == b"\x7fELF" and data == reference and len(data) == row["core_size"]
    assert os.stat(target).st_mode & 0o777 == 0o600
    piped = subprocess.run([*CORECTL, *crash_store.argv("dump", row["id"])],
                           capture_output=True, check=True)
    assert piped.stdout == reference


def test_dump_refuses_a_terminal(crash_store: CrashStore,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    controller, terminal = pty.openpty()
    try:
        status, _out, err = run(crash_store, capsys, "dump", "-o", os.ttyname(terminal))
        assert status == ExitStatus.ERROR and "refusing to write a core to a terminal" in err
        child = subprocess.run([*CORECTL, *crash_store.argv("dump")], stdout=terminal,
                               stderr=subprocess.PIPE, text=True, check=False)
        assert child.returncode == ExitStatus.ERROR
        assert "refusing to write a core to a terminal" in child.stderr
    finally:
        os.close(controller)
        os.close(terminal)


def test_debug_runs_gdb_and_cleans_up(crash_store: CrashStore, tmp_path: pathlib.Path,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    row = crash_store.rows["abort"]
    env = environment(COREDUMPD_DEBUGGER="gdb -nx -batch -ex bt", TMPDIR=str(tmp_path))
    status = main(crash_store.argv("debug", row["id"]), env=env)
    out = capfd.readouterr().out
    assert status == 0
    assert "abort" in out and "die" in out and "main" in out  # gdb's own backtrace
    assert list(tmp_path.iterdir()) == []  # the decompressed core is gone


def test_analyze_raw_and_stored_cores(crash_store: CrashStore, tmp_path: pathlib.Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    row = crash_store.rows["abort"]
    raw = tmp_path / "core"
    assert main(crash_store.argv("dump", row["id"], "-o", str(raw)), env={}) == 0
    results = []
    for core in (str(raw), row["core_path"]):
        status = main(["--json", "analyze", core, "--exe", row["exe"]], env={})
        out = capsys.readouterr().out
        assert status == ExitStatus.OK
        show = json.loads(out)
        jsonschema.validate(show, schema.SHOW)
        assert show["signal_name"] == "SIGABRT" and show["exe"] == row["exe"]
        results.append([f["symbol"] for t in show["threads"] for f in t["frames"]])
    assert results[0] == results[1] and "die" in results[0]
    status = main(["analyze", str(raw)], env={})
    assert status == ExitStatus.OK and "Root cause" in capsys.readouterr().out


def test_closed_pipe_ends_quietly(crash_store: CrashStore) -> None:
    reader, writer = os.pipe()
    os.close(reader)  # the reader has gone before corectl writes anything
    child = subprocess.run([*CORECTL, *crash_store.argv("show")], stdout=writer,
                           stderr=subprocess.PIPE, text=True, check=False)
    os.close(writer)
    assert child.returncode == 0 and child.stderr == ""


def test_delete_and_vacuum(fresh_store, programs_dir: str, tmp_path: pathlib.Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    from tests.cli.conftest import SEGV
    from tests.support.crash import compile_c

    program = compile_c(SEGV, programs_dir, name="doomed")
    first, second = (fresh_store.crash([program], timeout=120) for _ in range(2))
    config = ["--config", fresh_store.config_path]
    assert main([*config, "delete", first["id"]], env={}) == ExitStatus.OK
    assert capsys.readouterr().out == f"Deleted {first['id']}\n"
    assert not os.path.exists(first["core_path"])
    assert main([*config, "--json", "list"], env={}) == ExitStatus.OK
    assert [e["id"] for e in json.loads(capsys.readouterr().out)] == [second["id"]]
    assert main([*config, "delete", first["id"]], env={}) == ExitStatus.NO_MATCH
    capsys.readouterr()

    assert main([*config, "vacuum", "--older-than", "0s"], env={}) == ExitStatus.OK
    capsys.readouterr()
    assert not os.path.exists(second["core_path"])
    assert main([*config, "--json", "list"], env={}) == ExitStatus.OK
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["id"] == second["id"] and entry["core_state"] == "missing"  # the row stays
    assert main([*config, "dump", "-o", str(tmp_path / "x")], env={}) == ExitStatus.NO_CORE
    assert "has no stored core" in capsys.readouterr().err


def test_other_users_see_only_their_own_crashes(crash_store: CrashStore,
                                                programs_dir: str) -> None:
    """Run corectl as nobody on a readable copy of the index with one row of nobody's."""
    import shutil
    import sqlite3

    nobody = 65534
    base = pathlib.Path(programs_dir)  # 0755: reachable by nobody, unlike tmp_path
    store = base / "store"
    store.mkdir()
    for name in os.listdir(crash_store.directory):
        if name.startswith("index.sqlite"):
            shutil.copy(os.path.join(crash_store.directory, name), store / name)
    mine = crash_store.rows["abort"]["id"]
    with sqlite3.connect(store / "index.sqlite") as db:
        db.execute(f"UPDATE {crash_table(db)} SET uid = ? WHERE id = ?", (nobody, mine))
    os.chown(store, nobody, nobody)
    for path in store.iterdir():
        os.chown(path, nobody, nobody)
    config = base / "c.conf"
    config.write_text(f"[Coredump]\nDirectory={store}\n")
    as_nobody = ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups"]
    result = subprocess.run([*as_nobody, *CORECTL, "--config", str(config), "--json", "list"],
                            capture_output=True, text=True, check=False,
                            env=environment(PYTHONPATH=str(pathlib.Path(__file__).parents[2])))
    assert result.returncode == 0, result.stderr
    assert [e["id"] for e in json.loads(result.stdout)] == [mine]
    # The index root's, and no view of this user (coredumpd.store.userview): nothing of
    # theirs is stored, which is what they are told, without a traceback.
    os.chown(store / "index.sqlite", 0, 0)
    os.chmod(store / "index.sqlite", 0o600)
    result = subprocess.run([*as_nobody, *CORECTL, "--config", str(config), "list"],
                            capture_output=True, text=True, check=False,
                            env=environment(PYTHONPATH=str(pathlib.Path(__file__).parents[2])))
    assert result.returncode == ExitStatus.NO_MATCH
    assert result.stderr == "No coredumps found.\n"


def test_ctrl_c_exits_130_without_a_traceback(crash_store: CrashStore,
                                               tmp_path: pathlib.Path) -> None:
    import signal
    import time

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for writing blocks until a reader comes: a sure wait
    # A suite started as a background job (``./test.sh &``) inherits SIGINT ignored,
    # and execve keeps an ignored signal ignored (signal(7)): Python in the child would
    # install no KeyboardInterrupt handler and the SIGINT below would do nothing.  A
    # caught signal goes back to the default at execve, so with a handler here the
    # child starts as from a terminal, whatever started the suite.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        child = subprocess.Popen([*CORECTL, *crash_store.argv("dump", "-o", str(fifo))],
                                 stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until corectl sits in open() of the fifo
        try:
            if _blocked_opening_fifo(child.pid):
                break
        except OSError:
            pass
        time.sleep(0.05)
    else:
        child.kill()
        pytest.fail("corectl never blocked opening the fifo")
    child.send_signal(signal.SIGINT)
    _out, err = child.communicate(timeout=60)
    assert child.returncode == ExitStatus.INTERRUPTED
    assert "Traceback" not in err


def _blocked_opening_fifo(pid: int) -> bool:
    """In openat(2) (257 on x86-64), asleep in fs/pipe.c wait_for_partner()."""
    with open(f"/proc/{pid}/syscall") as syscall, open(f"/proc/{pid}/wchan") as wchan:
        return syscall.read().startswith("257 ") and wchan.read() == "wait_for_partner"
