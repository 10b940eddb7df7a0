"""One analysis job drains its store's queue (coredumpd.pipeline.analyze_job, analysis_queue).

The jobs run as the handler starts them (``python -m coredumpd.pipeline.analyze_job``,
real sandboxes, the run's private journal) on index rows of real cores: the fixture
core copied into a temporary store, or, in the storm test, crashes through the
real kernel and the handler as ``coredumpd install`` registers it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from coredumpd.config import load_config
from coredumpd.model import CoreState
from coredumpd.pipeline import analysis_queue
from coredumpd.pipeline.analyze_job import analyse
from coredumpd.store.index import CrashRecord, Index
from tests.support.crash import wait_for_handlers, write_config

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "cores" / "abort"
BOOT = "8d2a6e7f0c1b4a5e9f3d2c1b0a998877"
JOB = "coredumpd.pipeline.analyze_job"


class Store:
    """A store whose index holds ``count`` crashes of the fixture core, all pending and
    queued as the handler queues them."""

    def __init__(self, tmp_path: pathlib.Path, count: int, config_path: str | None = None):
        self.directory = tmp_path / "store"
        self.directory.mkdir()
        self.short = tempfile.mkdtemp(prefix="cdq", dir="/tmp")
        self.config_path = os.path.join(self.short, "c.conf")
        write_config(self.config_path, str(self.directory))
        self.config = load_config(self.config_path)
        self.ids: list[str] = []
        self.markers: list[str] = []
        with Index(self.config.index_path) as index:
            for number in range(count):
                core = self.directory / f"core.{number}.lz4"
                shutil.copyfile(FIXTURE / "core.lz4", core)
                core.chmod(0o640)
                row = index.insert(CrashRecord(
                    pid=4000 + number, timestamp_us=1_700_000_000_000_000 + number,
                    boot_id=BOOT, uid=0, gid=0, signal=6, comm="abort",
                    exe=str(FIXTURE / "abort"), core_path=str(core), core_state=CoreState.PRESENT,
                    path_taken={"journal": "pending"}))
                self.ids.append(row)
                marker = analysis_queue.enqueue(str(self.directory), row,
                                                config_path or self.config_path)
                assert marker is not None
                self.markers.append(marker)

    def job(self, number: int) -> subprocess.Popen[bytes]:
        """The analysis job of crash ``number``, as the handler starts it."""
        return subprocess.Popen([sys.executable, "-m", JOB, "--id", self.ids[number],
                                 "--config", self.config_path, "--queued", self.markers[number]],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, cwd="/")

    def rows(self) -> list[dict]:
        with Index(self.config.index_path) as index:
            return [index.get(row).to_json() for row in self.ids]

    def close(self) -> None:
        wait_for_handlers(self.config_path)
        shutil.rmtree(self.short, ignore_errors=True)


def _finish(job: subprocess.Popen[bytes], timeout: float = 300) -> None:
    _, stderr = job.communicate(timeout=timeout)
    assert job.returncode == 0, stderr.decode()


def _comparable(analysis: dict) -> str:
    """The analysis without what differs from run to run (its duration)."""
    return json.dumps({key: value for key, value in analysis.items() if key != "duration_ms"},
                      sort_keys=True)


def test_one_job_analyses_every_queued_crash_with_one_zygote(store_of):
    store = store_of(4)
    _finish(store.job(0))
    rows = store.rows()
    assert [row["analysis_state"] for row in rows] == ["done"] * 4
    jobs = [row["path_taken"]["analysis_job"] for row in rows]
    assert len({job["pid"] for job in jobs}) == 1  # one process analysed all four
    assert sorted(job["crash"] for job in jobs) == [1, 2, 3, 4]
    assert {job["sandbox"] for job in jobs} == {"forked by the zygote"}
    assert all(row["path_taken"]["analysis_cpu_ms"] > 0 for row in rows)
    assert all(row["path_taken"]["journal"] == "sent" or "kmsg" in row["path_taken"]
               for row in rows)
    assert analysis_queue.waiting(str(store.directory / "analysis-queue")) == []
    # the same result, byte for byte, as a sandbox started for the crash alone
    with Index(store.config.index_path) as index:
        alone = analyse(store.config, index.get(store.ids[2]), None).to_json()
    assert alone["state"] == "done" and "abort" in json.dumps(alone["threads"])
    assert {_comparable(row["analysis"]) for row in rows} == {_comparable(alone)}


def test_job_whose_crash_was_analysed_exits_at_once_and_counts_its_cpu(store_of):
    store = store_of(2)
    _finish(store.job(1))
    assert [row["analysis_state"] for row in store.rows()] == ["done"] * 2
    counter = store.directory / "analysis-queue.cpu"
    counter.unlink(missing_ok=True)
    before = {row["id"]: row["path_taken"] for row in store.rows()}
    started = time.monotonic()
    _finish(store.job(0))
    assert time.monotonic() - started < 10  # no import of the analysis, no sandbox
    assert {row["id"]: row["path_taken"] for row in store.rows()} == before
    waited = int(counter.read_text())
    assert waited >= 0 and counter.exists()
    # the next stored analysis takes that CPU into its own account, and resets it; its
    # job's watching process then adds its own (small: os, fcntl, the queue imported)
    counter.write_text(str(waited + 100_000))
    with Index(store.config.index_path) as index:
        extra = index.insert(CrashRecord(
            pid=4100, timestamp_us=1_700_000_000_100_000, boot_id=BOOT, uid=0, gid=0,
            signal=6, comm="abort", exe=str(FIXTURE / "abort"),
            core_path=str(store.directory / "core.0.lz4"), core_state=CoreState.PRESENT))
    store.ids.append(extra)
    store.markers.append(analysis_queue.enqueue(str(store.directory), extra, store.config_path))
    _finish(store.job(2))
    assert store.rows()[2]["analysis_state"] == "done"
    assert store.rows()[2]["path_taken"]["analysis_cpu_ms"] >= waited + 100_000
    assert 0 < int(counter.read_text()) < 1000


def test_crash_claimed_by_a_job_that_dies_is_analysed_by_its_own_job(store_of):
    store = store_of(3)
    holding = ("import fcntl, os, sys, time\n"
               "fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX)\n"
               "print('claimed', flush=True); time.sleep(600)")
    holder = subprocess.Popen(  # a drainer that claimed crash 0, then gets killed
        [sys.executable, "-c", holding, store.markers[0]], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"claimed\n"
        job = store.job(0)
        deadline = time.monotonic() + 300
        while [row["analysis_state"] for row in store.rows()][1:] != ["done", "done"]:
            assert time.monotonic() < deadline and job.poll() is None
            time.sleep(0.1)
        time.sleep(1.0)
        assert store.rows()[0]["analysis_state"] == "pending"  # claimed: not taken...
        assert job.poll() is None  # ...but waited for
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    _finish(job)
    rows = store.rows()
    assert [row["analysis_state"] for row in rows] == ["done"] * 3
    assert len({row["path_taken"]["analysis_job"]["pid"] for row in rows}) == 1
    assert analysis_queue.waiting(str(store.directory / "analysis-queue")) == []


def test_crash_queued_with_another_configuration_is_left_to_its_own_job(store_of, tmp_path):
    store = store_of(2)
    other = tmp_path / "other.conf"
    shutil.copyfile(store.config_path, other)
    with open(store.markers[1], "w") as marker:  # as the handler of other.conf queues it
        marker.write(str(other))
    _finish(store.job(0))
    assert [row["analysis_state"] for row in store.rows()] == ["done", "pending"]
    job = subprocess.Popen([sys.executable, "-m", JOB, "--id", store.ids[1],
                            "--config", str(other), "--queued", store.markers[1]],
                           stderr=subprocess.PIPE)
    _finish(job)
    assert [row["analysis_state"] for row in store.rows()] == ["done", "done"]


def test_claims(tmp_path):
    queue = str(tmp_path / "analysis-queue")
    marker = analysis_queue.enqueue(str(tmp_path), "abc", "/etc/x.conf")
    assert marker == os.path.join(queue, "abc") and analysis_queue.waiting(queue) == [marker]
    first = analysis_queue.claim(marker)
    assert first is not None and analysis_queue.config_of(first) == "/etc/x.conf"
    assert analysis_queue.claim(marker) is None  # held: not twice
    late = os.open(marker, os.O_RDWR)  # opened before the finish, locked after it
    analysis_queue.finish(marker, first)
    assert analysis_queue.claim(marker) is None and not analysis_queue.exists(marker)
    import fcntl
    fcntl.flock(late, fcntl.LOCK_EX)
    assert os.fstat(late).st_nlink == 0  # what claim() checks after its lock
    os.close(late)
    assert analysis_queue.waiting(queue) == []
    analysis_queue.add_waiting_cpu(queue, 12)
    analysis_queue.add_waiting_cpu(queue, 30)
    assert analysis_queue.take_waiting_cpu(queue) == 42
    assert analysis_queue.take_waiting_cpu(queue) == 0


@pytest.mark.kernel
def test_storm_through_the_kernel_is_analysed_by_few_jobs(tmp_path):
    """Eight programs crashing at once under the installed handler: every crash analysed,
    by fewer processes than crashes, the queue left empty."""
    from coredumpd.pipeline import slots
    from tests.hardening.storm import run_storm
    result = run_storm(tmp_path, count=8, large=0, wait_analysis=True)
    assert result.crashed == 8 and result.stored == 8
    assert result.analysis_states == {"done": 8}, result.analysis_errors
    assert result.sandboxes_alive_max <= slots.analysis_slots()  # sampled: may see none
    with Index(str(tmp_path / "store" / "index.sqlite")) as index:
        rows = [record.to_json() for record in index.find([])]
    jobs = [row["path_taken"]["analysis_job"] for row in rows]
    assert len(rows) == 8 and len({job["pid"] for job in jobs}) < 8
    assert max(job["crash"] for job in jobs) >= 2
    assert "forked by the zygote" in {job["sandbox"] for job in jobs}
    assert analysis_queue.waiting(str(tmp_path / "store" / "analysis-queue")) == []
