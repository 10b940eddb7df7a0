"""What caches kept between crashes would save on the tenth crash of one program.

    sudo .venv/bin/python bench/analysis_warm.py [--crashes 10]

Each crash's analysis runs today in a fresh sandboxed process (``python -m
coredumpd.pipeline.analyze_job``): interpreter start, imports, and every
per-module cache (CFI tables, symbol tables, the ``lru_cache`` of demangled
names) built from nothing.  A long-lived server could keep them, keyed by
build-id.  This bench crashes one program CRASHES times (raw cores, a ``cat``
handler) and analyses the cores

- cold: each in a new ``python -m coredumpd.analysis`` process, as now;
- warm: all in one process, one after the other — the upper bound of what a
  cache shared between crashes could save (everything a process keeps, not
  only per-build-id tables).

It prints the wall time of the first and the last crash's analysis each way.
core_pattern is changed only through tests.support.kernel.core_pattern.
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.provenance import measured_line
from coredumpd.analysis import analyze
from coredumpd.model import AnalysisState
from coredumpd.store.lz4seek import open_core_source
from tests.support.crash import compile_c
from tests.support.kernel import core_pattern, raw_core_pattern

PROGRAM = r"""
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
static void *idle(void *arg) { (void)arg; pause(); return 0; }
static void deep(int n) { if (n == 0) abort(); deep(n - 1); }
int main(void) {
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], 0, idle, 0);
    usleep(20000);
    deep(20);
}
"""


def crash_cores(work: pathlib.Path, count: int) -> tuple[list[pathlib.Path], str]:
    exe = compile_c(PROGRAM, work, name="tenth")
    raw = work / "raw"
    raw.mkdir()
    pids = []

    def unlimited() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
    with core_pattern(raw_core_pattern(str(raw)), 16):
        for _ in range(count):
            proc = subprocess.Popen([exe], preexec_fn=unlimited)  # noqa: PLW1509
            proc.wait()
            pids.append(proc.pid)
    time.sleep(1)  # the cat handlers finish writing
    return [raw / f"core.{pid}" for pid in pids], exe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crashes", type=int, default=10)
    options = parser.parse_args()
    print(measured_line("coredumpd.analysis.analyze() with its defaults, raw cores"))
    work = pathlib.Path(tempfile.mkdtemp(prefix="warm", dir="/var/tmp"))
    try:
        cores, exe = crash_cores(work, options.crashes)
        cold = []
        for core in cores:
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "coredumpd.analysis", str(core), "--exe", exe,
                            "--json"], check=True, capture_output=True)
            cold.append(time.monotonic() - started)
        warm = []
        for core in cores:
            started = time.monotonic()
            result = analyze(open_core_source(str(core)), exe=exe)
            warm.append(time.monotonic() - started)
            assert result.state == AnalysisState.DONE, result.error
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"cold (a new process per crash, as now): first {cold[0] * 1000:.0f} ms, "
          f"last {cold[-1] * 1000:.0f} ms, median {statistics.median(cold) * 1000:.0f} ms")
    print(f"warm (one process, everything kept): first {warm[0] * 1000:.0f} ms, "
          f"last {warm[-1] * 1000:.0f} ms, median {statistics.median(warm) * 1000:.0f} ms")
    print(f"crash {options.crashes}: a warm process saves "
          f"{(cold[-1] - warm[-1]) * 1000:.0f} ms of {cold[-1] * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
