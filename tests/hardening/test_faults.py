"""Faults around the handler, for real: rate limits, a full or too small file
system, a missing or read-only store, a journal that is gone or not reading,
PID reuse.  Every test runs the real handler (through the kernel pipe, or by
hand with a core on stdin as `coredumpd` allows) and reads the real index."""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import pytest

from tests.hardening.helpers import crash_under, kmsg_lines, rows_for, tmpfs, uptime_us
from tests.hardening.storm import _index_rows, as_json, verify_core
from tests.support import journald
from tests.support.crash import HANDLER, compile_c, handler_pattern, write_config

pytestmark = pytest.mark.fault_case  # every test here is a fault around the real handler

NULL_DEREF = "int main(void){ *(volatile int *)0 = 1; return 0; }\n"
# Fills N MiB with incompressible bytes, then crashes: a core lz4 cannot shrink.
RANDOM_HEAP = r"""
#include <stdlib.h>
#include <sys/random.h>
int main(int argc, char **argv) {
    size_t size = strtoul(argv[1], 0, 10) << 20;
    unsigned char *heap = malloc(size);
    for (size_t done = 0; done < size; done += 65536) getrandom(heap + done, 65536, 0);
    *(volatile int *)0 = heap[1];
    return 0;
}
"""


def store_config(tmp_path: pathlib.Path, directory: str, **settings) -> str:
    short = tempfile.mkdtemp(prefix="cdh", dir="/tmp")  # the pattern must fit 127 bytes
    path = os.path.join(short, "c.conf")
    write_config(path, directory, **({"journal": False} | settings))
    return path


def leftovers(directory: str) -> list[str]:
    """Files in the store that are neither the index nor a core that verifies (nor the
    analysis queue: coredumpd/pipeline/analysis_queue.py)."""
    names = []
    for name in sorted(os.listdir(directory)):
        if name.startswith(("index.sqlite", "analysis-queue")):
            continue
        names.append(name)
    return names


@pytest.mark.kernel
def test_rate_limit_keeps_metadata_and_backtrace(tmp_path):
    program = compile_c(NULL_DEREF, tmp_path, name="ratelimited")
    config = store_config(tmp_path, str(tmp_path / "store"), rate_limit_burst=2,
                          rate_limit_interval="1h")
    pids = []
    for _ in range(4):  # one after the other (at once: the test below)
        pids.append(crash_under(handler_pattern(config), [program])[0])
        rows_for(config, pids[-1], timeout=60)
    rows = [rows_for(config, pid, timeout=120, analysed=True) for pid in pids]
    assert [len(found) for found in rows] == [1, 1, 1, 1]
    states = [found[0]["core_state"] for found in rows]
    assert states == ["present", "present", "none", "none"]
    for found in rows[2:]:
        row = found[0]
        assert "rate limited" in row["core_reason"]
        assert not row["core_path"]
        analysis = as_json(row["analysis"])  # the backtrace is kept
        assert row["analysis_state"] == "done", row["analysis_error"]
        frames = analysis["threads"][0]["frames"]
        assert frames and frames[0]["symbol"] == "main"
    cores = [name for name in os.listdir(tmp_path / "store") if name.startswith("core.")]
    assert len(cores) == 2


@pytest.mark.kernel
def test_full_file_system_leaves_no_partial_core_and_says_why(tmp_path):
    program = compile_c(RANDOM_HEAP, tmp_path, name="bigheap")
    with tmpfs(str(tmp_path / "small"), "8m") as store:
        config = store_config(tmp_path, store, analysis=False)
        pid, returncode, _ = crash_under(handler_pattern(config), [program, "32"])
        assert returncode == -11
        rows = rows_for(config, pid)
        assert len(rows) == 1, "the crash must be indexed even when its core does not fit"
        row = rows[0]
        assert row["core_state"] in ("missing", "truncated", "none"), row
        assert row["core_reason"], row
        for name in leftovers(store):
            assert name == os.path.basename(row["core_path"] or ""), f"garbage: {name}"
            assert verify_core({**row, "core_state": "present"}) is None


@pytest.mark.kernel
def test_below_keep_free_the_core_is_not_kept_and_the_row_says_why(tmp_path):
    program = compile_c(NULL_DEREF, tmp_path, name="keepfree")
    with tmpfs(str(tmp_path / "tight"), "64m") as store:
        with open(os.path.join(store, "filler"), "wb") as filler:  # not a core: stays
            filler.write(b"\1" * (50 << 20))
        config = store_config(tmp_path, store, keep_free="20M", analysis=False)
        pid, _, _ = crash_under(handler_pattern(config), [program])
        rows = rows_for(config, pid)
        assert len(rows) == 1
        assert rows[0]["core_state"] != "present", rows[0]
        assert "KeepFree" in (rows[0]["core_reason"] or ""), rows[0]
        assert leftovers(store) == ["filler"]


@pytest.mark.kernel
def test_missing_storage_directory_is_created(tmp_path):
    program = compile_c(NULL_DEREF, tmp_path, name="nodir")
    directory = tmp_path / "not" / "yet"
    config = store_config(tmp_path, str(directory), analysis=False)
    pid, _, _ = crash_under(handler_pattern(config), [program])
    rows = rows_for(config, pid)
    assert len(rows) == 1 and verify_core(rows[0]) is None
    assert directory.stat().st_mode & 0o777 == 0o751


