"""The detached analysis job the handler starts after storing a crash.

``python -m coredumpd.pipeline.analyze_job --id ID [--config FILE] [--core-fd N | --queued MARKER]``

Runs niced in its own session, long after the kernel let the crashed process
go: loads the index row, analyses the core in the sandbox
(:func:`coredumpd.pipeline.sandbox.run_analysis`), stores the result
(``analysis``, ``analysis_state``/``analysis_error``, ``root_cause``,
``signature``), then sends the crash's one journal entry (never for a crash of
journald itself), falling back to a /dev/kmsg line when the journal cannot
take it.  ``path_taken`` in the row records what happened.  With
``DebuginfodURLs=`` it fetches by build-id what the analysis lacked and analyses
again when something came (:func:`handler_debuginfod`); after the row it writes
the module cache entries the analysis lacked (:mod:`.sandbox_cache`).  With a fleet
database configured it queues the crash's fleet record in the outbox and
drains the outbox (:mod:`coredumpd.fleet.publisher`).

``--core-fd`` is an inherited descriptor of a core that was not kept
(Storage=none, rate limit): it is analysed through ``/proc/self/fd/N`` and
vanishes when this job exits.

In a storm, many jobs start at once: each waits for an analysis slot
(:mod:`coredumpd.pipeline.slots`) before importing anything heavy, so only a
few analyses (and their sandboxes) hold memory at a time.  A job with a slot
drains (:class:`Drain`): after its own crash (``--queued``: the crash's marker in
:mod:`.analysis_queue`) it claims and analyses the other queued crashes of its
store and configuration, oldest first, until none is left (after more than one
crash: none has come for :data:`LINGER_S`); a job whose marker is gone when it
gets its slot exits at once.
From the drain's second crash on (or its first, when others wait) its sandboxes
are forked by one zygote (:mod:`.sandbox_zygote`) instead of each starting an
interpreter and the analysis' imports.  A job whose own crash another job held
waits for that claim at the end: if that job died, this one analyses the crash.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

from coredumpd.pipeline import analysis_queue, slots

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from coredumpd.config import Config
    from coredumpd.image.debuginfod import Debuginfod
    from coredumpd.model import AnalysisResult, CrashRecord
    from coredumpd.pipeline.sandbox_zygote import Zygote


def analyse(config: Config, record: CrashRecord, core_fd: int | None,
            debuginfod: Debuginfod | None = None) -> AnalysisResult:
    """The analysis result for a crash, or a ``failed`` result saying why not.

    ``debuginfod``: its cache is read by the analysis (``corectl reanalyze`` fetched
    into it first: :func:`prefetch`).  What the module cache lacked is kept before
    this returns."""
    result, keep = analyse_and_keep(config, record, core_fd, debuginfod)
    keep()
    return result


def _nothing_to_keep() -> int:
    return 0


def analyse_and_keep(config: Config, record: CrashRecord, core_fd: int | None,
                     debuginfod: Debuginfod | None = None, zygote: Zygote | None = None
                     ) -> tuple[AnalysisResult, Callable[[], int]]:
    """:func:`analyse`, and a call that derives and writes the module cache entries the
    analysis lacked (run it once the result is stored: nobody waits for it).  ``zygote``:
    the drain's sandbox zygote (:mod:`.sandbox_zygote`)."""
    from coredumpd.errors import FormatError
    from coredumpd.model import AnalysisResult
    if not config.analysis:
        return AnalysisResult.failed("disabled by Analysis=no"), _nothing_to_keep
    core_path = record.core_path or (f"/proc/self/fd/{core_fd}" if core_fd else None)
    if core_path is None:
        return AnalysisResult.failed(f"no core ({record.core_reason})"), _nothing_to_keep
    if (record.core_size or 0) > config.process_size_max:
        return AnalysisResult.failed(f"core of {record.core_size} bytes is over "
                                     f"ProcessSizeMax={config.process_size_max}"), \
            _nothing_to_keep
    try:
        from coredumpd.pipeline.sandbox import run_analysis
    except ImportError:  # the sandbox is optional: analyse in this (niced) process
        from coredumpd.analysis import analyze
        from coredumpd.store.lz4seek import open_core_source
        from coredumpd.store.modcache import ModuleCache
        return analyze(open_core_source(core_path), record.facts, record.exe,
                       debuginfod=debuginfod,
                       cache=ModuleCache(config.directory) if config.analysis_cache else None
                       ), _nothing_to_keep
    from coredumpd.pipeline.sandbox_cache import Offer
    facts = record.facts.to_json() if record.facts is not None else None
    offer = Offer(config.directory, facts, "/") if config.analysis_cache else None
    try:
        answer = run_analysis(config, core_path, facts, record.exe,
                              debuginfod=debuginfod.settings() if debuginfod else None,
                              entries=offer, zygote=zygote)
    finally:
        if offer is not None:
            offer.close()
    lookups = answer.pop("module_lookups", None)
    keep = functools.partial(offer.remember, lookups) if offer is not None else _nothing_to_keep
    try:  # the sandbox answers in JSON: read it once, here
        return AnalysisResult.from_json(answer), keep
    except FormatError as err:
        return AnalysisResult.failed(f"analysis failed: unreadable result: {err}"), keep


