"""``corectl analyze`` through the analysis worker of a real ``coredumpd serve``.

Each server here is private: its sockets in a directory of the test's own under
/tmp, a configuration of its own, and ``kernel.core_pattern`` never pointed at it
(so a host's own installed server, with its worker on /run/coredumpd, is neither
used nor disturbed: the clients here name the private socket in
COREDUMPD_ANALYZE_SOCKET).  Whether a run was served by the worker or fell back
to the in-process corectl is read from a side file written by the wrapper below
(in-process, ``coredumpd.cli.corectl`` is imported; served, it never is), never
from the command's own output, which must be the same either way.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pty
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from coredumpd.cli import client
from coredumpd.cli.corectl_spec import CORECTL
from coredumpd.paths import DEFAULT_ANALYZE_SOCKET
from tests.support.crash import HANDLER, write_config
from tests.support.terminal import read_all as terminal_output

REPO = pathlib.Path(__file__).resolve().parents[2]
CORES = REPO / "fixtures" / "cores"
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
# Runs the console script's main() and notes, in the file named by argv[1], the exit
# status and whether the in-process corectl was imported (the fallback).
# corectl's console script, from this checkout (python -c CLIENT ARGS...)
CLIENT = f"import sys; sys.path.insert(0, {str(REPO)!r}); from coredumpd.cli import client;" \
         " sys.exit(client.main())"
WRAPPER = """
import sys
sys.path.insert(0, {repo!r})
note = sys.argv.pop(1)
from coredumpd.cli import client
try:
    status = client.main()
finally:
    with open(note, "w") as handle:
        handle.write(("in-process" if "coredumpd.cli.corectl" in sys.modules else "served")
                     + "\\n")
sys.exit(status)
"""


class Server:
    """A private ``coredumpd serve`` with its analysis worker."""

    def __init__(self, directory: pathlib.Path, prefix: tuple[str, ...] = ()) -> None:
        self.prefix = prefix  # what runs the server (e.g. nice -n -5)
        self.directory = directory
        self.socket = str(directory / "analyze.socket")
        self.config = str(directory / "coredumpd.conf")
        self.log = directory / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    def note(self) -> str:
        """A path where a client of any user may write its note."""
        notes = self.directory / "notes"
        notes.mkdir(exist_ok=True)
        notes.chmod(0o1777)
        return tempfile.mktemp(prefix="note-", dir=str(notes))

    def start(self) -> None:
        write_config(self.config, str(self.directory / "store"), journal=False)
        os.chmod(self.config, 0o644)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [*self.prefix, HANDLER, "serve", "--socket", str(self.directory / "coredump.socket"),
                 "--analyze-socket", self.socket, "--workers", "1", "--config", self.config],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.wait_worker()

    def worker_pid(self) -> int | None:
        assert self.process is not None
        pid = self.process.pid
        for child in _read(f"/proc/{pid}/task/{pid}/children").split():
            if b"coredumpd.cli.worker" in _read_bytes(f"/proc/{child}/cmdline"):
                return int(child)
        return None

    def wait_worker(self, not_pid: int | None = None, timeout: float = 90) -> int:
        """The worker's PID once it accepts (another than ``not_pid``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.worker_pid()
            if pid is not None and pid != not_pid and os.path.exists(self.socket):
                with contextlib.suppress(OSError):
                    client._connect(self.socket).close()
                    return pid
            time.sleep(0.1)
        raise TimeoutError(f"no analysis worker: {self.log.read_text()}")

    def running_children(self) -> list[int]:
        pid = self.worker_pid()
        if pid is None:
            return []
        return [int(child) for child in _read(f"/proc/{pid}/task/{pid}/children").split()]

    def stop(self) -> None:
        """SIGTERM, which the server passes on to its worker; both must end."""
        if self.process is None or self.process.poll() is not None:
            return
        worker = self.worker_pid()
        self.process.terminate()
        try:
            self.process.wait(60)
        finally:
            if worker is not None and os.path.exists(f"/proc/{worker}"):
                os.kill(worker, signal.SIGKILL)  # a failure, but no process left behind
            self.process.kill()
            self.process.wait()


def _read(path: str) -> str:
    try:
        return pathlib.Path(path).read_text()
    except OSError:
        return ""


