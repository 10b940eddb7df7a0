"""The typed crash model: JSON round trips, versions, enums, the frame formatter."""

from __future__ import annotations

import json

import pytest

from coredumpd import model
from coredumpd.errors import FormatError
from coredumpd.model import (
    AnalysisResult,
    AnalysisState,
    Annotation,
    CoreState,
    CrashRecord,
    DisassemblyLine,
    Facts,
    Frame,
    FrameStyle,
    Module,
    SignalInfo,
    Thread,
    format_frame,
)

FRAME = Frame(0, 0x7F0000001000, module="/lib/libc.so.6", build_id="ab" * 20, offset=0x2611F,
              symbol="abort", symbol_offset=368, file="stdlib/abort.c", line=107,
              trust="context", repeat=3, cycle=2)
RESULT = AnalysisResult(
    duration_ms=12, crashed_tid=7,
    signal=SignalInfo(11, "SIGSEGV", 128, "SI_KERNEL", 0, 0),
    threads=[Thread(7, True, "main", None, {"rip": 1}, [FRAME]), Thread(8)],
    modules=[Module("/lib/libc.so.6", 0x7F0000000000, 0x7F0000200000, deleted=True)],
    disassembly=[DisassemblyLine(0x7F0000001000, "f4", "hlt", True)],
    annotations=[Annotation("abort-hlt", "abort() ended in hlt", "high", ("a", "b"), "fix")],
    signature="0" * 40, signature_frames=["abort"], problems=["p"])


def test_analysis_result_round_trips_through_json_text() -> None:
    text = json.dumps(RESULT.to_json())
    assert AnalysisResult.from_json(json.loads(text)) == RESULT


def test_json_keys_follow_the_documented_order() -> None:
    assert list(FRAME.to_json()) == ["index", "pc", "module", "build_id", "offset", "symbol",
                                     "symbol_offset", "file", "line", "trust", "repeat", "cycle",
                                     "cfa", "inlined", "language"]
    assert list(RESULT.to_json())[:4] == ["version", "state", "error", "duration_ms"]
    assert RESULT.to_json()["state"] == "done" and type(RESULT.to_json()["state"]) is str


def test_unknown_keys_survive_a_round_trip() -> None:
    """A newer writer's fields (same version) are kept, not silently dropped."""
    data = {**FRAME.to_json(), "inlined": True}
    assert Frame.from_json(data).to_json() == data
    facts = {"version": 1, "proc": {"unit": "x.service"}, "handler_rusage": {"cpu_s": 0.1}}
    assert Facts.from_json(facts).to_json()["handler_rusage"] == {"cpu_s": 0.1}


def test_crash_record_round_trip_with_nested_records() -> None:
    record = CrashRecord(pid=1, timestamp_us=2, core_state=CoreState.TRUNCATED,
                         facts=Facts(proc={"unit": "x.service", "cmdline": ["a", "b c"]}),
                         analysis=RESULT, path_taken={"journal": "sent"})
    data = json.loads(json.dumps(record.to_json()))
    assert "problems" not in data  # not a column
    again = CrashRecord.from_json(data)
    assert again == record and again.core_state is CoreState.TRUNCATED
    assert again.facts is not None and again.facts.proc["unit"] == "x.service"
    assert again.facts.argv == ["a", "b c"]


@pytest.mark.parametrize("version", [2, 99])
def test_a_newer_version_is_a_clear_error(version: int) -> None:
    with pytest.raises(FormatError, match=f"AnalysisResult version {version} is newer than "
                                          "this coredumpd reads \\(version 1\\)"):
        AnalysisResult.from_json({**RESULT.to_json(), "version": version})
    with pytest.raises(FormatError, match="Facts version"):
        Facts.from_json({"version": version})


@pytest.mark.parametrize("version", [0, -1, "1", None, True])
def test_an_invalid_version_is_a_clear_error(version: object) -> None:
    with pytest.raises(FormatError, match="invalid version"):
        AnalysisResult.from_json({"version": version})


def test_a_missing_version_is_the_first() -> None:
    """The sandbox's own failure results and the oldest rows carry version 1 implicitly."""
    assert AnalysisResult.from_json({"state": "failed", "error": "x"}).version == 1


@pytest.mark.parametrize("data", [{"state": "maybe"}, {"threads": [{"frames": []}]},
                                  {"threads": ["x"]}, {"signal": 11}])
def test_malformed_json_is_a_format_error(data: dict[str, object]) -> None:
    with pytest.raises(FormatError):
        AnalysisResult.from_json(data)


def test_enums_are_the_contract_strings() -> None:
    assert [state.value for state in CoreState] == ["present", "truncated", "missing", "none"]
    assert [state.value for state in AnalysisState] == ["pending", "done", "failed"]
    assert [state for state in CoreState if state.stored] == [CoreState.PRESENT,
                                                               CoreState.TRUNCATED]
    assert CoreState("missing") is CoreState.MISSING and f"{CoreState.NONE}" == "none"
    assert json.dumps([CoreState.PRESENT]) == '["present"]'
    with pytest.raises(ValueError):
        CoreState("gone")


def test_records_check_their_fields() -> None:
    with pytest.raises(TypeError, match="needs pc"):
        Frame(index=0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="no field"):
        Frame(0, 1, colour="red")  # type: ignore[call-arg]
    first, second = Thread(1), Thread(2)
    first.frames.append(FRAME)
    assert second.frames == []  # mutable defaults are per instance


def test_set_analysis_fills_the_columns() -> None:
    record = CrashRecord(pid=1, timestamp_us=2)
    record.set_analysis(RESULT)
    assert record.analysis_columns() == {
        "analysis": RESULT, "analysis_state": AnalysisState.DONE, "analysis_error": None,
        "root_cause": "abort-hlt", "signature": "0" * 40}
    record.set_analysis(AnalysisResult(state=AnalysisState.PENDING))
    assert record.analysis_state is AnalysisState.FAILED  # a result is never pending


def test_one_frame_formatter_three_styles() -> None:
    assert format_frame(FRAME, FrameStyle()) == (
        "#0   0x00007f0000001000 abort+0x170 (libc.so.6 + 0x2611f) at stdlib/abort.c:107 "
        "[context] (x3, cycle of 2 frames)")
    journal = FrameStyle(index_width=2, unknown_symbol="n/a", symbol_offset=None,
                         unknown_module="n/a", source=None, trust=None, repeat=None)
    assert format_frame(FRAME, journal) == "#0  0x00007f0000001000 abort (libc.so.6 + 0x2611f)"
    bare = Frame(4, 0x10)
    assert format_frame(bare, journal) == "#4  0x0000000000000010 n/a (n/a)"
    assert format_frame(bare, FrameStyle()) == "#4   0x0000000000000010 ?? (?) [scan]"


def test_the_model_imports_only_errors_and_the_standard_library() -> None:
    import ast
    import pathlib
    import sys

    tree = ast.parse(pathlib.Path(model.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    ours = {name for name in imported if name.startswith("coredumpd")}
    assert ours == {"coredumpd.errors"}
    assert all(name.split(".")[0] in sys.stdlib_module_names
               for name in imported - ours - {"__future__"})
