"""Crash signatures on real crashes: stable for the same bug, distinct otherwise."""

from __future__ import annotations

import pytest

from tests.annotate.crashing import crash

pytestmark = pytest.mark.kernel


def _signature(result):
    analysis = result.analysis
    assert analysis["signature"] and len(analysis["signature"]) == 40
    return analysis["signature"], analysis["signature_frames"]


def test_same_crash_twice_same_signature(program, tmp_path):
    first = _signature(crash([program("null_deref"), "read"], tmp_path / "a"))
    second = _signature(crash([program("null_deref"), "read"], tmp_path / "b"))
    assert first == second  # ASLR moved every address; the signature must not move
    assert first[1][:2] == ["null_deref!read_level", "null_deref!main"]


def test_different_crash_different_signature(program, tmp_path):
    read = _signature(crash([program("null_deref"), "read"], tmp_path / "r"))
    write = _signature(crash([program("null_deref")], tmp_path / "w"))
    assert read[0] != write[0]


@pytest.mark.parametrize(("name", "top"), [
    ("aborter", "aborter!reset_stdio"),        # skips raise/abort/__assert_fail(_base)
    ("double_free", "double_free!release"),    # skips free and malloc_printerr
    ("plain_abort", "plain_abort!main"),
])
def test_abort_machinery_is_skipped(program, tmp_path, name, top):
    _sig, frames = _signature(crash([program(name)], tmp_path))
    assert frames[0] == top
    assert not any(frame.endswith(("!abort", "!raise", "!__pthread_kill_implementation"))
                   for frame in frames)