def _read_bytes(path: str) -> bytes:
    try:
        return pathlib.Path(path).read_bytes()
    except OSError:
        return b""


def running_server(prefix: str, command: tuple[str, ...] = ()) -> Iterator[Server]:
    """A private server with its analysis worker, in a new /tmp directory ``prefix``*
    (the body of the modules' ``server`` fixtures), run by ``command`` (e.g. nice)."""
    if os.geteuid() != 0:
        pytest.skip("the analysis worker becomes its clients: it runs as root")
    directory = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(directory, 0o755)  # the clients of other users reach the socket
    running = Server(directory, command)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from running_server("cdaw-")


def corectl(server: Server, *args: str, prefix: tuple[str, ...] = (), use_server: bool = True,
            env: dict[str, str] | None = None, wrapper: str = WRAPPER,
            **popen: object) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """The console script's main() as a process (in ``wrapper``, which notes how it ran),
    with ``env`` added to :func:`client_env`: (result, "served" or "in-process")."""
    note = server.note()
    environment = client_env(server) | {client.SOCKET_ENV: server.socket if use_server else ""}
    result = subprocess.run([*prefix, sys.executable, "-c", wrapper.format(repo=str(REPO)),
                             note, *args], capture_output=True, env=environment | (env or {}),
                            timeout=120, check=False, **popen)  # type: ignore[call-overload]
    how = pathlib.Path(note).read_text().strip()
    os.unlink(note)
    return result, how


@pytest.mark.parametrize("name,args", [
    ("abort", ["--no-pager", "analyze"]),
    ("abort", ["--json", "analyze"]),
    ("python", ["analyze", "--no-pager"]),
    ("threads", ["--json", "analyze", "--debug"]),
])
def test_same_output_served_and_in_process(server: Server, name: str, args: list[str]) -> None:
    core = str(CORES / name / "core.lz4")
    served, how = corectl(server, *args, core)
    local, local_how = corectl(server, *args, core, use_server=False)
    assert (how, local_how) == ("served", "in-process"), served.stderr
    assert served.returncode == local.returncode == 0, served.stderr
    assert served.stdout == local.stdout and served.stderr == local.stderr
    if "--json" in args:
        assert json.loads(served.stdout)["threads"]


def test_errors_are_the_same_and_other_commands_stay_in_process(server: Server,
                                                                tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "no-such-core")
    served, how = corectl(server, "analyze", missing)
    local, _ = corectl(server, "analyze", missing, use_server=False)
    assert how == "served" and served.returncode == local.returncode == 3
    assert served.stderr == local.stderr and b"no-such-core" in served.stderr
    for args in (["list"], ["analyze", "--help"], ["--js", "analyze", missing]):
        _result, how = corectl(server, *args)
        assert how == "in-process", args


def test_relative_paths_resolve_in_the_clients_directory(server: Server) -> None:
    directory = CORES / "abort"
    served, how = corectl(server, "--json", "analyze", "core.lz4", "--exe", "abort",
                          cwd=str(directory))
    local, _ = corectl(server, "--json", "analyze", "core.lz4", "--exe", "abort",
                       use_server=False, cwd=str(directory))
    assert how == "served" and served.returncode == 0, served.stderr
    assert served.stdout == local.stdout


def _as_nobody_possible() -> bool:
    return subprocess.run([*AS_NOBODY, sys.executable, "-c", "pass"], check=False).returncode == 0


