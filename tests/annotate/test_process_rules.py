"""init-crash and pid1-signal-semantics from the facts recorded at dump time.

The global PID 1 cannot be crashed on a test machine, so init-crash is checked
as the brief allows: the analysis of a real core with facts whose ``args.pid``
is 1 (the handler's %P), beside facts of a namespace init and of an ordinary
process.
"""

from __future__ import annotations

import pytest

from tests.annotate.crashing import crash

pytestmark = pytest.mark.kernel


def _facts(pid, nspid):
    return {"version": 1, "args": {"pid": pid, "ns_pid": nspid[-1], "signal": 11},
            "handler_pid": 4321,
            "proc": {"comm": "init", "exe": "/sbin/init",
                     "status": {"NSpid": nspid, "SigCgt": "0000000000004000"}}}


@pytest.fixture(scope="module")
def segv_core(program, tmp_path_factory):
    return crash([program("null_deref")], tmp_path_factory.mktemp("segv"))


def _ids(result):
    return [annotation["id"] for annotation in result["annotations"]]


def test_init_crash_for_global_pid1(segv_core):
    result = segv_core.reanalyze(_facts(1, [1]))
    assert "init-crash" in _ids(result)
    # engine.SPECIFICITY: context rules (pid1, init) precede the general fault classes
    assert _ids(result) == ["init-crash", "null-deref"]
    evidence = "\n".join(next(a for a in result["annotations"]
                              if a["id"] == "init-crash")["evidence"])
    assert "global PID 1" in evidence and "/sbin/init" in evidence
    assert "stored and indexed this core itself" in evidence and "(pid 4321)" in evidence
    assert "pid1-signal-semantics" not in _ids(result)  # not a namespace init


def test_namespace_init_is_pid1_semantics_not_init_crash(segv_core):
    result = segv_core.reanalyze(_facts(4242, [4242, 1]))
    assert "pid1-signal-semantics" in _ids(result)
    assert "init-crash" not in _ids(result)
    evidence = "\n".join(next(a for a in result["annotations"]
                              if a["id"] == "pid1-signal-semantics")["evidence"])
    assert "NSpid 4242 1" in evidence
    assert "no handler for SIGHUP, SIGINT, SIGABRT" in evidence  # SigCgt has only SIGTERM


def test_ordinary_process_is_neither(segv_core):
    for facts in ({}, _facts(4242, [4242])):
        ids = _ids(segv_core.reanalyze(facts))
        assert "init-crash" not in ids and "pid1-signal-semantics" not in ids


def _file_facts(exe, start_us, mtime_us):
    stat = {"dev": 65024, "inode": 77, "size": 100, "mtime_ns": mtime_us * 1000,
            "ctime_ns": mtime_us * 1000}
    return {"version": 1, "args": {"pid": 4242},
            "proc": {"start_time_us": start_us, "files": {exe: {"mapped": stat, "now": stat}}}}


def test_modified_in_place_needs_mtime_clearly_after_start(segv_core):
    """A program built and started at once must not be called "modified in place": the
    start time is known to a clock tick only (seen: mtime 2.6 ms after the tick)."""
    exe = next(m["path"] for m in segv_core.analysis["modules"] if m["path"].endswith("null_deref"))
    start = 1_795_000_000_000_000
    assert "library-modified-in-place" not in _ids(
        segv_core.reanalyze(_file_facts(exe, start, start + 2_654)))
    result = segv_core.reanalyze(_file_facts(exe, start, start + 5_000_000))
    assert "library-modified-in-place" in _ids(result)
    annotation = next(a for a in result["annotations"] if a["id"] == "library-modified-in-place")
    assert annotation["confidence"] == "high"  # the crashing frames are in that file


def test_init_crash_through_the_handler_as_the_kernel_runs_it(program, tmp_path):
    """incidents/systemd-pid1-segv-coredump.txt: the handler, started as the kernel starts
    it for PID 1 (%P = 1, fds 1 and 2 closed, empty environment), stores, analyses and
    says init-crash."""
    from tests.annotate.crashing import handler_available
    if not handler_available():
        pytest.skip("the coredumpd handler cannot run end to end yet")
    import json

    from tests.pipeline import handler_support as S
    from tests.support.crash import registered_handler
    raw = crash([program("null_deref")], tmp_path / "raw", raw=True).core_path
    with registered_handler(tmp_path) as handler:
        S.run_as_kernel(raw, S.kernel_args(1), handler.config_path, timeout=60)
        row = handler.wait_row(1, timeout=60)
    analysis = row["analysis"] if isinstance(row["analysis"], dict) else json.loads(row["analysis"])
    assert _ids(analysis) == ["init-crash", "null-deref"]
    evidence = "\n".join(next(a for a in analysis["annotations"]
                              if a["id"] == "init-crash")["evidence"])
    assert "was the global PID 1 (%P = 1" in evidence
    assert "stored and indexed this core itself" in evidence
