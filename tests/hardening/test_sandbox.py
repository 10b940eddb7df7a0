"""The analysis sandbox (coredumpd.pipeline.sandbox), each failure mode for real.

The misbehaviours are produced inside a real child process that goes through
the product child's own steps (tests/support/sandbox_hooks.py): a real SIGSEGV
in the interpreter, a real busy loop, a real allocation up to RLIMIT_AS.
"""

from __future__ import annotations

import os
import pathlib
import time

import pytest

from coredumpd.config import Config
from coredumpd.pipeline import sandbox
from coredumpd.pipeline.sandbox_zygote import Zygote
from coredumpd.values import replace
from tests.support import sandbox_hooks
from tests.support.kernel import core_pattern, raw_core_pattern

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="privilege dropping needs root")
fault_case = pytest.mark.fault_case  # the others: a unit test, a control, the normal path
USER_FACTS = {"args": {"uid": 1000, "gid": 1000, "dump_mode": 1}}


@pytest.fixture()
def core(tmp_path: pathlib.Path) -> str:
    """A root-only (0640) file that starts like an ELF core."""
    path = tmp_path / "core"
    path.write_bytes(b"\x7fELF" + bytes(60))
    path.chmod(0o640)
    return str(path)


@pytest.fixture(params=["started", "forked"], autouse=True)
def launch(request):
    """Each test twice: the child started as its own interpreter, and forked by a
    drain's zygote (coredumpd.pipeline.sandbox_zygote), which must come out alive."""
    LAUNCH[0] = request.param
    yield request.param
    LAUNCH[0] = "started"


LAUNCH = ["started"]


def run(monkeypatch: pytest.MonkeyPatch, core: str, hook: str | None, facts=USER_FACTS,
        **config) -> dict:
    """The sandbox on ``core``: the real analysis (``hook`` None) or a misbehaving child."""
    settings = {"analysis_timeout": 20.0, "analysis_memory_max": 768 << 20} | config
    command = ("-m", sandbox.CHILD_MODULE) if hook is None else sandbox_hooks.command(hook)
    if LAUNCH[0] == "started":
        return sandbox.run_analysis(Config(**settings), core, facts, None,
                                    child_command=command)
    zygote = Zygote(command)
    try:
        result = sandbox.run_analysis(Config(**settings), core, facts, None,
                                      child_command=command, zygote=zygote)
        if "cannot start" in (result.get("error") or ""):
            assert zygote.starts == 0
            return result
        # the child's misbehaviour cost its analysis only: the zygote lives on, in step
        assert zygote.control is not None and zygote.process.poll() is None
        assert zygote.starts == 1 and zygote.failures == 0
        assert zygote.forked == 1  # forked, not started
        return result
    finally:
        zygote.close()


def assert_failed(result: dict, reason: str) -> None:
    assert result["state"] == "failed", result
    assert result["error"].startswith("analysis failed: "), result
    assert reason in result["error"], result


@fault_case
def test_child_crash_is_reported(monkeypatch, core):
    assert_failed(run(monkeypatch, core, "crash"), "killed by SIGSEGV")


@fault_case
def test_child_exit_without_result(monkeypatch, core):
    assert_failed(run(monkeypatch, core, "exit"), "exited with status 3 without a result")


@fault_case
def test_busy_loop_is_killed_at_the_wall_clock_timeout(monkeypatch, core):
    started = time.monotonic()
    result = run(monkeypatch, core, "hang", analysis_timeout=2.0)
    assert_failed(result, "timed out after 2 s")
    assert time.monotonic() - started < 15  # bounded, not a speed claim


@fault_case
def test_sleeping_child_is_killed(monkeypatch, core):
    assert_failed(run(monkeypatch, core, "sleep", analysis_timeout=1.5), "timed out")


@fault_case
def test_timeout_kills_the_whole_process_group(monkeypatch, core):
    marker = str(900000 + os.getpid())  # "sleep <marker>" run by a grandchild
    assert_failed(run(monkeypatch, core, f"orphan:{marker}", analysis_timeout=2.0),
                  "timed out")
    assert survivors(marker) == []