def prefetch(debuginfod: Debuginfod, record: CrashRecord) -> list[str]:
    """Fetch into the debuginfod cache what the last analysis of ``record`` lacked: the
    debug file of each module without one, the file of each module this machine does
    not have (by the build-id the core gave).  Runs here, not in the sandbox; problems."""
    problems: list[str] = []
    for build_id, kind in _lacking(record):
        debuginfod.find(build_id, kind, problems)
    return problems


def _lacking(record: CrashRecord) -> list[tuple[str, str]]:
    """(build-id, kind) of what the last analysis of ``record`` lacked (see prefetch)."""
    lacking: list[tuple[str, str]] = []
    for module in record.analysis.modules if record.analysis is not None else []:
        build_id = module.build_id
        if not isinstance(build_id, str) or module.path == "[vdso]":
            continue
        if module.file_build_id != build_id and not module.kept:
            lacking.append((build_id, "executable"))
        if not module.debug_file:
            lacking.append((build_id, "debuginfo"))
    return lacking


DEBUGINFOD_CONNECT_S = 10.0  # the longest wait for a connection or for the next data


def handler_debuginfod(config: Config) -> Debuginfod | None:
    """The client of ``DebuginfodURLs=`` (None when empty): the kernel starts the
    handler with an empty environment, so DEBUGINFOD_URLS is never its business.  Files
    land in ``DIR/debuginfod`` in elfutils' layout; waits are bounded by
    AnalysisTimeoutSec, and each connection or read by 10 s."""
    if not config.debuginfod_urls:
        return None
    from coredumpd.image.debuginfod import Debuginfod
    from coredumpd.paths import debuginfod_path, make_directory
    cache = debuginfod_path(config.directory)
    from coredumpd.errors import StoreError
    try:
        make_directory(cache, 0o711)  # the sandbox reads files by build-id, lists nothing
    except StoreError:
        return None  # nowhere to put what would be fetched: the analysis as without
    return Debuginfod(config.debuginfod_urls, cache,
                      timeout=min(DEBUGINFOD_CONNECT_S, config.analysis_timeout),
                      maxtime=config.analysis_timeout)


DEBUGINFOD_ASKS_MAX = 64  # files asked for one crash: a core's modules are its own claim


