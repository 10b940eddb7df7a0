"""A crash storm through the real kernel pipe and the handler as installed.

``run_storm(workdir, count=64, large=4, large_mib=192, programs="distinct")``
compiles a program that fills ``N`` MiB of memory (pages that compress like
real heaps: a counter and a repeated pattern) and then waits on a shared pipe;
``count`` copies are started — each from its own copy of the executable
(``programs="distinct"``: 64 programs, the rate limit never applies) or all
from one (``"one"``: RateLimitBurst applies) — and the pipe is closed so that
all of them crash at the same moment (SIGSEGV).

The handler is registered by the product's own ``coredumpd install --config
FILE`` (:func:`tests.support.crash.installed`): its launcher, its
core_pattern and its core_pipe_limit, untouched — the storm must pass with
what a user gets.  The configuration is the default one except
``Directory=`` (a temporary store) and ``JournalNamespace=`` (the run's private
journald, tests/support/journald.py: the host's journal must not receive the
test's crashes), plus what the caller passes.  The lock on
core_pattern is held from the release of the barrier until every crasher is
reaped; then ``uninstall`` runs and the values found before are restored.

Then every crash is checked: one index row per PID (none lost, none
duplicated), each present core passes ``lz4 -t`` and decompresses to exactly
``core_size`` bytes, and :meth:`Core.open` on it finds the crashed thread.
Memory is sampled from /proc meanwhile (:class:`MemorySampler`): the peak sum
of the handlers' RSS and PSS at one moment, the most handlers alive at once,
each handler's own peak (VmHWM), and the same for the analysis jobs with
their sandboxes.

Used by tests/hardening/test_storm.py and bench/hardening_report.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any

from tests.support.crash import compile_c, installed, running_with, wait_for_handlers, write_config

STORM_C = r"""
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    size_t mib = strtoul(argv[1], 0, 10);
    int barrier = atoi(argv[2]);
    size_t size = mib << 20;
    unsigned char *heap = malloc(size ? size : 1);
    for (size_t page = 0; page < size / 4096; page++) {   /* compressible, not zero */
        memset(heap + page * 4096, (int)(page % 251) + 1, 4096);
        memcpy(heap + page * 4096, &page, sizeof page);
    }
    char byte;
    read(barrier, &byte, 1);          /* returns 0 when the parent closes the pipe */
    *(volatile int *)0 = (int)heap[0]; /* SIGSEGV, all at once */
    return 0;
}
"""


@dataclasses.dataclass
class StormResult:
    crashed: int  # processes that died of SIGSEGV
    rows: int  # index rows for those PIDs
    stored: int  # rows whose core verified (lz4 -t, size, Core.open)
    lost: list[int]  # PIDs without a row
    duplicated: list[int]  # PIDs with more than one row
    bad: list[str]  # rows whose core is not stored or does not verify
    large_cores_mib: list[int]  # uncompressed sizes of the large cores
    handler_max_rss_mib: float | None  # the largest handler's peak RSS (VmHWM)
    handler_rss_sum_mib: float | None  # peak of the handlers' RSS summed at one moment
    lock_held_s: float
    wall_s: float
    pipe_limit: int = 0  # kernel.core_pipe_limit while the storm ran (install's)
    pipe_limit_found: int = 0  # before install (read under the lock)
    pipe_limit_after: int = 0  # after uninstall (idem): must be the one found
    handler_pss_sum_mib: float | None = None  # peak of the handlers' PSS at one moment
    handlers_alive_max: int = 0  # most handler processes seen at one moment
    handlers_working_max: int = 0  # of those, most holding a handler slot at once
    analysis_rss_sum_mib: float | None = None  # peak RSS sum of analysis jobs + sandboxes
    analysis_max_rss_mib: float | None = None
    analysis_alive_max: int = 0  # analysis jobs (waiting or working)
    zygotes_alive_max: int = 0  # sandbox zygotes of the jobs (coredumpd.pipeline.sandbox_zygote)
    sandboxes_alive_max: int = 0  # their sandbox children (only working jobs start one)
    core_states: dict[str, int] = dataclasses.field(default_factory=dict)
    core_reasons: list[str] = dataclasses.field(default_factory=list)  # of unstored cores
    analysis_states: dict[str, int] = dataclasses.field(default_factory=dict)
    analysis_errors: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ANALYSIS_JOB = b"coredumpd.pipeline.analyze_job"
SANDBOX_CHILD = b"coredumpd.pipeline.sandbox_child"
# A handler waiting for its slot has imported nothing but pipeline.main and slots:
# 7.8 MiB RSS measured (python -IS); one past this has its slot and works.
WORKING_RSS_MIB = 12


def analysis_kinds(config_path: bytes) -> dict[str, str]:
    """PID -> "analysis" (a job naming ``config_path``), "zygote" (a job's sandbox zygote)
    or "sandbox" (a job's started sandbox, or one its zygote forked)."""
    kinds: dict[str, str] = {}
    sandboxes: dict[str, str] = {}  # pid -> parent pid
    zygotes: set[str] = set()
    for pid in (name for name in os.listdir("/proc") if name.isdigit()):
        try:
            words = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if ANALYSIS_JOB in words and config_path in words:
                kinds[pid] = "analysis"
            elif any(SANDBOX_CHILD in word for word in words):
                stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
                sandboxes[pid] = stat.rsplit(")", 1)[1].split()[1]
                if b"--zygote" in words:
                    zygotes.add(pid)
        except OSError:
            continue
    kinds.update({pid: "zygote" for pid in zygotes if kinds.get(sandboxes[pid]) == "analysis"})
    kinds.update({pid: "sandbox" for pid, parent in sandboxes.items() if pid not in zygotes
                  and kinds.get(parent) in ("analysis", "zygote")})
    return kinds


class MemorySampler(threading.Thread):
    """Every ``interval`` s: the handlers (command line runs ``launcher``) and the analysis
    processes alive, their RSS and PSS summed; each process's peak RSS (VmHWM)."""

    def __init__(self, launcher: str, config_path: str, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.launcher = launcher.encode()
        self.config_path = config_path.encode()  # on our analysis jobs' command lines
        self.interval = interval
        self.stopping = threading.Event()
        self.peaks: dict[str, dict[str, float]] = {
            kind: {"rss_sum": 0.0, "pss_sum": 0.0, "alive": 0, "working": 0, "max_rss": 0.0}
            for kind in ("handler", "analysis", "sandbox", "zygote")}

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def _kinds(self) -> dict[str, str]:
        """PID -> kind of ours; other engineers' handlers and analyses may run too: ours
        run our launcher, or are analysis processes of our config (:func:`analysis_kinds`)."""
        kinds: dict[str, str] = {}
        for pid in (name for name in os.listdir("/proc") if name.isdigit()):
            try:
                words = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if self.launcher in words:
                kinds[pid] = "handler"
        return kinds | analysis_kinds(self.config_path)

    def sample(self) -> None:
        totals = {kind: {"rss_sum": 0.0, "pss_sum": 0.0, "alive": 0, "working": 0}
                  for kind in self.peaks}
        holders = _handler_slot_holders()  # one snapshot: /proc is read pid by pid
        for pid, kind in self._kinds().items():
            status = _kib_fields(f"/proc/{pid}/status", ("VmRSS", "VmHWM"))
            rollup = _kib_fields(f"/proc/{pid}/smaps_rollup", ("Pss",))
            totals[kind]["alive"] += 1
            if kind == "handler":
                totals[kind]["working"] += pid in holders
            else:
                totals[kind]["working"] += status.get("VmRSS", 0) > WORKING_RSS_MIB << 10
            totals[kind]["rss_sum"] += status.get("VmRSS", 0) / 1024
            totals[kind]["pss_sum"] += rollup.get("Pss", 0) / 1024
            peak = self.peaks[kind]
            peak["max_rss"] = max(peak["max_rss"], status.get("VmHWM", 0) / 1024)
        for kind, total in totals.items():
            for key, value in total.items():
                self.peaks[kind][key] = max(self.peaks[kind][key], value)


def _kib_fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
    try:
        text = pathlib.Path(path).read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in names and rest.split():
            found[key] = int(rest.split()[0])
    return found


def _start_crashers(programs: list[str], large: int, large_mib: int,
                    barrier_read: int) -> list[subprocess.Popen[bytes]]:
    crashers = []
    for number, program in enumerate(programs):
        mib = large_mib if number < large else 1
        crashers.append(subprocess.Popen(
            [program, str(mib), str(barrier_read)], pass_fds=[barrier_read],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_unlimited_core))  # noqa: PLW1509 - single-threaded caller
    return crashers


def _unlimited_core() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _wait_until_filled(crashers: list[subprocess.Popen[bytes]], large_mib: int) -> None:
    """Until every crasher sleeps in read() (its memory filled)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = []
        for crasher in crashers:
            try:
                stat = pathlib.Path(f"/proc/{crasher.pid}/stat").read_text()
                wchan = pathlib.Path(f"/proc/{crasher.pid}/wchan").read_text()
            except OSError:
                states.append(False)
                continue
            sleeping = stat.rsplit(")", 1)[1].split()[0] == "S"
            states.append(sleeping and ("pipe" in wchan or wchan in ("", "0")))
        if all(states):
            return
        time.sleep(0.1)
    raise TimeoutError("the storm's crashers did not reach the barrier")


def _programs(work: pathlib.Path, count: int, programs: str) -> list[str]:
    """``count`` paths: copies of one executable (``distinct``) or the same one."""
    program = compile_c(STORM_C, work, name="storm")
    if programs == "one":
        return [program] * count
    copies = []
    for number in range(count):
        copy = work / f"storm{number:02d}"
        shutil.copy2(program, copy)
        copies.append(str(copy))
    return copies


def run_storm(workdir: str | os.PathLike[str], count: int = 64, large: int = 4,
              large_mib: int = 192, programs: str = "distinct",
              wait_analysis: bool = False, **config: Any) -> StormResult:
    """Crash ``count`` processes at once under the installed handler; verify what was
    stored.  ``config``: Config fields that differ from the defaults (the store's
    Directory and the private journal are always set)."""
    work = pathlib.Path(workdir)
    store = work / "store"
    store.mkdir(parents=True, exist_ok=True)
    short = tempfile.mkdtemp(prefix="cdh", dir="/tmp")  # the pattern's 127 bytes
    config_path = os.path.join(short, "c.conf")
    write_config(config_path, str(store), **config)  # journal: the run's private one
    paths = _programs(work, count, programs)
    started = time.monotonic()
    barrier_read, barrier_write = os.pipe()
    crashers = _start_crashers(paths, large, large_mib, barrier_read)
    os.close(barrier_read)
    sampler: MemorySampler | None = None
    try:
        _wait_until_filled(crashers, large_mib)
        with installed(config_path) as installation:
            sampler = MemorySampler(installation.launcher, config_path)
            sampler.start()
            locked = time.monotonic()
            os.close(barrier_write)
            barrier_write = -1
            statuses = [crasher.wait(timeout=600) for crasher in crashers]
            lock_held = time.monotonic() - locked
        pids = [c.pid for c, status in zip(crashers, statuses, strict=True) if status == -11]
        rows = _wait_rows(config_path, set(pids), timeout=600, analysed=wait_analysis)
        wait_for_handlers(config_path)  # before the config goes (a late one would fall back)
    finally:
        if sampler is not None:
            sampler.stop()
        if barrier_write >= 0:
            os.close(barrier_write)
        for crasher in crashers:
            if crasher.poll() is None:
                crasher.kill()
                crasher.wait()
    result = _verify(pids, rows, config_path)
    _add_memory(result, sampler)
    for row in rows:
        state = str(row.get("analysis_state"))
        result.analysis_states[state] = result.analysis_states.get(state, 0) + 1
        if state == "failed":
            result.analysis_errors.append(str(row.get("analysis_error")))
    result.pipe_limit = int(installation.installed[1])
    result.pipe_limit_found = int(installation.found[1])
    assert installation.after_uninstall is not None
    result.pipe_limit_after = int(installation.after_uninstall[1])
    result.lock_held_s = round(lock_held, 2)
    result.wall_s = round(time.monotonic() - started, 2)
    shutil.rmtree(short, ignore_errors=True)
    return result


def _add_memory(result: StormResult, sampler: MemorySampler | None) -> None:
    if sampler is None:
        return
    handler, analysis = sampler.peaks["handler"], sampler.peaks["analysis"]
    sandbox, zygote = sampler.peaks["sandbox"], sampler.peaks["zygote"]
    result.handler_max_rss_mib = round(handler["max_rss"], 1) or None
    result.handler_rss_sum_mib = round(handler["rss_sum"], 1) or None
    result.handler_pss_sum_mib = round(handler["pss_sum"], 1) or None
    result.handlers_alive_max = int(handler["alive"])
    result.handlers_working_max = int(handler["working"])
    result.analysis_rss_sum_mib = round(analysis["rss_sum"] + sandbox["rss_sum"]
                                        + zygote["rss_sum"], 1) or None
    result.analysis_max_rss_mib = round(max(analysis["max_rss"], sandbox["max_rss"],
                                            zygote["max_rss"]), 1) or None
    result.analysis_alive_max = int(analysis["alive"])
    result.sandboxes_alive_max = int(sandbox["alive"])
    result.zygotes_alive_max = int(zygote["alive"])


def _index_rows(config_path: str) -> list[dict[str, Any]]:
    from coredumpd.config import load_config
    from coredumpd.errors import CoredumpdError
    from coredumpd.store.index import Index

    config = load_config(config_path)
    if not os.path.exists(config.index_path):
        return []
    try:
        index = Index(config.index_path, create=False)  # read-only: the store may be full
    except CoredumpdError:
        return []  # not created (yet), or unusable: no rows to see
    try:
        return [_as_dict(record) for record in index.find([])]
    finally:
        close = getattr(index, "close", None)
        if close is not None:
            close()


def as_json(value: Any) -> Any:
    """A JSON column as a value: store.index returns dicts, older rows strings."""
    if isinstance(value, str):
        return json.loads(value)
    return {} if value is None else value


def _handler_slot_holders() -> set[str]:
    """PIDs holding a handler slot (coredumpd.pipeline.slots) in one read of /proc/locks.

    A handler holds its slot until it exits.  Counting "working" handlers by their RSS,
    pid after pid, could see one that was about to exit and, a moment later, the one
    that took its slot: five at once with four slots.  /proc/locks lists every holder
    in one read ("1: FLOCK  ADVISORY  WRITE PID MAJ:MIN:INODE 0 EOF"; waiters are
    the "->" lines).
    """
    from coredumpd.pipeline.slots import SLOT_DIRECTORY
    inodes: set[str] = set()
    for path in pathlib.Path(SLOT_DIRECTORY).glob("handler.[0-9]*"):
        try:
            info = path.stat()
        except OSError:
            continue
        inodes.add(f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}")
    holders: set[str] = set()
    for line in pathlib.Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and "->" not in fields and fields[5] in inodes:
            holders.add(fields[4])
    return holders


def _as_dict(record: Any) -> dict[str, Any]:
    """An index record (coredumpd.model.CrashRecord) as the JSON of its columns."""
    if isinstance(record, dict):
        return record
    result: dict[str, Any] = record.to_json()
    return result


def _wait_rows(config_path: str, pids: set[int], timeout: float,
               analysed: bool = False) -> list[dict[str, Any]]:
    """Rows of the storm, once every PID has one (and is analysed, if asked) — or as
    they are once no handler or analysis job of the storm runs any more: a row that
    is missing then will never come, and the test fails now, naming the lost PIDs,
    instead of waiting out ``timeout`` (a lost row once looked like a hang)."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    idle = 0
    while time.monotonic() < deadline:
        rows = [row for row in _index_rows(config_path) if row.get("pid") in pids]
        pending = analysed and any(row.get("analysis_state") == "pending" for row in rows)
        if {row["pid"] for row in rows} >= pids and not pending:
            time.sleep(1.0)  # a duplicate row, if a bug wrote one, would come now
            return [row for row in _index_rows(config_path) if row.get("pid") in pids]
        idle = 0 if running_with(config_path.encode()) else idle + 1
        if idle > 10:  # 2 s with nothing of ours running (the rows read after that)
            return [row for row in _index_rows(config_path) if row.get("pid") in pids]
        time.sleep(0.2)
    return rows


def _verify(pids: list[int], rows: list[dict[str, Any]], config_path: str) -> StormResult:
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_pid.setdefault(row["pid"], []).append(row)
    bad: list[str] = []
    stored = 0
    large: list[int] = []
    states: dict[str, int] = {}
    reasons: list[str] = []
    for pid in pids:
        for row in by_pid.get(pid, [])[:1]:
            state = str(row.get("core_state"))
            states[state] = states.get(state, 0) + 1
            if state != "present":
                reasons.append(str(row.get("core_reason")))
            problem = verify_core(row)
            if problem:
                bad.append(f"pid {pid}: {problem}")
            else:
                stored += 1
            if (row.get("core_size") or 0) > 64 << 20:
                large.append(row["core_size"] >> 20)
    return StormResult(
        crashed=len(pids), rows=len(rows), stored=stored,
        lost=sorted(set(pids) - set(by_pid)),
        duplicated=sorted(pid for pid, found in by_pid.items() if len(found) > 1),
        bad=bad, large_cores_mib=sorted(large), handler_max_rss_mib=None,
        handler_rss_sum_mib=None, lock_held_s=0.0, wall_s=0.0,
        core_states=states, core_reasons=reasons)


def verify_core(row: dict[str, Any]) -> str | None:
    """None when the row's core is present, intact and the right size; else what is wrong."""
    from coredumpd.elf.core import Core
    from coredumpd.store.lz4seek import open_core_source

    if row.get("core_state") != "present":
        return f"core_state {row.get('core_state')} ({row.get('core_reason')})"
    path = row.get("core_path") or ""
    test = subprocess.run(["lz4", "-t", path], capture_output=True, text=True, check=False)
    if test.returncode != 0:
        return f"lz4 -t {path}: {test.stderr.strip()}"
    source = open_core_source(path)
    try:
        if source.size != row.get("core_size"):
            return f"decompressed size {source.size} != core_size {row.get('core_size')}"
        core = Core.open(source, expected_tid=row.get("tid"))
        if not core.threads or core.truncated:
            return f"core model: threads {len(core.threads)}, problems {core.problems[:3]}"
    finally:
        source.close()
    return None
