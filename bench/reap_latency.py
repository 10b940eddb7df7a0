"""Crash -> reap latency of core handlers, coredumpd's peak RSS and stored size.

    sudo .venv/bin/python bench/reap_latency.py [--big-mib 1024] [--runs 3] [--tiny-only]
        [--deleted-exe]

One run measures, for a tiny-core program and one with a BIG-MIB MiB core
(pages 25% zero, 25% random, 50% text: bench/reap_crasher.c), the time from
the program's last CLOCK_MONOTONIC reading (written to a file just before it
dies) to the parent's reading after waitpid(), under three handlers:

- discard: ``/bin/sh -c /bin/cat>/dev/null`` — the floor (the kernel's own work);
- lz4 -1:  ``/usr/bin/lz4 -1 -q -f stdin DIR/core.%P.lz4``;
- coredumpd: started as the launcher ``coredumpd install`` writes starts it
  (``python -I -S``, coredumpd.pipeline.install.write_launcher), here in the
  bench's directory, with the default configuration (the analysis and the
  journal on) except where the first line of the output says otherwise:
  RateLimitBurst is raised so that every crash of the bench is stored, and the
  journal entries go to a systemd-journald namespace the bench starts
  (JournalNamespace=), never to the host's journal.  The next crash waits
  until the analysis of the previous one is done (and its entry sent), so that
  none competes with it.
  ``--no-analysis`` measures with Analysis=no; ``--console-script`` starts it
  as the venv's pip-generated ``coredumpd`` instead (``site`` runs).
  ``--deleted-exe``: each round also crashes, under coredumpd, the program run
  from a fresh copy that unlinks itself before crashing, so the handler keeps a
  copy of it in the store (issue 10; the copy is removed after each crash so
  that every crash makes one): the row "exe deleted", interleaved with the
  plain one; the disk a kept copy takes is printed.

The kernel runs the product's handler through tests/support/measured_handler.py,
which writes the handler's timings and getrusage() into the index row
(``facts.handler_rusage``) after the handler has finished.  Each figure is the
median of ``--runs`` crashes.  core_pattern is changed only
through tests.support.kernel.core_pattern (lock, restore).  Targets (issue 2):
1 GiB reap <= 1.3x discard; tiny reap <= 25 ms; peak RSS <= 64 MiB; stored
size <= lz4 -1's.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.provenance import measured_line, private_journal
from coredumpd.pipeline.install import build_pattern
from tests.support.crash import RegisteredHandler, compile_c, registered_handler
from tests.support.kernel import core_pattern
from tests.support.measured_handler import write_script

DISCARD = "|/bin/sh -c /bin/cat>/dev/null"


def crash_once(exe: str, mib: int, pattern: str, stamp: str,
               unlink: bool = False) -> tuple[int, float]:
    """Crash ``exe`` under ``pattern``; (pid, seconds from its last timestamp to reap).

    The program's timestamp stays in ``stamp`` for the caller; with ``unlink`` it
    runs from a copy of ``exe`` that it removes before crashing."""
    def unlimited_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
    argv = [exe, str(mib), stamp]
    if unlink:
        argv[0] = f"{exe}.running"
        shutil.copy2(exe, argv[0])
        argv.append("unlink")
    with core_pattern(pattern, 16):
        proc = subprocess.Popen(argv, preexec_fn=unlimited_core)  # noqa: PLW1509
        proc.wait()
        reaped = time.clock_gettime(time.CLOCK_MONOTONIC)
    return proc.pid, reaped - float(pathlib.Path(stamp).read_text())


def wait_file_stable(path: pathlib.Path, timeout: float = 120) -> int:
    """Wait until the lz4 handler has finished writing ``path``; its size."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else -1
        if size == last and size > 0:
            return size
        last = size
        time.sleep(0.3)
    raise TimeoutError(f"{path} still growing")