def fetch_lacking(debuginfod: Debuginfod, record: CrashRecord, result: AnalysisResult,
                  problems: list[str], seconds: float) -> bool:
    """Fetch what ``result`` lacked and the cache does not hold yet (a miss is asked
    again at the next crash: the server may have it by then); True when something new
    came.  Failures other than "not found" go to ``problems``.  At most
    :data:`DEBUGINFOD_ASKS_MAX` files and ``seconds`` in all: a core claiming
    thousands of modules, or a server that never answers, holds the slot no longer."""
    import time
    record.set_analysis(result)
    deadline = time.monotonic() + seconds
    wanted = [(build_id, kind) for build_id, kind in _lacking(record)
              if debuginfod.cached(build_id, kind) is None]
    fetched = False
    for number, (build_id, kind) in enumerate(wanted):
        if number == DEBUGINFOD_ASKS_MAX or time.monotonic() > deadline:
            problems.append(f"debuginfod: {len(wanted) - number} of {len(wanted)} files not "
                            f"asked for (at most {DEBUGINFOD_ASKS_MAX}, {seconds:g} s)")
            break
        fetched = debuginfod.find(build_id, kind, problems) is not None or fetched
    return fetched


def report(config: Config, record: CrashRecord) -> dict[str, object]:
    """Send the journal entry (or the kmsg line); return the updated path_taken."""
    from coredumpd.report import journal
    path_taken = dict(record.path_taken or {})
    kind = path_taken.get("crasher")
    if kind == "journald":
        path_taken["journal"] = "skipped: journald crashed"
    elif not config.journal:
        path_taken["journal"] = "skipped: Journal=no"
    else:
        fields = journal.journal_fields(record)
        path_taken["journal"] = journal.send(
            fields, timeout=config.journal_timeout,
            path=journal.journal_socket_path(config.journal_namespace))
    if path_taken["journal"] != "sent" and "kmsg" not in path_taken:
        where = record.core_path or f"no core ({record.core_reason})"
        line = journal.kmsg_line(journal.known_pid(record), record.comm or "unknown",
                                 record.uid, record.signal,
                                 f"stored {where}; journal {path_taken['journal']}; "
                                 f"root cause {record.root_cause}")
        path_taken["kmsg"] = "written" if journal.write_kmsg(line) else "failed"
    path_taken["analysis"] = record.analysis.state.value if record.analysis else None
    return path_taken


LINGER_S = 1.0  # a drain waits this long for another crash before it ends
LINGER_POLL_S = 0.05  # looking at the queue (a directory listing) this often meanwhile


