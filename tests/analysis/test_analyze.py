"""analyze_json() on the repository's fixture cores, and on cores cut or garbled in code.

The fixtures (fixtures/cores/, made by make_cores.py) carry ``expected.json``:
the physical frames gdb found, with module, build-id, offset and symbol; the
result's frames must say the same, in the JSON shape of docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import pytest

from coredumpd.model import AnalysisResult
from coredumpd.source import BytesSource
from coredumpd.store.lz4seek import open_core_source
from coredumpd.unwind.types import Caps
from tests.support.analysis import analyze_json, expand_json, native_json
from tests.support.fixtures import Fixture, fixture_names, load_fixture

FRAME_KEYS = {"index", "pc", "module", "build_id", "offset", "symbol", "symbol_offset", "file",
              "line", "trust", "repeat", "cycle", "cfa", "inlined", "language"}
THREAD_KEYS = {"tid", "crashed", "name", "stop_reason", "registers", "frames"}


def run(fixture: Fixture) -> dict[str, Any]:
    source = open_core_source(str(fixture.core_path))
    try:
        return analyze_json(source, None, str(fixture.binary_path))
    finally:
        source.close()


def expanded(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return native_json(expand_json(frames))  # gdb has no Python frames


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_frames_match_gdb(name: str) -> None:
    fixture = load_fixture(name)
    result = run(fixture)
    assert result["state"] == "done", result["error"]
    json.dumps(result)  # JSON-able as stored in the index
    assert set(result) == set(AnalysisResult().to_json())
    threads = {thread["tid"]: thread for thread in result["threads"]}
    starts = {module["path"]: module["start"] for module in result["modules"]}
    assert set(threads) == {thread["tid"] for thread in fixture.expected}
    for expected in fixture.expected:
        ours = expanded(threads[expected["tid"]]["frames"])
        assert [f["pc"] for f in ours] == [f["pc"] for f in expected["frames"]]
        for frame, reference in zip(ours, expected["frames"], strict=True):
            assert set(frame) == FRAME_KEYS
            assert frame["module"] == reference["module"]
            assert frame["build_id"] == reference.get("module_build_id")
            # expected.json's offset is of the lookup pc (pc - 1 for return addresses);
            # ours is systemd-coredump's: of the pc itself (see analysis/shape.py).
            if frame["module"] is not None:
                assert frame["offset"] == frame["pc"] - starts[frame["module"]]
                assert frame["offset"] - reference["offset"] in (0, 1)
            assert frame["inlined"] == reference["inlined"]
            if not reference["inlined"]:  # inlined names: tests/test_backtraces_vs_gdb.py
                assert frame["symbol"] == reference["symbol"], (hex(frame["pc"]), reference)


@pytest.mark.parametrize("name", ["abort", "threads", "sighandler"])
def test_result_shape(name: str) -> None:
    fixture = load_fixture(name)
    result = run(fixture)
    crashed = result["threads"][0]
    assert crashed["crashed"] and crashed["tid"] == result["crashed_tid"]
    assert not any(thread["crashed"] for thread in result["threads"][1:])
    assert all(set(thread) == THREAD_KEYS for thread in result["threads"])
    assert crashed["frames"][0]["trust"] == "context"
    assert crashed["registers"]["rip"] == crashed["frames"][0]["pc"]
    current = [insn for insn in result["disassembly"] if insn["current"]]
    assert len(current) == 1 and current[0]["address"] == crashed["frames"][0]["pc"]
    assert result["signal"]["signo"] == fixture.manifest["signal"]
    assert result["modules"] and all(module["build_id"] for module in result["modules"])
    assert result["duration_ms"] >= 0


def test_thread_names_come_from_facts() -> None:
    fixture = load_fixture("threads")
    tids = [thread["tid"] for thread in fixture.expected]
    facts = {"proc": {"threads": [{"tid": tid, "comm": f"worker-{tid}"} for tid in tids]}}
    source = open_core_source(str(fixture.core_path))
    try:
        result = analyze_json(source, facts, str(fixture.binary_path))
    finally:
        source.close()
    assert {thread["name"] for thread in result["threads"]} == {f"worker-{t}" for t in tids}


def test_garbage_is_a_failed_state_not_an_exception() -> None:
    result = analyze_json(BytesSource(b"\x7fELF" + bytes(range(256)) * 3))
    assert result["state"] == "failed" and result["error"]
    assert analyze_json(BytesSource(b""))["state"] == "failed"


def test_cut_and_corrupted_cores_never_raise() -> None:
    """Cuts anywhere and random byte flips: a result every time, partial threads kept."""
    fixture = load_fixture("threads")
    source = open_core_source(str(fixture.core_path))
    data = source.pread(0, source.size)
    source.close()
    rng = random.Random(3)
    cuts = [64, 200, 1000, 4096, 5000, len(data) // 3, len(data) // 2, len(data) - 1]
    for cut in cuts:
        result = analyze_json(BytesSource(data[:cut]), None, str(fixture.binary_path))
        json.dumps(result)
        assert result["state"] in ("done", "failed")
    for _ in range(6):
        garbled = bytearray(data)
        for _ in range(200):
            garbled[rng.randrange(64, len(garbled))] = rng.getrandbits(8)
        result = analyze_json(BytesSource(bytes(garbled)), None, str(fixture.binary_path))
        json.dumps(result)
        assert result["state"] in ("done", "failed")


def test_thread_and_frame_caps() -> None:
    fixture = load_fixture("threads")
    source = open_core_source(str(fixture.core_path))
    try:
        result = analyze_json(source, None, str(fixture.binary_path),
                         caps=Caps(max_threads=2, max_frames=3))
    finally:
        source.close()
    assert len(result["threads"]) == 2 and result["threads"][0]["crashed"]
    assert any("threads not unwound" in problem for problem in result["problems"])
    # the cap counts the unwinder's (physical) frames; the calls inlined into them follow
    assert all(len([f for f in thread["frames"] if not f["inlined"]]) <= 3
               for thread in result["threads"])


def test_repeated_analyses_leak_no_fds_and_no_address_spaces():
    """corectl, the fuzzer and tests analyse in a loop: every file, space and CFI state
    (the Unwinder's cache) is released."""
    import gc

    from coredumpd.image import space as space_module
    from coredumpd.store.lz4seek import open_core_source
    from coredumpd.unwind.module_cfi import ModuleCfi
    from tests.support.fixtures import fixture_names, load_fixture

    fixture = load_fixture(fixture_names()[0])

    def once() -> None:
        source = open_core_source(str(fixture.core_path))
        try:
            assert analyze_json(source, exe=str(fixture.binary_path))["state"] == "done"
        finally:
            source.close()

    def alive(kind: type) -> set[int]:  # other tests' objects may live on in their fixtures
        return {id(obj) for obj in gc.get_objects() if isinstance(obj, kind)}

    once()  # warm caches and lazy imports
    gc.collect()
    fds_before = len(os.listdir("/proc/self/fd"))
    spaces_before = alive(space_module.ProcessAddressSpace)
    cfi_before = alive(ModuleCfi)
    for _ in range(20):
        once()
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert alive(ModuleCfi) <= cfi_before
    assert alive(space_module.ProcessAddressSpace) <= spaces_before
