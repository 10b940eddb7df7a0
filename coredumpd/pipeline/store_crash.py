"""Phase 2 of the handler: the crashed process is gone, make the crash durable.

Finish the lz4 file, decide whether the core is kept (Storage=, RLIMIT_CORE,
rate limit per executable), link it under systemd's name with its ACL, write
the index row, apply MaxUse/KeepFree, tell /dev/kmsg when the crasher is PID 1
or journald, queue the crash for its analysis (:mod:`.analysis_queue`: any
analysis job of the store may take it) and start the detached analysis job, unless a job
of the store holds every drain lock (it will analyse this crash).  The order follows
systemd-coredump (src/coredump/coredump.c: save_external_coredump(),
submit_coredump()) minus everything that needs PID 1 or a socket service.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from typing import Any

from coredumpd.errors import CoredumpdError
from coredumpd.model import AnalysisState, CoreState, CrashRecord, Facts
from coredumpd.pipeline.slots import analysis_slots
from coredumpd.pipeline.state import CrashState
from coredumpd.report.journal import kmsg_line, write_kmsg
from coredumpd.store.index import Index
from coredumpd.store.naming import core_filename

ANALYZE_JOB_MODULE = "coredumpd.pipeline.analyze_job"
ANALYSIS_NICE = 10


def finish(crash: CrashState) -> int:
    """Store what phase 1 gathered; exit status (0 unless nothing could be stored)."""
    stats = _finish_core(crash)
    crash.resolve_ids()
    facts = crash.build_facts()
    if crash.dir_fd < 0:
        write_kmsg(_kmsg(crash, "not stored: " + "; ".join(crash.problems[-2:])))
        return 1
    try:
        index = Index(crash.load_config().index_path)
    except CoredumpdError as err:
        crash.problems.append(f"index: {err}")
        write_kmsg(_kmsg(crash, f"index unusable: {err}"))
        return 1
    with _store_lock(crash.dir_fd):  # rate limit, KeepFree and insert decided atomically
        apply_rate_limit(crash, index)
        record = _record(crash, index, stats, facts)
        _link_core(crash, record)
        row_id = _insert(crash, index, record)
    if row_id is None:
        return 1
    crash.row_id = row_id
    for step in (_special_crasher, _report_config_errors, _enforce_retention, _spawn_analysis):
        try:  # the row exists: a failing step must not stop the others
            step(crash, index, row_id, record)
        except Exception as err:  # noqa: BLE001
            write_kmsg(_kmsg(crash, f"{step.__name__.strip('_')}: {type(err).__name__}: {err}"))
    return 0


@contextlib.contextmanager
def _store_lock(dir_fd: int) -> Iterator[None]:
    """An exclusive flock(2) on the store directory, held by one handler at a time
    from the rate-limit count to the row's insertion: crashes of one program
    arriving together must not all be counted before any of them is indexed."""
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
    except OSError:
        yield  # a file system without flock: best effort, as before
        return
    try:
        yield
    finally:
        fcntl.flock(dir_fd, fcntl.LOCK_UN)


def _kmsg(crash: CrashState, text: str) -> str:
    return kmsg_line(crash.ids.get("pid"), crash.comm(), crash.ids.get("uid"), crash.args.signal,
                     text)


def _insert(crash: CrashState, index: Index, record: dict[str, Any]) -> Any:
    """Insert the row; if that fails (a full disk), drop the core and try once more."""
    try:
        return index.insert(CrashRecord(**record))
    except CoredumpdError as err:
        first = err
    _drop_core(crash)
    if record["core_path"]:
        try:
            os.unlink(record["core_path"])
        except OSError:
            pass
    record.update(core_path=None, stored_size=None, core_state=CoreState.MISSING,
                  core_reason=f"not kept: the index could not take the row: {first}")
    try:
        return index.insert(CrashRecord(**record))
    except CoredumpdError as err:
        write_kmsg(_kmsg(crash, f"not indexed: {err}"))
        return None


def _drop_core(crash: CrashState) -> None:
    """Free the unnamed file's blocks now (a failed core on a full disk)."""
    if crash.writer is not None:
        crash.writer.abort()
        crash.writer = None
    if crash.temp is not None:
        crash.temp.discard()
        crash.temp.close()
        crash.temp = None


def _finish_core(crash: CrashState) -> Any:
    if crash.writer is None:
        return None
    if crash.core_failure is not None:
        _drop_core(crash)
        return None
    try:
        return crash.writer.finish(crash.stream.truncated)
    except CoredumpdError as err:
        crash.problems.append(f"finishing the lz4 file: {err}")
        crash.core_failure = crash.core_failure or f"write failed: {err}"
        _drop_core(crash)
        return None


