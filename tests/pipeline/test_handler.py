"""The handler end to end: the real kernel pipe, real programs, a real (private) journald.

Raw cores are captured with a plain ``cat`` handler, then fed to ``coredumpd``
exactly as the kernel would (stdin, argv, fds 1/2 closed, empty environment),
so the stored file can be compared with the bytes the kernel produced.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time

import pytest

from coredumpd.store.lz4seek import SeekableLz4Reader
from tests.pipeline import handler_support as S
from tests.support import journald
from tests.support.crash import compile_c, registered_handler
from tests.support.kernel import core_pattern, raw_core_pattern


def _raw_core(tmp_path, source, argv_tail=(), name="prog"):
    """Crash ``source`` under a plain cat handler; (raw core path, program path)."""
    exe = compile_c(source, tmp_path, name=name)
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    with core_pattern(raw_core_pattern(str(raw_dir)), 16):
        proc = subprocess.Popen([exe, *argv_tail], preexec_fn=_unlimited)  # noqa: PLW1509
        proc.wait(120)
    path = raw_dir / f"core.{proc.pid}"
    size = -1
    for _ in range(600):  # the cat handler may still be writing after the reap
        if path.exists() and path.stat().st_size == size and size > 0:
            break
        size = path.stat().st_size if path.exists() else -1
        time.sleep(0.1)
    return path, exe


def _unlimited():
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)


def _assert_same_bytes(stored, raw):
    restored = subprocess.run(["lz4", "-d", "-c", str(stored)], capture_output=True, check=True)
    with open(raw, "rb") as handle:
        data = handle.read()
    assert restored.stdout == data
    rng = random.Random(7)
    with SeekableLz4Reader(str(stored)) as reader:
        assert reader.size == len(data) and reader.truncated is None
        for _ in range(200):
            offset = rng.randrange(len(data))
            size = rng.choice((1, 17, 4096, 1 << 20, 3 << 20))
            assert reader.pread(offset, size) == data[offset:offset + size]


@pytest.mark.kernel
@pytest.mark.parametrize("kind", ["threads", pytest.param("big", marks=pytest.mark.slow)])
def test_stored_core_equals_raw_core(tmp_path, kind):
    source, tail = (S.SEGV_THREADS, ()) if kind == "threads" else (S.BIG, ("300",))
    raw, _exe = _raw_core(tmp_path, source, tail)
    stand_in = S.stand_in(tmp_path)
    try:
        with registered_handler(tmp_path, rate_limit_burst=1000) as handler:
            status = S.run_as_kernel(raw, S.kernel_args(stand_in.pid), handler.config_path)
            row = handler.wait_row(stand_in.pid, timeout=300)
            dumped = tmp_path / "dumped"  # corectl dump gives the raw bytes back too
            corectl = os.path.join(os.path.dirname(S.HANDLER), "corectl")
            subprocess.run([corectl, "--config", handler.config_path, "dump", row["id"], "-o",
                            str(dumped)], check=True, capture_output=True)
    finally:
        stand_in.kill()
        stand_in.wait()
    assert status == 0
    assert row["core_state"] == "present" and not row["core_reason"]
    assert row["core_size"] == raw.stat().st_size
    assert os.path.basename(row["core_path"]).startswith(f"core.stand-in.0.{row['boot_id']}.")
    assert os.stat(row["core_path"]).st_mode & 0o777 == 0o640
    _assert_same_bytes(row["core_path"], raw)
    assert dumped.read_bytes() == raw.read_bytes()
    facts = row["facts"]
    if kind == "threads":
        assert len(facts["stream"]["threads"]) == 4
    assert facts["proc"]["comm"] == "stand-in"


@pytest.mark.kernel
@pytest.mark.parametrize("signal_name", sorted(S.SIGNALS))
def test_real_crash_is_stored_indexed_and_journaled(tmp_path, private_journal, signal_name):
    exe = compile_c(S.SIGNALS[signal_name], tmp_path, name=f"crash-{signal_name.lower()}")
    with registered_handler(tmp_path, rate_limit_burst=1000, analysis_timeout=60,
                            journal_namespace=private_journal.namespace) as handler:
        row = handler.crash([exe], timeout=120)
    assert row["signal"] == {"SIGSEGV": 11, "SIGABRT": 6, "SIGFPE": 8, "SIGBUS": 7,
                             "SIGILL": 4}[signal_name]
    assert row["comm"] == os.path.basename(exe)[:15] and row["exe"] == exe
    assert row["core_state"] == "present" and os.path.exists(row["core_path"])
    assert row["analysis_state"] in ("done", "failed")
    path_taken = row["path_taken"]
    assert path_taken["crasher"] is None
    facts = row["facts"]
    assert facts["pidfd_check"].get("verified") is True  # %F given by this kernel
    assert facts["proc"]["maps"] and facts["proc"]["status"]["NSpid"] == [row["pid"]]
    assert facts["id_sources"] == {"pid": "%P", "uid": "%u", "gid": "%g"}
    assert path_taken["journal"] == "sent"
    entry = private_journal.wait_entry("MESSAGE_ID=fc2e22bc6ee647b6b90729ab34a250b1",
                                       f"COREDUMP_PID={row['pid']}")
    assert entry["COREDUMP_SIGNAL"] == str(row["signal"])
    assert entry["COREDUMP_FILENAME"] == row["core_path"]
    assert entry["MESSAGE"].startswith(f"Process {row['pid']} (")


@pytest.fixture(scope="module")
def small_raw_core(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("raw")
    raw, _exe = _raw_core(tmp_path, S.SEGV_THREADS)
    return raw


@pytest.mark.kernel
@pytest.mark.parametrize("who", ["pid1", "journald"])
@pytest.mark.parametrize("journal_socket", ["absent", "deaf"])
def test_pid1_and_journald_crashes_are_stored_without_the_journal(
        tmp_path, small_raw_core, who, journal_socket):
    with contextlib.ExitStack() as stack:
        if journal_socket == "deaf":  # a socket that never reads, its queue full
            namespace = stack.enter_context(journald.deaf_namespace(fill=64))
        else:
            namespace = journald.unserved_namespace()
        stand_in = None if who == "pid1" else S.stand_in(tmp_path, "systemd-journald")
        if stand_in is not None:
            stack.callback(lambda: (stand_in.kill(), stand_in.wait()))
        pid = 1 if who == "pid1" else stand_in.pid
        handler = stack.enter_context(registered_handler(tmp_path, journal_timeout=0.2,
                                                         journal_namespace=namespace))
        status = S.run_as_kernel(small_raw_core, S.kernel_args(pid), handler.config_path,
                                 timeout=30)
        row = handler.wait_row(pid, timeout=60)
    assert status == 0
    assert row["core_state"] == "present" and os.path.exists(row["core_path"])
    path_taken = row["path_taken"]
    assert path_taken["crasher"] == who
    assert path_taken["kmsg"] == "written"
    if who == "journald":
        assert path_taken["journal"].startswith("skipped")
    else:
        expected = "timeout" if journal_socket == "deaf" else "unreachable"
        assert path_taken["journal"].startswith(expected)


@pytest.mark.kernel
@pytest.mark.parametrize("case", ["empty", "garbage", "cut-notes", "cut-segment"])
def test_bad_input_is_stored_and_flagged(tmp_path, small_raw_core, case):
    data = small_raw_core.read_bytes()
    notes_offset = int.from_bytes(data[64 + 8:64 + 16], "little")
    payload = {"empty": b"", "garbage": os.urandom(50000),
               "cut-notes": data[:notes_offset + 300],
               "cut-segment": data[:len(data) - 5000]}[case]
    path = tmp_path / "input"
    path.write_bytes(payload)
    with registered_handler(tmp_path) as handler:
        status = S.run_as_kernel(path, S.kernel_args(424242), handler.config_path, timeout=30)
        row = handler.wait_row(424242, timeout=60)
    assert status == 0
    facts = row["facts"]
    assert facts["missing"]["proc.comm"] == "ENOENT"  # no such process: degraded, not failed
    if case == "empty":
        assert row["core_state"] == "missing" and row["core_reason"] == "empty stream"
        assert not row["core_path"]
        return
    assert row["core_state"] == "truncated" and row["core_reason"]
    with SeekableLz4Reader(row["core_path"]) as reader:
        assert reader.truncated == row["core_reason"]
        assert reader.pread(0, len(payload) + 1) == payload


def _only_row(handler, timeout=60):
    deadline = time.monotonic() + timeout
    found = []
    while len(found) != 1 or found[0]["analysis_state"] == "pending":
        if time.monotonic() > deadline:
            raise AssertionError(f"no analysed row in {handler.directory}: {found}")
        time.sleep(0.1)
        found = S.rows(handler) if os.path.exists(handler.config.index_path) else []
    return found[0]


@pytest.mark.kernel
@pytest.mark.parametrize("args", [[], ["nonsense"], ["12", "x", "y"]])
def test_missing_or_wrong_arguments(tmp_path, small_raw_core, private_journal, args):
    """Ids the kernel did not give come from the core's NT_PRPSINFO; the entry is
    one that coredumpctl reads, and no message says "None"."""
    with registered_handler(tmp_path, journal_namespace=private_journal.namespace) as handler:
        status = S.run_as_kernel(small_raw_core, args, handler.config_path, timeout=30)
        row = _only_row(handler)
    assert status == 0
    facts = row["facts"]
    assert any("argument" in problem for problem in facts["problems"])
    assert row["core_state"] == "present"
    crashed_pid = int(small_raw_core.name.split(".")[1])  # core.%P of the cat handler
    assert (row["uid"], row["gid"]) == (0, 0)
    assert facts["id_sources"]["uid"] == facts["id_sources"]["gid"] == "NT_PRPSINFO"
    if not args:
        assert row["pid"] == crashed_pid and facts["id_sources"]["pid"] == "NT_PRPSINFO"
    entry = private_journal.wait_entry(f"COREDUMP_ID={row['id']}")
    assert entry["MESSAGE_ID"] == "fc2e22bc6ee647b6b90729ab34a250b1"
    assert entry["COREDUMP_UID"] == "0" and entry["COREDUMP_GID"] == "0"
    assert "None" not in entry["MESSAGE"].splitlines()[0]


@pytest.mark.kernel
def test_no_arguments_and_no_notes_no_coredump_message_id(tmp_path, private_journal):
    """Neither %P/%u/%g nor NT_PRPSINFO: stored and journaled, but not as a coredump
    entry (coredumpctl 252 aborts on one without COREDUMP_UID), and never "None"."""
    path = tmp_path / "garbage"
    path.write_bytes(os.urandom(50000))
    with registered_handler(tmp_path, journal_namespace=private_journal.namespace) as handler:
        status = S.run_as_kernel(path, [], handler.config_path, timeout=30)
        row = _only_row(handler)
    assert status == 0 and row["core_state"] == "truncated"
    assert row["uid"] is None and row["gid"] is None
    assert row["facts"]["id_sources"] == {"pid": None, "uid": None, "gid": None}
    entry = private_journal.wait_entry(f"COREDUMP_ID={row['id']}")
    assert "MESSAGE_ID" not in entry and "COREDUMP_PID" not in entry
    assert "COREDUMP_UID" not in entry
    assert entry["MESSAGE"].startswith("Process (")
    assert "None" not in entry["MESSAGE"]


@pytest.mark.kernel
def test_rlimit_below_a_page_and_rate_limit(tmp_path):
    exe = compile_c(S.SIGNALS["SIGSEGV"], tmp_path, name="ratelimited")
    with registered_handler(tmp_path, rate_limit_burst=1, analysis=False) as handler:
        first = handler.crash([exe])
        second = handler.crash([exe])
        small = handler.crash([exe], rlimit_core=1024)
    assert first["core_state"] == "present"
    assert second["core_state"] == "none" and "rate limited" in second["core_reason"]
    assert not second["core_path"] and second["signal"] == 11
    assert small["core_state"] == "none" and "RLIMIT_CORE" in small["core_reason"]
    assert sorted(os.listdir(handler.directory)).count(os.path.basename(first["core_path"])) == 1
    assert len([n for n in os.listdir(handler.directory) if n.startswith("core.")]) == 1


@pytest.mark.kernel
def test_size_limit_truncates(tmp_path):
    exe = compile_c(S.BIG, tmp_path, name="big")
    with registered_handler(tmp_path, external_size_max="4M", analysis=False) as handler:
        row = handler.crash([exe, "32"])
    assert row["core_state"] == "truncated" and "limit" in row["core_reason"]
    with SeekableLz4Reader(row["core_path"]) as reader:
        assert reader.size == 4 << 20 and reader.truncated == row["core_reason"]


@pytest.mark.kernel
def test_user_gets_an_acl_only_for_its_own_plain_crash(tmp_path):
    public = tempfile.mkdtemp(prefix="cdacl", dir="/tmp")  # pytest's tmp_path is 0700
    os.chmod(public, 0o755)
    exe = compile_c(S.SIGNALS["SIGSEGV"], public, name="usercrash")
    os.chmod(exe, 0o755)
    with registered_handler(tmp_path, analysis=False) as handler:
        row = handler.crash(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
                             "--clear-groups", exe])
    assert row["uid"] == 65534 and row["core_state"] == "present"
    acl = subprocess.run(["getfacl", "-n", "-p", row["core_path"]], capture_output=True,
                         text=True, check=True).stdout
    assert "user:65534:r--" in acl and "other::---" in acl
    shutil.rmtree(public)


SLEEPER = r"""
#include <unistd.h>
int main(void) { for (;;) pause(); }
"""


@pytest.mark.kernel
def test_signal_sender_recorded_while_the_crasher_is_held(tmp_path):
    exe = compile_c(SLEEPER, tmp_path, name="victim")
    killer = tmp_path / "killer"  # a shell that lingers after kill, so that /proc has it
    shutil.copy("/bin/dash", killer)
    with registered_handler(tmp_path, analysis=False) as handler:
        def _kill_later(pid):
            time.sleep(0.3)
            subprocess.run([str(killer), "-c", f"kill -SEGV {pid}; sleep 2"], check=True)
        import threading
        with core_pattern(handler.pattern, 16):
            proc = subprocess.Popen([exe], preexec_fn=_unlimited)  # noqa: PLW1509
            thread = threading.Thread(target=_kill_later, args=(proc.pid,))
            thread.start()
            proc.wait(60)
            thread.join()
        row = handler.wait_row(proc.pid, wait_analysis=False)
    assert row["signal"] == 11 and row["si_code"] == 0  # SI_USER: kill(2)
    sender = row["facts"]["sender"]
    assert sender["comm"] == "killer" and sender["exe"] == str(killer)
    assert sender["cmdline"] == [str(killer), "-c", f"kill -SEGV {proc.pid}; sleep 2"]


@pytest.mark.kernel
def test_storage_none_keeps_metadata_and_analysis(tmp_path):
    exe = compile_c(S.SIGNALS["SIGSEGV"], tmp_path, name="nostore")
    with registered_handler(tmp_path, storage="none") as handler:
        row = handler.crash([exe], timeout=120)
    assert row["core_state"] == "none" and row["core_reason"] == "Storage=none"
    assert not row["core_path"]
    assert [n for n in os.listdir(handler.directory) if n.startswith("core.")] == []
    assert row["analysis_state"] == "done", row["analysis_error"]
    assert row["analysis"]["threads"]  # analysed through the unlinked file's fd


NOT_UTF8_NAME = r"""
#include <sys/prctl.h>
int main(void){ prctl(PR_SET_NAME, "bad\xff\xfename", 0, 0, 0); *(volatile int *)0 = 1; return 0; }
"""


@pytest.mark.kernel
def test_a_process_whose_name_and_path_are_not_utf8_is_not_lost(tmp_path, private_journal):
    """A process chooses its name (prctl(PR_SET_NAME)) and its file's name: bytes that are
    not UTF-8 reach us decoded with surrogateescape, and the index refused them (the
    handler died on the insert: no row, no core, no journal entry, no kmsg line).  Any
    local user could make a crash vanish so."""
    program = compile_c(NOT_UTF8_NAME, tmp_path, name="prog")
    directory = os.fsencode(tmp_path) + b"/dir\xff"
    os.mkdir(directory)
    os.link(program, directory + b"/prog")
    exe = os.fsdecode(directory + b"/prog")
    with registered_handler(tmp_path, journal_namespace=private_journal.namespace) as handler:
        row = handler.crash([exe])
        assert [found.id for found in handler.index.find(["bad\udcff\udcfename"])] == [row["id"]]
    assert (row["comm"], row["exe"]) == ("bad\udcff\udcfename", exe)
    assert row["core_state"] == "present" and os.path.exists(row["core_path"])
    assert row["analysis_state"] == "done", row["analysis_error"]
    entry = private_journal.wait_entry(f"COREDUMP_ID={row['id']}")
    assert bytes(entry["COREDUMP_COMM"]) == b"bad\xff\xfename"  # journalctl: not UTF-8, bytes
    assert bytes(entry["COREDUMP_EXE"]) == directory + b"/prog"