def lz4_once(exe: str, mib: int, work: pathlib.Path) -> tuple[float, int]:
    out = work / "lz4"
    out.mkdir(exist_ok=True)
    pattern = f"|/usr/bin/lz4 -1 -q -f stdin {out}/core.%P.lz4"
    pid, latency = crash_once(exe, mib, pattern, str(work / "ts"))
    size = wait_file_stable(out / f"core.{pid}.lz4")
    (out / f"core.{pid}.lz4").unlink()
    return latency, size


def coredumpd_once(exe: str, mib: int, work: pathlib.Path, handler: RegisteredHandler,
                   pattern: str, unlink: bool = False) -> tuple[float, dict[str, Any]]:
    """One crash under coredumpd; (reap latency, its index row once analysed)."""
    pid, latency = crash_once(exe, mib, pattern, str(work / "ts"), unlink)
    crashed_at = float((work / "ts").read_text())
    row = handler.wait_row(pid, wait_analysis=handler.config.analysis, timeout=600)
    deadline = time.monotonic() + 60
    while "handler_rusage" not in (row.get("facts") or {}):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
        row = handler.wait_row(pid, wait_analysis=False)
    row["crashed_at"] = crashed_at
    if row.get("core_path"):
        os.unlink(str(row["core_path"]))
    kept = [entry.get("kept") for entry in
            ((row.get("facts") or {}).get("mapped_objects") or {}).values()]
    row["kept_disk"] = [os.stat(path).st_blocks * 512 for path in kept if path]
    row["kept_size"] = [os.stat(path).st_size for path in kept if path]
    for path in kept:
        if path:
            os.unlink(path)  # the next crash must make its own copy
    return latency, row


# Where the bench departs from the default configuration (and says so).
BENCH_SETTINGS: dict[str, Any] = {"rate_limit_burst": 100000}


def configuration(analysis: bool, journal: str) -> str:
    return ("coredumpd: the default configuration (Analysis=yes) except " if analysis else
            "coredumpd: the default configuration except Analysis=no, ") + (
        f"RateLimitBurst=100000 (every crash stored); {journal}")


Variant = tuple[list[float], list[dict[str, Any]]]  # coredumpd's latencies and rows


def bench_size(exe: str, mib: int, runs: int, work: pathlib.Path, launcher: str,
               settings: dict[str, Any], deleted_exe: bool = False,
               ) -> tuple[list[float], list[float], int, dict[bool, Variant]]:
    """``runs`` rounds of discard, lz4 -1 and coredumpd in turn: the machine's noise
    (it is large here: one discard run of 1 GiB took 0.6 s, the next 3.3 s) then
    falls on the three alike instead of on whichever ran during a bad minute.
    With ``deleted_exe`` each round also crashes under coredumpd a program that
    deleted its executable (variant True; False is the plain crash)."""
    discard: list[float] = []
    lz4: list[float] = []
    variants: dict[bool, Variant] = {False: ([], [])}
    if deleted_exe:
        variants[True] = ([], [])
    lz4_size = 0
    with registered_handler(work, directory=str(work / "store"), **settings) as handler:
        pattern = build_pattern(launcher, handler.config_path)
        for _ in range(runs):
            discard.append(crash_once(exe, mib, DISCARD, str(work / "ts"))[1])
            latency, lz4_size = lz4_once(exe, mib, work)
            lz4.append(latency)
            for unlink, (ours, rows) in variants.items():
                latency, row = coredumpd_once(exe, mib, work, handler, pattern, unlink)
                ours.append(latency)
                rows.append(row)
    return discard, lz4, lz4_size, variants


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:9.1f} ms"


Row = tuple[str, list[float], list[float], list[float], int, Any, int, float, float, float,
            float]