def test_a_user_gets_the_analysis_as_that_user(server: Server) -> None:
    if not _as_nobody_possible():
        pytest.skip("this interpreter cannot be run by an unprivileged user here")
    directory = pathlib.Path(tempfile.mkdtemp(prefix="cdaw-user-", dir="/tmp"))
    try:
        os.chmod(directory, 0o755)
        core = directory / "core.lz4"
        shutil.copy(CORES / "abort" / "core.lz4", core)
        os.chmod(core, 0o600)  # root's alone: the user cannot read it, nor may its analysis
        served, how = corectl(server, "--json", "analyze", str(core), prefix=tuple(AS_NOBODY))
        local, _ = corectl(server, "--json", "analyze", str(core), prefix=tuple(AS_NOBODY),
                           use_server=False)
        assert how == "served"
        assert served.returncode == local.returncode == 3
        assert b"Permission denied" in served.stderr and served.stderr == local.stderr
        os.chmod(core, 0o644)
        served, how = corectl(server, "--json", "analyze", str(core), prefix=tuple(AS_NOBODY))
        local, _ = corectl(server, "--json", "analyze", str(core), prefix=tuple(AS_NOBODY),
                           use_server=False)
        assert how == "served" and served.returncode == 0, served.stderr
        assert served.stdout == local.stdout and served.stderr == local.stderr
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_another_mount_namespace_is_refused_and_runs_in_process(server: Server) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    core = str(CORES / "abort" / "core.lz4")
    served, how = corectl(server, "--json", "analyze", core, prefix=("unshare", "-m"))
    local, _ = corectl(server, "--json", "analyze", core, use_server=False)
    assert how == "in-process" and served.returncode == 0, served.stderr
    assert served.stdout == local.stdout
    assert "another mount namespace" in server.log.read_text()


def client_env(server: Server) -> dict[str, str]:
    """The environment of a corectl client of ``server``'s analysis worker."""
    return {"PATH": os.environ["PATH"], "COREDUMPD_CONFIG": server.config,
            client.SOCKET_ENV: server.socket}


def run_on_terminal(server: Server, args: list[str], use_server: bool) -> tuple[int, bytes, str]:
    """The wrapper with stdout on a pseudo-terminal: (status, what it showed, how)."""
    controller, terminal = pty.openpty()
    note = server.note()
    env = {"PATH": os.environ["PATH"], "COREDUMPD_CONFIG": server.config, "TERM": "xterm",
           "PAGER": "sed s/^/PAGED:/", client.SOCKET_ENV: server.socket if use_server else ""}
    child = subprocess.Popen([sys.executable, "-c", WRAPPER.format(repo=str(REPO)), note, *args],
                             stdout=terminal, stderr=subprocess.PIPE, env=env)
    os.close(terminal)
    shown = terminal_output(controller)
    status = child.wait(60)
    how = pathlib.Path(note).read_text().strip()
    os.unlink(note)
    return status, shown, how


def test_on_a_terminal_the_pager_and_colours_are_the_clients(server: Server) -> None:
    args = ["analyze", str(CORES / "abort" / "core.lz4")]
    served = run_on_terminal(server, args, use_server=True)
    local = run_on_terminal(server, args, use_server=False)
    assert (served[2], local[2]) == ("served", "in-process")
    assert served[0] == local[0] == 0
    assert b"PAGED:" in served[1] and b"\x1b[1m" in served[1]
    assert served[1] == local[1]


def _wait(condition, timeout: float = 30) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_interrupted_client_kills_its_child_and_children_are_bounded(
        server: Server, tmp_path: pathlib.Path) -> None:
    """Clients whose CORE is a FIFO nobody writes wait in open(2) in the worker's
    children; beyond MAX_CHILDREN a client is refused and runs in-process; Ctrl-C
    (SIGINT to the client) ends the client as in-process (status 130) and its child."""
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    env, code = client_env(server), CLIENT
    from coredumpd.cli import worker

    waiting = []
    try:
        for count in range(1, min(worker.MAX_CHILDREN, 4) + 1):
            waiting.append(subprocess.Popen([sys.executable, "-c", code, "analyze", fifo],
                                            env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE))
            assert _wait(lambda count=count: len(server.running_children()) == count)
        if worker.MAX_CHILDREN == len(waiting):
            busy, how = corectl(server, "--json", "analyze", str(CORES / "abort" / "core.lz4"))
            assert how == "in-process" and busy.returncode == 0
            assert "busy" in server.log.read_text()
        children = server.running_children()
        for pid in children:  # the client's (root's) credentials, confined
            status = _read(f"/proc/{pid}/status")
            assert "NoNewPrivs:\t1" in status and "Uid:\t0\t0\t0\t0" in status, status
        for process in waiting:
            process.send_signal(signal.SIGINT)
            _out, err = process.communicate(timeout=30)
            assert process.returncode == 130 and err == b"\n"
        assert _wait(lambda: not server.running_children())
        assert all(not os.path.exists(f"/proc/{pid}") for pid in children)
    finally:
        for process in waiting:
            process.kill()
            process.wait()


