"""corectl reanalyze with a real debuginfod server (issue 10): symbols by build-id.

A stripped program crashes through the kernel and the handler: its own frames
have no names (the handler's analysis has no DEBUGINFOD_URLS, and never fetches
while the process is held).  Then a ``debuginfod`` (elfutils' server, Debian
package ``debuginfod``) started here on 127.0.0.1 serves a directory holding the
program's separate debug file, and ``corectl reanalyze`` with DEBUGINFOD_URLS
fetches it by build-id into elfutils' cache layout and names every frame as gdb
does on the unstripped build.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from coredumpd.cli.corectl import main as corectl
from tests.annotate.crashing import PROGRAMS, Crash
from tests.annotate.test_binaries_that_ran import _gdb_names, _same_names_as_gdb
from tests.support.crash import registered_handler

pytestmark = pytest.mark.kernel


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def debuginfod_server(directory: str, work: str, build_id: str) -> Iterator[str]:
    """``debuginfod -F DIRECTORY`` on a free port of 127.0.0.1, until it serves
    ``build_id``'s debuginfo; yields its URL."""
    if shutil.which("debuginfod") is None:
        pytest.fail("debuginfod is not installed (setup.sh installs the Debian package)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(["debuginfod", "-p", str(port), "-d", f"{work}/db.sqlite",
                               "-F", "-t", "1", directory],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/buildid/{build_id}/debuginfo", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("debuginfod never served the debug file") from None
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(10)


def _build(out) -> tuple[str, str]:
    """prog (stripped: no symbols of its own), prog.full, and served/prog.debug."""
    out.mkdir()
    subprocess.run(["sh", str(PROGRAMS / "ran" / "build.sh"), str(out)], check=True)
    prog = str(out / "prog")
    shutil.copy2(prog, out / "prog.full")
    (out / "served").mkdir()
    subprocess.run(["objcopy", "--only-keep-debug", prog, str(out / "served" / "prog.debug")],
                   check=True)
    subprocess.run(["strip", "--strip-all", prog], check=True)
    text = subprocess.run(["readelf", "-n", prog], capture_output=True, text=True,
                          check=True).stdout
    build_id = text.split("Build ID:", 1)[1].split()[0]
    return prog, build_id


def _symbols(row) -> list[str | None]:
    return [frame["symbol"] for frame in row["analysis"]["threads"][0]["frames"]]


def test_reanalyze_fetches_debug_info_from_debuginfod(tmp_path):
    out = tmp_path / "ran"
    prog, build_id = _build(out)
    with registered_handler(tmp_path) as handler:
        row = handler.crash(["/bin/sh", str(PROGRAMS / "ran" / "run.sh"), str(out), "plain"],
                            pidfile=str(out / "prog.pid"))
        assert "ran_crash" not in _symbols(row)  # stripped, nothing fetched yet
        cache = tmp_path / "cache"
        with debuginfod_server(str(out / "served"), str(tmp_path), build_id) as url:
            env = {"DEBUGINFOD_URLS": url, "DEBUGINFOD_CACHE_PATH": str(cache),
                   "DEBUGINFOD_TIMEOUT": "10", "PATH": os.environ.get("PATH", "")}
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                status = corectl(["--config", handler.config_path, "reanalyze", row["id"]], env)
            assert status == 0, stdout.getvalue()
        assert (cache / build_id / "debuginfo").is_file()  # elfutils' cache layout
        again = handler.wait_row(row["pid"])
        module = next(m for m in again["analysis"]["modules"] if m["path"] == prog)
        assert module["symbols_from"] == "debuginfod"
        assert module["debug_file"] == str(cache / build_id / "debuginfo")
        libc = next(m for m in again["analysis"]["modules"] if "/libc.so" in m["path"])
        assert libc["symbols_from"] in ("file", "debug file")
        result = Crash(again["analysis"], again["facts"], "handler", again, again["core_path"])
        gdb = _gdb_names(result, str(out / "prog.full"), tmp_path)
        assert gdb[:3] == ["ran_crash", "ran_middle", "main"], gdb
        _same_names_as_gdb(result, gdb)
        analyzed = io.StringIO()  # corectl analyze of the raw core: in-process, it fetches
        env["DEBUGINFOD_CACHE_PATH"] = str(tmp_path / "cache2")
        (tmp_path / "db2").mkdir()
        with debuginfod_server(str(out / "served"), str(tmp_path / "db2"), build_id) as url:
            env["DEBUGINFOD_URLS"] = url
            with contextlib.redirect_stdout(analyzed):
                assert corectl(["--no-pager", "--json", "analyze", str(tmp_path / "core.raw"),
                                "--exe", prog], env) == 0
        assert (tmp_path / "cache2" / build_id / "debuginfo").is_file()
        assert '"symbol": "ran_crash"' in analyzed.getvalue()
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown):
            corectl(["--config", handler.config_path, "--no-pager", "show", row["id"]], {})
        assert "symbols from debuginfod" in shown.getvalue()


def test_reanalyze_without_a_server_keeps_going(tmp_path):
    """An unreachable server is a warning, never a failed reanalysis."""
    out = tmp_path / "ran"
    _prog, _build_id = _build(out)
    with registered_handler(tmp_path) as handler:
        row = handler.crash(["/bin/sh", str(PROGRAMS / "ran" / "run.sh"), str(out), "plain"],
                            pidfile=str(out / "prog.pid"))
        env = {"DEBUGINFOD_URLS": f"http://127.0.0.1:{_free_port()}",
               "DEBUGINFOD_CACHE_PATH": str(tmp_path / "cache"), "DEBUGINFOD_TIMEOUT": "2"}
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = corectl(["--config", handler.config_path, "reanalyze", row["id"]], env)
        assert status == 0
        assert "analysis done" in stdout.getvalue()
        assert "debuginfod http://127.0.0.1" in stderr.getvalue()
