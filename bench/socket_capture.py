"""coredumpd serve on the kernel's coredump socket: reap latency, storm, rejected crashes.

    sudo .venv/bin/python bench/socket_capture.py reap [--big-mib 1024] [--rounds 7] [--tiny-only]
    sudo .venv/bin/python bench/socket_capture.py storm [--count 256]
    sudo .venv/bin/python bench/socket_capture.py reject [--runs 10]

``reap``: crash -> reap latency (bench/reap_crasher.c, as bench/reap_latency.py)
of a tiny core and a BIG-MIB MiB core under three handlers, interleaved round
by round so the machine's noise falls on all three alike: discard
(``|/bin/sh -c /bin/cat>/dev/null``, the floor), the pipe handler (the
launcher ``coredumpd install`` writes) and the socket server (``coredumpd
serve``, started once).  min / median / max over ROUNDS.  Each crash waits
until the previous crash's analysis is done.

``storm``: COUNT distinct programs (copies of one binary under COUNT names)
crash at once in socket mode; all rows present, all cores stored, and the
server's peak memory: the sum of Pss (/proc/PID/smaps_rollup: forked workers
share the server's pages, so RSS would count them COUNT times) of the server
and its workers, sampled every 10 ms.

``reject``: one program crashing beyond RateLimitBurst: wall time (crash ->
reap) and CPU time of a rejected crash (no dump) against a stored one.  CPU =
the crashing process's own time (the kernel dumps in its context) + the server
worker's (the server's cutime/cstime: it reaps its workers); the detached
analysis is not counted (it belongs to neither).

core_pattern is changed only through tests.support.kernel.core_pattern (lock,
restore).  Configuration: the default (Analysis=yes) except what
:data:`bench.reap_latency.BENCH_SETTINGS` says (printed first); the journal goes
to a private journald namespace (bench.provenance.private_journal).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.provenance import measured_line, private_journal
from bench.reap_latency import BENCH_SETTINGS, DISCARD, configuration, crash_once
from coredumpd.pipeline.install import build_pattern, write_launcher
from tests.support.crash import RegisteredHandler, compile_c, registered_handler
from tests.support.kernel import core_pattern

COREDUMPD = str(pathlib.Path(sys.executable).parent / "coredumpd")


@contextlib.contextmanager
def server(handler: RegisteredHandler, socket_path: str,
           workers: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``coredumpd serve`` on ``socket_path`` until the block ends."""
    ready_r, ready_w = os.pipe()
    argv = [COREDUMPD, "serve", "--socket", socket_path, "--config", handler.config_path,
            "--ready-fd", str(ready_w)] + (["--workers", str(workers)] if workers else [])
    process = subprocess.Popen(argv, pass_fds=(ready_w,), stdin=subprocess.DEVNULL)
    os.close(ready_w)
    try:
        if os.read(ready_r, 1) != b"R":
            raise RuntimeError("coredumpd serve did not become ready")
        yield process
    finally:
        os.close(ready_r)
        process.terminate()
        process.wait(300)


def _wait(handler: RegisteredHandler, pid: int) -> dict[str, Any]:
    row = handler.wait_row(pid, wait_analysis=handler.config.analysis, timeout=900)
    if row.get("core_path"):
        os.unlink(str(row["core_path"]))
    return row


