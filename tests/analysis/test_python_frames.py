"""Python frames of CPython cores: the same file, line and function as pystack's.

The fixture ``python`` (fixtures/cores/, python_crash.py) has pystack's own
reading of its core beside it (pystack.json, made by make_cores.py); a real
``python3`` crashed through the kernel and the installed handler (sandboxed
analysis) is compared with pystack run on the stored core.  Each group of
Python frames that one ``_PyEval_EvalFrameDefault`` call ran sits just before
that frame, innermost first.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
from typing import Any

import pytest

from coredumpd.analysis import python as P
from coredumpd.model import AnalysisResult, Frame, format_frame
from tests.support.analysis import analyze_json
from tests.support.crash import registered_handler
from tests.support.fixtures import load_fixture

EVAL_LOOP = "_PyEval_EvalFrameDefault"


def python_of(frames: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    return [(f["file"], f["line"], f["symbol"]) for f in frames if f.get("language") == "python"]


def pystack_of(frames: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    """pystack's frames (outermost first) in our order (innermost first)."""
    return [(f["file"], f["line"], f["function"]) for f in reversed(frames)]


def check_placement(frames: list[dict[str, Any]]) -> None:
    """Every run of Python frames ends just before an evaluation-loop frame."""
    for position, frame in enumerate(frames):
        if frame.get("language") == "python":
            assert frame["pc"] is None and frame["trust"] == "interpreter" and frame["module"] is None
            following = frames[position + 1]
            if following.get("language") != "python":
                assert following["symbol"] == EVAL_LOOP, (position, following)


def test_fixture_python_frames_are_pystacks() -> None:
    from coredumpd.store.lz4seek import open_core_source

    fixture = load_fixture("python")
    reference = json.loads((fixture.directory / "pystack.json").read_text())
    source = open_core_source(str(fixture.core_path))  # lz4: decompressed into a memfd
    try:
        result = analyze_json(source, None, str(fixture.binary_path))
    finally:
        source.close()
    assert not [p for p in result["problems"] if p.startswith("python frames")]
    threads = {thread["tid"]: thread for thread in result["threads"]}
    for stack in reference:
        frames = threads[stack["tid"]]["frames"]
        assert python_of(frames) == pystack_of(stack["frames"])
        check_placement(frames)
        assert [f["index"] for f in frames] == list(range(len(frames)))
    crashed = threads[result["crashed_tid"]]["frames"]
    # two evaluation loops (list.sort calls the key function back): two groups
    loops = [f["index"] for f in crashed if f["symbol"] == EVAL_LOOP]
    assert len(loops) == 2
    assert crashed[loops[0] - 1]["symbol"] == "by_key"
    assert crashed[loops[1] - 1]["symbol"] == "<module>"
    assert [f["symbol"] for f in crashed if f.get("language")][:2] == ["string_at", "read_field"]


def test_native_processes_get_no_python_frames_and_no_problem() -> None:
    from coredumpd.store.lz4seek import open_core_source

    fixture = load_fixture("threads")
    source = open_core_source(str(fixture.core_path))
    try:
        result = analyze_json(source, None, str(fixture.binary_path))
    finally:
        source.close()
    assert not any(f.get("language") for t in result["threads"] for f in t["frames"])
    assert not [p for p in result["problems"] if "python" in p]


def test_pystack_warnings_stay_off_stderr_and_are_said_in_problems(tmp_path: pathlib.Path) -> None:
    """The first half of the python fixture's core (a truncated core, as the fuzz runs
    make): pystack cannot read the interpreter and logs "Failed to read PyObject data
    from address …" on its way.  corectl analyze prints none of that on stderr; the
    problem line of the Python frames says it."""
    import subprocess
    import sys

    from coredumpd.store.lz4seek import open_core_source

    fixture = load_fixture("python")
    source = open_core_source(str(fixture.core_path))
    try:
        half = source.pread(0, source.size // 2)
    finally:
        source.close()
    core = tmp_path / "half.core"
    core.write_bytes(half)
    run = subprocess.run([sys.executable, "-m", "coredumpd.cli.corectl", "--json", "analyze",
                          str(core), "--exe", str(fixture.binary_path)],
                         capture_output=True, text=True, check=False,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                              # the run's default configuration (tests/conftest.py): without
                              # it corectl's module cache went to an installed machine's store
                              "COREDUMPD_CONFIG": os.environ["COREDUMPD_CONFIG"]})
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    problems = [p for p in json.loads(run.stdout)["problems"] if p.startswith("python frames")]
    assert len(problems) == 1 and "pystack: NotEnoughInformation" in problems[0], problems
    assert "(pystack warned: Failed to read PyObject data from address 0x" in problems[0]


