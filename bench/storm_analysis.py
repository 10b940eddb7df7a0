"""What a storm's analyses cost, and whether they slow the capture of the next crash.

    sudo .venv/bin/python bench/storm_analysis.py [--count 64] [--large 4] [--large-mib 192]
        [--tiny-rounds 7] [--variants no-cache,cold,warm]

Each variant crashes COUNT programs at the same moment (tests/hardening/storm.py's
program, each from its own copy, LARGE of them with LARGE-MIB MiB cores) under the
handler as ``coredumpd install`` registers it, with the default configuration
(analysis and journal on, the journal into a private journald namespace) except:

- ``no-cache``: ``AnalysisCache=no`` (what the handler did before its analyses had
  the module cache);
- ``cold``: ``AnalysisCache=yes`` on a new store (the cache fills during the storm);
- ``warm``: the same storm again on the ``cold`` variant's store;
- ``default``: the checkout's own defaults on a new store (to compare commits: run
  this bench from an older checkout with its own venv).

Printed per variant: the time from the crash (the barrier's release) until the last of
the storm's analyses is stored (the index polled every 50 ms), and from the start of
the first analysis (the first sandbox or sandbox zygote of our jobs seen, every 50 ms);
the CPU of every analysis process: the sum of the storm rows' ``path_taken.analysis_cpu_ms``
(each row's share: its job's getrusage since the job's previous crash, its started
sandbox, or the zygote's and the forked child's as the zygote reports them, and the jobs
that found their crash analysed since) plus what such jobs counted after the last row
(``DIR/analysis-queue.cpu``, read once every job of the variant has exited); how many jobs
analysed the storm and how many sandboxes were forked by a zygote; the most analysis
jobs, sandboxes and zygotes alive at once and their nice values.  The tiny crashes
below are analysed by the same jobs: their rows' CPU is printed apart.

Then, while that variant's analyses run, tiny-core crashes (bench/reap_crasher.c,
0 MiB) one after the other, crash -> reap measured as bench/reap_latency.py does
(the program's last CLOCK_MONOTONIC reading to ours after waitpid); the same
program crashed TINY-ROUNDS times before the storm (nothing else of ours
running, each crash's analysis awaited) is the reference.

Finally the reference of issue 15: ``eu-stack -s`` on the same cores (the ``cold``
variant's, decompressed; the executable given) run one after the other: wall time
and CPU, and each variant's ratios to it.  core_pattern is only changed under tests/support/kernel.py's lock.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.analysis_warm import PROGRAM as TENTH_C
from bench.provenance import measured_line, private_journal
from tests.hardening import storm
from tests.support.crash import compile_c, installed, wait_for_handlers, write_config
from tests.support.kernel import core_pattern

DISCARD = "|/bin/sh -c /bin/cat>/dev/null"
BENCH_SETTINGS: dict[str, Any] = {"rate_limit_burst": 100000}
VARIANTS: dict[str, dict[str, Any]] = {
    "no-cache": {"analysis_cache": False}, "cold": {"analysis_cache": True},
    "warm": {"analysis_cache": True},
    "default": {}}  # the checkout's defaults, naming no key it may not know (A/B by commit)


def crash_tiny(exe: str, stamp: pathlib.Path) -> tuple[int, float]:
    """Crash the tiny program under whatever pattern is set; (pid, crash -> reap s)."""
    def unlimited_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
    proc = subprocess.Popen([exe, "0", str(stamp)], preexec_fn=unlimited_core)  # noqa: PLW1509
    proc.wait()
    reaped = time.clock_gettime(time.CLOCK_MONOTONIC)
    return proc.pid, reaped - float(stamp.read_text())


class AnalysisWatcher(threading.Thread):
    """Every 50 ms: our analysis jobs, their sandboxes (started, or forked by a job's
    sandbox zygote) and zygotes alive, their nice values, and when the first sandbox or
    zygote was seen (the start of the first analysis, to 50 ms)."""

    def __init__(self, config_path: str) -> None:
        super().__init__(daemon=True)
        self.config_path = config_path.encode()
        self.stopping = threading.Event()
        self.most = {"analysis": 0, "sandbox": 0, "zygote": 0}
        self.nice: set[int] = set()
        self.first_sandbox: float | None = None

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            kinds = storm.analysis_kinds(self.config_path)
            counts = {kind: 0 for kind in self.most}
            for pid, kind in kinds.items():
                counts[kind] += 1
                try:
                    stat = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]
                except OSError:
                    continue
                self.nice.add(int(stat.split()[16]))
            if (counts["zygote"] or counts["sandbox"]) and self.first_sandbox is None:
                self.first_sandbox = time.monotonic()
            for kind, count in counts.items():
                self.most[kind] = max(self.most[kind], count)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def wait_analysed(config_path: str, pids: set[int], timeout: float = 900
                  ) -> tuple[list[dict[str, Any]], float]:
    """The storm's rows once all are analysed, and the monotonic time that was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [row for row in storm._index_rows(config_path) if row.get("pid") in pids]
        if {row["pid"] for row in rows} >= pids and \
                all(row.get("analysis_state") != "pending" for row in rows):
            return rows, time.monotonic()
        time.sleep(0.05)
    raise TimeoutError("the storm's analyses did not finish")