def _spread(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{min(ms):8.1f} {statistics.median(ms):8.1f} {max(ms):8.1f}"


def reap(options: argparse.Namespace, work: pathlib.Path) -> None:
    exe = compile_c(str(REPO / "bench" / "reap_crasher.c"), work, flags=("-O2",))
    launcher = write_launcher(str(work / "bin"))
    socket_path = f"/run/cdbench-{os.getpid()}.sock"
    print(f"{'core':>10} {'handler':>8}   {'min':>8} {'median':>8} {'max':>8}  ms   ratio"
          " (median / discard median)")
    sizes = [("tiny", 0)] + ([] if options.tiny_only else
                             [(f"{options.big_mib} MiB", options.big_mib)])
    for label, mib in sizes:
        times: dict[str, list[float]] = {"discard": [], "pipe": [], "socket": []}
        steps: dict[str, list[float]] = {}
        with registered_handler(work, directory=str(work / "store"), **options.settings) as handler, \
                server(handler, socket_path):
            pipe = build_pattern(launcher, handler.config_path)
            for _ in range(options.rounds):
                times["discard"].append(crash_once(exe, mib, DISCARD, str(work / "ts"))[1])
                for mode, pattern in (("pipe", pipe), ("socket", f"@@{socket_path}")):
                    pid, latency = crash_once(exe, mib, pattern, str(work / "ts"))
                    times[mode].append(latency)
                    row = _wait(handler, pid)
                    if mode == "socket":
                        for step, ms in ((row.get("facts") or {}).get("timings_ms") or {}).items():
                            steps.setdefault(step, []).append(float(ms))
                    if row.get("core_state") != "present":
                        print(f"  {mode}: core {row.get('core_state')}: {row.get('core_reason')}")
        floor = statistics.median(times["discard"])
        for mode, values in times.items():
            print(f"{label:>10} {mode:>8}   {_spread(values)}      "
                  f"{statistics.median(values) / floor:5.2f}")
        print(f"{'':>10} socket server, accept -> (median ms): " + ", ".join(
            f"{step} {statistics.median(values):.1f}" for step, values in steps.items()))
    print(f"\n{options.rounds} interleaved rounds; latency = the program's last "
          "CLOCK_MONOTONIC reading -> the parent's after waitpid()")


def _pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def _tree(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [pid, *(int(child) for child in handle.read().split())]
    except OSError:
        return [pid]


def storm(options: argparse.Namespace, work: pathlib.Path) -> None:
    base = compile_c("int main(void){ *(volatile int *)0 = 1; }", work, name="base")
    programs = []
    for number in range(options.count):
        path = work / f"storm{number:03d}"
        shutil.copy(base, path)
        programs.append(str(path))
    socket_path = f"/run/cdbench-{os.getpid()}.sock"

    def unlimited() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
    with registered_handler(work, directory=str(work / "store"), **options.settings) as handler, \
            server(handler, socket_path, options.workers) as process, \
            core_pattern(f"@@{socket_path}", 16):
        started = time.monotonic()
        crashers = [subprocess.Popen([exe], preexec_fn=unlimited)  # noqa: PLW1509
                    for exe in programs]
        peak = 0
        while any(c.poll() is None for c in crashers):
            peak = max(peak, _pss_kib(_tree(process.pid)))
            time.sleep(0.01)
        reaped = time.monotonic() - started
        rows = [handler.wait_row(c.pid, wait_analysis=False, timeout=900) for c in crashers]
        stored = sum(1 for row in rows if row.get("core_state") == "present")
    print(f"{options.count} simultaneous crashes of distinct programs in socket mode"
          f" (--workers {options.workers or 'default'}): {len(rows)} rows, {stored} cores stored;"
          f" all reaped after {reaped:.2f} s; peak server memory (Pss of server + workers)"
          f" {peak / 1024:.1f} MiB")


def _server_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of the server (its reaped workers included), s."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def reject(options: argparse.Namespace, work: pathlib.Path) -> None:
    exe = compile_c(str(REPO / "bench" / "reap_crasher.c"), work, flags=("-O2",))
    socket_path = f"/run/cdbench-{os.getpid()}.sock"
    settings = {**options.settings, "rate_limit_burst": options.runs}
    print(f"reject: RateLimitBurst={options.runs} (the first {options.runs} crashes are stored,"
          " the next ones rejected)")
    results: dict[str, list[tuple[float, float, float]]] = {"kernel": [], "reject": []}
    with registered_handler(work, directory=str(work / "store"), **settings) as handler, \
            server(handler, socket_path) as process:
        for _ in range(2 * options.runs):
            before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
            before_server = _server_cpu(process.pid)
            pid, latency = crash_once(exe, options.mib, f"@@{socket_path}", str(work / "ts"))
            after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
            row = _wait(handler, pid)
            time.sleep(0.05)  # the worker has exited and been reaped by the server
            crasher = (after_children.ru_utime + after_children.ru_stime
                       - before_children.ru_utime - before_children.ru_stime)
            worker = _server_cpu(process.pid) - before_server
            results[str(row["facts"].get("decision"))].append((latency, crasher, worker))
    for decision, values in results.items():
        if values:
            wall, crasher_ms, worker_ms = (statistics.median(v[i] for v in values) * 1000
                                           for i in range(3))
            print(f"{decision:>7}: {len(values)} crashes of a {options.mib} MiB core; median "
                  f"wall (crash -> reap) {wall:.1f} ms; CPU: crashing process {crasher_ms:.0f}"
                  f" ms (its own run included: the kernel dumps in its context), server "
                  f"worker {worker_ms:.0f} ms")
    print("CPU in clock ticks of", 1000 // os.sysconf("SC_CLK_TCK"), "ms; analysis excluded")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    reap_parser = commands.add_parser("reap")
    reap_parser.add_argument("--big-mib", type=int, default=1024)
    reap_parser.add_argument("--rounds", type=int, default=7)
    reap_parser.add_argument("--tiny-only", action="store_true", help="only the tiny core")
    storm_parser = commands.add_parser("storm")
    storm_parser.add_argument("--count", type=int, default=256)
    storm_parser.add_argument("--workers", type=int, default=None)
    reject_parser = commands.add_parser("reject")
    reject_parser.add_argument("--runs", type=int, default=10)
    reject_parser.add_argument("--mib", type=int, default=64)
    options = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="sockbench", dir="/var/tmp"))
    try:
        with private_journal() as journal:
            print(measured_line(configuration(True, journal.description)))
            options.settings = {**BENCH_SETTINGS, **journal.settings}
            {"reap": reap, "storm": storm, "reject": reject}[options.command](options, work)
            print(journal.entries_line())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