class Drain:
    """One job's analyses: its own crash, then the others of its store still queued
    (:mod:`.analysis_queue`), with one index, one sandbox zygote and one CPU account."""

    def __init__(self, config_path: str | None) -> None:
        from coredumpd.config import load_config
        from coredumpd.store.index import Index
        self.config_path = config_path
        self.config = load_config(config_path, strict=False)  # the handler's reading of it
        self.index = Index(self.config.index_path)
        self.zygote: Zygote | None = None
        self.cpu_taken = 0  # of this process and its reaped children, counted in rows
        self.analysed = 0
        self.fleet_queued = False

    def analyse_row(self, row_id: str, core_fd: int | None = None,
                    queue: str | None = None) -> bool:
        """Analyse crash ``row_id`` and store the result; False when it has no pending
        row (deleted, or analysed already)."""
        from coredumpd.model import AnalysisResult, AnalysisState
        record = self.index.get(row_id)
        if record is None or record.analysis_state not in (AnalysisState.PENDING, None):
            return False
        config = self.config
        keep = _nothing_to_keep
        forked = self.zygote.forked if self.zygote is not None else 0
        try:
            debuginfod = handler_debuginfod(config)
            result, keep = analyse_and_keep(config, record, core_fd, debuginfod,
                                            self._zygote(queue, row_id))
            fetching: list[str] = []
            if debuginfod is not None and result.state == "done" \
                    and fetch_lacking(debuginfod, record, result, fetching,
                                      config.analysis_timeout):
                result, keep = analyse_and_keep(config, record, core_fd, debuginfod,
                                                self._zygote(queue, row_id))
            result.problems += fetching
        except Exception as err:  # noqa: BLE001 - a broken analysis must not lose the entry
            result = AnalysisResult.failed(f"analysis crashed: {type(err).__name__}: {err}")
        record.set_analysis(result)
        path_taken = report(config, record)
        if config.fleet_database:
            from coredumpd.fleet.publisher import enqueue
            path_taken["fleet"] = enqueue(config, record)
            self.fleet_queued = self.fleet_queued or path_taken["fleet"] == "queued"
        # one update, after the journal: a reader that sees the analysis sees the outcome too
        path_taken["module_cache"] = _keep_quietly(keep)
        path_taken["analysis_cpu_ms"] = self._take_cpu_ms(queue)
        self.analysed += 1  # which job, its how-manieth crash, how its sandbox started
        path_taken["analysis_job"] = {"pid": os.getpid(), "crash": self.analysed,
                                      "sandbox": self._sandbox_started(forked)}
        self.index.update(record.id, **record.analysis_columns(), path_taken=path_taken)
        return True

    def _sandbox_started(self, forked_before: int) -> str:
        if self.zygote is not None and self.zygote.forked > forked_before:
            return "forked by the zygote"
        return "started"

    def _zygote(self, queue: str | None, current: str) -> Zygote | None:
        """The drain's sandbox zygote, made at its second crash or at its first when others
        are queued behind it: its imports cost more than one started sandbox (~330
        against ~120 ms of CPU here), each child forked from it ~150-200 ms less."""
        from coredumpd.pipeline import analysis_queue
        if self.zygote is None and self.config.analysis and queue is not None and \
                (self.analysed > 0 or any(os.path.basename(marker) != current
                                          for marker in analysis_queue.waiting(queue))):
            from coredumpd.pipeline.sandbox_zygote import Zygote
            self.zygote = Zygote()
        return self.zygote

    def _take_cpu_ms(self, queue: str | None) -> int:
        """This crash's share of the analyses' CPU: this process and its started sandboxes
        since the previous crash, the zygote and its children for this crash, and the jobs
        that found nothing left to analyse since (:func:`.analysis_queue.take_waiting_cpu`)."""
        from coredumpd.pipeline import analysis_queue
        total = _cpu_ms() - (self.zygote.reaped_ms if self.zygote else 0)
        share = total - self.cpu_taken
        self.cpu_taken = total
        if self.zygote is not None:
            share += self.zygote.take_cpu_ms()
        if queue is not None:
            share += analysis_queue.take_waiting_cpu(queue)
        return share

    def drain(self, queue: str, skip: str | None = None) -> None:
        """Claim and analyse the queued crashes of this configuration, oldest first, until
        none is left that nobody holds (``skip``: a marker not to take) — and, once it has
        analysed more than one, none has come for :data:`LINGER_S`: in a storm whose
        capture is slower than its analyses the crashes trickle in, and the drain that
        waits a moment for the next keeps its zygote.  A lone crash's job ends at once
        (its slot is the other crashes' too)."""
        import time

        from coredumpd.pipeline import analysis_queue
        idle_since = time.monotonic()
        while True:
            if sum(self.claim_and_analyse(marker, queue, wait=False)
                   for marker in analysis_queue.waiting(queue) if marker != skip):
                idle_since = time.monotonic()
            elif self.analysed < 2 or time.monotonic() - idle_since >= LINGER_S:
                return
            else:
                time.sleep(LINGER_POLL_S)

    def claim_and_analyse(self, marker: str, queue: str, wait: bool) -> bool:
        """Analyse the crash of ``marker`` if we can claim it (``wait``: until its holder
        is done) and it names our configuration; True when we claimed it."""
        from coredumpd.pipeline import analysis_queue
        fd = analysis_queue.claim(marker, wait)
        if fd is None:
            return False
        try:
            if analysis_queue.config_of(fd) != self.config_path:
                os.close(fd)  # another configuration's crash: its own job takes it
                return False
        except OSError:
            os.close(fd)
            return False
        try:
            self.analyse_row(os.path.basename(marker), queue=queue)
        finally:
            analysis_queue.finish(marker, fd)
        return True

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.close()
        self.index.close()


