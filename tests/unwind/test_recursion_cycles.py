"""Mutual recursion (A->B->A->B...) folds into one counted instance of the cycle,
and expands back to exactly the frames gdb shows."""

from __future__ import annotations

import subprocess

import pytest

from coredumpd.unwind.frames import FrameList
from coredumpd.unwind.types import Caps, Frame, Trust
from tests.annotate.crashing import crash
from tests.support.analysis import expand_json
from tests.support.crash import compile_c


def _fold(pcs: list[int], caps: Caps | None = None) -> list[Frame]:
    frames = FrameList(caps or Caps())
    for number, pc in enumerate(pcs):
        frames.add(Frame(0, pc, 0x1000 + 16 * number, None,
                         Trust.CONTEXT if number == 0 else Trust.CFI))
    return frames.result()


def _as_json(frames: list[Frame]) -> list[dict[str, int]]:
    return [{"index": frame.index, "pc": frame.pc, "repeat": frame.repeat, "cycle": frame.cycle}
            for frame in frames]


@pytest.mark.parametrize("cycle", [[0xA, 0xB], [0xA, 0xB, 0xC], [0xA, 0xB, 0xC, 0xD]])
@pytest.mark.parametrize("partial", [0, 1])
def test_cycles_fold_and_expand_back(cycle, partial):
    pcs = [0x1] + cycle * 500 + cycle[:partial] + [0x2, 0x3]
    frames = _fold(pcs)
    assert len(frames) < 20  # 1500+ frames became one instance of the cycle plus the edges
    assert any(frame.cycle == len(cycle) and frame.repeat > 400 for frame in frames)
    assert [frame["pc"] for frame in expand_json(_as_json(frames))] == pcs


def test_a_short_alternation_stays_as_it_is():
    pcs = [0x1, 0xA, 0xB, 0xA, 0xB, 0x2]
    assert [(frame.pc, frame.repeat) for frame in _fold(pcs)] == [(pc, 1) for pc in pcs]


def test_direct_recursion_inside_the_stack_still_folds_alone():
    pcs = [0x1] + [0xA] * 100 + [0xA, 0xB] * 100 + [0x2]
    frames = _fold(pcs)
    assert [frame["pc"] for frame in expand_json(_as_json(frames))] == pcs
    assert len(frames) < 30


PING_PONG = r"""
int ping(int n);
__attribute__((noinline)) int pong(int n) { volatile char pad[64]; pad[0] = n;
    return ping(n + 1) + pad[0]; }
__attribute__((noinline)) int ping(int n) { volatile char pad[64]; pad[0] = n;
    if (n == 3000) *(volatile int *)0 = 1;
    return pong(n + 1) + pad[0]; }
int main(void) { return ping(0); }
"""


@pytest.mark.kernel
def test_mutual_recursion_of_a_real_crash_matches_gdb(tmp_path):
    program = compile_c(PING_PONG, tmp_path, name="ping-pong")
    result = crash([program], tmp_path, raw=True)
    thread = next(thread for thread in result.analysis["threads"] if thread["crashed"])
    cycles = [frame for frame in thread["frames"] if frame["cycle"] == 2]
    assert len(cycles) == 2 and cycles[0]["repeat"] > 1000
    gdb = subprocess.run(["gdb", "-nx", "-batch", "-ex", "set backtrace limit 10000",
                          "-ex", "echo @@@\\n", "-ex", "bt", program, result.core_path],
                         capture_output=True, text=True, check=True).stdout.split("@@@\n", 1)[1]
    gdb_pcs = [int(line.split()[1], 16) for line in gdb.splitlines()
               if line.startswith("#") and line.split()[1].startswith("0x")]
    ours = [frame["pc"] for frame in expand_json(thread["frames"])]
    assert len(gdb_pcs) > 3000  # ping/pong 3001 deep, then main: gdb stops there
    assert ours[:len(gdb_pcs)] == gdb_pcs
