"""DebuginfodURLs=: the handler's own analysis fetches from debuginfod (issue 15).

The kernel starts the handler with an empty environment, so DEBUGINFOD_URLS never
reaches it; the configuration names the servers instead.  A stripped program
crashes under the real handler while a real ``debuginfod -F`` on 127.0.0.1 serves
its debug file: the analysis stored for the crash names its frames as gdb does
on the unstripped build, the file lands in DIR/debuginfod by build-id, and the
sandboxed analysis (another user) read it there.
"""

from __future__ import annotations

import os
import stat

import pytest

from coredumpd.config import ConfigFileError, load_config
from tests.annotate.crashing import PROGRAMS
from tests.cli.test_reanalyze_debuginfod import _build, _free_port, _symbols, debuginfod_server
from tests.support.crash import registered_handler

pytestmark = pytest.mark.kernel


def _crash(handler, out):
    return handler.crash(["/bin/sh", str(PROGRAMS / "ran" / "run.sh"), str(out), "plain"],
                         pidfile=str(out / "prog.pid"))


def test_handler_analysis_fetches_from_the_configured_server(tmp_path):
    out = tmp_path / "ran"
    prog, build_id = _build(out)
    with debuginfod_server(str(out / "served"), str(tmp_path), build_id) as url, \
            registered_handler(tmp_path, debuginfod_urls=url) as handler:
        row = _crash(handler, out)
    assert _symbols(row)[:3] == ["ran_crash", "ran_middle", "main"], _symbols(row)
    fetched = os.path.join(handler.directory, "debuginfod", build_id, "debuginfo")
    assert os.path.isfile(fetched)
    assert stat.S_IMODE(os.stat(os.path.dirname(fetched)).st_mode) == 0o755
    module = next(m for m in row["analysis"]["modules"] if m["path"] == prog)
    assert module["symbols_from"] == "debuginfod" and module["debug_file"] == fetched


def test_without_the_key_nothing_is_fetched(tmp_path):
    """The same crash with DebuginfodURLs= empty (the default): no names, no fetch."""
    out = tmp_path / "ran"
    _build(out)
    with registered_handler(tmp_path) as handler:
        row = _crash(handler, out)
    assert "ran_crash" not in _symbols(row)
    assert not os.path.exists(os.path.join(handler.directory, "debuginfod"))


def test_an_unreachable_server_is_a_problem_not_a_failure(tmp_path):
    out = tmp_path / "ran"
    _build(out)
    url = f"http://127.0.0.1:{_free_port()}"
    with registered_handler(tmp_path, debuginfod_urls=url) as handler:
        row = _crash(handler, out)
    assert row["analysis_state"] == "done"
    assert any(problem.startswith(f"debuginfod {url}")
               for problem in row["analysis"]["problems"]), row["analysis"]["problems"]


@pytest.mark.parametrize("value", ["ftp://example.org", "127.0.0.1:8002", "http://"])
def test_install_refuses_a_bad_url(tmp_path, value):
    path = tmp_path / "c.conf"
    path.write_text(f"[Coredump]\nDebuginfodURLs=http://ok.example {value}\n")
    with pytest.raises(ConfigFileError, match="line 2: DebuginfodURLs="):
        load_config(str(path))


def test_urls_are_read_space_separated(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text("[Coredump]\nDebuginfodURLs=http://a.example:8002 https://b.example/x\n")
    assert load_config(str(path)).debuginfod_urls == ("http://a.example:8002",
                                                      "https://b.example/x")