def run_variant(name: str, work: pathlib.Path, store: pathlib.Path, settings: dict[str, Any],
                count: int, large: int, large_mib: int, tiny: str,
                tiny_rounds: int) -> dict[str, Any]:
    short = pathlib.Path(tempfile.mkdtemp(prefix="cdb", dir="/tmp"))  # the pattern's 128 bytes
    config_path = str(short / "c.conf")
    write_config(config_path, str(store), **settings, **VARIANTS[name])
    programs = storm._programs(work, count, "distinct")
    barrier_read, barrier_write = os.pipe()
    crashers = storm._start_crashers(programs, large, large_mib, barrier_read)
    os.close(barrier_read)
    stamp = short / "ts"
    try:
        storm._wait_until_filled(crashers, large_mib)
        with installed(config_path):
            idle = []
            for _ in range(tiny_rounds):  # the reference: nothing else of ours running
                pid, latency = crash_tiny(tiny, stamp)
                idle.append(latency)
                wait_analysed(config_path, {pid})
            watcher = AnalysisWatcher(config_path)
            watcher.start()
            released = time.monotonic()
            os.close(barrier_write)
            barrier_write = -1
            statuses = [crasher.wait(timeout=600) for crasher in crashers]
            reaped = time.monotonic()
            pids = {c.pid for c, status in zip(crashers, statuses, strict=True) if status == -11}
            during: list[float] = []
            tiny_pids: set[int] = set()
            rows: list[dict[str, Any]] = []
            while True:  # tiny crashes while the storm's analyses run
                pending = [row for row in storm._index_rows(config_path)
                           if row.get("pid") in pids and row.get("analysis_state") == "pending"]
                if not pending and len(during) > 0:
                    break
                tiny_pid, latency = crash_tiny(tiny, stamp)
                during.append(latency)
                tiny_pids.add(tiny_pid)
                time.sleep(0.2)
            rows, done = wait_analysed(config_path, pids)
            wait_for_handlers(config_path)  # the jobs that found their crash analysed too
            watcher.stop()
            tiny_rows = [row for row in storm._index_rows(config_path)
                         if row.get("pid") in tiny_pids]
    finally:
        if barrier_write >= 0:
            os.close(barrier_write)
        for crasher in crashers:
            if crasher.poll() is None:
                crasher.kill()
                crasher.wait()
        shutil.rmtree(short, ignore_errors=True)
    cpu = [_cpu_ms(row) for row in rows]
    states = [row.get("analysis_state") for row in rows]
    waited = _waiting_cpu_ms(store)
    first = watcher.first_sandbox if watcher.first_sandbox is not None else released
    return {"name": name, "crashed": len(pids), "rows": len(rows),
            "done": states.count("done"), "captured_s": reaped - released,
            "analysed_s": done - released, "first_to_last_s": done - first,
            "cpu_s": (sum(cpu) + waited) / 1000, "rows_cpu_s": sum(cpu) / 1000,
            "waited_cpu_s": waited / 1000, "tiny_rows": len(tiny_rows),
            "tiny_cpu_s": sum(_cpu_ms(row) for row in tiny_rows) / 1000,
            "cpu_median_ms": statistics.median(cpu) if cpu else 0,
            "drainers": len({_job(row) for row in rows} - {None}),
            "forked": sum(_sandbox(row) == "forked by the zygote" for row in rows),
            "jobs_max": watcher.most["analysis"], "sandboxes_max": watcher.most["sandbox"],
            "zygotes_max": watcher.most["zygote"],
            "nice": sorted(watcher.nice), "idle": idle, "during": during, "rows_data": rows}