def apply_rate_limit(crash: CrashState, index: Index) -> None:
    """More than RateLimitBurst crashes of one executable in the interval: no core."""
    config = crash.load_config()
    exe = crash.proc.get("exe") or crash.comm()
    since_us = crash.timestamp_us - int(config.rate_limit_interval * 1_000_000)
    try:
        recent = index.count_recent(exe, since_us)
    except CoredumpdError as err:
        crash.problems.append(f"rate limit not checked: {err}")
        return
    if recent >= config.rate_limit_burst and crash.skip_core is None:
        crash.skip_core = (f"rate limited: {recent} crashes of {exe} within "
                           f"{config.rate_limit_interval:g}s (RateLimitBurst={config.rate_limit_burst})")


def _core_state(crash: CrashState, stored: bool) -> tuple[CoreState, str | None]:
    reason = crash.stream.truncated
    if crash.core_failure is not None:
        return CoreState.MISSING, crash.core_failure
    if crash.skip_core is not None:
        return CoreState.NONE, crash.skip_core
    if not stored:
        return CoreState.MISSING, reason or "not stored"
    return (CoreState.TRUNCATED, reason) if reason else (CoreState.PRESENT, None)


def _check_keep_free(crash: CrashState, index: Index, stored_size: int) -> None:
    """Vacuum older cores, then keep this one only if KeepFree still holds.

    As systemd-coredump (coredump-vacuum.c), with the new file's blocks
    already allocated, so the free space counted is what remains with it.
    """
    from coredumpd.store import retention
    try:
        result = retention.vacuum(crash.load_config(), index)
    except CoredumpdError as err:
        crash.problems.append(f"retention: {err}")
        return
    if result.keep_free > 0 and result.free_bytes < result.keep_free and crash.skip_core is None:
        crash.skip_core = (f"KeepFree={result.keep_free} bytes: {result.free_bytes} bytes free"
                           f" with the core of {stored_size} bytes written; not kept")


def _record(crash: CrashState, index: Index, stats: Any, facts: dict[str, Any]) -> dict[str, Any]:
    args, proc, stream = crash.args, crash.proc, crash.stream
    siginfo = stream.siginfo
    comm = crash.comm()
    record: dict[str, Any] = {
        "pid": crash.record_pid, "tid": args.tid,
        "ns_pid": args.ns_pid, "uid": crash.ids["uid"], "gid": crash.ids["gid"],
        "signal": args.signal if args.signal is not None else (siginfo.si_signo if siginfo else 0),
        "si_code": siginfo.si_code if siginfo else None,
        "fault_address": siginfo.si_addr if siginfo else None,
        "timestamp_us": crash.timestamp_us, "boot_id": facts["boot_id"],
        "hostname": args.hostname, "comm": comm, "exe": proc.get("exe"),
        "cmdline": " ".join(proc.get("cmdline") or []) or None,
        "unit": proc.get("unit"), "cgroup": _unified_cgroup(proc.get("cgroup")),
        "rlimit_core": args.rlimit_core, "dump_mode": args.dump_mode,
        "core_path": None, "core_size": stream.size,
        "stored_size": stats.stored_size if stats is not None else None,
        "facts": Facts.from_json(facts), "analysis_state": AnalysisState.PENDING,
        "path_taken": {"crasher": crash.crasher_kind(), "journal": "pending"},
        "container_id": (facts.get("container") or {}).get("id"),
    }
    if stats is not None and crash.skip_core is None and crash.core_failure is None:
        _check_keep_free(crash, index, stats.stored_size)
    will_store = stats is not None and crash.skip_core is None and stream.size > 0
    record["core_state"], record["core_reason"] = _core_state(crash, will_store)
    return record


def _unified_cgroup(text: str | None) -> str | None:
    """The cgroup v2 path ("0::PATH" line), as systemd-coredump's COREDUMP_CGROUP."""
    for line in (text or "").splitlines():
        if line.startswith("0::"):
            return line[3:]
    return text


def _link_core(crash: CrashState, record: dict[str, Any]) -> None:
    temp = crash.temp
    if temp is None or not record["core_state"].stored:
        if temp is not None:
            temp.discard()  # unnamed: vanishes once the analysis job closes it
        record["stored_size"] = None  # nothing of it stays on disk
        return
    name = core_filename(crash.comm(), crash.ids.get("uid") or 0, record["boot_id"],
                         record["pid"], crash.timestamp_us)
    try:
        _grant_user_access(crash)
        temp.link(name)
    except CoredumpdError as err:
        crash.problems.append(str(err))
        record["core_state"], record["core_reason"] = CoreState.MISSING, str(err)
        record["facts"] = record["facts"].replace(problems=crash.problems)
        record["stored_size"] = None
        return
    record["core_path"] = os.path.join(crash.load_config().directory, name)


