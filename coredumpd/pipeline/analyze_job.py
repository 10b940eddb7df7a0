"""The detached analysis job the handler starts after storing a crash.

``python -m coredumpd.pipeline.analyze_job --id ID [--config FILE] [--core-fd N | --queued MARKER [--drain-fd N]]``

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
drains the outbox (:mod:`coredumpd.fleet.publisher`) from a forked process that holds
neither the analysis slot nor the drain lock (:func:`publish_detached`).

``--core-fd`` is an inherited descriptor of a core that was not kept
(Storage=none, rate limit): it is analysed through ``/proc/self/fd/N`` and
vanishes when this job exits.

In a storm, one job analyses the crashes of its store: the handler queues each crash
(``--queued``: its marker in :mod:`.analysis_queue`) and starts a job only when it can
hand it a free drain lock (``--drain-fd``); while a job holds every lock, crashes are
only queued.  The job keeps the lock in a small process (:func:`watch_drains`: os,
fcntl and the queue imported) that waits for an analysis slot (:mod:`.slots`) and forks
the drain: it claims and analyses its own crash, then the other queued crashes of its
store and configuration (:class:`Drain`), oldest first, until none is left (after more
than one crash: none has come for :data:`LINGER_S`).  A drain that was killed is
forked again; each claim counts an attempt in the marker, and a crash whose analysis
failed :data:`.analysis_queue.ATTEMPTS_MAX` times is marked failed.  Once nothing
claimable is left the lock is let go and the queue looked at once more.
From the drain's second crash on (or its first, when others wait) its sandboxes
are forked by one zygote (:mod:`.sandbox_zygote`) instead of each starting an
interpreter and the analysis' imports.  A drain whose own crash another job held
waits for that claim at the end: if that job died, this one analyses the crash.
A crash with ``--core-fd`` is analysed alone (nobody else can read its core).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

from coredumpd.pipeline import analysis_queue, slots

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

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
    return read_answer(answer), keep


def read_answer(answer: dict[str, Any]) -> AnalysisResult:
    """The result the sandbox answered (JSON, read once, here), or a ``failed`` one when
    it is not a result: a child that a hostile core took over answers what it likes, and
    a value of the wrong type would break the journal entry or the index update after."""
    from coredumpd.errors import FormatError
    from coredumpd.model import AnalysisResult
    try:
        result = AnalysisResult.from_json(answer)
        result.check()
    except FormatError as err:
        return AnalysisResult.failed(f"analysis failed: unreadable result: {err}")
    return result


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
                    queue: str | None = None, marker_fd: int | None = None) -> bool:
        """Analyse crash ``row_id`` and store the result; False when it has no pending
        row (deleted, or analysed already).  ``marker_fd``: its claimed marker, which
        says whether an earlier attempt sent the journal entry (:meth:`_report_once`)."""
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
        path_taken = self._report_once(record, marker_fd)
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
        is done) and it names our configuration; True when we claimed it.

        The attempt is counted in the marker first (:func:`.analysis_queue.begin_attempt`).
        An analysis that raised leaves the marker with its error, for the next pass (the
        others are not held up: a pass takes each marker once); one that failed
        :data:`.analysis_queue.ATTEMPTS_MAX` times, or ended its job as often, is given up
        (:meth:`give_up`) and its marker removed."""
        from coredumpd.pipeline import analysis_queue
        fd = analysis_queue.claim(marker, wait)
        if fd is None:
            return False
        try:
            if analysis_queue.config_of(fd) != self.config_path:
                os.close(fd)  # another configuration's crash: its own job takes it
                return False
            attempts, error = analysis_queue.begin_attempt(fd)
        except OSError:
            os.close(fd)
            return False
        row_id = os.path.basename(marker)
        if attempts >= analysis_queue.ATTEMPTS_MAX:
            self.give_up(row_id, attempts, error, fd)
        else:
            try:
                self.analyse_row(row_id, queue=queue, marker_fd=fd)
            except Exception as err:  # noqa: BLE001 - kept for a later attempt, never lost
                try:
                    analysis_queue.record_error(fd, f"{type(err).__name__}: {err}")
                finally:
                    os.close(fd)
                return True
        analysis_queue.finish(marker, fd)
        return True

    def _report_once(self, record: CrashRecord, marker_fd: int | None) -> dict[str, object]:
        """:func:`report` (the journal entry), unless an earlier attempt at this crash sent
        it (its marker says so): an attempt whose result the index refused, or that was
        killed after the entry went out, would otherwise send another each time."""
        from coredumpd.pipeline import analysis_queue
        if marker_fd is not None and analysis_queue.journaled(marker_fd):
            path_taken = dict(record.path_taken or {})
            path_taken["journal"] = "sent"  # by an earlier attempt, with its result
            path_taken["analysis"] = record.analysis.state.value if record.analysis else None
            return path_taken
        path_taken = report(self.config, record)
        if marker_fd is not None:
            analysis_queue.mark_journaled(marker_fd)
        return path_taken

    def give_up(self, row_id: str, attempts: int, error: str,
                marker_fd: int | None = None) -> None:
        """Mark crash ``row_id`` analysis failed, saying why (``corectl`` shows it): its
        analysis failed ``attempts`` times, the last with ``error`` (empty: its job ended
        during it, killed); and send its journal entry unless an attempt did (only the
        analysis job sends it: a crash whose every attempt was killed before would be
        missing from the journal).  When even that cannot be stored, /dev/kmsg says so:
        the row stays pending (``corectl reanalyze`` can take it), the queue goes on."""
        from coredumpd.model import AnalysisResult, AnalysisState
        last = error or "the analysis job ended during the analysis (killed?)"
        message = f"analysis given up after {attempts} attempts; the last: {last}"
        try:
            record = self.index.get(row_id)
            if record is None or record.analysis_state not in (AnalysisState.PENDING, None):
                return  # deleted, or analysed meanwhile (corectl reanalyze)
            record.set_analysis(AnalysisResult.failed(message))
            path_taken = self._report_once(record, marker_fd)
            self.index.update(row_id, **record.analysis_columns(), path_taken=path_taken)
        except Exception as err:  # noqa: BLE001 - nothing left to try: say it, go on
            from coredumpd.report import journal
            journal.write_kmsg(f"crash {row_id}: {message}; not stored either: "
                               f"{type(err).__name__}: {err}")

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.close()
        self.index.close()