def _cpu_ms(row: dict[str, Any]) -> int:
    return int((row.get("path_taken") or {}).get("analysis_cpu_ms") or 0)


def _job(row: dict[str, Any]) -> int | None:
    job = (row.get("path_taken") or {}).get("analysis_job")
    return job.get("pid") if isinstance(job, dict) else None


def _sandbox(row: dict[str, Any]) -> str | None:
    job = (row.get("path_taken") or {}).get("analysis_job")
    return job.get("sandbox") if isinstance(job, dict) else None


def _waiting_cpu_ms(store: pathlib.Path) -> int:
    """The CPU of jobs that found their crash analysed and that no row has taken yet
    (coredumpd/pipeline/analysis_queue.py; absent before the drain)."""
    try:
        return int((store / "analysis-queue.cpu").read_text() or 0)
    except (OSError, ValueError):
        return 0


def eu_stack(rows: list[dict[str, Any]], work: pathlib.Path) -> dict[str, float]:
    """``eu-stack -s`` on each row's core (decompressed first, not timed), one after
    the other: summed wall time and CPU (our children's rusage)."""
    wall = 0.0
    cpu = 0.0
    failures = 0
    raw = work / "raw-core"
    for row in rows:
        if row.get("core_state") != "present":
            continue
        subprocess.run(["lz4", "-d", "-q", "-f", row["core_path"], str(raw)], check=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        done = subprocess.run(["eu-stack", "-s", "--core", str(raw), "-e", row["exe"]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        wall += time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu += (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        failures += done.returncode not in (0, 1)  # 1: some thread had a problem
        raw.unlink()
    return {"wall_s": wall, "cpu_s": cpu, "failures": failures}


TENTH_PROGRAMS = {"C, 5 threads, abort() 20 calls deep": None,
                  "python3 crashing in libc under ctypes":
                      ["/usr/bin/python3", "-c", "import ctypes; ctypes.string_at(0)"]}


def tenth(crashes: int, work: pathlib.Path, settings: dict[str, Any]) -> None:
    """One program crashed CRASHES times, one after the other, under the handler with
    AnalysisCache=no and =yes (a new store each): the first and the last crash's
    analysis, as the row says (the sandbox's duration_ms; the job's CPU)."""
    from tests.support.crash import registered_handler
    program = compile_c(TENTH_C, work, name="tenth")  # analysis_warm.py's program
    for label, argv in TENTH_PROGRAMS.items():
        for cache in (False, True):
            store = work / f"tenth-{cache}-{len(label)}"
            with registered_handler(work, directory=str(store), analysis_cache=cache,
                                    **settings) as handler:
                rows = [handler.crash(argv or [program], timeout=120) for _ in range(crashes)]
            durations = [row["analysis"].get("duration_ms") for row in rows]
            cpu = [(row.get("path_taken") or {}).get("analysis_cpu_ms") for row in rows]
            print(f"  {label}, AnalysisCache={'yes' if cache else 'no'}: analysis "
                  f"(sandbox, duration_ms) 1st {durations[0]} ms, last {durations[-1]} ms, "
                  f"median of 2nd..last {statistics.median(durations[1:]):.0f} ms; "
                  f"job CPU 1st {cpu[0]} ms, last {cpu[-1]} ms, "
                  f"median of 2nd..last {statistics.median(int(c or 0) for c in cpu[1:]):.0f} ms")


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    ms = sorted(value * 1000 for value in values)
    return f"{ms[0]:.1f} / {statistics.median(ms):.1f} / {ms[-1]:.1f} ms (n={len(ms)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--large", type=int, default=4)
    parser.add_argument("--large-mib", type=int, default=192)
    parser.add_argument("--tiny-rounds", type=int, default=7)
    parser.add_argument("--variants", default="no-cache,cold,warm")
    parser.add_argument("--tenth", type=int, default=10, metavar="CRASHES",
                        help="crashes of one program for the tenth-crash figures (0: none)")
    parser.add_argument("--no-storm", action="store_true")
    options = parser.parse_args()
    names = options.variants.split(",")
    if any(name not in VARIANTS for name in names):
        parser.error(f"variants are {', '.join(VARIANTS)}")
    print("command:", " ".join([sys.executable, *sys.argv]))
    work = pathlib.Path(tempfile.mkdtemp(prefix="coredumpd-storm-", dir="/var/tmp"))
    try:
        with private_journal() as journal:
            print(measured_line(f"coredumpd: the default configuration except Directory=, "
                                f"the variant's AnalysisCache= (none for default), "
                                f"RateLimitBurst=100000 (every "
                                f"tiny crash stored), {journal.description}"))
            return report(options, names, work, {**journal.settings, **BENCH_SETTINGS})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(options: argparse.Namespace, names: list[str], work: pathlib.Path,
           settings: dict[str, Any]) -> int:
    if options.tenth:
        print(f"\n{options.tenth} crashes of one program, one after the other:")
        tenth(options.tenth, work, settings)
    if options.no_storm:
        return 0
    tiny = compile_c(str(REPO / "bench" / "reap_crasher.c"), work, flags=("-O2",))
    stamp = work / "ts"
    discard = []
    for _ in range(options.tiny_rounds):
        with core_pattern(DISCARD, 16):
            discard.append(crash_tiny(tiny, stamp)[1])
    print(f"tiny crash -> reap, discard handler (min / median / max): {_ms(discard)}")
    results = []
    for name in names:
        store = work / ("store-" + ("cold" if name == "warm" else name))
        store.mkdir(exist_ok=True)
        result = run_variant(name, work, store, settings, options.count, options.large,
                             options.large_mib, tiny, options.tiny_rounds)
        results.append(result)
        print(f"\n[{name}] {result['crashed']} crashed, {result['rows']} rows, "
              f"{result['done']} analyses done; load {os.getloadavg()[0]:.2f}")
        print(f"  all captured (reaped) {result['captured_s']:.2f} s after the crash; "
              f"last analysis stored {result['analysed_s']:.2f} s after it, "
              f"{result['first_to_last_s']:.2f} s after the first analysis started")
        print(f"  analyses' CPU {result['cpu_s']:.2f} s: the storm's rows "
              f"{result['rows_cpu_s']:.2f} s (median {result['cpu_median_ms']:.0f} ms per "
              f"crash) + jobs that found their crash analysed, not yet in a row "
              f"{result['waited_cpu_s']:.2f} s; the {result['tiny_rows']} tiny crashes' rows "
              f"(during the analyses) "
              f"{result['tiny_cpu_s']:.2f} s besides")
        print(f"  analysed by {result['drainers']} jobs, {result['forked']} sandboxes forked by "
              f"a zygote; at most {result['jobs_max']} jobs, {result['sandboxes_max']} "
              f"sandboxes and {result['zygotes_max']} zygotes alive; nice {result['nice']}")
        for row in result["rows_data"]:
            if row.get("analysis_state") != "done":
                print(f"  not done: pid {row.get('pid')}: {row.get('analysis_error')}")
        print(f"  tiny crash -> reap, idle:            {_ms(result['idle'])}")
        print(f"  tiny crash -> reap, during analyses: {_ms(result['during'])}")
    reference = next((r for r in results if r["name"] in ("cold", "default")), results[0])
    eu = eu_stack(reference["rows_data"], work)
    print(f"\neu-stack -s on the same {reference['rows']} cores one after the other: "
          f"{eu['wall_s']:.2f} s wall, {eu['cpu_s']:.2f} s CPU"
          f" ({eu['failures']} failed)")
    for result in results:
        print(f"  [{result['name']}] crash -> last analysis stored {result['analysed_s']:.2f} s"
              f" = {result['analysed_s'] / eu['wall_s']:.2f}x eu-stack's wall time; first "
              f"analysis start -> last stored {result['first_to_last_s']:.2f} s = "
              f"{result['first_to_last_s'] / eu['wall_s']:.2f}x; CPU {result['cpu_s']:.2f} s = "
              f"{result['cpu_s'] / eu['cpu_s']:.2f}x eu-stack's (target: within 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
