"""The fuzzing harness (bench/fuzz.py): it must see every kind of crash, and a
short campaign per target must find none (the long one is the benchmark)."""

from __future__ import annotations

import ctypes
import pathlib
import sys

import pytest

from tests.regressions import targets as T
from tests.support.kernel import crashes_discarded

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import fuzz

FIXTURE_CORES = sorted((REPO / "fixtures" / "cores").glob("*/core*"))


def _type_error(data: bytes) -> None:
    if data[:1] == b"\x7f":
        raise TypeError("planted")


def _segfault(data: bytes) -> None:
    ctypes.string_at(0)


def _spin(data: bytes) -> None:
    while True:
        pass


def _hoard(data: bytes) -> None:
    hoard = []
    while True:
        hoard.append(bytearray(32 << 20))


def _our_error(data: bytes) -> None:
    from coredumpd.errors import FormatError

    raise FormatError("hostile", 0)


@pytest.fixture()
def planted(monkeypatch):
    for name, function in {"planted-type": _type_error, "planted-segv": _segfault,
                           "planted-spin": _spin, "planted-hoard": _hoard,
                           "planted-ours": _our_error}.items():
        monkeypatch.setitem(T.TARGETS, name, function)


def campaign(target: str, count: int = 20, **limits) -> tuple[int, list[fuzz.Finding], dict]:
    seeds = [b"\x7fELF" + bytes(200)]
    outcomes: dict[str, int] = {}
    settings = {"time_limit": 0.5, "memory_max": 512 << 20} | limits
    executions, findings = fuzz.run_campaign(target, count, 1, seeds, settings["time_limit"],
                                             settings["memory_max"], outcomes)
    return executions, findings, outcomes


def test_uncaught_exception_is_one_deduplicated_finding(planted):
    executions, findings, _ = campaign("planted-type")
    assert executions == 20
    assert len(findings) == 1
    assert findings[0].kind == "exception"
    assert findings[0].signature.startswith("TypeError at ")


def test_worker_killed_by_a_signal_is_a_finding_and_the_run_goes_on(planted):
    with crashes_discarded():  # whatever the machine's fs.suid_dumpable, no handler sees them
        executions, findings, outcomes = campaign("planted-segv", count=3)
    assert executions == 3
    assert outcomes == {"clean": 0, "our-error": 0, "finding": 0, "killed": 3}
    assert [f.signature for f in findings] == ["worker killed by SIGSEGV"]


def test_executions_are_inputs_run_not_inputs_requested(planted, monkeypatch):
    """An input that could not even be made (here: the generator fails on input 5)
    did not run: it is not an execution, and the campaign goes on after it."""
    made = fuzz.Generator.input

    def failing(self, index):
        if index == 5:
            raise RuntimeError("planted generator failure")
        return made(self, index)

    monkeypatch.setattr(fuzz.Generator, "input", failing)
    executions, findings, outcomes = campaign("planted-ours", count=20)
    assert executions == 19
    assert outcomes == {"clean": 0, "our-error": 19, "finding": 0, "killed": 0}
    assert [(f.kind, f.index) for f in findings] == [("fatal", 5)]


def test_hang_is_stopped_by_the_alarm(planted):
    _, findings, _ = campaign("planted-spin", count=2, time_limit=0.3)
    assert [f.kind for f in findings] == ["timeout"]


def test_memory_is_capped(planted):
    _, findings, _ = campaign("planted-hoard", count=2, memory_max=400 << 20, time_limit=10)
    assert [f.kind for f in findings] == ["memory"]


def test_our_errors_are_not_findings(planted):
    _, findings, outcomes = campaign("planted-ours")
    assert findings == [] and outcomes == {"clean": 0, "our-error": 20, "finding": 0,
                                           "killed": 0}


def test_inputs_are_reproducible_from_their_index():
    seeds = [pathlib.Path(p).read_bytes() for p in FIXTURE_CORES[:0]] or [
        b"\x7fELF\x02\x01\x01" + bytes(57) + bytes(range(256)) * 8]
    first = fuzz.Generator("reader", seeds, 7)
    second = fuzz.Generator("reader", seeds, 7)
    assert [first.input(i) for i in range(50)] == [second.input(i) for i in range(50)]
    assert len({first.input(i) for i in range(50)}) > 40


def test_mutations_reach_the_note_headers():
    if not FIXTURE_CORES:
        pytest.skip("no fixture cores committed")
    seed = fuzz.load_core_seeds(FIXTURE_CORES[:1])[0]
    layout = fuzz.core_layout(seed)
    start, end = layout.notes
    assert 0 < start < end <= len(seed)
    note_fields = [offset for offset, _ in layout.fields if start <= offset < end]
    assert len(note_fields) > 20  # note headers, NT_FILE counts, prstatus words


@pytest.mark.slow
@pytest.mark.parametrize("target,count", [("reader", 1500), ("stream", 800), ("args", 3000),
                                          ("procfs", 150), ("unwind", 300), ("analysis", 40),
                                          ("cache", 20), ("answer", 100)])
def test_short_campaign_finds_nothing(target, count):
    if T.available(target) is not None:
        pytest.skip(T.available(target))
    if target not in ("args", "procfs") and not FIXTURE_CORES:
        pytest.skip("no fixture cores committed")
    seeds = fuzz.load_core_seeds(FIXTURE_CORES)
    outcomes: dict[str, int] = {}
    executions, findings = fuzz.run_campaign(target, count, 20261122, seeds, 10.0, 1 << 30,
                                             outcomes)
    assert executions == count
    assert [(f.signature, f.traceback) for f in findings] == []