def run(row_id: str, config_path: str | None, core_fd: int | None,
        marker: str | None = None) -> int:
    """Analyse crash ``row_id``; with ``marker`` (its queue marker, :mod:`.analysis_queue`)
    claim it, then drain the store's queue.  A crash without a marker is analysed alone:
    no drain lock and no watching parent stand behind this process, so a claim it took
    and died with would wait for the store's next crash.  1 when the crash has no row."""
    drain = Drain(config_path)
    try:
        if marker is None:
            if not drain.analyse_row(row_id, core_fd) and drain.index.get(row_id) is None:
                return 1
            return 0
        queue = os.path.dirname(marker)
        if drain.claim_and_analyse(marker, queue, wait=False):
            marker = None  # done
        drain.drain(queue, skip=marker)
        if marker is not None:
            # another job held our crash: wait for it, and analyse it if that job died
            drain.claim_and_analyse(marker, queue, wait=True)
    finally:
        drain.close()
    if drain.fleet_queued:
        publish_detached(drain.config)
    return 0


def publish_detached(config: Config) -> None:
    """:func:`publish` in a forked process of its own, which holds nothing of this one:
    a database that is down must not hold up the analyses (the analysis slot) nor the
    next crash's job (the drain lock, held by the job until this drain has ended)."""
    try:
        if os.fork() != 0:
            return
    except OSError:  # no process to be had: here, the slot given back first
        slots.release_slot("analysis")
        publish(config)
        return
    status = 1
    try:
        slots.release_slot("analysis")
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the core fd, the claims, the index
        publish(config)
        status = 0
    finally:
        os._exit(status)


def _keep_quietly(keep: Callable[[], int]) -> str:
    """Write the module cache entries (before the row, so that a reader who sees the
    analysis sees its whole cost); a failure costs the next analysis time, no more."""
    try:
        return f"{keep()} written"
    except Exception as err:  # noqa: BLE001 - the crash is stored and analysed already
        return f"not written: {type(err).__name__}: {err}"


def _cpu_ms(children: bool = True) -> int:
    """CPU ms of this process (and of its reaped children)."""
    import resource
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)[:2 if children else 1]:
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


