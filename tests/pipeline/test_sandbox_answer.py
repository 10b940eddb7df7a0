"""The analysis job reads the sandbox's answer as what it is: JSON that a child a
hostile core took over writes as it likes (coredumpd/pipeline/sandbox.py).

A well-formed answer with a value of another type (frames that are not frames, an
annotation that is null, an error that is a list) passed ``from_json`` and broke
the job after it: the journal entry, the index update, ``corectl show``.  The
fuzzer's ``answer`` target found eleven such places (tests/regressions/inputs/answer-*);
these tests say what the job must do instead, through a real sandbox child.
"""

from __future__ import annotations

import pathlib

import pytest

from coredumpd.config import Config
from coredumpd.model import AnalysisResult, CoreState, CrashRecord
from coredumpd.pipeline import sandbox
from coredumpd.pipeline.analyze_job import read_answer
from coredumpd.report import journal, jsonout, text
from coredumpd.store.index import Index
from tests.support import sandbox_hooks

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURE_CORES = sorted((REPO / "fixtures" / "cores").glob("*/core.lz4"))
ILL_TYPED = {
    "frames of lists": {"threads": [{"tid": 1, "crashed": True, "frames": [[1]]}]},
    "a null annotation": {"annotations": [None]},
    "an error that is a list": {"state": "failed", "error": ["x"]},
    "an error that is a huge number": {"state": "failed", "error": 10 ** 40},
    "a module that is a string": {"modules": ["/usr/lib/libc.so.6"]},
    "a title that is null": {"annotations": [{"id": "x", "title": None, "confidence": "high"}]},
    "a bool pc": {"threads": [{"tid": 1, "frames": [{"index": 0, "pc": True}]}]},
    "a signal code of text": {"signal": {"signo": 11, "code": "1"}},
}


@pytest.mark.parametrize("name", sorted(ILL_TYPED))
def test_an_ill_typed_answer_is_a_failed_analysis_and_breaks_nothing_after(
        name: str, tmp_path: pathlib.Path) -> None:
    answer = {"state": "done"} | ILL_TYPED[name]
    result = read_answer(dict(answer))
    assert result.state == "failed" and "unreadable result" in (result.error or ""), name
    record = CrashRecord(pid=4242, timestamp_us=1, uid=1000, gid=1000, signal=11,
                         comm="prog", exe="/usr/bin/prog", core_state=CoreState.PRESENT)
    with Index(str(tmp_path / "index.sqlite")) as index:
        index.insert(record)
        record.set_analysis(result)
        assert journal.journal_fields(record)["COREDUMP_ID"] == record.id
        index.update(record.id, **record.analysis_columns())
        back = index.get(record.id)
    assert back is not None and back.analysis_error == result.error
    assert "Analysis: failed" in text.render_show(jsonout.show_object(back, None, False),
                                                  back.analysis)


@pytest.mark.parametrize("core", FIXTURE_CORES, ids=[core.parent.name for core in FIXTURE_CORES])
def test_every_fixture_answer_is_read_unchanged(core: pathlib.Path) -> None:
    """The check refuses nothing a real analysis answers (a refused result would change
    the frames and annotations the job stores)."""
    from coredumpd.analysis import analyze
    from coredumpd.store.lz4seek import open_core_source

    source = open_core_source(str(core))
    try:
        answer = analyze(source).to_json()
    finally:
        source.close()
    assert read_answer(dict(answer)) == AnalysisResult.from_json(answer)


@pytest.mark.fault_case
def test_a_taken_over_child_that_answers_ill_typed_json_gets_a_failed_analysis(
        tmp_path: pathlib.Path) -> None:
    """Through a real sandbox child (tests/support/sandbox_hooks.py ``answer``: it sends
    the answer the test chose, as one a core took over would): a failed result naming
    the bad field, never an exception."""
    core = tmp_path / "core"
    core.write_bytes(b"\x7fELF" + bytes(60))
    core.chmod(0o640)
    lie = {"state": "done"} | ILL_TYPED["frames of lists"]
    answer = sandbox.run_analysis(Config(analysis_timeout=20.0), str(core), {"answer": lie},
                                  None, child_command=sandbox_hooks.command("answer"))
    assert answer == lie  # what the child sent reached the job as it was
    result = read_answer(answer)
    assert result.state == "failed" and "Frame" in (result.error or ""), result.error
