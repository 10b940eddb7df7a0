"""A crash storm through the real kernel pipe and the real handler.

``run_storm(workdir, count=64, large=4, large_mib=192)`` compiles a program
that fills ``N`` MiB of memory (pages that compress like real heaps: a counter
and a repeated pattern) and then waits on a shared pipe; ``count`` copies are
started, the pipe is closed so that all of them crash at the same moment
(SIGSEGV), and ``kernel.core_pipe_limit`` is set above ``count`` (FACTS.md:
above the limit the kernel drops cores silently).  The lock on core_pattern
is held only from the release of the barrier until every crasher is reaped
(the kernel reaps a crasher when its handler has closed the pipe, i.e. when
the core is streamed), then the rows are awaited with the pattern restored.

Then every crash is checked: one index row per PID (none lost, none
duplicated), the stored file passes ``lz4 -t`` and decompresses to exactly
``core_size`` bytes, and :meth:`Core.open` on it finds the crashed thread.
The handlers' peak RSS comes from ``facts.handler_rusage``: the kernel runs
the handler through tests/support/measured_handler.py, which records it.

Used by tests/hardening/test_storm.py and bench/hardening_report.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import tempfile
import time
from typing import Any

from tests.support.crash import compile_c, handler_pattern, write_config
from tests.support.kernel import core_pattern
from tests.support.measured_handler import write_script

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
    bad: list[str]  # what failed verification, per core
    large_cores_mib: list[int]  # uncompressed sizes of the large cores
    handler_max_rss_mib: float | None  # the largest handler's peak RSS
    handler_rss_sum_mib: float | None  # sum over all handlers (all ran at once at most)
    lock_held_s: float
    wall_s: float
    analysis_states: dict[str, int] = dataclasses.field(default_factory=dict)
    analysis_errors: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _start_crashers(program: str, count: int, large: int, large_mib: int,
                    barrier_read: int) -> list[subprocess.Popen[bytes]]:
    crashers = []
    for number in range(count):
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


def run_storm(workdir: str | os.PathLike[str], count: int = 64, large: int = 4,
              large_mib: int = 192, pipe_limit: int | None = None,
              wait_analysis: bool = False, **config: Any) -> StormResult:
    """Crash ``count`` processes at once under the handler; verify what was stored."""
    work = pathlib.Path(workdir)
    store = work / "store"
    store.mkdir(parents=True, exist_ok=True)
    config_path = os.path.join(tempfile.mkdtemp(prefix="cdh", dir="/tmp"), "c.conf")
    handler = write_script(os.path.dirname(config_path), isolated=False)
    settings = {"analysis": False, "rate_limit_burst": count * 2} | config
    write_config(config_path, str(store), **settings)
    program = compile_c(STORM_C, work, name="storm")
    started = time.monotonic()
    barrier_read, barrier_write = os.pipe()
    crashers = _start_crashers(program, count, large, large_mib, barrier_read)
    os.close(barrier_read)
    try:
        _wait_until_filled(crashers, large_mib)
        with core_pattern(handler_pattern(config_path, handler), pipe_limit or count + 16):
            locked = time.monotonic()
            os.close(barrier_write)
            barrier_write = -1
            statuses = [crasher.wait(timeout=600) for crasher in crashers]
            lock_held = time.monotonic() - locked
    finally:
        if barrier_write >= 0:
            os.close(barrier_write)
        for crasher in crashers:
            if crasher.poll() is None:
                crasher.kill()
                crasher.wait()
    pids = [c.pid for c, status in zip(crashers, statuses, strict=True) if status == -11]
    rows = _wait_rows(config_path, set(pids), timeout=300, analysed=wait_analysis)
    result = _verify(pids, rows, config_path)
    for row in rows:
        state = str(row.get("analysis_state"))
        result.analysis_states[state] = result.analysis_states.get(state, 0) + 1
        if state == "failed":
            result.analysis_errors.append(str(row.get("analysis_error")))
    result.lock_held_s = round(lock_held, 2)
    result.wall_s = round(time.monotonic() - started, 2)
    return result


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


def _as_dict(record: Any) -> dict[str, Any]:
    """An index record (coredumpd.model.CrashRecord) as the JSON of its columns."""
    if isinstance(record, dict):
        return record
    result: dict[str, Any] = record.to_json()
    return result


def _wait_rows(config_path: str, pids: set[int], timeout: float,
               analysed: bool = False) -> list[dict[str, Any]]:
    """Rows of the storm, once every PID has one (and is analysed, if asked)."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = [row for row in _index_rows(config_path) if row.get("pid") in pids]
        pending = analysed and any(row.get("analysis_state") == "pending" for row in rows)
        if {row["pid"] for row in rows} >= pids and not pending:
            time.sleep(1.0)  # a duplicate row, if a bug wrote one, would come now
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
    rss: list[float] = []
    for pid in pids:
        for row in by_pid.get(pid, [])[:1]:
            problem = verify_core(row)
            if problem:
                bad.append(f"pid {pid}: {problem}")
            else:
                stored += 1
            if (row.get("core_size") or 0) > 64 << 20:
                large.append(row["core_size"] >> 20)
            usage = as_json(row.get("facts")).get("handler_rusage") or {}
            if "maxrss_kib" in usage:
                rss.append(usage["maxrss_kib"] / 1024)
    return StormResult(
        crashed=len(pids), rows=len(rows), stored=stored,
        lost=sorted(set(pids) - set(by_pid)),
        duplicated=sorted(pid for pid, found in by_pid.items() if len(found) > 1),
        bad=bad, large_cores_mib=sorted(large),
        handler_max_rss_mib=round(max(rss), 1) if rss else None,
        handler_rss_sum_mib=round(sum(rss), 1) if rss else None,
        lock_held_s=0.0, wall_s=0.0)


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
