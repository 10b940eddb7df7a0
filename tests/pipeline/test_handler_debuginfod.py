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


def _lacking_everything(count: int):
    from coredumpd.model import AnalysisResult, CrashRecord, Module
    result = AnalysisResult()
    result.modules = [Module(path=f"/lib/m{n}.so", start=0, end=1, build_id=f"{n:040x}",
                             file_build_id=f"{n:040x}") for n in range(count)]
    return CrashRecord(pid=1, timestamp_us=0), result


def test_a_core_claiming_many_modules_gets_few_asked(tmp_path):
    """Build-ids are the core's claims: at most DEBUGINFOD_ASKS_MAX files are asked for."""
    from coredumpd.image.debuginfod import Debuginfod
    from coredumpd.pipeline import analyze_job
    record, result = _lacking_everything(100)
    client = Debuginfod((f"http://127.0.0.1:{_free_port()}",), str(tmp_path), timeout=2)
    problems: list[str] = []
    assert not analyze_job.fetch_lacking(client, record, result, problems, 60)
    assert sum(problem.startswith("debuginfod http://") for problem in problems) == \
        analyze_job.DEBUGINFOD_ASKS_MAX
    assert problems[-1] == "debuginfod: 36 of 100 files not asked for (at most 64, 60 s)"


def test_a_server_that_never_answers_holds_the_job_no_longer_than_asked(tmp_path):
    import socket
    import time

    from coredumpd.image.debuginfod import Debuginfod
    from coredumpd.pipeline import analyze_job
    record, result = _lacking_everything(10)
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = Debuginfod((url,), str(tmp_path), timeout=0.5)
        problems: list[str] = []
        started = time.monotonic()
        analyze_job.fetch_lacking(client, record, result, problems, 1.0)
        elapsed = time.monotonic() - started
    assert elapsed < 2.5, elapsed
    assert problems[-1].startswith("debuginfod: ") and "files not asked for" in problems[-1]
