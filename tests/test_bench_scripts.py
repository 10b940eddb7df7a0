"""The bench scripts keep working against the code they measure.

bench/backtrace.py's in-process functions are what its table times; they must
still run on today's API and find eu-stack's frames (the fixture's recorded
eu-stack output), or the bench would time something that fails.
"""

from __future__ import annotations

import shutil

import pytest

from bench import backtrace
from coredumpd.store.lz4seek import open_core_source
from tests.support.fixtures import load_fixture


@pytest.fixture(scope="module")
def threads_core(tmp_path_factory):
    """The threads fixture as a raw core (eu-stack and the bench read raw cores)."""
    fixture = load_fixture("threads")
    raw = tmp_path_factory.mktemp("bench") / "core"
    source = open_core_source(str(fixture.core_path))
    try:
        raw.write_bytes(source.pread(0, source.size))
    finally:
        source.close()
    return fixture, str(raw)


@pytest.mark.parametrize("function", ["coredumpd_backtraces", "coredumpd_backtraces_lines",
                                      "coredumpd_analyze"])
def test_backtrace_bench_functions_find_eu_stacks_frames(threads_core, function):
    fixture, core = threads_core
    eu_stack = backtrace.parse_eu_stack(fixture.eu_stack_text)
    trace = getattr(backtrace, function)(core, str(fixture.binary_path))
    assert set(trace) == set(eu_stack) and len(trace) == 4
    for tid, frames in eu_stack.items():
        assert [pc for pc, _ in trace[tid][:len(frames)]] == [pc for pc, _ in frames], tid
        assert all(name for _, name in trace[tid][:len(frames)]), tid


def test_eu_stack_as_the_bench_runs_it_agrees_with_the_recorded_output(threads_core):
    if shutil.which("eu-stack") is None:
        pytest.skip("eu-stack not installed")
    fixture, core = threads_core
    recorded = backtrace.parse_eu_stack(fixture.eu_stack_text)
    assert backtrace.eu_stack_backtraces(core, str(fixture.binary_path)) == recorded
