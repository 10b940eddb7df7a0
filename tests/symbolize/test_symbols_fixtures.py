"""The core model, address space and symbolizer on every fixture core
(fixtures/cores/), against the references recorded there by gdb and eu-readelf.

Independent of the unwinder: each expected frame's pc comes from gdb
(expected.json), so a mismatch here is ours, not the unwinder's.
"""

from __future__ import annotations

import posixpath

import pytest

from coredumpd.elf.core import Core
from coredumpd.image.space import build_address_space
from coredumpd.store.lz4seek import open_core_source
from coredumpd.symbolize.symbols import Symbolizer
from tests.support.fixtures import fixture_names, load_fixture


@pytest.fixture(params=fixture_names())
def opened(request):
    fixture = load_fixture(request.param)
    source = open_core_source(str(fixture.core_path))
    core = Core.open(source)
    space = build_address_space(core, exe=str(fixture.binary_path))
    yield fixture, core, space
    space.close()
    source.close()


def same_file(ours, theirs):
    """Paths compare by trailing components (gdb prints the line table's name; we join
    it with its directory entry)."""
    if ours is None or theirs is None:
        return ours == theirs
    ours, theirs = (posixpath.normpath(p).removeprefix("./").split("/") for p in (ours, theirs))
    shorter = min(len(ours), len(theirs))
    return ours[-shorter:] == theirs[-shorter:]


def test_threads_and_files_match_the_recorded_notes(opened):
    fixture, core, _space = opened
    notes = fixture.notes
    assert core.problems == [] and not core.truncated
    assert [t.tid for t in core.threads] == [t["tid"] for t in notes["threads"]]
    for ours, theirs in zip(core.threads, notes["threads"]):
        for name in ("rip", "rsp", "rbp", "rax", "r15"):
            assert ours.registers[name] == theirs["registers"][name]
    assert [(f.start, f.end, f.file_offset, f.path) for f in core.files] == [
        (f["start"], f["end"], f["file_offset"], f["path"]) for f in notes["files"]]
    assert core.siginfo.si_signo == notes["siginfo"]["si_signo"]
    assert core.siginfo.si_code == notes["siginfo"]["si_code"]


def test_every_expected_frame_symbolizes_like_gdb(opened):
    fixture, _core, space = opened
    symbolizer = Symbolizer(space)
    checked = 0
    for thread in fixture.expected:
        inlined: list[dict] = []  # gdb's inlined frames before the physical one, innermost first
        for frame in thread["frames"]:
            if frame["inlined"]:
                inlined.append(frame)
                continue
            group, inlined = inlined, []
            lookup_pc = frame["pc"] if frame["exact_pc"] or frame["signal_frame"] else frame["pc"] - 1
            module = space.module_at(lookup_pc)
            symbol = symbolizer.symbolize(module, lookup_pc)
            where = (fixture.name, thread["tid"], frame["index"], hex(frame["pc"]))
            if frame.get("module") is None:
                assert module is None or symbol.name is None, where
                continue
            assert module is not None and module.path == frame["module"], where
            assert module.build_id.hex() == frame["module_build_id"], where
            assert symbol.name == frame["symbol"], (where, symbol)
            if frame["symbol"] is not None:
                assert symbol.offset == frame["symbol_offset"], (where, symbol)
            innermost = group[0] if group else frame  # the line table's line is the innermost's
            if innermost["line"] is not None:
                assert same_file(symbol.file, innermost["file"]), (where, symbol)
                assert symbol.line == innermost["line"], (where, symbol)
            # each inlined call was made at the line gdb shows for the frame around it
            assert len(symbol.inlined) == len(group), (where, symbol)
            for call, caller in zip(reversed(symbol.inlined), [*group, frame][1:], strict=True):
                assert same_file(call.call_file, caller["file"]), (where, call, caller)
                assert call.call_line == caller["line"], (where, call, caller)
            checked += 1
    assert checked
