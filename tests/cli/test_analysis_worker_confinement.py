"""The analysis worker's child is never less confined than its client.

The worker (``coredumpd serve``'s, root, unconfined) forks a child per request
that takes the client's credentials.  Whatever confined the client and is not
one of those credentials would be lost in the child: the capabilities of a root
client (a root that dropped them, as a service with CapabilityBoundingSet= or
``setpriv`` does), its namespaces (network, IPC, PID, ...), its seccomp filter,
its root directory, its OOM score.  A client so confined must be refused (it
then runs the command itself, confined); one that is served gets a child with
its own OOM score, not the server's (``OOMScoreAdjust=-500`` in the unit).

Each attack here is run both ways: the in-process corectl shows what the
confinement allows, the served one must not allow more.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from tests.cli.test_analysis_worker import (
    AS_NOBODY,
    CLIENT,
    CORES,
    REPO,
    WRAPPER,
    Server,
    _as_nobody_possible,
    _read,
    _wait,
    client_env,
    corectl,
    running_server,
)

NOBODY = 65534
CAPLESS_ROOT = ("setpriv", "--bounding-set=-all", "--inh-caps=-all")

# A client under a seccomp filter that refuses socket(AF_INET, ...) with EPERM, then
# the wrapper of test_analysis_worker (x86_64 syscall number; seccomp_data: nr at 0,
# args[0] at 16).
SECCOMP_WRAPPER = """
import ctypes, sys
class Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Insn))]
insns = (Insn * 6)(Insn(0x20, 0, 0, 0), Insn(0x15, 0, 3, 41), Insn(0x20, 0, 0, 16),
                   Insn(0x15, 0, 1, 2), Insn(0x06, 0, 0, 0x00050000 | 1),
                   Insn(0x06, 0, 0, 0x7fff0000))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, ctypes.byref(Prog(6, insns)), 0, 0) == 0
