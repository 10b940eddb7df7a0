"""The analysis worker's children do their client's work in the client's place:
its cgroup, a nice value not above the client's, and a socket made without a race.

The server here runs at nice -5 (as coredumpd.service's ``Nice=-5``).  The cgroup is
a real one, made by the test in the unified (v2) hierarchy mounted here; the client
joins it before it connects, as a user's process is in its user-UID.slice.
"""

from __future__ import annotations

import os
import pathlib
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from coredumpd.cli import cgroups
from tests.cli.test_analysis_worker import CLIENT, REPO, Server, _wait, client_env, running_server


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from running_server("cdcg-", ("nice", "-n", "-5"))


def _nice(pid: int) -> int:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[16])  # the 19th field of proc(5), counted after "pid (comm)"


def _unified() -> cgroups.Mount:
    mounts = [mount for mount in cgroups.cgroup_mounts() if mount.unified]
    if not mounts:
        pytest.skip("no cgroup v2 hierarchy mounted")
    return mounts[0]


def _pids_v1() -> cgroups.Mount | None:
    """The v1 hierarchy of the pids controller (TasksMax= on a hybrid system), if any."""
    return next((mount for mount in cgroups.cgroup_mounts()
                 if not mount.unified and "pids" in mount.options), None)


@pytest.fixture()
def cgroup() -> Iterator[dict[cgroups.Mount, str]]:
    """A new cgroup in the unified hierarchy and, where it is mounted, in the v1 pids
    one: {mount: its path as /proc/PID/cgroup says}."""
    mounts = [mount for mount in (_unified(), _pids_v1()) if mount is not None]
    name = f"coredumpd-test-{os.getpid()}"
    made: dict[cgroups.Mount, str] = {}
    try:
        for mount in mounts:
            made[mount] = f"{mount.root.rstrip('/')}/{name}"
            os.mkdir(_directory(mount, made[mount]))
        yield made
    finally:
        for mount, path in made.items():
            directory = _directory(mount, path)
            for pid in pathlib.Path(directory, "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
            _wait(lambda directory=directory: not pathlib.Path(
                directory, "cgroup.procs").read_text().strip())
            os.rmdir(directory)


def _directory(mount: cgroups.Mount, path: str) -> str:
    return mount.mount_point.rstrip("/") + path[len(mount.root.rstrip("/")):]


def _membership(pid: int, mount: cgroups.Mount) -> str:
    return next(entry.path for entry in cgroups.read_memberships(pid)
                if entry.unified == mount.unified and entry.controllers <= mount.options)


def test_the_worker_runs_at_nice_0_not_at_the_servers(server: Server) -> None:
    assert server.process is not None and _nice(server.process.pid) == -5
    assert _nice(server.wait_worker()) == 0


def test_the_child_runs_in_its_clients_cgroup(server: Server, cgroup: dict[cgroups.Mount, str],
                                              tmp_path: pathlib.Path) -> None:
    """A client in cgroups of its own, whose CORE is a FIFO nobody writes: its child
    waits in open(2), in the client's cgroups (not the worker's), at the client's nice."""
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    # the children of wait_worker()'s probe connections gone: the next one is our client's
    assert _wait(lambda: not server.running_children())
    join = " && ".join(f"echo 0 > {_directory(mount, path)}/cgroup.procs"
                       for mount, path in cgroup.items())
    process = subprocess.Popen(["sh", "-c", f'{join} && exec nice -n 3 "$@"', "sh",
                                sys.executable, "-c", CLIENT, "analyze", fifo],
                               env=client_env(server), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        assert _wait(lambda: len(server.running_children()) == 1)
        (child,) = server.running_children()
        # its nice value is set after the cgroups are joined (worker.become), before the
        # request is read: then it waits in open(2)
        assert _wait(lambda: _nice(child) == 3)
        worker = server.worker_pid()
        assert worker is not None
        for mount, path in cgroup.items():
            assert _membership(child, mount) == path, mount
            assert _membership(worker, mount) != path, mount
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert _wait(lambda: not server.running_children())


def test_a_cgroup_that_cannot_be_joined_is_an_error() -> None:
    """What makes the child refuse (the client then runs the command itself)."""
    mount = _unified()
    with pytest.raises(FileNotFoundError):
        cgroups.join([cgroups.Membership(frozenset(), f"{mount.root.rstrip('/')}/no-such-cg")],
                     [mount])
    with pytest.raises(OSError, match="not mounted"):
        cgroups.join([cgroups.Membership(frozenset(), "/no-such-cg")], [])


BIND = """
import sys
sys.path.insert(0, {repo!r})
from {module} import {function}
{function}(sys.argv[1])
"""


@pytest.mark.parametrize("module,function,mode", [
    ("coredumpd.cli.worker", "bind", 0o666),  # --analyze-socket
    ("coredumpd.pipeline.serve", "bind_listener", 0o600),  # --socket
])
def test_sockets_are_bound_with_their_mode_never_chmodded_by_path(
        module: str, function: str, mode: int) -> None:
    """bind(2) in a directory that others may write, traced: no chmod(2) by path (it
    would follow a symlink put at that name), the socket bound in a directory of its
    own and renamed into place, with its mode from the start."""
    directory = tempfile.mkdtemp(prefix="cdbind-", dir="/tmp")
    try:
        os.chmod(directory, 0o1777)
        path = os.path.join(directory, "analyze.socket")
        trace = os.path.join(directory, "trace")
        subprocess.run(["strace", "-f", "-qq", "-o", trace, "-e",
                        "trace=chmod,fchmodat,fchmod,bind,rename,renameat,renameat2",
                        sys.executable, "-c", BIND.format(repo=str(REPO), module=module,
                                                          function=function), path],
                       check=True, timeout=120)
        calls = pathlib.Path(trace).read_text()
        assert "chmod(" not in calls and "fchmodat(" not in calls, calls
        (bound,) = [line for line in calls.splitlines() if " bind(" in line]
        assert f'sun_path="{directory}/' in bound and f'sun_path="{path}"' not in bound
        assert stat.S_IMODE(os.lstat(path).st_mode) == mode
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert sorted(os.listdir(directory)) == ["analyze.socket", "trace"]
    finally:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