@pytest.mark.kernel
def test_read_only_storage_the_handler_finishes_and_tells_the_kernel_log(tmp_path):
    program = compile_c(NULL_DEREF, tmp_path, name="rostore")
    since = uptime_us()
    with tmpfs(str(tmp_path / "ro"), "1m", read_only=True) as store:
        config = store_config(tmp_path, store)
        pid, returncode, _ = crash_under(handler_pattern(config), [program], timeout=60)
        assert returncode == -11  # reaped: the handler let the kernel go
        assert os.listdir(store) == []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(f"Process {pid} " in line for line in kmsg_lines(since)):
            break
        time.sleep(0.2)
    assert any(f"Process {pid} " in line for line in kmsg_lines(since))


def _analyze_job(config: str, row_id: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coredumpd.pipeline.analyze_job", "--id",
                           str(row_id), "--config", config], env={}, timeout=timeout,
                          capture_output=True, text=True, check=False)


@pytest.mark.kernel
@pytest.mark.parametrize("journal", ["deaf", "stopped"])
def test_journal_not_reading_or_stopped_the_job_finishes(tmp_path, journal):
    program = compile_c(NULL_DEREF, tmp_path, name=f"journal{journal}")
    with contextlib.ExitStack() as stack:
        if journal == "deaf":  # bound where its journald would be, never read, queue full
            namespace = stack.enter_context(journald.deaf_namespace())
        else:
            namespace = journald.unserved_namespace()
        config = store_config(tmp_path, str(tmp_path / "store"), journal=True,
                              journal_timeout="1s", journal_namespace=namespace)
        since = uptime_us()
        pid, _, _ = crash_under(handler_pattern(config), [program])
        row = rows_for(config, pid, timeout=120, analysed=True)[0]
        started = time.monotonic()
        job = _analyze_job(config, row["id"])  # once more, by hand: it must finish too
        elapsed = time.monotonic() - started
    assert job.returncode == 0, job.stderr
    row = rows_for(config, pid)[0]
    path_taken = as_json(row["path_taken"])
    outcome = "timeout" if journal == "deaf" else "unreachable: ENOENT"
    assert path_taken["journal"] == outcome, path_taken
    assert path_taken.get("kmsg") == "written", path_taken
    assert any(f"Process {pid} " in line and f"journal {outcome};" in line
               for line in kmsg_lines(since))
    print(f"journal {journal}: analysis job finished in {elapsed:.1f} s: {path_taken}")


def _run_handler_by_hand(core: bytes, argv: list[str], pass_fds=()) -> int:
    """`coredumpd` as the kernel would run it, core on stdin (a pipe)."""
    process = subprocess.Popen([HANDLER, *argv], stdin=subprocess.PIPE, pass_fds=pass_fds,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={},
                               cwd="/")
    process.communicate(core, timeout=60)
    return process.returncode


def _seed_core() -> bytes:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
    import fuzz

    paths = fuzz.core_seed_paths(fuzz.SEED_DIR)
    if not paths:
        pytest.skip("no fixture or seed core")
    return fuzz.load_core_seeds(paths[:1])[0]


def _all_rows(config: str, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _index_rows(config)
        if rows:
            return rows
        time.sleep(0.1)
    return []


@pytest.mark.parametrize("mode", ["start-time", "pidfd-other", "pidfd-same"])
def test_pid_reuse_is_detected(tmp_path, mode):
    """/proc/PID must be the process the kernel meant: a younger process or a
    pidfd of another process means no /proc facts are recorded for it."""
    if os.geteuid() != 0:
        pytest.skip("the handler runs as root")
    core = _seed_core()
    config = store_config(tmp_path, str(tmp_path / "store"), analysis=False)
    impostor = subprocess.Popen(["sleep", "60"])
    other = subprocess.Popen(["sleep", "60"])
    pidfd = -1
    try:
        now = int(time.time())
        if mode == "start-time":  # the crash (%t) happened before this PID was started
            args, fds = [str(impostor.pid), str(impostor.pid), "1", "0", "0", "11",
                         str(now - 3600), "18446744073709551615", "host", "1"], ()
        else:
            pidfd = os.pidfd_open(other.pid if mode == "pidfd-other" else impostor.pid)
            args, fds = [str(impostor.pid), str(impostor.pid), "1", "0", "0", "11", str(now),
                         "18446744073709551615", "host", "1", str(pidfd)], (pidfd,)
        assert _run_handler_by_hand(core, [*args, "--config", config], fds) == 0
        rows = _all_rows(config)
    finally:
        if pidfd >= 0:
            os.close(pidfd)
        for process in (impostor, other):
            process.kill()
            process.wait()
    assert len(rows) == 1
    facts = as_json(rows[0]["facts"])
    if mode == "pidfd-same":
        assert facts["pidfd_check"]["verified"] is True
        assert facts["proc"]["comm"] == "sleep"
    else:
        assert facts["pidfd_check"]["verified"] is False
        assert not facts["proc"], "facts of a process the kernel did not mean"
        assert any("not the crashed process" in p for p in facts["problems"])


@pytest.mark.kernel
def test_rate_limit_holds_when_the_crashes_come_at_once(tmp_path):
    """Six crashes of one executable at the same moment, RateLimitBurst=2:
    exactly two cores kept, four rows that say why not (a crash loop is when
    the limit matters; counting before the others are indexed would let all in)."""
    from tests.hardening.storm import run_storm

    result = run_storm(tmp_path, count=6, large=0, programs="one", rate_limit_burst=2,
                       rate_limit_interval="1h", analysis=False)
    assert result.crashed == 6 and result.rows == 6
    assert result.lost == [] and result.duplicated == []
    assert result.stored == 2, result.bad
    assert len(result.bad) == 4 and all("rate limited" in bad for bad in result.bad)
