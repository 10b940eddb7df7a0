"""coredumpd serve on the kernel's coredump socket, through the real kernel.

Every test holds the core_pattern lock (tests.support.kernel.core_pattern) for
the whole time a supervisor runs: the supervisor switches the pattern between
the test's pipe handler and ``@@SOCKET``, and the lock's restore puts the
machine's pattern back whatever happens.  Journal entries go to the run's
private journald (tests.support.crash.write_config), never the host's.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from coredumpd.elf.core import Core
from coredumpd.ingest import coredump_socket
from coredumpd.pipeline import socket_handler
from coredumpd.store.lz4seek import SeekableLz4Reader
from tests.hardening.helpers import kmsg_lines, uptime_us
from tests.support.crash import (
    HANDLER,
    compile_c,
    registered_handler,
    wait_for_handlers,
    write_config,
)
from tests.support.kernel import CORE_PATTERN, core_pattern

pytestmark = pytest.mark.skipif(not coredump_socket.kernel_supports_socket(),
                                reason="no coredump socket before Linux 6.16")

TINY = "int main(void){ *(volatile int *)0 = 1; }"


def _pattern() -> str:
    with open(CORE_PATTERN, encoding="utf-8") as handle:
        return handle.read().rstrip("\n")


def _write_pattern(pattern: str) -> None:
    """Only inside a block that holds the pattern lock (tests.support.kernel)."""
    with open(CORE_PATTERN, "w", encoding="utf-8") as handle:
        handle.write(pattern)


def _wait_pattern(wanted: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _pattern() != wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"core_pattern is {_pattern()!r}, not {wanted!r}")
        time.sleep(0.02)


class Supervised:
    def __init__(self, process: subprocess.Popen[bytes], socket_path: str) -> None:
        self.process = process
        self.socket_pattern = f"@@{socket_path}"

    def server_pid(self) -> int:
        """The supervisor's child: the server."""
        children = pathlib_read(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return int(children.split()[0])


def pathlib_read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


@contextlib.contextmanager
def private_socket_path():
    """A socket path in a fresh 0700 directory of its own, removed at the end whatever
    happened: a server or supervisor that a test kills with SIGKILL cannot unlink its
    socket (such tests left /run/cdtest-PID.sock files behind).  Short, for sun_path
    (108 bytes) and core_pattern (127)."""
    directory = tempfile.mkdtemp(prefix="cdtest-", dir="/tmp")
    try:
        yield os.path.join(directory, "coredump.sock")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def supervised(handler, restart_sec: float = 2.0, workers: int | None = None):
    """``coredumpd serve --supervise`` for ``handler``'s store, under the pattern lock."""
    with private_socket_path() as socket_path, core_pattern(handler.pattern, 16):
        argv = [HANDLER, "serve", "--supervise", "--socket", socket_path,
                "--config", handler.config_path, "--handler", HANDLER,
                "--restart-sec", str(restart_sec)]
        if workers:
            argv += ["--workers", str(workers)]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        try:
            supervisor = Supervised(process, socket_path)
            _wait_pattern(supervisor.socket_pattern)
            yield supervisor
        finally:
            process.terminate()
            process.wait(120)
        assert _pattern() == handler.pattern  # the supervisor put the pipe back itself
        if process.returncode == 0:  # stopped by our SIGTERM (a test may have killed it)
            assert not os.path.exists(socket_path)  # and removed its socket


@contextlib.contextmanager
def serving(tmp_path, restart_sec: float = 2.0, workers: int | None = None, **config):
    """A store and a supervised server for it: (handler, supervisor)."""
    with registered_handler(tmp_path, **config) as handler, \
            supervised(handler, restart_sec, workers) as supervisor:
        yield handler, supervisor  # registered_handler waits for the handlers at its end


def _crash(exe: str, *args: str) -> int:
    """Run ``exe`` until it dies of its signal (RLIMIT_CORE unlimited); its PID."""
    def unlimited() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
    proc = subprocess.Popen([exe, *args], preexec_fn=unlimited,  # noqa: PLW1509
                            stdout=subprocess.DEVNULL)
    proc.wait(120)
    assert proc.returncode < 0
    return proc.pid


PATTERNED = r"""
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <unistd.h>
static void *idle(void *arg) { (void)arg; pause(); return 0; }
int main(int argc, char **argv) {
    size_t size = 3u << 20;  /* several lz4 blocks' worth of known bytes */
    unsigned char *p = malloc(size);
    for (size_t i = 0; i < size; i++) p[i] = (unsigned char)(i * 2654435761u >> 13);
    FILE *f = fopen(argv[1], "w"); fprintf(f, "%lu %lu\n", (unsigned long)p, size); fclose(f);
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], 0, idle, 0);
    usleep(20000);
    *(volatile int *)0 = p[size / 2] + argc;
}
"""


@pytest.mark.kernel
def test_socket_crash_is_stored_whole_analysed_and_journaled(tmp_path, private_journal):
    """The kernel's bytes, as stored: lz4 -d gives the whole core (as long as its
    program headers say), and the heap the program filled reads back exactly."""
    exe = compile_c(PATTERNED, tmp_path, name="socketprog")
    where = tmp_path / "where"
    with serving(tmp_path, rate_limit_burst=1000,
                 journal_namespace=private_journal.namespace) as (handler, _supervisor):
        pid = _crash(exe, str(where))
        row = handler.wait_row(pid, timeout=120)
    assert row["facts"]["front_door"] == "socket" and row["facts"]["decision"] == "kernel"
    assert row["core_state"] == "present" and row["signal"] == 11
    assert row["exe"] == exe and row["comm"] == "socketprog"
    assert row["facts"]["pidfd_check"]["verified"] is True
    # read after the ack, while the kernel wrote the core (COREDUMP_WAIT held the process)
    proc = row["facts"]["proc"]
    assert proc["maps"] and proc["environ"] and proc["status"]["NSpid"] == [pid]
    assert row["facts"]["timings_ms"]["acked"] <= row["facts"]["timings_ms"]["proc_read"]
    assert row["facts"]["id_sources"] == {"pid": "pidfd", "uid": "pidfd", "gid": "pidfd"}
    assert row["tid"] == pid and row["ns_pid"] == pid and row["uid"] == 0
    assert row["analysis_state"] == "done"
    crashed = [t for t in row["analysis"]["threads"] if t["crashed"]]
    assert crashed[0]["frames"][0]["symbol"] == "main"
    assert len(row["analysis"]["threads"]) == 3
    restored = subprocess.run(["lz4", "-d", "-c", row["core_path"]], capture_output=True,
                              check=True).stdout
    assert len(restored) == row["core_size"] == row["facts"]["stream"]["expected_size"]
    address, size = (int(word) for word in where.read_text().split())
    expected = bytes((i * 2654435761 >> 13) & 0xFF for i in range(size))
    with SeekableLz4Reader(row["core_path"]) as reader:
        assert reader.truncated is None
        assert reader.pread(0, len(restored)) == restored
        core = Core.open(reader)
        assert core.read_memory(address, size) == expected
    entry = private_journal.wait_entry(f"COREDUMP_ID={row['id']}")
    assert entry["MESSAGE_ID"] == "fc2e22bc6ee647b6b90729ab34a250b1"
    assert entry["COREDUMP_PID"] == str(pid) and entry["COREDUMP_SIGNAL_NAME"] == "SIGSEGV"
    assert entry["COREDUMP_FILENAME"] == row["core_path"]


@pytest.mark.kernel
def test_rate_limited_crash_is_rejected_with_a_row_and_no_dump(tmp_path):
    exe = compile_c(TINY, tmp_path, name="limited")
    with serving(tmp_path, rate_limit_burst=2, analysis=False) as (handler, _supervisor):
        rows = []  # one after the other: the decision counts the rows already written
        for _ in range(4):
            rows.append(handler.wait_row(_crash(exe), wait_analysis=False, timeout=60))
    assert [r["facts"]["decision"] for r in rows] == ["kernel", "kernel", "reject", "reject"]
    for row in rows[2:]:
        assert row["core_state"] == "none" and "rate limited" in row["core_reason"]
        assert row["core_size"] == 0 and not row["core_path"]
        assert row["signal"] == 11  # from the pidfd's exit code: no core was written
    assert all(r["core_state"] == "present" for r in rows[:2])


@pytest.mark.kernel
def test_an_edited_configuration_is_used_without_a_restart(tmp_path):
    """The server reads the configuration once, and again when the file changed: the
    worker already waiting with the old one sees the change after accept."""
    exe = compile_c(TINY, tmp_path, name="reconfigured")
    with serving(tmp_path, rate_limit_burst=1000, analysis=False) as (handler, _supervisor):
        first = handler.wait_row(_crash(exe), wait_analysis=False, timeout=60)
        write_config(handler.config_path, handler.directory, rate_limit_burst=1,
                     analysis=False)
        second = handler.wait_row(_crash(exe), wait_analysis=False, timeout=60)
        third = handler.wait_row(_crash(exe), wait_analysis=False, timeout=60)
    assert [r["facts"]["decision"] for r in (first, second, third)] == \
        ["kernel", "reject", "reject"]
    assert "RateLimitBurst=1)" in second["core_reason"]


@pytest.mark.kernel
def test_rlimit_core_zero_is_rejected(tmp_path):
    exe = compile_c(TINY, tmp_path, name="nocore")
    with serving(tmp_path, analysis=False) as (handler, _supervisor):
        proc = subprocess.Popen([exe], preexec_fn=lambda: resource.setrlimit(  # noqa: PLW1509
            resource.RLIMIT_CORE, (0, 0)))
        proc.wait(60)
        row = handler.wait_row(proc.pid, wait_analysis=False)
    assert row["facts"]["decision"] == "reject" and row["core_state"] == "none"
    assert "RLIMIT_CORE" in row["core_reason"]


def test_pidfd_check_refuses_another_process():
    """A pidfd names one process: not another PID, and not a reaped one."""
    first = subprocess.Popen(["sleep", "30"])
    second = subprocess.Popen(["sleep", "30"])
    pidfd = os.pidfd_open(first.pid)
    try:
        assert socket_handler.verify_pidfd(pidfd, first.pid)["verified"] is True
        assert socket_handler.verify_pidfd(pidfd, second.pid)["verified"] is False
        first.kill()
        first.wait()  # reaped: its PID is free for anyone now
        check = socket_handler.verify_pidfd(pidfd, first.pid)
        assert check["verified"] is False and check["pidfd_pid"] == -1
    finally:
        os.close(pidfd)
        second.kill()
        second.wait()


@pytest.mark.kernel
@pytest.mark.parametrize("how", ["SIGKILL", "SIGSEGV"])
def test_server_death_puts_the_pipe_back_and_no_crash_is_lost(tmp_path, how):
    exe = compile_c(TINY, tmp_path, name="whiledown")
    with serving(tmp_path, restart_sec=3.0, analysis=False,
                 rate_limit_burst=1000) as (handler, supervisor):
        server = supervisor.server_pid()
        since = uptime_us() - 1_000_000  # printk's clock lagged CLOCK_MONOTONIC by ~1 ms here
        os.kill(server, getattr(signal, how))  # SIGSEGV: the kernel's own dump path
        _wait_pattern(handler.pattern, timeout=10)
        down_pid = _crash(exe)  # while no server accepts
        _wait_pattern(supervisor.socket_pattern, timeout=30)  # restarted
        assert supervisor.server_pid() != server
        up_pid = _crash(exe)
        down = handler.wait_row(down_pid, wait_analysis=False)
        up = handler.wait_row(up_pid, wait_analysis=False)
    assert down["facts"]["front_door"] == "pipe" and down["core_state"] == "present"
    assert up["facts"]["front_door"] == "socket" and up["core_state"] == "present"
    # our supervisor's lines (other runs on the machine write theirs): a service message,
    # not a crash report ("Process N (coredumpd) of user 0 dumped core (SIG0): ...")
    ours = (f"[{supervisor.process.pid}] ", f"Process {supervisor.process.pid} ")
    said = [line for line in kmsg_lines(since) if "capture server ended" in line
            and any(mark in line for mark in ours)]
    signo = getattr(signal, how).value
    assert said and all(f"[{supervisor.process.pid}] capture server ended (killed by signal "
                        f"{signo})" in line for line in said), said


@pytest.mark.kernel
def test_storm_of_64_in_socket_mode_all_stored(tmp_path):
    programs = [compile_c(TINY, tmp_path, name=f"storm{i:02d}") for i in range(64)]
    def unlimited() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
    with serving(tmp_path, workers=4, analysis=False) as (handler, _supervisor):
        procs = [subprocess.Popen([exe], preexec_fn=unlimited)  # noqa: PLW1509
                 for exe in programs]
        for proc in procs:
            proc.wait(300)
        rows = [handler.wait_row(p.pid, wait_analysis=False, timeout=300) for p in procs]
    assert len(rows) == 64
    assert all(r["core_state"] == "present" for r in rows)
    assert {r["facts"]["front_door"] for r in rows} == {"socket"}


def _wait_dumping(procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    """Until each process is dumping core (status ``CoreDumping: 1``) or gone."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if "CoreDumping:\t1" in pathlib_read(f"/proc/{proc.pid}/status"):
                    break
            except OSError:
                break
            time.sleep(0.01)


@pytest.mark.kernel
def test_stopped_server_serves_its_queue_first(tmp_path):
    """SIGTERM while crashes wait in the accept queue (one worker, 16 crashes): the
    workers serve the queue, the server forking more while connections wait."""
    base = compile_c(TINY, tmp_path, name="queued")
    programs = []
    for number in range(16):
        path = tmp_path / f"queued{number:02d}"
        path.write_bytes(pathlib.Path(base).read_bytes())
        path.chmod(0o755)
        programs.append(str(path))

    def unlimited() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
    with registered_handler(tmp_path, analysis=False) as handler, \
            private_socket_path() as socket_path:
        ready_r, ready_w = os.pipe()
        server = subprocess.Popen(
            [HANDLER, "serve", "--socket", socket_path, "--config", handler.config_path,
             "--workers", "1", "--ready-fd", str(ready_w)], pass_fds=(ready_w,),
            stdin=subprocess.DEVNULL)
        os.close(ready_w)
        try:
            assert os.read(ready_r, 1) == b"R"
            with core_pattern(f"@@{socket_path}", 16):
                crashers = [subprocess.Popen([exe], preexec_fn=unlimited)  # noqa: PLW1509
                            for exe in programs]
                _wait_dumping(crashers)  # one being served, the rest queued
            server.terminate()
            assert server.wait(120) == 0
            assert not os.path.exists(socket_path)  # a server that bound it unlinks it
        finally:
            os.close(ready_r)
            if server.poll() is None:
                server.kill()
                server.wait()
        for crasher in crashers:
            crasher.wait(60)
        rows = [handler.wait_row(c.pid, wait_analysis=False, timeout=60) for c in crashers]
        wait_for_handlers(handler.config_path)
    assert all(r["core_state"] == "present" and r["facts"]["front_door"] == "socket"
               for r in rows)


@pytest.mark.kernel
def test_install_socket_then_uninstall_stops_what_it_started(tmp_path):
    from coredumpd.pipeline import daemon, install
    exe = compile_c(TINY, tmp_path, name="installed")
    saved = tmp_path / "saved-sysctl"
    with registered_handler(tmp_path, analysis=False) as handler, \
            private_socket_path() as socket_path, core_pattern("core", 16):
        pattern = install.install_mode(handler.config_path, "socket", saved_path=str(saved),
                                       handler=HANDLER, socket_path=socket_path)
        supervisor = daemon.running_supervisor(str(saved))
        try:
            assert pattern == _pattern() == f"@@{socket_path}" and supervisor is not None
            row = handler.wait_row(_crash(exe), wait_analysis=False)
            assert row["facts"]["front_door"] == "socket"
            restored = install.uninstall(str(saved), launcher_dir=str(tmp_path / "none"))
        finally:
            daemon.stop_supervisor(str(saved))
            wait_for_handlers(handler.config_path)
        assert restored["core_pattern"] == _pattern() == "core"
        assert not os.path.exists(f"/proc/{supervisor}") or \
            "Z" in pathlib_read(f"/proc/{supervisor}/stat").split()[2]
        assert not os.path.exists(socket_path)


def test_shipped_unit_runs_the_supervisor_and_puts_the_pipe_back():
    """coredumpd.service: Restart=always, the supervisor as ExecStart, the pipe handler
    registered by ExecStopPost; each command line is one our parser accepts."""
    import configparser
    import pathlib
    import shlex

    from coredumpd.pipeline.main import build_parser
    unit = pathlib.Path(__file__).resolve().parents[2] / "systemd" / "coredumpd.service"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    service = parser["Service"]
    assert service["Restart"] == "always" and service["KillMode"] == "mixed"
    start = build_parser().parse_args(shlex.split(service["ExecStart"])[1:])
    assert start.command == "serve" and start.supervise
    stop = build_parser().parse_args(shlex.split(service["ExecStopPost"])[1:])
    assert stop.command == "install" and stop.mode == "pipe"
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, check=False)
    problems = [line for line in result.stderr.splitlines()
                if "is not executable" not in line]  # /usr/local/bin/coredumpd: not here
    assert problems == []


@pytest.mark.kernel
def test_supervisor_killed_the_server_puts_the_pipe_back(tmp_path):
    """SIGKILL to the supervisor: its server gets SIGTERM (PR_SET_PDEATHSIG), serves
    its queue and switches core_pattern back to the pipe itself; crashes stay stored."""
    exe = compile_c(TINY, tmp_path, name="orphaned")
    with serving(tmp_path, analysis=False) as (handler, supervisor):
        server = supervisor.server_pid()
        supervisor.process.kill()
        _wait_pattern(handler.pattern, timeout=30)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{server}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{server}")
        row = handler.wait_row(_crash(exe), wait_analysis=False)
    assert row["facts"]["front_door"] == "pipe" and row["core_state"] == "present"


@pytest.mark.kernel
def test_socket_pattern_put_back_while_no_server_accepts_becomes_the_pipe(tmp_path):
    """Someone (a test, an administrator) swapped core_pattern; the server died while
    their pattern was in force, so the supervisor's compare-and-swap to the pipe left it
    alone; then they put the socket pattern back while the supervisor waits to restart
    the server.  The supervisor notices (it looks every RECHECK_SEC while no server
    accepts) and puts the pipe handler back: a crash then is stored, not held."""
    from coredumpd.pipeline.supervise import RECHECK_SEC
    exe = compile_c(TINY, tmp_path, name="putback")
    someone = f"{tmp_path}/elsewhere/core.%P"  # a file pattern: nothing runs for a crash
    # restart_sec 60: the restart waits 30 s (RESTART_MAX_SEC), far longer than the test
    with serving(tmp_path, restart_sec=60.0, analysis=False,
                 rate_limit_burst=1000) as (handler, supervisor):
        server = supervisor.server_pid()
        _write_pattern(someone)  # the lock is held: supervised()'s core_pattern()
        os.kill(server, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while pathlib_read(f"/proc/{supervisor.process.pid}/task/{supervisor.process.pid}"
                           "/children").split():  # until the supervisor reaped it
            assert time.monotonic() < deadline, "the supervisor did not reap its server"
            time.sleep(0.02)
        assert _pattern() == someone  # theirs: not the supervisor's to replace
        _write_pattern(supervisor.socket_pattern)  # they put back what they found
        put_back = time.monotonic()
        _wait_pattern(handler.pattern, timeout=10)
        noticed = time.monotonic() - put_back
        assert not pathlib_read(f"/proc/{supervisor.process.pid}/task/"
                                f"{supervisor.process.pid}/children").split()  # still down
        row = handler.wait_row(_crash(exe), wait_analysis=False, timeout=60)
    assert noticed < RECHECK_SEC + 2, noticed
    assert row["facts"]["front_door"] == "pipe" and row["core_state"] == "present"
