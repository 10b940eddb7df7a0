"""Dump-time facts from /proc: a live process with a hostile name, and a fake procfs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from coredumpd.ingest import procfs

HOSTILE = "we ird\nna\x1bme"


@pytest.fixture
def hostile_process(tmp_path):
    """A sleeping copy of /bin/sleep under a name with a space, a newline and ESC."""
    directory = tmp_path / "dir with space"
    directory.mkdir()
    exe = directory / HOSTILE
    shutil.copy("/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "30"], cwd=directory, env={"SECRET": "x y"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/maps") as handle:
            if HOSTILE.split("\n")[0] in handle.read():
                break
        time.sleep(0.01)
    try:
        yield proc, exe
    finally:
        proc.kill()
        proc.wait()


def test_live_process_with_hostile_names(hostile_process):
    proc, exe = hostile_process
    missing: dict[str, str] = {}
    facts = procfs.collect_process(proc.pid, missing)
    assert missing == {}
    assert facts["exe"] == str(exe)
    assert facts["comm"] == HOSTILE[:15]
    assert facts["cmdline"] == [str(exe), "30"]
    assert facts["cwd"] == str(exe.parent)
    assert facts["environ"] == ["SECRET=x y"]
    assert facts["status"]["NSpid"] == [proc.pid]
    mapped = [m for m in facts["maps"] if m["path"] == str(exe)]
    assert mapped and mapped[0]["inode"] == os.stat(exe).st_ino and not mapped[0]["deleted"]
    files = facts["files"][str(exe)]
    assert files["now"]["inode"] == files["mapped"]["inode"] == os.stat(exe).st_ino
    assert facts["limits"]["Max core file size"][2] == "bytes"
    assert facts["namespaces"]["pid"]["same_as_init"] in (True, False)
    assert facts["start_time_us"] <= time.time_ns() // 1000
    json.dumps(facts)  # surrogate-escaped text must still serialise


def test_deleted_executable_is_marked(hostile_process):
    proc, exe = hostile_process
    os.unlink(exe)
    facts = procfs.collect_process(proc.pid, {})
    mapped = [m for m in facts["maps"] if m["path"] == str(exe)]
    assert mapped and all(m["deleted"] for m in mapped)
    assert facts["files"][str(exe)]["now"] == {"error": "ENOENT"}
    assert "inode" in facts["files"][str(exe)]["mapped"]


def test_missing_items_degrade_with_reasons(tmp_path):
    fake = tmp_path / "proc"
    (fake / "77").mkdir(parents=True)
    (fake / "77" / "comm").write_text("fake\n")
    (fake / "77" / "stat").write_text("77 (a) b) c) S " + " ".join(["1"] * 30) + "\n")
    (fake / "77" / "maps").write_text(
        "00400000-00401000 r-xp 00000000 fe:01 123 /bin/with space (deleted)\n"
        "7ffd0000-7ffd1000 rw-p 00000000 00:00 0 [stack]\n")
    procfs.set_procfs_path(str(fake))
    try:
        missing: dict[str, str] = {}
        facts = procfs.collect_process(77, missing)
    finally:
        procfs.set_procfs_path("/proc")
    assert facts["comm"] == "fake"
    assert facts["start_time_ticks"] == 1  # comm with ')' parsed from the last ')'
    assert facts["maps"][0]["path"] == "/bin/with space" and facts["maps"][0]["deleted"]
    assert facts["maps"][1]["path"] == "[stack]" and not facts["maps"][1]["deleted"]
    assert missing["proc.exe"] == "ENOENT" and missing["proc.status"] == "ENOENT"
    assert facts["exe"] is None


def test_unit_from_cgroup():
    assert procfs.unit_from_cgroup("0::/system.slice/nginx.service") == {
        "unit": "nginx.service", "user_unit": None, "slice": "system.slice"}
    assert procfs.unit_from_cgroup("0::/init.scope")["unit"] == "init.scope"
    user = procfs.unit_from_cgroup(
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service")
    assert user["unit"] == "user@1000.service" and user["user_unit"] == "foo.service"


def test_sender_and_pidfd(hostile_process):
    proc, _exe = hostile_process
    sender = procfs.collect_sender(proc.pid, {})
    assert sender["pid"] == proc.pid and sender["comm"] == HOSTILE[:15]
    pidfd = os.pidfd_open(proc.pid)
    try:
        assert procfs.pidfd_pid(pidfd) == proc.pid
    finally:
        os.close(pidfd)