def test_pystack_warnings_are_kept_and_summarised() -> None:
    """What pystack logs while it reads (its logger, WARNING and above) is kept; the
    handler that keeps it goes away with the block."""
    import logging

    logger = logging.getLogger(P.PYSTACK_LOGGER)
    handlers = list(logger.handlers)
    with P._pystack_warnings() as kept:
        logger.warning("Failed to read PyObject data from address %#x", 0x7FFF0000)
        logger.warning("second")
        logger.info("not a warning")
    assert logger.handlers == handlers
    assert kept == ["Failed to read PyObject data from address 0x7fff0000", "second"]
    assert P.summary(kept) == "Failed to read PyObject data from address 0x7fff0000 (and 1 more)"
    assert P.summary(kept[:1]) == kept[0]


def frame(index: int, symbol: str, **fields: Any) -> Frame:
    return Frame(index=index, pc=fields.pop("pc", 0x1000 + index), symbol=symbol, **fields)


def py(name: str) -> Frame:
    return Frame(index=0, pc=None, symbol=name, language="python", trust="interpreter")


def is_eval(symbol: str) -> bool:
    return symbol == EVAL_LOOP


def test_interleave_puts_each_group_before_its_loop_and_before_inlined_calls() -> None:
    native = [frame(0, "strlen"), frame(1, "inlined_helper", pc=0x50, inlined=True),
              frame(2, EVAL_LOOP, pc=0x50), frame(3, "PyObject_Call"), frame(4, EVAL_LOOP),
              frame(5, "main")]
    merged = P.interleave(native, [[py("inner"), py("entry1")], [py("module")]], is_eval)
    assert [f.symbol for f in merged] == ["strlen", "inner", "entry1", "inlined_helper",
                                          EVAL_LOOP, "PyObject_Call", "module", EVAL_LOOP,
                                          "main"]
    assert [f.index for f in merged] == list(range(9))


def test_interleave_when_counts_differ_keeps_every_frame_in_order() -> None:
    native = [frame(0, "strlen"), frame(1, EVAL_LOOP), frame(2, "main")]
    merged = P.interleave(native, [[py("a")], [py("b")]], is_eval)
    assert [f.symbol for f in merged] == ["strlen", "a", "b", EVAL_LOOP, "main"]
    merged = P.interleave([frame(0, "main")], [[py("a")]], is_eval)  # no loop unwound
    assert [f.symbol for f in merged] == ["main", "a"]


def test_groups_end_at_entry_frames() -> None:
    a, b, c, d = py("a"), py("b"), py("c"), py("d")
    assert P.groups([(False, a), (True, b), (False, c), (True, d)]) == [[a, b], [c, d]]
    assert P.groups([(False, a)]) == [[a]]


SCRIPT = '''import os
import signal


def innermost(depth):
    os.kill(os.getpid(), signal.SIGSEGV)  # line 6


def middle(depth):
    return innermost(depth + 1)  # line 10


def outer():
    return [middle(n) for n in range(3)]  # line 14


outer()
'''


@pytest.mark.kernel
def test_real_python3_crash_has_pystacks_frames(tmp_path: pathlib.Path) -> None:
    """python3 kills itself with SIGSEGV three functions deep; the handler stores the
    crash and its sandboxed analysis: the Python frames are pystack's, and the text
    report and the journal's stack trace show them."""
    import lz4.frame
    from pystack import _pystack

    from coredumpd.report import journal
    from coredumpd.report.text import FRAME_STYLE

    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    os.chmod(tmp_path, 0o755)
    with registered_handler(tmp_path, journal=False) as handler:
        row = handler.crash(["/usr/bin/python3", str(script)])
    assert row["signal"] == signal.SIGSEGV and row["analysis_state"] == "done"
    analysis = AnalysisResult.from_json(row["analysis"])
    assert not [p for p in analysis.problems if p.startswith("python frames")]
    core = tmp_path / "core"
    core.write_bytes(lz4.frame.decompress(pathlib.Path(row["core_path"]).read_bytes()))
    stacks = _pystack.get_process_threads_for_core(
        str(core), os.path.realpath("/usr/bin/python3"), None, _pystack.NativeReportingMode.OFF)
    theirs = [(f.code.filename, f.code.location.lineno, f.code.scope)
              for f in reversed(list(stacks[0].frames))]
    frames = [f.to_json() for f in analysis.crashed_thread.frames]
    assert python_of(frames) == theirs
    assert [name for _file, _line, name in theirs][:3] == ["innermost", "middle", "<listcomp>"]
    assert theirs[0] == (str(script), 6, "innermost")
    check_placement(frames)
    text = [format_frame(f, FRAME_STYLE) for f in analysis.crashed_thread.frames
            if f.language]
    assert text[0].split()[1:3] == ["innermost", "(python)"]
    assert text[0].endswith(f"{script}:6  [interpreter]")
    trace = journal.stack_trace(analysis)  # the journal's COREDUMP_STACKTRACE-like text
    assert "innermost (python)" in trace and "_PyEval_EvalFrameDefault" in trace