""" + WRAPPER


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from running_server("cdawc-")


@pytest.fixture
def private_core() -> Iterator[pathlib.Path]:
    """A copy of a fixture core that only nobody may read (mode 0600, nobody's)."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix="cdawc-core-", dir="/tmp"))
    try:
        os.chmod(directory, 0o755)
        core = directory / "core.lz4"
        shutil.copy(CORES / "abort" / "core.lz4", core)
        os.chown(core, NOBODY, NOBODY)
        os.chmod(core, 0o600)
        yield core
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_root_client_without_capabilities_gets_none_from_the_worker(
        server: Server, private_core: pathlib.Path) -> None:
    """A root that gave up its capabilities cannot read another user's 0600 file; the
    worker's child, root with all of the worker's capabilities, could."""
    local, local_how = corectl(server, "--json", "analyze", str(private_core),
                               prefix=CAPLESS_ROOT, use_server=False)
    assert local_how == "in-process"
    assert local.returncode == 3 and b"Permission denied" in local.stderr, local.stderr
    served, how = corectl(server, "--json", "analyze", str(private_core), prefix=CAPLESS_ROOT)
    assert served.returncode == 3 and served.stdout == b"", served.stdout[:200]
    assert how == "in-process" and served.stderr == local.stderr
    assert "capabilities" in server.log.read_text()


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def debuginfod() -> Iterator[tuple[dict[str, str], list[str]]]:
    """A debuginfod server on 127.0.0.1 of this network namespace that records what it
    is asked (the environment naming it, the list of requests)."""
    _Recorder.hits = []
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    cache = tempfile.mkdtemp(prefix="cdawc-dcache-", dir="/tmp")
    try:
        yield ({"DEBUGINFOD_URLS": f"http://127.0.0.1:{httpd.server_port}",
                "DEBUGINFOD_CACHE_PATH": cache}, _Recorder.hits)
    finally:
        httpd.shutdown()
        httpd.server_close()
        shutil.rmtree(cache, ignore_errors=True)


def test_a_client_in_its_own_network_namespace_reaches_no_other_network(
        server: Server, debuginfod: tuple[dict[str, str], list[str]]) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    env, hits = debuginfod
    core = str(CORES / "abort" / "core.lz4")
    in_host, _ = corectl(server, "--json", "analyze", core, use_server=False, env=env)
    assert in_host.returncode == 0 and hits, "the analysis asks debuginfod: else no test"
    hits.clear()
    served, how = corectl(server, "--json", "analyze", core, prefix=("unshare", "-n"), env=env)
    assert served.returncode == 0, served.stderr
    assert hits == [], "the client's analysis asked a server outside its network namespace"
    assert how == "in-process"
    assert "another net namespace" in server.log.read_text()


def test_a_client_under_a_seccomp_filter_is_not_served_without_it(
        server: Server, debuginfod: tuple[dict[str, str], list[str]]) -> None:
    """The filter refuses IPv4 sockets: the analysis' debuginfod requests must fail."""
    env, hits = debuginfod
    core = str(CORES / "abort" / "core.lz4")
    local, local_how = corectl(server, "--json", "analyze", core, use_server=False, env=env,
                               wrapper=SECCOMP_WRAPPER)
    assert local_how == "in-process" and local.returncode == 0, local.stderr
    assert hits == []
    served, how = corectl(server, "--json", "analyze", core, env=env, wrapper=SECCOMP_WRAPPER)
    assert served.returncode == 0, served.stderr
    assert hits == [], "the client's analysis escaped its seccomp filter"
    assert how == "in-process"
    assert "seccomp" in server.log.read_text()


def test_a_client_with_another_root_directory_is_refused(server: Server) -> None:
    """A root client chrooted into the socket's own directory (so it reaches the socket)
    is told no, before the worker forks (the root directory is compared by its path,
    never by stat(2) of the client's root, which a FUSE root could hang)."""
    code = f"""
import os, socket, sys
sys.path.insert(0, {str(REPO)!r})
from coredumpd.cli import client
os.chroot({str(server.directory)!r})
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect("/analyze.socket")
print(client.read_frame(sock))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"('refused'") and b"another root directory" in \
        result.stdout, result.stdout


def _opening_fifo(server: Server, directory: pathlib.Path) -> int | None:
    """The worker's child that runs a command from ``directory`` and waits in openat(2)
    (x86_64: 257) of a FIFO there; None while there is none (another child may be the
    fixture's probe connection, ending)."""
    for pid in server.running_children():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd == str(directory) and _read(f"/proc/{pid}/syscall").startswith("257 "):
            return pid
    return None


def _oom_score_adj(pid: int) -> int:
    return int(_read(f"/proc/{pid}/oom_score_adj") or "nan")


@contextlib.contextmanager
def oom_score_adj_of(pid: int, value: int) -> Iterator[None]:
    before = _oom_score_adj(pid)
    pathlib.Path(f"/proc/{pid}/oom_score_adj").write_text(str(value))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            pathlib.Path(f"/proc/{pid}/oom_score_adj").write_text(str(before))


def test_the_child_has_its_clients_oom_score_not_the_servers(
        server: Server, private_core: pathlib.Path) -> None:
    """coredumpd.service runs the server (so its worker) with OOMScoreAdjust=-500: a
    user's analysis, as large as the core it is given, must not be shielded so.  (The
    worker's score is raised here, not lowered: lowering takes CAP_SYS_RESOURCE, which
    a test may not have; either way the child must have its client's.)"""
    if not _as_nobody_possible():
        pytest.skip("this interpreter cannot be run by an unprivileged user here")
    fifo = private_core.parent / "fifo"  # a user's analysis waits in its open(2)
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    env, code = client_env(server), CLIENT
    worker = server.wait_worker()
    with oom_score_adj_of(worker, 500):
        user = subprocess.Popen([*AS_NOBODY, sys.executable, "-c", code, "analyze", str(fifo)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=str(fifo.parent))
        try:
            assert _wait(lambda: _opening_fifo(server, fifo.parent) is not None)
            child = _opening_fifo(server, fifo.parent)
            assert child is not None and "Uid:\t65534" in _read(f"/proc/{child}/status")
            assert _oom_score_adj(child) == _oom_score_adj(user.pid) != 500
        finally:
            user.send_signal(signal.SIGINT)
            user.wait(30)
    assert _wait(lambda: _opening_fifo(server, fifo.parent) is None)


def test_a_child_killed_by_a_core_signal_dumps_no_core_nor_does_its_client(
        server: Server, private_core: pathlib.Path) -> None:
    """The child is not dumpable; the client dies by the child's signal (its exit status
    must say so), but a core of the client would be a crash that never happened there
    (kill(2) of itself), sent to our own handler: it must not dump either."""
    from tests.support import kernel

    if not kernel.can_swap_core_pattern():
        pytest.skip("core_pattern cannot be set here")
    fifo = private_core.parent / "fifo"
    os.mkfifo(fifo)
    cores = pathlib.Path(tempfile.mkdtemp(prefix="cdawc-cores-", dir="/tmp"))
    env = client_env(server)
    code = f"import resource, sys; sys.path.insert(0, {str(REPO)!r});" \
           " resource.setrlimit(resource.RLIMIT_CORE, (-1, -1));" \
           " from coredumpd.cli import client; sys.exit(client.main())"
    try:
        with kernel.core_pattern(f"{cores}/core.%P"):
            user = subprocess.Popen([sys.executable, "-c", code, "analyze", str(fifo)],
                                    env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, cwd=str(cores))
            try:
                assert _wait(lambda: _opening_fifo(server, cores) is not None)
                child = _opening_fifo(server, cores)
                assert child is not None
                os.kill(child, signal.SIGSEGV)
                assert user.wait(30) == -signal.SIGSEGV
            finally:
                user.kill()
                user.wait()
        assert sorted(os.listdir(cores)) == [], f"client {user.pid}, child {child}"
    finally:
        shutil.rmtree(cores, ignore_errors=True)


def test_refusals_in_a_loop_do_not_fill_the_servers_log() -> None:
    """Any local user may connect; one refused in a loop (here: from another mount
    namespace) gets its answer each time, and the server's log a bounded number of
    lines (the next line logged in a later window says how many were not)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1)")
    from coredumpd.cli import worker

    directory = pathlib.Path(tempfile.mkdtemp(prefix="cdawc-", dir="/tmp"))
    os.chmod(directory, 0o755)
    own = Server(directory)
    count = 3 * worker.REFUSAL_LOG_BURST
    code = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from coredumpd.cli import client
for _ in range({count}):
    sock = client._connect({str(own.socket)!r})
    assert client.read_frame(sock)[0] == client.REFUSED
    sock.close()
"""
    try:
        own.start()
        before = own.log.read_text().count("refused")
        result = subprocess.run(["unshare", "-m", sys.executable, "-c", code],
                                capture_output=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        lines = own.log.read_text().count("refused") - before
        assert 1 <= lines <= worker.REFUSAL_LOG_BURST, lines
    finally:
        own.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_one_user_cannot_take_every_slot(server: Server, private_core: pathlib.Path) -> None:
    """A user's commands that never end (CORE a FIFO nobody writes) hold at most
    USER_CHILDREN_MAX of the worker's children: another user is still served."""
    if not _as_nobody_possible():
        pytest.skip("this interpreter cannot be run by an unprivileged user here")
    from coredumpd.cli import worker

    fifo = private_core.parent / "fifo"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    env, code = client_env(server), CLIENT
    users = []
    try:
        for _ in range(worker.MAX_CHILDREN):
            users.append(subprocess.Popen(
                [*AS_NOBODY, sys.executable, "-c", code, "analyze", str(fifo)], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(fifo.parent)))
            # waiting: in openat(2) of the FIFO itself (refused), or in recvfrom(2) for
            # the worker's answer (served); x86_64 numbers
            assert _wait(lambda: _read(f"/proc/{users[-1].pid}/syscall").startswith(
                ("257 ", "45 ")))
        assert sum(f"Uid:\t{NOBODY}\t" in _read(f"/proc/{pid}/status")
                   for pid in server.running_children()) <= worker.USER_CHILDREN_MAX
        served, how = corectl(server, "--json", "analyze", str(CORES / "abort" / "core.lz4"))
        assert how == "served" and served.returncode == 0, served.stderr
        assert f"commands of uid {NOBODY} running" in server.log.read_text()
    finally:
        for user in users:
            user.kill()
            user.wait()
    assert _wait(lambda: _opening_fifo(server, fifo.parent) is None)