def run(row_id: str, config_path: str | None, core_fd: int | None,
        marker: str | None = None) -> int:
    """Analyse crash ``row_id`` (``marker``: its queue marker, :mod:`.analysis_queue`),
    then drain the store's queue; 1 when the crash has no row."""
    from coredumpd.pipeline import analysis_queue
    drain = Drain(config_path)
    queue = os.path.dirname(marker) if marker else \
        analysis_queue.queue_path(drain.config.directory)
    try:
        if marker is None:
            if not drain.analyse_row(row_id, core_fd, queue) \
                    and drain.index.get(row_id) is None:
                return 1
        elif drain.claim_and_analyse(marker, queue, wait=False):
            marker = None  # done
        drain.drain(queue, skip=marker)
        if marker is not None:
            # another job held our crash: wait for it, and analyse it if that job died
            drain.claim_and_analyse(marker, queue, wait=True)
    finally:
        drain.close()
    if drain.fleet_queued:
        slots.release_slot("analysis")  # a database that is down must not hold analyses up
        publish(drain.config)
    return 0


def _keep_quietly(keep: Callable[[], int]) -> str:
    """Write the module cache entries (before the row, so that a reader who sees the
    analysis sees its whole cost); a failure costs the next analysis time, no more."""
    try:
        return f"{keep()} written"
    except Exception as err:  # noqa: BLE001 - the crash is stored and analysed already
        return f"not written: {type(err).__name__}: {err}"


def _cpu_ms() -> int:
    import resource
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return round(total * 1000)


def publish(config: Config) -> None:
    """Drain the fleet outbox now that the crash is stored (this job is detached: a
    database that is down or slow keeps only this process waiting, never a crash)."""
    try:
        from coredumpd.fleet.publisher import drain_after_crash
        drain_after_crash(config)
    except Exception as err:  # noqa: BLE001 - the record waits in the outbox
        from coredumpd.report import journal
        journal.write_kmsg(f"fleet publishing failed, records wait in the outbox: {err}")


def main(argv: list[str] | None = None) -> int:
    slots.hold_slot("analysis", slots.analysis_slots())
    arguments = sys.argv[1:] if argv is None else argv
    marker = _option(arguments, "--queued")
    if marker is not None and _option(arguments, "--core-fd") is None \
            and not analysis_queue.exists(marker):
        # analysed by another job meanwhile: count this process, import nothing more
        analysis_queue.add_waiting_cpu(os.path.dirname(marker), _cpu_ms())
        return 0
    not_dumpable()
    import argparse

    from coredumpd.errors import CoredumpdError
    from coredumpd.report import journal
    parser = argparse.ArgumentParser(prog="coredumpd-analyze-job")
    parser.add_argument("--id", required=True)
    parser.add_argument("--config")
    parser.add_argument("--core-fd", type=int)
    parser.add_argument("--queued", help="the crash's marker in the analysis queue")
    options = parser.parse_args(arguments)
    try:
        return run(options.id, options.config, options.core_fd, options.queued)
    except CoredumpdError as err:
        journal.write_kmsg(f"analysis job for crash {options.id} failed: {err}")
        return 1
    finally:
        if options.core_fd is not None:
            try:
                os.close(options.core_fd)
            except OSError:
                pass


PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def not_dumpable() -> None:
    """A crash of this job must not come back to our own handler: under the handler's pipe
    the kernel gave us RLIMIT_CORE 1, but a job of ``coredumpd serve`` was exec'd by a
    capture worker, so dumpable, and its crash would go to our own socket (and its
    crash's marker would stay queued, oldest first, for the next drain)."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``name VALUE`` in ``argv`` (argparse costs more than a finished job)."""
    for position, word in enumerate(argv[:-1]):
        if word == name:
            return argv[position + 1]
    return None


if __name__ == "__main__":
    sys.exit(main())