def _row(label: str, discard: list[float], lz4: list[float], lz4_size: int,
         ours: list[float], rows: list[dict[str, Any]]) -> Row:
    usage = [(r.get("facts") or {}).get("handler_rusage", {}) for r in rows]
    rss = max((u.get("maxrss_kib", 0) for u in usage), default=0)
    held = statistics.median([u.get("held_ms", 0.0) for u in usage] or [0.0])
    cpu = statistics.median([u.get("cpu_s", 0.0) for u in usage] or [0.0])
    wait = statistics.median([u.get("reap_wait_ms") or 0.0 for u in usage] or [0.0])
    start = statistics.median([(u.get("main_monotonic", 0.0) - float(str(r["crashed_at"])))
                               * 1000 for u, r in zip(usage, rows, strict=True)] or [0.0])
    stored = rows[-1].get("stored_size") if rows else None
    return (label, discard, lz4, ours, lz4_size, stored, rss, held, cpu, start, wait)


def measure(options: argparse.Namespace, work: pathlib.Path,
            settings: dict[str, Any]) -> tuple[list[Row], list[str]]:
    """Both core sizes; the table rows and, per size, the analysis states of our rows."""
    exe = compile_c(str(REPO / "bench" / "reap_crasher.c"), work, flags=("-O2",))
    launcher = write_script(str(work / "bin"), isolated=not options.console_script)
    table: list[Row] = []
    analysed: list[str] = []
    sizes = [("tiny", 0)] + ([] if options.tiny_only else
                             [(f"{options.big_mib} MiB", options.big_mib)])
    for label, mib in sizes:
        discard, lz4, lz4_size, variants = bench_size(exe, mib, options.runs, work, launcher,
                                                      settings, options.deleted_exe)
        for unlink, (ours, rows) in variants.items():
            name = f"{label}, exe deleted" if unlink else label
            table.append(_row(name, discard, lz4, lz4_size, ours, rows))
            states = collections.Counter(str(row.get("analysis_state")) for row in rows)
            analysed.append(f"{name}: {dict(states)}")
            if unlink:
                disk = [size for row in rows for size in row["kept_disk"]]
                size = [size for row in rows for size in row["kept_size"]]
                analysed.append(f"{name}: kept copies {len(disk)} of {len(rows)} crashes, "
                                f"{max(size, default=0)} bytes each, "
                                f"{max(disk, default=0)} bytes on disk")
    return table, analysed


def print_table(table: list[Row], runs: int) -> None:
    print(f"{'core':>18} {'discard':>12} {'lz4 -1':>12} {'coredumpd':>12} {'ratio':>6} "
          f"{'lz4 size':>12} {'our size':>12} {'peak RSS':>10} {'start':>9} {'held':>9} "
          f"{'CPU':>8} {'wait':>8}")
    for label, discard, lz4, ours, lz4_size, stored, rss, held, cpu, start, wait in table:
        ratio = statistics.median(ours) / statistics.median(discard)
        print(f"{label:>18} {_ms(discard)} {_ms(lz4)} {_ms(ours)} {ratio:6.2f} "
              f"{lz4_size:12d} {stored!s:>12} {rss / 1024:7.1f} MiB {start:6.1f} ms "
              f"{held:6.1f} ms {cpu:6.2f} s {wait:5.1f} ms")
    print("\nratio = coredumpd / discard (medians of", runs, "runs);"
          " start = crash -> the handler's main() (kernel spawn + interpreter start);"
          " held = handler start (before coredumpd is imported) -> close(fd 0);"
          " CPU = the handler's user+system time;"
          " wait = close(fd 0) -> the crashed process exited (the handler sleeps on its pidfd)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-analysis", action="store_true", help="Analysis=no")
    parser.add_argument("--tiny-only", action="store_true", help="only the tiny core")
    parser.add_argument("--deleted-exe", action="store_true",
                        help="the program deletes its executable: the handler keeps a copy")
    parser.add_argument("--console-script", action="store_true",
                        help="register the venv's console script instead of the launcher")
    options = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="reap", dir="/var/tmp"))
    try:
        with private_journal() as journal:
            print(measured_line(configuration(not options.no_analysis, journal.description)))
            settings = {"analysis": not options.no_analysis, **BENCH_SETTINGS,
                        **journal.settings}
            table, analysed = measure(options, work, settings)
            journal_line = journal.entries_line()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(table, options.runs)
    print("analysis states of coredumpd's rows:", "; ".join(analysed))
    print(journal_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
