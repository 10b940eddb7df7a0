"""All-thread backtraces of the same cores by coredumpd, eu-stack and drgn, in one run.

Inputs are the benchmark cores of ``fixtures/cores/make_cores.py --bench-cache
DIR`` (made on demand, never committed): ``threads200`` (201 threads parked a
few calls deep) and ``python-ctypes`` (python3 crashing in libc under libffi,
_ctypes and libpython's eval loop).

``eu-stack`` prints names only unless ``-s`` (source lines) is given, so
coredumpd is timed both ways: names only, against ``eu-stack``, and with
file:line from DWARF, against ``eu-stack -s``.

Two tables per core, each comparing like with like:

* **as a process** (the median wall time of ``--runs`` runs; what a user waits
  for, interpreter start and imports included; each row also gives the median CPU
  time, user + system, which a loaded machine inflates less than the wall time): ``eu-stack`` and ``eu-stack -s``
  against ``corectl analyze CORE --exe EXE``, coredumpd's command for a core
  file (the full analysis a user gets: every thread, file:line, annotations,
  the report) without a store, with the store's module cache cold (emptied
  before each run) and warm (filled by one run before the clock), each both in
  corectl's own process (``COREDUMPD_ANALYZE_SOCKET=``) and through the analysis
  worker of a private ``coredumpd serve`` started by the bench on a socket of its
  own (as root; ``kernel.core_pattern`` untouched): there the CPU is the client's
  plus the worker's child's (the mean, from the worker's cutime/cstime in clock
  ticks), and each corectl row gives its ratio to ``eu-stack -s`` of the same
  run; and drgn as a Python script; plus, labelled as such, a script
  doing only coredumpd's names-only backtraces (no shipped command does only
  that);
* **in-process** (the median time of the call inside a fresh process per run,
  imports done before the clock): coredumpd's library (core model + address
  space + unwinding + symbolization of every thread, names only or with
  file:line, and the whole analyze()) against drgn's (set_core_dump + debug
  info + every stack trace).  eu-stack has no in-process row.

Each in-process line also says how many threads and frames came out, how many
frames have a symbol name, and how many of the frames' pcs equal eu-stack's.

Usage::

    python fixtures/cores/make_cores.py --bench-cache /tmp/cdbench
    python bench/backtrace.py /tmp/cdbench [--runs 5] [--profile NAME]

drgn comes from PyPI (``pip install drgn``); without it its rows say so.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import cProfile
import json
import os
import pathlib
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.provenance import measured_line
from coredumpd.analysis import analyze
from coredumpd.analysis.runner import make_symbolizer
from coredumpd.elf.core import Core
from coredumpd.image.space import build_address_space
from coredumpd.source import RawFileSource
from coredumpd.symbolize import symbols as _symbols  # noqa: F401 - imported lazily by make_symbolizer
from coredumpd.unwind.unwinder import Unwinder

Trace = dict[int, list[tuple[int, str | None]]]  # tid -> [(pc, symbol)]


def coredumpd_backtraces(core_path: str, exe: str, lines: bool = False) -> Trace:
    """Core model, address space, unwinding and symbolization of every thread
    (names only, as ``eu-stack`` prints them; with ``lines``, file:line too)."""
    source = RawFileSource(core_path)
    try:
        core = Core.open(source)
        space = build_address_space(core, exe=exe)
        symbolizer = make_symbolizer(space, [])
        unwinder = Unwinder(space)
        result: Trace = {}
        for thread in core.threads:
            frames = unwinder.unwind(thread.registers).frames
            result[thread.tid] = [
                (frame.pc, symbolizer.symbolize(space.module_at(frame.lookup_pc),
                                                frame.lookup_pc, lines=lines).name)
                for frame in frames]
        return result
    finally:
        source.close()


def coredumpd_backtraces_lines(core_path: str, exe: str) -> Trace:
    return coredumpd_backtraces(core_path, exe, lines=True)


def coredumpd_analyze(core_path: str, exe: str) -> Trace:
    """The whole analysis; its physical frames, to compare with eu-stack's (the analysis
    also shows inlined calls and Python frames, which eu-stack does not)."""
    source = RawFileSource(core_path)
    try:
        analysis = analyze(source, None, exe)
    finally:
        source.close()
    return {thread.tid: [(frame.pc, frame.symbol) for frame in thread.frames
                         if frame.pc is not None and not frame.inlined and not frame.language]
            for thread in analysis.threads}


def drgn_backtraces(core_path: str, exe: str) -> Trace:
    import drgn

    program = drgn.Program()
    program.set_core_dump(core_path)
    try:
        program.load_debug_info([exe], default=True)
    except drgn.MissingDebugInfoError:
        pass  # stripped system libraries: symbols from .dynsym/.symtab still work
    result: Trace = {}
    for thread in program.threads():
        frames: list[tuple[int, str | None]] = []
        try:
            for frame in thread.stack_trace():
                try:
                    name: str | None = frame.symbol().name
                except LookupError:
                    name = None
                frames.append((frame.pc, name))
        except (LookupError, ValueError):
            pass  # "program counter is not known" past the last frame
        result[thread.tid] = frames
    return result


def eu_stack_backtraces(core_path: str, exe: str, source: bool = False) -> Trace:
    output = subprocess.run(["eu-stack", *(["-s"] if source else []), "--core", core_path,
                             "-e", exe], capture_output=True, text=True, check=False).stdout
    return parse_eu_stack(output)


def parse_eu_stack(output: str) -> Trace:
    result: Trace = {}
    frames: list[tuple[int, str | None]] = []
    for line in output.splitlines():
        match = re.match(r"TID (\d+):", line)
        if match:
            frames = result.setdefault(int(match.group(1)), [])
            continue
        match = re.match(r"#\d+\s+0x([0-9a-f]+)(?:\s+(\S+))?", line)
        if match:
            frames.append((int(match.group(1), 16), match.group(2)))
    return result


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(action: Callable[[], Any], runs: int) -> tuple[float, Any, float]:
    """Median wall time of ``action``, its last result, and the median CPU time of the
    children it ran."""
    durations, cpu, result = [], [], None
    for _ in range(runs):
        cpu_before = children_cpu()
        started = time.perf_counter()
        result = action()
        durations.append(time.perf_counter() - started)
        cpu.append(children_cpu() - cpu_before)
    return statistics.median(durations), result, statistics.median(cpu)


def cpu_text(seconds: float) -> str:
    return f"CPU {seconds * 1000:.1f} ms"


def process_wall(argv: list[str], runs: int, check: bool = True,
                 prepare: Callable[[], Any] | None = None,
                 env: dict[str, str] | None = None) -> tuple[float, float]:
    """Median wall and CPU time of ``argv``; with ``check``, a run that fails stops the
    bench (eu-stack exits non-zero on cores normally, so it is run unchecked).
    ``prepare`` runs before each run, off the clock."""
    durations, cpu = [], []
    for _ in range(runs):
        if prepare is not None:
            prepare()
        cpu_before = children_cpu()
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=check, env=env)
        durations.append(time.perf_counter() - started)
        cpu.append(children_cpu() - cpu_before)
    return statistics.median(durations), statistics.median(cpu)


class AnalysisWorker:
    """A private ``coredumpd serve`` (its capture socket unused: core_pattern is never
    pointed at it) whose analysis worker serves the bench's corectl runs."""

    def __init__(self, scratch: pathlib.Path, config: pathlib.Path) -> None:
        self.socket = str(scratch / "analyze.socket")
        self.server = subprocess.Popen(
            [COREDUMPD, "serve", "--socket", str(scratch / "coredump.socket"),
             "--analyze-socket", self.socket, "--workers", "1", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.pid = self._wait()

    def _wait(self) -> int:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            children = pathlib.Path(f"/proc/{self.server.pid}/task/{self.server.pid}/children")
            for child in children.read_text().split():
                cmdline = pathlib.Path(f"/proc/{child}/cmdline").read_bytes()
                if b"coredumpd.cli.worker" in cmdline and os.path.exists(self.socket):
                    return int(child)
            time.sleep(0.1)
        raise TimeoutError("the analysis worker did not start")

    def children_cpu(self) -> float:
        """CPU seconds of the worker's reaped children (cutime + cstime, in ticks)."""
        fields = pathlib.Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.server.terminate()
        self.server.wait(60)


@contextlib.contextmanager
def analysis_worker(scratch: pathlib.Path, config: pathlib.Path) -> Iterator[AnalysisWorker | None]:
    """The bench's own analysis worker (root only: it becomes its clients), or None."""
    if os.geteuid() != 0:
        yield None
        return
    worker = AnalysisWorker(scratch, config)
    try:
        yield worker
    finally:
        worker.stop()


def corectl_rows(core: str, exe: str, runs: int, scratch: pathlib.Path,
                 reference: float) -> list[Row]:
    """``corectl analyze`` without a store (no module cache), then with a store whose
    module cache is empty before each run (cold) and filled by a first run (warm): in
    its own process, then through the analysis worker."""
    store = scratch / "store"
    store.mkdir(exist_ok=True)
    config = scratch / "coredumpd.conf"
    rows = []
    own = dict(os.environ, COREDUMPD_ANALYZE_SOCKET="")
    for label, directory in (("no store, no module cache", scratch / "missing"),
                             ("module cache cold", store), ("module cache warm", store)):
        config.write_text(f"[Coredump]\nDirectory={directory}\n")
        argv = [CORECTL, "--config", str(config), "analyze", core, "--exe", exe]
        prepare = _prepare(label, argv, store, own)
        wall, cpu = process_wall(argv, runs, prepare=prepare, env=own)
        rows.append((f"corectl analyze CORE --exe EXE ({label})", wall,
                     f"{cpu_text(cpu)}  {wall / reference:.2f}x eu-stack -s"))
    with analysis_worker(scratch, config) as worker:
        rows += worker_rows(worker, core, exe, runs, store, config, reference)
    shutil.rmtree(store / "cache", ignore_errors=True)
    return rows


def _prepare(label: str, argv: list[str], store: pathlib.Path,
             env: dict[str, str]) -> Callable[[], Any] | None:
    """Before each run: the module cache emptied (cold); once, before all: filled (warm)."""
    if label.endswith("cold"):
        return lambda: shutil.rmtree(store / "cache", ignore_errors=True)
    if label.endswith("warm"):
        subprocess.run(argv, capture_output=True, check=True, env=env)
    return None


def worker_rows(worker: AnalysisWorker | None, core: str, exe: str, runs: int,
                store: pathlib.Path, config: pathlib.Path, reference: float) -> list[Row]:
    if worker is None:
        return [("corectl analyze through the analysis worker", float("nan"),
                 "not measured: the worker needs root")]
    env = dict(os.environ, COREDUMPD_ANALYZE_SOCKET=worker.socket)
    config.write_text(f"[Coredump]\nDirectory={store}\n")
    argv = [CORECTL, "--config", str(config), "analyze", core, "--exe", exe]
    rows = []
    for label in ("module cache cold", "module cache warm"):
        prepare = _prepare(label, argv, store, env)
        before = worker.children_cpu()
        wall, cpu = process_wall(argv, runs, prepare=prepare, env=env)
        child = (worker.children_cpu() - before) / runs
        rows.append((f"corectl analyze via coredumpd serve's worker ({label})", wall,
                     (f"CPU {cpu * 1000:.1f} ms client + {child * 1000:.0f} ms worker's child"
                     f" (mean)  {wall / reference:.2f}x eu-stack -s")))
    return rows


def cold_in_process(function: str, core: str, exe: str, runs: int) -> tuple[float, Trace]:
    """Median time of ``function(core, exe)`` measured inside a fresh process per run.

    Imports are done before the clock starts; no cache survives between runs.
    """
    preload = "import drgn;" if function.startswith("drgn") else ""
    code = ("import json, sys, time; sys.path.insert(0, %r); import bench.backtrace as b; %s"
            " f = getattr(b, %r); t = time.perf_counter(); r = f(%r, %r);"
            " d = time.perf_counter() - t; print(json.dumps([d, list(r.items())]))")
    argv = [sys.executable, "-c", code % (str(REPO), preload, function, core, exe)]
    durations, trace = [], {}
    for _ in range(runs):
        output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        duration, items = json.loads(output.splitlines()[-1])
        durations.append(duration)
        trace = {int(tid): [tuple(frame) for frame in frames] for tid, frames in items}
    return statistics.median(durations), trace


BACKTRACES_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from coredumpd.elf.core import Core
from coredumpd.source import RawFileSource
from coredumpd.image.space import build_address_space
from coredumpd.symbolize.symbols import Symbolizer
from coredumpd.unwind.unwinder import Unwinder
source = RawFileSource({core!r})
core = Core.open(source)
space = build_address_space(core, exe={exe!r})
symbolizer = Symbolizer(space)
unwinder = Unwinder(space)
for thread in core.threads:
    print("TID", thread.tid)
    for frame in unwinder.unwind(thread.registers).frames:
        symbol = symbolizer.symbolize(space.module_at(frame.lookup_pc), frame.lookup_pc, False)
        print(hex(frame.pc), symbol.name)
"""


def coredumpd_process_argv(core: str, exe: str) -> list[str]:
    """Names-only backtraces as a process, importing only the modules they need
    (what ``eu-stack`` does, as a Python program: interpreter start included)."""
    return [sys.executable, "-c", BACKTRACES_SCRIPT.format(repo=str(REPO), core=core, exe=exe)]


def drgn_process_argv(core: str, exe: str) -> list[str]:
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r});"
            f" from bench.backtrace import drgn_backtraces; drgn_backtraces({core!r}, {exe!r})")
    return [sys.executable, "-c", code]


def describe(trace: Trace, reference: Trace | None) -> str:
    frames = sum(len(frames) for frames in trace.values())
    named = sum(1 for frames in trace.values() for _, name in frames if name)
    text = f"{len(trace)} threads, {frames} frames, {named} named"
    if reference is not None:
        same = sum(1 for tid, frames in trace.items() for index, (pc, _) in enumerate(frames)
                   if index < len(reference.get(tid, [])) and reference[tid][index][0] == pc)
        total = sum(len(frames) for frames in reference.values())
        text += f", {same}/{total} pcs as eu-stack"
    return text


CORECTL = str(pathlib.Path(sys.executable).parent / "corectl")
COREDUMPD = str(pathlib.Path(sys.executable).parent / "coredumpd")
Row = tuple[str, float, str]


def has_drgn() -> bool:
    try:
        import drgn  # noqa: F401
    except ImportError:
        return False
    return True


def process_rows(core: str, exe: str, runs: int) -> tuple[list[Row], Trace]:
    """Whole programs, each started ``runs`` times."""
    eu_wall, eu_trace, eu_cpu = timed(lambda: eu_stack_backtraces(core, exe), runs)
    eu_lines, _, eu_lines_cpu = timed(lambda: eu_stack_backtraces(core, exe, source=True), runs)
    rows = [("eu-stack --core (names)", eu_wall,
             f"{cpu_text(eu_cpu)}  {describe(eu_trace, None)}"),
            ("eu-stack -s --core (names, file:line)", eu_lines, cpu_text(eu_lines_cpu))]
    with tempfile.TemporaryDirectory(prefix="cdbench-") as scratch:
        rows += corectl_rows(core, exe, runs, pathlib.Path(scratch), eu_lines)
    if has_drgn():
        wall, cpu = process_wall(drgn_process_argv(core, exe), runs)
        rows.append(("drgn, a Python script (names)", wall, cpu_text(cpu)))
    else:
        rows.append(("drgn", float("nan"), "not installed (pip install drgn)"))
    wall, cpu = process_wall(coredumpd_process_argv(core, exe), runs)
    rows.append(("coredumpd names-only script (not a shipped command)", wall, cpu_text(cpu)))
    return rows, eu_trace


def in_process_rows(core: str, exe: str, runs: int, eu_trace: Trace) -> list[Row]:
    """Library calls, imports done before the clock, a fresh process per run."""
    rows = []
    for label, function in (("coredumpd backtraces (names)", "coredumpd_backtraces"),
                            ("coredumpd backtraces (names, file:line)",
                             "coredumpd_backtraces_lines"),
                            ("coredumpd analyze() (full analysis)", "coredumpd_analyze")):
        seconds, trace = cold_in_process(function, core, exe, runs)
        rows.append((label, seconds, describe(trace, eu_trace)))
    if has_drgn():
        seconds, trace = cold_in_process("drgn_backtraces", core, exe, runs)
        rows.append(("drgn (names, debug info loaded)", seconds, describe(trace, eu_trace)))
    else:
        rows.append(("drgn", float("nan"), "not installed (pip install drgn)"))
    return rows


def bench_one(name: str, core: str, exe: str, runs: int) -> None:
    processes, eu_trace = process_rows(core, exe, runs)
    in_process = in_process_rows(core, exe, runs, eu_trace)
    print(f"\n{name}: {core} (medians of {runs} runs)")
    for title, rows in (("as a process (start and imports included)", processes),
                        ("in-process (imports done before the clock)", in_process)):
        print(f"  {title}:")
        for label, seconds, text in rows:
            print(f"    {label:68s} {seconds * 1000:8.1f} ms  {text}")


def profile(core: str, exe: str) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    coredumpd_analyze(core, exe)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", type=pathlib.Path, help="make_cores.py --bench-cache DIR")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", metavar="NAME", help="cProfile analyze() on one input")
    options = parser.parse_args()
    manifest = json.loads((options.cache / "MANIFEST.json").read_text())
    # measured as installed: with bytecode (PYTHONDONTWRITEBYTECODE would make every
    # corectl process compile the package again, ~50 ms)
    compileall.compile_dir(str(REPO / "coredumpd"), quiet=1)
    print(measured_line("coredumpd's default analysis (no configuration file needed)"))
    for name, entry in sorted(manifest.items()):
        core = str(options.cache / name / entry["core"])
        if options.profile:
            if name == options.profile:
                profile(core, entry["binary"])
            continue
        bench_one(name, core, entry["binary"], options.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