def test_worker_killed_is_restarted(server: Server) -> None:
    pid = server.wait_worker()
    os.kill(pid, signal.SIGKILL)
    new = server.wait_worker(not_pid=pid)
    assert new != pid
    served, how = corectl(server, "--json", "analyze", str(CORES / "abort" / "core.lz4"))
    assert how == "served" and served.returncode == 0


def test_worker_stops_with_the_server(tmp_path: pathlib.Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the analysis worker runs as root")
    directory = pathlib.Path(tempfile.mkdtemp(prefix="cdaw-", dir="/tmp"))
    own = Server(directory)
    try:
        own.start()
        pid = own.wait_worker()
        own.stop()
        assert _wait(lambda: not os.path.exists(f"/proc/{pid}"))
        assert not os.path.exists(own.socket)
    finally:
        own.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("argv,analyze", [
    (["analyze", "core"], True),
    (["--config", "c", "--json", "analyze", "core", "--exe", "x"], True),
    (["--config=c", "analyze", "--no-pager", "core", "--exe=x", "--debug"], True),
    (["analyze"], True),  # argparse's usage error, from the worker: the same text
    (["list"], False),
    (["--conf", "c", "analyze", "core"], False),  # an abbreviation: argparse decides
    (["analyze", "core", "--help"], False),
    (["analyze", "core", "-h"], False),
    (["analyze", "--", "core"], False),
    (["--config", "-x", "analyze", "core"], False),
    (["analyze", "core", "--exe"], False),
    ([], False),
    (["--help"], False),
])
def test_which_command_lines_go_to_the_worker(argv: list[str], analyze: bool) -> None:
    assert client.is_analyze(argv) is analyze


def test_the_clients_options_are_the_specs() -> None:
    flags = {option.flags[0] for option in CORECTL.shared_options if option.action}
    values = {option.flags[0] for option in CORECTL.shared_options if not option.action}
    assert all(len(option.flags) == 1 for option in CORECTL.shared_options)
    assert flags == client.FLAG_OPTIONS and values == client.VALUE_OPTIONS
    analyze = CORECTL.command(client.COMMAND)
    assert {option.flags[0] for option in analyze.options if not option.positional} == \
        client.ANALYZE_VALUE_OPTIONS
    assert client.DEFAULT_SOCKET == DEFAULT_ANALYZE_SOCKET


def test_the_console_script_is_the_client() -> None:
    script = pathlib.Path(sys.executable).parent / "corectl"
    if not script.exists():
        pytest.skip("no corectl console script beside this interpreter")
    assert "from coredumpd.cli.client import main" in script.read_text()


def test_the_worker_keeps_no_descriptor_of_the_server(tmp_path: pathlib.Path) -> None:
    """A server started as the supervisor starts it, on an inherited listening socket:
    the worker (and so the children that run as its clients) does not hold it."""
    if os.geteuid() != 0:
        pytest.skip("the analysis worker runs as root")
    import socket as socket_module

    directory = pathlib.Path(tempfile.mkdtemp(prefix="cdaw-", dir="/tmp"))
    capture = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    capture.bind(str(directory / "coredump.socket"))
    capture.listen(8)
    own = Server(directory)
    write_config(own.config, str(directory / "store"), journal=False)
    try:
        with open(own.log, "wb") as log:
            own.process = subprocess.Popen(
                [HANDLER, "serve", "--listen-fd", str(capture.fileno()),
                 "--socket", str(directory / "coredump.socket"), "--analyze-socket",
                 own.socket, "--workers", "1", "--config", own.config],
                pass_fds=[capture.fileno()], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        pid = own.wait_worker()
        inode = os.fstat(capture.fileno()).st_ino
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert f"socket:[{inode}]" not in held
        assert f"socket:[{inode}]" in {os.readlink(f"/proc/{own.process.pid}/fd/{fd}")
                                       for fd in os.listdir(f"/proc/{own.process.pid}/fd")}
    finally:
        own.stop()
        capture.close()
        shutil.rmtree(directory, ignore_errors=True)