DRAINS_IN_VAIN_MAX = analysis_queue.ATTEMPTS_MAX + 1  # drains in a row that ended badly


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    marker = _option(arguments, "--queued")
    if marker is None or _option(arguments, "--core-fd") is not None:
        slots.hold_slot("analysis", slots.analysis_slots())
        return analyse_crash(arguments)  # a crash only this job can read: alone
    config_path = _option(arguments, "--config")
    queue = os.path.dirname(marker)
    lock = _drain_lock(queue, config_path, _option(arguments, "--drain-fd"))
    if lock is not None:
        watch_drains(queue, config_path, lock, arguments)
    # this process's own CPU (its drains' went into their rows): into the next row
    analysis_queue.add_waiting_cpu(queue, _cpu_ms(children=False))
    return 0


def _drain_lock(queue: str, config_path: str | None, inherited: str | None) -> int | None:
    """The drain lock the handler passed (``--drain-fd``), or one taken now (a job started
    by hand, or by an older handler); None when all are held: their holders drain our
    crash (:mod:`.analysis_queue`).  -1 when no lock can be had: drain anyway."""
    if inherited is not None:
        return int(inherited)
    try:
        return analysis_queue.take_drain_lock(queue, config_path, slots.analysis_slots())
    except OSError:
        return -1


def watch_drains(queue: str, config_path: str | None, lock: int, arguments: list[str]) -> None:
    """Hold drain lock ``lock`` (-1: none) while a forked child analyses the queue
    (:func:`analyse_crash`); then let the lock go and take it back while something
    claimable is left.  This small process (os, fcntl, the slots and the queue imported)
    outlives its drains: a drain that was killed (SIGKILL, the OOM killer) leaves its
    crashes queued with no job of theirs, so the next one is forked at once.  The
    attempts counted in the markers bound a crash that kills every drain; this loop
    stops after :data:`DRAINS_IN_VAIN_MAX` drains in a row that ended badly or finished
    no crash."""
    in_vain = 0
    while in_vain < DRAINS_IN_VAIN_MAX:
        if not analysis_queue.claimable(queue, config_path):
            if lock < 0:
                return
            os.close(lock)  # then look again: a crash queued before this is seen now
            again = _lock_again(queue, config_path)
            if again is None:
                return
            lock = again
            continue
        before = set(analysis_queue.waiting(queue))
        slots.hold_slot("analysis", slots.analysis_slots())
        not_dumpable()
        status = _drain_in_child(arguments, lock)
        finished = before - set(analysis_queue.waiting(queue))
        in_vain = 0 if status == 0 and finished else in_vain + 1
    if lock >= 0:
        os.close(lock)
    from coredumpd.report import journal
    journal.write_kmsg(f"analysis queue {queue}: {in_vain} drains in a row ended badly; "
                       "what is queued waits for the next crash")


def _lock_again(queue: str, config_path: str | None) -> int | None:
    """After letting the drain lock go: a lock again if something claimable is queued."""
    if not analysis_queue.claimable(queue, config_path):
        return None
    try:
        return analysis_queue.take_drain_lock(queue, config_path, slots.analysis_slots())
    except OSError:
        return None


def _drain_in_child(arguments: list[str], lock: int) -> int:
    """Run :func:`analyse_crash` in a forked child holding the analysis slot (this process
    lets its copy go); its exit code, negative: the signal that ended it."""
    try:
        pid = os.fork()
    except OSError:  # no process to be had: drain here, the lock held meanwhile
        return analyse_crash(arguments)
    if pid == 0:
        status = 70  # EX_SOFTWARE
        try:
            if lock >= 0:
                os.close(lock)  # the lock is this process's: a killed child must let it go
            status = analyse_crash(arguments)
        except BaseException:  # noqa: BLE001 - reported, then the exit status says it
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    slots.release_slot("analysis")  # held by the child's copy for as long as it runs
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def analyse_crash(arguments: list[str]) -> int:
    """Analyse the crash the arguments name (and, queued, drain the queue): :func:`run`."""
    not_dumpable()
    import argparse

    from coredumpd.errors import CoredumpdError
    from coredumpd.report import journal
    parser = argparse.ArgumentParser(prog="coredumpd-analyze-job")
    parser.add_argument("--id", required=True)
    parser.add_argument("--config")
    parser.add_argument("--core-fd", type=int)
    parser.add_argument("--queued", help="the crash's marker in the analysis queue")
    parser.add_argument("--drain-fd", type=int, help="the drain lock the handler took")
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