def survivors(marker: str) -> list[str]:
    """The pids of the processes running ``sleep MARKER``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline == b"sleep\0" + marker.encode() + b"\0":
                found.append(entry)
    return found


@fault_case
@needs_root
@pytest.mark.parametrize("facts", [USER_FACTS, {"args": {"uid": 0, "gid": 0}}],
                         ids=["user", "analysis-user"])
def test_a_grandchild_in_its_own_session_ends_with_the_sandbox(monkeypatch, core, facts):
    """A compromised analysis forks a grandchild that calls setsid() and closes every
    descriptor, then answers normally: that process is gone once run_analysis returns
    (a process-group kill would not reach it; the sandbox's PID namespace does)."""
    marker = str(800000 + os.getpid())
    try:
        result = run(monkeypatch, core, f"escape:{marker}", facts=facts)
        assert result["state"] == "done", result
        assert result["escaped"] > 2  # its pid in the sandbox's namespace
        assert survivors(marker) == []
    finally:
        for pid in survivors(marker):  # before the fix: do not leave it behind
            os.kill(int(pid), 9)


@fault_case
def test_memory_cap_gives_out_of_memory(monkeypatch, core):
    result = run(monkeypatch, core, "oom", analysis_memory_max=400 << 20)
    assert_failed(result, "out of memory (AnalysisMemoryMax=419430400)")


@fault_case
def test_garbage_output_is_rejected(monkeypatch, core):
    assert_failed(run(monkeypatch, core, "garbage"), "invalid result")


@fault_case
def test_oversized_output_is_capped(monkeypatch, core):
    assert_failed(run(monkeypatch, core, "big-result"),
                  f"result larger than {sandbox.RESULT_MAX} bytes")


@fault_case
def test_symlinked_core_is_not_followed(monkeypatch, core, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(core)
    assert_failed(run(monkeypatch, str(link), "ids"), "cannot start")


@fault_case
def test_missing_core(monkeypatch, tmp_path):
    assert_failed(run(monkeypatch, str(tmp_path / "absent"), "ids"), "cannot start")


@fault_case
@needs_root
def test_regular_user_runs_as_the_crashing_uid(monkeypatch, core):
    ids = run(monkeypatch, core, "ids")["ids"]
    assert ids["resuid"] == [1000, 1000, 1000]
    assert ids["resgid"] == [1000, 1000, 1000]
    assert ids["groups"] == []
    assert "CapEff:\t0000000000000000" in ids["status"]
    assert ids["no_new_privs"] == 1
    assert ids["dumpable"] == 0
    assert ids["rlimit_core"] == [0, 0]
    assert ids["rlimit_as"] == [768 << 20, 768 << 20]
    assert ids["rlimit_cpu"][0] >= 20
    assert ids["cwd"] == "/"
    # PID 2 of a namespace of its own (under that namespace's init)
    assert ids["pid"] == 2 and ids["pid_namespace"] != os.readlink("/proc/self/ns/pid")
    assert set(ids["environ"]) <= {"LC_CTYPE"}  # empty but for CPython's locale coercion
    # The root-only core is readable through the passed fd, not by reopening it.
    assert ids["core_magic"] == "7f454c46"
    assert ids["reopen_core"] == "EACCES"
    # stdio (/dev/null, stderr pipe), the socket, the core, and listdir's own fd:
    # nothing else of the handler leaks in.
    assert ids["fds"][:5] == [0, 1, 2, 3, 4] and len(ids["fds"]) == 6
    assert ids["read_root"] == "EACCES"  # no capability left: /root is 0700
    assert ids["network"] == "ENETUNREACH"  # a new, empty network namespace
    assert ids["rlimit_fsize"] == [0, 0]  # writes no file


@fault_case
@needs_root
@pytest.mark.parametrize("args", [
    {"uid": 0, "gid": 0, "dump_mode": 1},  # root
    {"uid": 100, "gid": 100, "dump_mode": 1},  # a system uid
    {"uid": 1000, "gid": 1000, "dump_mode": 2},  # setuid program (suid_dumpable=2)
    {},  # no facts at all
])
def test_root_system_and_setuid_crashes_run_as_the_analysis_user(monkeypatch, core, args):
    ids = run(monkeypatch, core, "ids", facts={"args": args})["ids"]
    assert ids["resuid"] == [65534] * 3  # nobody
    assert ids["groups"] == []
    # Only root sees these results: the modules of root-only programs stay
    # readable (CAP_DAC_READ_SEARCH), and nothing else is kept.
    assert "CapEff:\t0000000000000004" in ids["status"]
    assert "CapPrm:\t0000000000000004" in ids["status"]
    assert ids["read_root"] == "yes"
    assert ids["network"] == "ENETUNREACH" and ids["no_new_privs"] == 1


@fault_case
@needs_root
def test_unknown_analysis_user(monkeypatch, core):
    result = run(monkeypatch, core, "ids", facts={"args": {"uid": 0}},
                 analysis_user="no-such-user-coredumpd")
    assert_failed(result, "AnalysisUser=no-such-user-coredumpd does not exist")


def test_credentials_rule():
    config = Config()
    if not ROOT:
        assert sandbox.analysis_credentials(config, USER_FACTS) is None
        return
    assert sandbox.analysis_credentials(config, USER_FACTS) == (1000, 1000)
    assert sandbox.analysis_credentials(config, {"args": {"uid": 5000}}) == (5000, 5000)
    assert sandbox.analysis_credentials(config, {"args": {"uid": 999}}) == (65534, 65534)
    assert sandbox.analysis_credentials(config, {"args": {"uid": "0"}}) == (65534, 65534)
    root_user = replace(config, analysis_user="root")
    with pytest.raises(LookupError):
        sandbox.analysis_credentials(root_user, {"args": {"uid": 0}})


@fault_case
@pytest.mark.kernel
def test_a_crash_of_the_analysis_never_reaches_a_core_handler(monkeypatch, core, tmp_path):
    """PR_SET_DUMPABLE 0: the kernel pipes no core of the crashed sandbox anywhere."""
    cores = tmp_path / "cores"
    cores.mkdir()
    with core_pattern(raw_core_pattern(str(cores)), pipe_limit=64):
        result = run(monkeypatch, core, "crash")
        time.sleep(0.3)  # a handler, had one started, would have created its file by now
    assert_failed(result, "killed by SIGSEGV")
    assert list(cores.iterdir()) == []


@pytest.mark.kernel
def test_control_a_crashing_python_does_dump_under_that_pattern(tmp_path):
    """The control for the test above: the same pattern does catch a dumpable crash."""
    import subprocess
    import sys

    cores = tmp_path / "cores"
    cores.mkdir()
    with core_pattern(raw_core_pattern(str(cores)), pipe_limit=64):
        subprocess.run([sys.executable, "-c", "import ctypes; ctypes.string_at(0)"],
                       check=False)
        for _ in range(50):
            if list(cores.iterdir()):
                break
            time.sleep(0.1)
    assert len(list(cores.iterdir())) == 1


def test_unlinked_core_passed_as_proc_self_fd(monkeypatch, tmp_path):
    """analyze_job hands over cores that were not kept as /proc/self/fd/N."""
    fd = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"\x7fELF" + bytes(60))
        ids = run(monkeypatch, f"/proc/self/fd/{fd}", "ids")["ids"]
        assert ids["core_magic"] == "7f454c46"
    finally:
        os.close(fd)


FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "cores"


def test_real_analysis_of_a_stored_core_in_the_sandbox(monkeypatch, tmp_path):
    """A fixture core (seekable lz4), root-only, analysed as nobody: gdb's frames."""
    source = FIXTURES / "abort" / "core.lz4"
    if not source.exists():
        pytest.skip("fixture core not committed")
    core = tmp_path / "core.lz4"
    core.write_bytes(source.read_bytes())
    core.chmod(0o640)
    result = run(monkeypatch, str(core), None, facts=None, analysis_timeout=120.0,
                 analysis_memory_max=2 << 30)
    assert result["state"] == "done", result.get("error")
    symbols = [frame["symbol"] for frame in result["threads"][0]["frames"]]
    assert "abort" in symbols and "main" in symbols


def test_python_core_in_the_sandbox_gets_pystacks_frames(monkeypatch, tmp_path):
    """The python fixture (lz4, root-only) analysed as nobody: the parent hands the child
    a sealed memfd of the raw core, which pystack opens through /proc/self/fd."""
    import json

    source = FIXTURES / "python" / "core.lz4"
    core = tmp_path / "core.lz4"
    core.write_bytes(source.read_bytes())
    core.chmod(0o640)
    reference = json.loads((FIXTURES / "python" / "pystack.json").read_text())
    result = run(monkeypatch, str(core), None, facts={"proc": {"exe": "/usr/bin/python3.11"}},
                 analysis_timeout=120.0, analysis_memory_max=2 << 30)
    assert result["state"] == "done", result.get("error")
    ours = [(f["file"], f["line"], f["symbol"]) for f in result["threads"][0]["frames"]
            if f["language"] == "python"]
    assert ours == [(f["file"], f["line"], f["function"])
                    for f in reversed(reference[0]["frames"])]


def test_python_crashes_are_told_by_names_only():
    maps = [{"path": "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"}]
    assert sandbox.looks_like_python({"proc": {"exe": "/usr/bin/python3.11"}}, None)
    assert sandbox.looks_like_python(None, "/opt/venv/bin/python")
    assert sandbox.looks_like_python({"proc": {"exe": "/usr/bin/blender", "maps": maps}}, None)
    assert not sandbox.looks_like_python({"proc": {"exe": "/usr/bin/pythonista-tool"}}, None)
    assert not sandbox.looks_like_python({"proc": {"exe": "/usr/bin/perl"}}, "/usr/bin/perl")


def test_memfd_copy_is_the_raw_core_sealed(tmp_path):
    import fcntl

    from coredumpd.store.lz4seek import open_core_source

    fd = os.open(FIXTURES / "python" / "core.lz4", os.O_RDONLY)
    copy = sandbox._core_for_pystack(fd, Config())
    try:
        assert copy != fd
        source = open_core_source(str(FIXTURES / "python" / "core.lz4"))
        try:
            size = os.fstat(copy).st_size
            assert size == source.size and os.pread(copy, size, 0) == source.pread(0, size)
        finally:
            source.close()
        seals = fcntl.fcntl(copy, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
        with pytest.raises(OSError):
            os.pwrite(copy, b"x", 0)
    finally:
        os.close(copy)


@fault_case
def test_a_dead_zygote_costs_no_analysis(tmp_path, launch):
    """The zygote killed between two crashes: the next crash's sandbox is started as
    without one, the one after is forked by a new zygote; both analyses done."""
    import signal

    if launch != "forked":
        pytest.skip("about the zygote")
    source = FIXTURES / "abort" / "core.lz4"
    core = tmp_path / "core.lz4"
    core.write_bytes(source.read_bytes())
    core.chmod(0o640)
    config = Config(analysis_timeout=120.0)
    zygote = Zygote()
    try:
        results = [sandbox.run_analysis(config, str(core), None, None, zygote=zygote)]
        first = zygote.process.pid
        os.kill(first, signal.SIGKILL)
        zygote.process.wait()
        results += [sandbox.run_analysis(config, str(core), None, None, zygote=zygote)
                    for _ in range(2)]
        assert [result["state"] for result in results] == ["done", "done", "done"]
        assert results[0]["threads"] == results[1]["threads"] == results[2]["threads"]
        # forked, started (the zygote was dead), forked by a new zygote
        assert zygote.starts == 2 and zygote.forked == 2 and zygote.failures == 1
        assert zygote.process.pid != first
    finally:
        zygote.close()


ROOT_FACTS = {"args": {"uid": 0, "gid": 0, "dump_mode": 1}}  # analysed as AnalysisUser


@fault_case
@needs_root
def test_zygote_children_share_a_layout_only_with_their_own_credentials(core, launch):
    """Forked children see their zygote's address space layout and hash secret: a
    child a core took over would learn those of the zygote's next children.  Children
    of other credentials (here: a user's crash, then root's, analysed as AnalysisUser)
    never come from the same zygote, and a zygote is replaced after ``forks_max``."""
    if launch != "forked":
        pytest.skip("about the zygote")
    command = sandbox_hooks.command("ids")
    config = Config(analysis_timeout=20.0)
    zygote = Zygote(command, forks_max=3)

    def layout(facts):
        forked = zygote.forked
        ids = sandbox.run_analysis(config, core, facts, None, child_command=command,
                                   zygote=zygote)["ids"]
        return ids["layout"], zygote.forked > forked, ids["resuid"][0]

    try:
        runs = [layout(facts) for facts in [USER_FACTS] * 3 + [ROOT_FACTS] * 3 +
                [USER_FACTS] * 5]
    finally:
        zygote.close()
    assert [uid for _, _, uid in runs] == [1000] * 3 + [65534] * 3 + [1000] * 5
    # forked, but for the first crash of other credentials (started)
    assert [forked for _, forked, _ in runs] == [True] * 3 + [False] + [True] * 2 + \
        [False] + [True] * 4
    user, root = runs[0][0], runs[4][0]
    assert runs[1][0] == runs[2][0] == user  # one zygote: one layout (what it shares)
    assert runs[5][0] == root
    assert all(user[name] != root[name] for name in user), (user, root)
    # the user's crashes again: a new zygote, forked 3 times, then another one
    assert runs[7][0] == runs[8][0] == runs[9][0] != runs[10][0]
    assert all(runs[7][0][name] != user[name] for name in user)
    assert zygote.starts == 4 and zygote.failures == 0
