"""What the frames of issue 11 cost: inlined calls (DWARF) and Python frames (pystack).

    .venv/bin/python bench/frames_cost.py [--runs N]

* ``analyze()`` of fixture cores with the inline stage on, and stubbed out
  (``DwarfLines.inlined`` returning []): the difference is what reading the
  DW_TAG_inlined_subroutine chains costs;
* for the ``python`` fixture (5 MB raw, lz4 stored): importing pystack
  (``python -X importtime -c "import pystack._pystack"``, a fresh interpreter),
  copying the core decompressed into a memfd (``copy_to_memfd``), pystack
  reading the stacks from it (``get_process_threads_for_core``), and
  ``pystack core`` as a command (what the issue measured at 60 ms);
* ``analyze()`` of the python fixture with the Python stage on and stubbed out.

Each figure is the minimum of ``N`` runs (the least disturbed on a shared
machine), in milliseconds.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from provenance import measured_line

from coredumpd.analysis import analyze
from coredumpd.analysis import python as python_frames
from coredumpd.source import copy_to_memfd
from coredumpd.store.lz4seek import open_core_source
from coredumpd.symbolize import lines
from tests.support.fixtures import load_fixture

INLINE_FIXTURES = ("threads", "cxx", "abort", "o2-deep-nopie")


def best(runs: int, action: Callable[[], Any]) -> float:
    figures = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        figures.append((time.perf_counter() - started) * 1000)
    return min(figures)


def analyze_once(core: pathlib.Path, exe: str) -> None:
    source = open_core_source(str(core))
    try:
        analyze(source, None, exe)
    finally:
        source.close()


def import_ms() -> float:
    stderr = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pystack._pystack"],
                            capture_output=True, text=True, check=True).stderr
    found = re.search(r"\|\s+(\d+) \|\s+pystack$", stderr, re.MULTILINE)
    return int(found[1]) / 1000 if found else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    print(measured_line(f"best of {runs} runs, milliseconds"))
    inlined = lines.DwarfLines.inlined
    print("fixture          analyze, inline stubbed  analyze, inline on")
    for name in INLINE_FIXTURES:
        fixture = load_fixture(name)
        core, binary = fixture.core_path, str(fixture.binary_path)
        figures = [float("inf"), float("inf")]
        for _ in range(runs):  # alternating, so that the machine's load falls on both
            for position, stage in enumerate((lambda self, address: [], inlined)):
                lines.DwarfLines.inlined = stage  # type: ignore[method-assign]
                figures[position] = min(figures[position], best(
                    1, functools.partial(analyze_once, core, binary)))
        lines.DwarfLines.inlined = inlined  # type: ignore[method-assign]
        print(f"{name:16} {figures[0]:23.1f}  {figures[1]:18.1f}")

    fixture = load_fixture("python")
    exe = str(fixture.binary_path)
    source = open_core_source(str(fixture.core_path))
    copies: list[int] = []
    print(f"\npython fixture: core {source.size} bytes")
    print(f"import pystack               {min(import_ms() for _ in range(runs)):8.1f}")
    print(f"copy into a memfd            {best(runs, lambda: copies.append(copy_to_memfd(source))):8.1f}")
    path = f"/proc/self/fd/{copies[-1]}"
    print(f"pystack reads the stacks     {best(runs, lambda: python_frames.read_stacks(path, exe)):8.1f}")
    raw = pathlib.Path(f"/proc/{os.getpid()}/fd/{copies[-1]}")
    command = [sys.executable, "-m", "pystack", "core", str(raw), exe]
    print(f"pystack core (a command)     {best(runs, lambda: subprocess.run(command, capture_output=True, check=False)):8.1f}")
    for fd in copies:
        os.close(fd)
    source.close()
    add = python_frames.add_python_frames
    figures = [float("inf"), float("inf")]
    for _ in range(runs):
        for position, stage in enumerate((lambda *args, **kwargs: 0, add)):
            python_frames.add_python_frames = stage  # type: ignore[assignment]
            figures[position] = min(figures[position], best(
                1, lambda: analyze_once(fixture.core_path, exe)))
    python_frames.add_python_frames = add
    print(f"analyze, Python stubbed      {figures[0]:8.1f}\nanalyze, Python on           {figures[1]:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
