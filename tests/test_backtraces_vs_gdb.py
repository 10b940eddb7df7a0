"""coredumpd's backtraces of the fixture cores, frame by frame against gdb's.

For every fixture (fixtures/cores/, see its README.md) and every thread, the
frames of ``coredumpd.analysis.analyze()`` must equal ``expected.json``, which
make_cores.py derived from gdb 13's frames with these rules, and nothing looser:

* gdb's INLINE frames are folded into the physical frame that holds them;
  TAILCALL frames (synthesized from DW_TAG_call_site, not on the stack) are
  dropped; ``<signal handler called>`` is our signal frame, symbol
  ``__restore_rt``; frames above ``main`` come from the same gdb with
  ``set backtrace past-main on`` (gdb hides them by default).
* same number of frames, after expanding collapsed recursion (``repeat``);
* the same pc: gdb's frame pc, i.e. the exact pc for frame 0 and the frame
  interrupted by a signal, the return address for the others;
* the same module (NT_FILE path), and the same plain symbol: the ELF name
  chosen among aliases by ``fixtures/cores/expected.py:plain_name`` (``abort``,
  not gdb's DWARF ``__GI_abort``; ``__libc_start_main``, not
  ``__libc_start_main_impl``), demangled by c++filt for C++;
* the same file and line wherever gdb has them: the line of the innermost
  (inlined) frame, what the DWARF line table says for the lookup pc.  Paths
  compare by trailing components (gdb prints the line table's
  ``./nptl/pthread_kill.c``; a symbolizer may join it with DW_AT_comp_dir);
* frame 0 is found from the core's registers (trust ``context``).

These tests need the core reader, address space, unwinder and symbolizer;
until all of them exist they fail, as they should.
"""

from __future__ import annotations

import functools
import json
import posixpath
from typing import Any

import pytest

from tests.support.fixtures import FIXTURES_DIR, fixture_names, load_fixture

# Unwinding all ~800 frames of the stack-overflow fixture is the point of that
# fixture; the default cap (256) is for hostile cores.
MAX_FRAMES = 4096


def thread_cases() -> list[tuple[str, int]]:
    cases = []
    for name in fixture_names():
        path = FIXTURES_DIR / name / "expected.json"
        if path.exists():
            cases.extend((name, thread["tid"]) for thread in json.loads(path.read_text()))
    return cases


@functools.lru_cache(maxsize=None)
def analysis_of(name: str) -> dict[str, Any]:
    from coredumpd.analysis import analyze
    from coredumpd.store.lz4seek import open_core_source
    from coredumpd.unwind.types import Caps

    fixture = load_fixture(name)
    source = open_core_source(str(fixture.core_path))
    try:
        result: dict[str, Any] = analyze(source, exe=str(fixture.binary_path),
                                         caps=Caps(max_frames=MAX_FRAMES))
    finally:
        source.close()
    return result


def expand_repeats(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A collapsed run (``repeat`` n) stands for n identical frames."""
    expanded = []
    for frame in frames:
        expanded.extend([frame] * max(1, int(frame.get("repeat", 1))))
    return expanded


def normalize_path(path: str) -> str:
    normalized = posixpath.normpath(path)
    return normalized[2:] if normalized.startswith("./") else normalized


def same_source_file(ours: str | None, gdb: str) -> bool:
    """Same file: equal after normalization, or ours ends with gdb's relative path
    (its leading ``../`` dropped) on a component boundary."""
    if ours is None:
        return False
    ours_n, gdb_n = normalize_path(ours), normalize_path(gdb)
    if ours_n == gdb_n:
        return True
    if posixpath.isabs(gdb_n):
        return False
    tail = gdb_n
    while tail.startswith("../"):
        tail = tail[3:]
    return ours_n == tail or ours_n.endswith("/" + tail)


def expected_module(fixture_binary: str, original_binary: str, module: str | None) -> set[str | None]:
    """The main executable may be reported by its recorded path or the one we passed."""
    if module == original_binary:
        return {module, fixture_binary}
    return {module}


def describe(frame: dict[str, Any]) -> str:
    return (f"pc={frame.get('pc', 0):#x} {frame.get('symbol')} "
            f"{frame.get('file')}:{frame.get('line')} [{frame.get('module')}]")


def frame_mismatches(ours: dict[str, Any], expected: dict[str, Any], fixture_binary: str,
                     original_binary: str) -> list[str]:
    problems = []
    if ours.get("pc") != expected["pc"]:
        problems.append("pc")
    if ours.get("symbol") != expected["symbol"]:
        problems.append(f"symbol {ours.get('symbol')!r} != {expected['symbol']!r}")
    if ours.get("module") not in expected_module(fixture_binary, original_binary,
                                                 expected["module"]):
        problems.append(f"module {ours.get('module')!r} != {expected['module']!r}")
    if expected["file"] is not None:
        if not same_source_file(ours.get("file"), expected["file"]):
            problems.append(f"file {ours.get('file')!r} is not gdb's {expected['file']!r}")
        if ours.get("line") != expected["line"]:
            problems.append(f"line {ours.get('line')} != {expected['line']}")
    return problems


@pytest.mark.parametrize(("name", "tid"), thread_cases())
def test_thread_matches_gdb(name: str, tid: int) -> None:
    fixture = load_fixture(name)
    expected_thread = next(t for t in fixture.expected if t["tid"] == tid)
    result = analysis_of(name)
    assert result.get("state") == "done", f"analysis failed: {result.get('error')}"
    ours_thread = [t for t in result["threads"] if t["tid"] == tid]
    assert len(ours_thread) == 1, f"thread {tid} missing (we have {[t['tid'] for t in result['threads']]})"
    ours = expand_repeats(ours_thread[0]["frames"])
    expected = expected_thread["frames"]
    original_binary = fixture.manifest["run_path"]
    report = [f"{name} thread {tid}: {len(ours)} frames, gdb {len(expected)}"]
    failed = len(ours) != len(expected)
    for index in range(max(len(ours), len(expected))):
        mine = ours[index] if index < len(ours) else {}
        gdb = expected[index] if index < len(expected) else None
        problems = (frame_mismatches(mine, gdb, str(fixture.binary_path), original_binary)
                    if gdb is not None else ["extra frame"])
        failed |= bool(problems)
        if len(report) < 40:
            report.append(f"  #{index:<3} ours {describe(mine) if mine else '-':70} gdb "
                          f"{describe(gdb) if gdb else '-'}  {'; '.join(problems)}")
    assert not failed, "\n".join(report)


@pytest.mark.parametrize("name", fixture_names())
def test_exact_frames_come_from_context(name: str) -> None:
    """Frame 0 and the frame a signal interrupted have registers from the core or the
    signal frame (trust ``context``), so they are symbolized at their exact pc."""
    fixture = load_fixture(name)
    result = analysis_of(name)
    crashed_tid = fixture.notes["threads"][0]["tid"]
    assert result["crashed_tid"] == crashed_tid
    assert sorted(t["tid"] for t in result["threads"]) == sorted(
        t["tid"] for t in fixture.notes["threads"])
    for thread in result["threads"]:
        assert thread["crashed"] == (thread["tid"] == crashed_tid)
        expected = next(t for t in fixture.expected if t["tid"] == thread["tid"])
        ours = expand_repeats(thread["frames"])
        for mine, gdb in zip(ours, expected["frames"]):
            if gdb["exact_pc"]:
                assert mine["trust"] == "context", (thread["tid"], describe(mine))