def _grant_user_access(crash: CrashState) -> bool:
    """ACL for the crashing user when systemd-coredump would grant it."""
    from coredumpd.ingest.output import grant_read, may_grant_user
    status = crash.proc.get("status") or {}
    if not may_grant_user(crash.args.dump_mode, crash.args.uid, crash.at_secure(),
                          status.get("Uid"), status.get("Gid")):
        return False
    assert crash.temp is not None and crash.args.uid is not None
    grant_read(crash.temp.fd, crash.args.uid)
    return True


def _special_crasher(crash: CrashState, index: Index, row_id: Any, record: dict[str, Any]) -> None:
    """PID 1, init.scope, journald: a /dev/kmsg line now, whatever the journal does."""
    kind = crash.crasher_kind()
    if kind is None:
        return
    where = record["core_path"] or f"no core ({record['core_reason']})"
    ok = write_kmsg(_kmsg(crash, f"{kind} crashed; stored {where}, index row {row_id}"))
    path_taken = {"crasher": kind, "kmsg": "written" if ok else "failed",
                  "journal": "skipped: journald crashed" if kind == "journald" else "pending"}
    index.update(row_id, path_taken=path_taken)


def _report_config_errors(crash: CrashState, index: Index, row_id: Any,
                          record: dict[str, Any]) -> None:
    """A configuration value that could not be read was replaced by its default: the
    row's facts say so already; a /dev/kmsg line tells whoever reads the kernel log."""
    if not crash.config_errors:
        return
    where = record["core_path"] or f"no core ({record['core_reason']})"
    write_kmsg(_kmsg(crash, f"{'; '.join(crash.config_errors)}; stored {where},"
                            f" index row {row_id}"))


def _enforce_retention(crash: CrashState, index: Index, row_id: Any,
                       record: dict[str, Any]) -> None:
    """MaxUse with the new core counted (it is never the one removed)."""
    if record["core_path"]:
        from coredumpd.store import retention
        retention.vacuum(crash.load_config(), index, exclude=os.path.basename(record["core_path"]))


def _spawn_analysis(crash: CrashState, index: Index, row_id: Any, record: dict[str, Any]) -> None:
    """Queue the crash, and start its analysis job unless a drainer of the store has it.

    The marker first, then a free drain lock (:mod:`.analysis_queue`): when all are
    held, their holders will analyse this crash and no job is started (in a storm,
    one drainer instead of an interpreter per crash, ~18 ms of CPU and ~10 MiB each,
    competing with the capture); else the job gets the lock with its arguments.
    The job is a double fork: a niced session leader-less grandchild the kernel never
    waits for."""
    from coredumpd.pipeline import analysis_queue
    argv = [sys.executable, "-m", ANALYZE_JOB_MODULE, "--id", str(row_id)]
    config_path = crash.load_config().path
    if config_path:
        argv += ["--config", config_path]
    core_fd = drain_fd = -1  # descriptors the job inherits
    if crash.temp is not None and crash.temp.fd >= 0 and record["core_path"] is None \
            and crash.stream.size > 0:
        core_fd = crash.temp.fd  # unlinked core: the job analyses it through this fd
        argv += ["--core-fd", str(core_fd)]
    else:  # any job of this store may analyse it (analysis_queue.py)
        directory = crash.load_config().directory
        marker = analysis_queue.enqueue(directory, str(row_id), config_path)
        if marker is not None:
            argv += ["--queued", marker]
            lock = _drain_lock(analysis_queue.queue_path(directory), config_path)
            if lock is None:
                return  # a drainer holds every lock: it will analyse this crash
            drain_fd = lock
            if drain_fd >= 0:
                argv += ["--drain-fd", str(drain_fd)]
    for fd in (core_fd, drain_fd):
        if fd >= 0:
            os.set_inheritable(fd, True)
    try:
        child = os.fork()
        if child == 0:
            _detached_exec(argv)
        os.waitpid(child, 0)
    finally:
        if drain_fd >= 0:
            os.close(drain_fd)  # the job's now: it holds the lock


def _drain_lock(queue: str, config_path: str | None) -> int | None:
    """A free drain lock for the job, None when all are held, -1 when there are none to
    be had (the job then drains without one, as before the locks)."""
    from coredumpd.pipeline import analysis_queue
    try:
        return analysis_queue.take_drain_lock(queue, config_path, analysis_slots())
    except OSError:
        return -1


def _detached_exec(argv: list[str]) -> None:
    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        os.nice(ANALYSIS_NICE)
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
