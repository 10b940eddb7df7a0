"""The debuginfod client: elfutils' environment, cache layout and limits (image/debuginfod.py).

The end-to-end test against elfutils' own server is tests/cli/test_reanalyze_debuginfod.py;
here a tiny HTTP server stands in to make 404s, sizes and the order of servers exact."""

from __future__ import annotations

import http.server
import threading
from typing import ClassVar

import pytest

from coredumpd.image.debuginfod import DEFAULT_TIMEOUT, Debuginfod, cache_path

BUILD_ID = "ab" * 20


def test_cache_path_as_elfutils():
    assert cache_path({"DEBUGINFOD_CACHE_PATH": "/c", "HOME": "/h"}) == "/c"
    assert cache_path({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == "/x/debuginfod_client"
    assert cache_path({"HOME": "/h"}) == "/h/.cache/debuginfod_client"
    assert cache_path({}) is None


def test_from_env():
    assert Debuginfod.from_env({"HOME": "/h"}) is None
    client = Debuginfod.from_env({"DEBUGINFOD_URLS": "http://a http://b", "HOME": "/h",
                                  "DEBUGINFOD_TIMEOUT": "5", "DEBUGINFOD_MAXSIZE": "100"})
    assert client == Debuginfod(("http://a", "http://b"), "/h/.cache/debuginfod_client", 5.0,
                                None, 100)
    assert Debuginfod.from_env({"DEBUGINFOD_URLS": "http://a", "HOME": "/h",
                                "DEBUGINFOD_TIMEOUT": "x"}).timeout == DEFAULT_TIMEOUT


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    asked: ClassVar[list[str]] = []

    def do_GET(self):
        self.asked.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.files, _Handler.asked = {}, []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_into_the_cache_layout_second_server_after_a_404(server, tmp_path):
    _Handler.files = {f"/b/buildid/{BUILD_ID}/debuginfo": b"\x7fELF debug"}
    client = Debuginfod((f"{server}/a", f"{server}/b"), str(tmp_path))
    problems: list[str] = []
    path = client.find(BUILD_ID, "debuginfo", problems)
    assert path == str(tmp_path / BUILD_ID / "debuginfo") and problems == []
    with open(path, "rb") as handle:
        assert handle.read() == b"\x7fELF debug"
    assert _Handler.asked == [f"/a/buildid/{BUILD_ID}/debuginfo",
                              f"/b/buildid/{BUILD_ID}/debuginfo"]
    assert client.find(BUILD_ID, "debuginfo", problems) == path  # the cache: not asked again
    assert len(_Handler.asked) == 2


def test_misses_are_not_cached_and_limits_hold(server, tmp_path):
    client = Debuginfod((server,), str(tmp_path), maxsize=4)
    problems: list[str] = []
    assert client.find(BUILD_ID, "executable", problems) is None and problems == []
    _Handler.files = {f"/buildid/{BUILD_ID}/executable": b"0123456789"}
    assert client.find(BUILD_ID, "executable", problems) is None
    assert "DEBUGINFOD_MAXSIZE" in problems[0]
    directory = tmp_path / BUILD_ID
    assert not directory.exists() or list(directory.iterdir()) == []  # nothing half-written
    assert Debuginfod((server,), str(tmp_path)).find(BUILD_ID, "executable", []) is not None


def test_hostile_build_ids_and_kinds(tmp_path):
    client = Debuginfod(("http://127.0.0.1:9",), str(tmp_path))
    assert client.find("../../etc/passwd", "debuginfo", []) is None
    assert client.find(BUILD_ID, "source", []) is None
