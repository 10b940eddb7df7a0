"""coredumpd's backtraces of the fixture cores, frame by frame against gdb's.

For every fixture (fixtures/cores/, see its README.md) and every thread, the
frames of ``coredumpd.analysis.analyze_json()`` must equal ``expected.json``, which
make_cores.py derived from gdb 13's frames with these rules, and nothing looser:

* gdb's INLINE frames are frames for us too (``inlined: true``), in gdb's
  order, with gdb's pc, file and line; the physical frame after them has gdb's
  line for it (the call site of the outermost inlined call).  An inlined
  frame's name is gdb's DWARF name, which gdb qualifies by the DIE's parents
  (``std::__invoke_impl<…>``) where we print the DW_AT_name (``__invoke_impl<…>``)
  or the demangled linkage name, and prefixes with ``__GI_`` where we do not;
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
* the same file and line wherever gdb has them.  Paths
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
import re
from typing import Any

import pytest

from tests.support.analysis import expand_json, native_json
from tests.support.fixtures import FIXTURES_DIR, fixture_names, load_fixture

# Unwinding all ~800 frames of the stack-overflow fixture is the point of that
# fixture; the default cap (256) is for hostile cores.
MAX_FRAMES = 4096


def thread_cases() -> list[tuple[str, int]]:
    """(fixture, position of the thread in gdb's list): a position, not a tid, because
    a fixture regenerated for this machine's libraries (tests/support/fixtures.py)
    has the same threads under other tids."""
    cases = []
    for name in fixture_names():
        path = FIXTURES_DIR / name / "expected.json"
        if path.exists():
            cases.extend((name, position) for position in range(len(json.loads(
                path.read_text()))))
    return cases


@functools.cache
def analysis_of(name: str) -> dict[str, Any]:
    from coredumpd.store.lz4seek import open_core_source
    from coredumpd.unwind.types import Caps
    from tests.support.analysis import analyze_json

    fixture = load_fixture(name)
    source = open_core_source(str(fixture.core_path))
    try:
        result: dict[str, Any] = analyze_json(source, exe=str(fixture.binary_path),
                                         caps=Caps(max_frames=MAX_FRAMES))
    finally:
        source.close()
    return result


def expand_repeats(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A collapsed run (``repeat`` n) stands for n identical frames, a cycle for n
    instances of its frames; Python frames are not gdb's (fixture ``python``: they
    are compared with pystack's in tests/analysis/test_python_frames.py)."""
    return native_json(expand_json(frames))


def normalize_path(path: str) -> str:
    normalized = posixpath.normpath(path)
    return normalized.removeprefix("./")


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


def same_inlined_name(ours: str | None, gdb: str) -> bool:
    """gdb's name of an inlined function, ours: equal once gdb's ``__GI_`` is dropped, or
    gdb's is ours qualified by namespaces or classes (``std::`` + ``__invoke_r<…>``).
    Rust: gdb prints rustc's DWARF path of the instance (``{impl#2}``,
    ``{closure_env#0}``, ``(dyn …)``, ``do_call<…>``), we the demangled v0 linkage
    name (``<… as …>``, ``{closure#0}``, ``do_call::<…>``): the same function when the
    paths agree without generics (:func:`same_rust_function`), or at least their
    last components do."""
    gdb = gdb.removeprefix("__GI_")
    if ours is None:
        return False
    if ours == gdb or gdb.endswith("::" + ours):
        return True
    gdb = gdb.replace("{closure_env#", "{closure#")
    last = [_without_generics(name).rsplit("::", 1)[-1] for name in (ours, gdb)]
    return same_rust_function(ours, gdb) or ("::" in gdb and last[0] == last[1])


def frame_mismatches(ours: dict[str, Any], expected: dict[str, Any], fixture_binary: str,
                     original_binary: str) -> list[str]:
    problems = []
    if ours.get("pc") != expected["pc"]:
        problems.append("pc")
    if bool(ours.get("inlined")) != expected["inlined"]:
        problems.append(f"inlined {ours.get('inlined')} != {expected['inlined']}")
    if expected["inlined"]:
        if not same_inlined_name(ours.get("symbol"), expected["gdb_names"][-1]):
            problems.append(f"symbol {ours.get('symbol')!r} is not gdb's "
                            f"{expected['gdb_names'][-1]!r}")
    elif ours.get("symbol") != expected["symbol"]:
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


@pytest.mark.parametrize(("name", "position"), thread_cases())
def test_thread_matches_gdb(name: str, position: int) -> None:
    fixture = load_fixture(name)
    expected_thread = fixture.expected[position]
    tid = expected_thread["tid"]
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


# ------------------------------------------------------------ the references themselves


def test_gdb_frames_json_is_the_parse_of_gdb_text() -> None:
    from tests.support.fixtures import gdb_threads_to_json, parse_gdb_backtrace

    for name in fixture_names():
        fixture = load_fixture(name, check_libraries=False)
        parsed = gdb_threads_to_json(parse_gdb_backtrace(fixture.gdb_text))
        assert parsed == gdb_threads_to_json(fixture.gdb_frames), name
        counts = fixture.gdb_api["default_frame_counts"]
        assert {str(t["tid"]): len(t["frames"]) for t in parsed} == counts, name


def test_parser_reads_gdb_frame_lines() -> None:
    from tests.support.fixtures import parse_gdb_backtrace

    text = 'Thread 2 (Thread 0x7ffff7d866c0 (LWP 1235) "worker"):\n#0  store_id (r=0x0, id=1) at o0_fp.c:7\n#1  0x000055555555524b in ns::S<int>::put (this=0x1, key="a) at b:1", v=7) at x.cc:15\n#2  0x00005555555551a2 in std::function<void ()>::operator()() const (this=0x2) at /usr/include/c++/12/bits/std_function.h:591\n#3  <signal handler called>\n#4  0x0000000000000000 in ?? ()\n#5  0x00007ffff7a16b0d in ffi_call () from /lib/x86_64-linux-gnu/libffi.so.8\nBacktrace stopped: previous frame inner to this frame (corrupt stack?)\n\nThread 1 (LWP 77):\n#0  0x0000000000401657 in compare (a=0x7ffe, b=0x7fff) at static_crash.c:9'
    first, second = parse_gdb_backtrace(text)
    assert (first.num, first.tid, second.num, second.tid) == (2, 1235, 1, 77)
    assert first.stopped == "previous frame inner to this frame (corrupt stack?)"
    got = [(f.pc, f.function, f.file, f.line, f.library) for f in first.frames]
    assert got == [
        (None, "store_id", "o0_fp.c", 7, None),
        (0x55555555524B, "ns::S<int>::put", "x.cc", 15, None),
        (0x5555555551A2, "std::function<void ()>::operator()() const",
         "/usr/include/c++/12/bits/std_function.h", 591, None),
        (None, "<signal handler called>", None, None, None),
        (0, None, None, None, None),
        (0x7FFFF7A16B0D, "ffi_call", None, None, "/lib/x86_64-linux-gnu/libffi.so.8"),
    ]
    assert first.frames[1].args == 'this=0x1, key="a) at b:1", v=7'


def _aliases(frame: dict[str, Any]) -> set[str]:
    return {alias.split("@", 1)[0] for alias in frame.get("aliases", [])}


def test_expected_names_are_gdbs_functions() -> None:
    """Each expected plain symbol names the function gdb shows for that physical frame:
    gdb's name (``__GI_`` dropped) is one of the ELF aliases at the function's address.
    Known differences, checked as such: gdb writes C++ names from DWARF without
    parameter lists (``ns::S<int>::put``), and cuts gcc's clone suffix
    ``msort_with_tmp.part.0`` to ``msort_with_tmp.part``.  For Rust see
    :func:`same_rust_function`.  gdb's ``??`` is a pc outside every module (pc 0)
    or a function a stripped module keeps no symbol for (libstdc++'s terminate
    handlers; static functions of python3, _ctypes, libffi)."""
    for name in fixture_names():
        fixture = load_fixture(name, check_libraries=False)
        for thread in fixture.expected:
            for frame in thread["frames"]:
                gdb_name = frame["gdb_names"][-1]
                if frame["inlined"]:  # a DWARF name, not an ELF symbol: same_inlined_name
                    assert frame["symbol"] is None and gdb_name, (name, frame)
                elif frame["signal_frame"]:
                    assert frame["symbol"] == "__restore_rt", (name, frame)
                elif gdb_name is None:  # pc 0, or a function of a module without .symtab
                    assert frame["symbol"] is None, (name, frame)
                    assert frame["pc"] == 0 or any(stripped in frame["module"] for stripped in (
                        "libstdc++", "_ctypes", "libffi", "python3")), (name, frame)
                elif RUST_SYMBOL.match(frame["raw_symbol"]):
                    assert same_rust_function(frame["symbol"], gdb_name), (name, frame)
                elif frame["raw_symbol"].startswith("_Z"):
                    assert (frame["symbol"] == gdb_name  # a minimal symbol: gdb demangles it too
                            or frame["symbol"].startswith(gdb_name + "(") or "_M_invoke" in gdb_name)
                elif gdb_name.endswith(".part"):
                    assert frame["symbol"].startswith(gdb_name + "."), (name, frame)
                else:
                    plain = gdb_name.removeprefix("__GI_")
                    assert plain in _aliases(frame), (name, gdb_name, frame["aliases"])


RUST_SYMBOL = re.compile(r"^_R|^_ZN.*17h[0-9a-f]{16}E$")  # v0, legacy (libiberty's tests)
RUST_RUNTIME_CRATES = ("std::", "core::", "alloc::", "panic_abort::", "panic_unwind::")


def _without_generics(name: str) -> str:
    """``core::option::Option<u32>::expect<u32>`` -> ``core::option::Option::expect``;
    the legacy ``{{closure}}`` spelled as v0's and gdb's ``{closure#0}``."""
    name = name.replace("{{closure}}", "{closure#0}")
    while True:
        stripped = re.sub(r"(?:::)?<[^<>]*>", "", name)
        if stripped == name:
            return name
        name = stripped


def same_rust_function(ours: str, gdb_name: str) -> bool:
    """Our symbol (the ELF name demangled without hash) and gdb's DWARF name of a Rust
    function: equal but for generic arguments (gdb prints the instance's, the symbol
    the definition's ``<T>``); or a function the standard library exports to the runtime
    under rustc's ``__rustc`` crate (``__rustc::rust_panic``, gdb
    ``std::panicking::rust_panic``; ``__rustc::rust_begin_unwind`` is the
    ``#[panic_handler]``, gdb ``std::panicking::panic_handler``)."""
    if ours.startswith("__rustc::"):
        return gdb_name.startswith(RUST_RUNTIME_CRATES)
    return _without_generics(ours) == _without_generics(gdb_name)


def expected_frames(name: str, tid: int | None = None) -> list[dict[str, Any]]:
    fixture = load_fixture(name, check_libraries=False)
    threads = fixture.expected if tid is None else [
        t for t in fixture.expected if t["tid"] == tid]
    return threads[0]["frames"]


def test_fixtures_cover_issue_3() -> None:
    """The cases issue 3 lists are really in the cores (not only in the file names)."""
    manifest = {name: load_fixture(name, check_libraries=False).manifest
                for name in fixture_names()}
    assert "-fno-omit-frame-pointer" in manifest["o0-fp-pie"]["flags"]
    assert "-fomit-frame-pointer" in manifest["o2-deep-nopie"]["flags"]
    assert len(expected_frames("o2-deep-nopie")) >= 15
    assert "-no-pie" in manifest["o2-deep-nopie"]["flags"] and "-pie" in manifest["o0-fp-pie"][
        "flags"]
    assert manifest["static"]["libraries"] == {}
    signal_frames = [f for f in expected_frames("sighandler") if f["signal_frame"]]
    assert len(signal_frames) == 1
    after = expected_frames("sighandler")[signal_frames[0]["index"] + 1]
    assert after["symbol"] == "interrupted" and after["exact_pc"]
    assert expected_frames("nullfn")[0]["pc"] == 0
    assert expected_frames("nullfn")[1]["symbol"] == "dispatch"
    recursion = expected_frames("recursion")
    assert len(recursion) > 500 and {f["symbol"] for f in recursion[:-4]} == {"recurse"}
    threads = load_fixture("threads", check_libraries=False)
    assert len(threads.expected) == 4
    assert threads.notes["threads"][0]["tid"] != threads.notes["prpsinfo"]["pid"]
    assert "-fno-asynchronous-unwind-tables" in manifest["nounwind"]["flags"]
    strlen = expected_frames("strlen-null")[0]
    assert strlen["module"].endswith("/libc.so.6") and strlen["line"] is not None
    assert [f["symbol"] for f in expected_frames("abort")[:3]] == [
        "__pthread_kill_implementation", "raise", "abort"]
    assert manifest["abort"]["signal"] == 6
    assert expected_frames("cxx")[0]["symbol"].startswith("inventory::Store<int>::put(")
