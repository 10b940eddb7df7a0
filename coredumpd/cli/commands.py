"""The corectl commands that read the index: list, show, delete, vacuum.

Each takes the parsed arguments and a :class:`Context` and returns an exit
status; errors are raised as our exceptions and turned into
``corectl: error: …`` by :func:`coredumpd.cli.corectl.main`.  corectl reads
the SQLite index (store/index.py), never the journal, so foreign or broken
journal entries cannot disturb it (systemd 252's coredumpctl aborts on an
entry without COREDUMP_UID).
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from coredumpd.cli.exitcodes import ExitStatus
from coredumpd.cli.output import Output
from coredumpd.config import Config, parse_size, parse_timespan
from coredumpd.errors import CoredumpdError, StoreError
from coredumpd.model import AnalysisResult, CrashRecord
from coredumpd.report import jsonout, text
from coredumpd.report.escape import escape

NO_MATCH_MESSAGE = "No coredumps found."


class NoMatch(CoredumpdError):
    """Nothing matched: "No coredumps found." and exit status 1, like coredumpctl."""

    def __init__(self) -> None:
        super().__init__(NO_MATCH_MESSAGE)


class Context:
    """What every command needs: configuration, environment, who is asking; the streams
    are sys.stdout and sys.stderr as they are when the context is made, unless given."""

    def __init__(self, config: Config, env: Mapping[str, str], args: argparse.Namespace,
                 stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.config = config
        self.env = env
        self.args = args
        self.stdout: TextIO = stdout if stdout is not None else sys.stdout
        self.stderr: TextIO = stderr if stderr is not None else sys.stderr

    @property
    def uid_filter(self) -> int | None:
        """Non-root users see only their own crashes (None: everything)."""
        return None if os.geteuid() == 0 else os.getuid()

    def output(self) -> Output:
        return Output(self.env, pager=not self.args.no_pager, stream=self.stdout)

    def warn(self, message: str) -> None:
        self.stderr.write(f"corectl: warning: {message}\n")


def open_index(config: Config) -> Any:
    """The index (root), or the caller's own view of it (coredumpd.store.userview);
    NoMatch when there is nothing to read: no crash stored yet, or none of this user."""
    path = config.index_path
    if os.geteuid() != 0:
        from coredumpd.paths import view_path

        own = view_path(path, os.geteuid())
        if not os.access(path, os.R_OK):  # the usual case: the index is root's
            if not os.path.exists(own):
                raise NoMatch()
            path = own
    if not os.path.exists(path):
        raise NoMatch()
    if not os.access(path, os.R_OK):
        raise StoreError(f"cannot read the index {path}: permission denied")
    from coredumpd.store.index import Index

    try:
        return Index(path, create=False)  # read-only, creates nothing
    except OSError as err:
        raise StoreError(f"cannot open the index {path}: {err}") from err


def _timestamp(record: CrashRecord) -> int:
    return record.timestamp_us if isinstance(record.timestamp_us, int) else 0


def find_records(ctx: Context, matches: list[str]) -> list[CrashRecord]:
    """Matching index rows, oldest first; NoMatch when there are none."""
    args = ctx.args
    from coredumpd.cli.timespec import parse_time  # datetime and its regexes: list only

    since = parse_time(args.since) if getattr(args, "since", None) else None
    until = parse_time(args.until) if getattr(args, "until", None) else None
    index = open_index(ctx.config)
    try:
        records = list(index.find(matches, since=since, until=until, uid=ctx.uid_filter))
    finally:
        _close(index)
    if not records:
        raise NoMatch()
    return sorted(records, key=_timestamp)


def newest_record(ctx: Context, matches: list[str]) -> CrashRecord:
    return find_records(ctx, matches)[-1]


def _close(index: Any) -> None:
    close = getattr(index, "close", None)
    if close is not None:
        close()


def cmd_list(ctx: Context) -> int:
    args = ctx.args
    entries = [jsonout.list_object(record) for record in find_records(ctx, args.match)]
    jsonout.count_repeats(entries)  # over every match, before -n cuts the list
    count = 1 if args.newest_only else args.lines
    if count is not None:
        if count < 1:
            raise CoredumpdError(f"-n needs a positive number, not {count}")
        entries = entries[-count:]
    if args.reverse:
        entries.reverse()
    out = ctx.output()
    if args.json:
        jsonout.dump(entries, out.stream)
        return ExitStatus.OK
    out.emit(text.render_list(entries, legend=not args.no_legend, style=out.style))
    return ExitStatus.OK


def user_name(uid: Any) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name if isinstance(uid, int) else None
    except KeyError:
        return None


def group_name(gid: Any) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name if isinstance(gid, int) else None
    except KeyError:
        return None


def print_show(ctx: Context, record: CrashRecord, analysis: AnalysisResult | None = None) -> int:
    """``show`` of ``record`` (with ``analysis`` instead of its own, for ``analyze``)."""
    show = jsonout.show_object(record, analysis, with_records=bool(ctx.args.json))
    out = ctx.output()
    if ctx.args.json:
        jsonout.dump(show, out.stream)
        return ExitStatus.OK
    out.emit(text.render_show(show, analysis if analysis is not None else record.analysis,
                              style=out.style, user=user_name(show.get("uid")),
                              group=group_name(show.get("gid"))))
    return ExitStatus.OK


def cmd_show(ctx: Context) -> int:
    return print_show(ctx, newest_record(ctx, ctx.args.match))


def cmd_delete(ctx: Context) -> int:
    records = find_records(ctx, ctx.args.match)
    ids = [record.id for record in records]
    from coredumpd.store import retention
    from coredumpd.store.index import Index

    index = Index(ctx.config.index_path)
    try:
        retention.delete(index, ids, forget=True)  # the row goes too, not only the core
    finally:
        _close(index)
    for crash_id in ids:
        ctx.stdout.write(f"Deleted {crash_id}\n")
    return ExitStatus.OK


def cmd_reanalyze(ctx: Context) -> int:
    """Analyse stored crashes again and store the new results (root: the sandbox and the
    index are root's).  With DEBUGINFOD_URLS, what the last analysis lacked is fetched
    first, here, into elfutils' cache, which the sandboxed analysis then reads."""
    if os.geteuid() != 0:
        raise CoredumpdError("reanalyze needs root: it rewrites the index")
    records = find_records(ctx, ctx.args.match)
    from coredumpd.image.debuginfod import Debuginfod
    from coredumpd.pipeline.analyze_job import analyse, prefetch
    from coredumpd.store.index import Index

    debuginfod = Debuginfod.from_env(ctx.env)
    index = Index(ctx.config.index_path)
    try:
        for record in records:
            for problem in prefetch(debuginfod, record) if debuginfod else []:
                ctx.warn(escape(problem))
            record.set_analysis(analyse(ctx.config, record, None, debuginfod))
            index.update(record.id, **record.analysis_columns(), **_queue_for_fleet(ctx, record))
            error = f" ({escape(record.analysis_error)})" if record.analysis_error else ""
            ctx.stdout.write(f"{escape(record.id)}: analysis {escape(record.analysis_state)}"
                             f"{error}, root cause {escape(record.root_cause or '-')}\n")
    finally:
        _close(index)
    if ctx.config.fleet_database:
        _publish_reanalysed(ctx)
    return ExitStatus.OK


def _queue_for_fleet(ctx: Context, record: CrashRecord) -> dict[str, Any]:
    """With a fleet database: the new analysis's record queued in the outbox (it replaces
    the published one there); the row's new ``path_taken``."""
    if not ctx.config.fleet_database:
        return {}
    from coredumpd.fleet.publisher import enqueue
    path_taken = dict(record.path_taken or {})
    path_taken["fleet"] = enqueue(ctx.config, record)
    if path_taken["fleet"] != "queued":
        ctx.warn(f"{escape(record.id)}: not queued for the fleet database: "
                 f"{escape(path_taken['fleet'])}")
    return {"path_taken": path_taken}


def _publish_reanalysed(ctx: Context) -> None:
    """One drain of the outbox, now (no retries: what the database does not take waits
    in the outbox for the next crash's drain or ``coredumpd publish``)."""
    from coredumpd.fleet.publisher import drain
    result = drain(ctx.config)
    ctx.stdout.write(f"fleet: published {result.sent} records; {result.waiting} waiting\n")
    if result.error is not None:
        ctx.warn(f"fleet: {escape(result.error)}")


def cmd_vacuum(ctx: Context) -> int:
    if os.geteuid() != 0:
        raise CoredumpdError("vacuum needs root: it deletes the cores of every user")
    args = ctx.args
    from coredumpd.store import retention
    from coredumpd.store.index import Index

    if not os.path.exists(ctx.config.index_path):
        ctx.stdout.write("Nothing to vacuum: the store is empty.\n")
        return ExitStatus.OK
    index = Index(ctx.config.index_path)
    try:
        result = retention.vacuum(
            ctx.config, index,
            max_use=parse_size(args.max_use) if args.max_use else None,
            keep_free=parse_size(args.keep_free) if args.keep_free else None,
            older_than=parse_timespan(args.older_than) if args.older_than else None)
    finally:
        _close(index)
    ctx.stdout.write(describe_vacuum(result))
    return ExitStatus.OK


def describe_vacuum(result: Any) -> str:
    """What vacuum did, like journalctl --vacuum-size: one line per removed core, totals."""
    lines = [f"Deleted {escape(core.name)} ({text.format_size(core.disk_bytes)})"
             for core in result.removed]
    lines.append(f"Freed {text.format_size(result.freed_bytes)}; cores now use "
                 f"{text.format_size(result.used_bytes)} (MaxUse "
                 f"{text.format_size(result.max_use)}), {text.format_size(result.free_bytes)} "
                 f"free (KeepFree {text.format_size(result.keep_free)}).")
    if not result.satisfied:
        lines.append("The limits still do not hold: what remains cannot be removed.")
    return "\n".join(lines) + "\n"
