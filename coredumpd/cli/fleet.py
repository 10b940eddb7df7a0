"""``corectl fleet groups|list``: the fleet database, read and printed.

The queries are :mod:`coredumpd.fleet.queries`; this module connects with the
configured ``[Fleet] Database=`` (a reader needs SELECT only) and renders
their rows: JSON as the queries return them, or text that fits the terminal
(a group's first line: counts, last seen, root cause and the signature's
frames; then first seen, an example and the hash; then the versions seen).  Host names, paths and frames came
from other machines' crashed processes: escaped like every such string.
"""

from __future__ import annotations

import datetime
import os
import shutil
from collections.abc import Sequence
from typing import Any

from coredumpd.cli.commands import Context, NoMatch
from coredumpd.cli.exitcodes import ExitStatus
from coredumpd.cli.timespec import parse_time
from coredumpd.errors import ConfigError, CoredumpdError
from coredumpd.report import jsonout
from coredumpd.report.escape import escape

VIEWS = ("groups", "list")
DEFAULT_WIDTH = 80
HASH_SHOWN = 12
DETAIL_INDENT = "    "  # the lines under a group's first
GROUP_HEADER = ("CRASHES", "HOSTS", "LAST SEEN", "ROOT CAUSE", "SIGNATURE")
LIST_HEADER = ("TIME", "HOST", "ID", "PID", "SIG", "EXE", "ROOT CAUSE")


def cmd_fleet(ctx: Context) -> int:
    args = ctx.args
    if args.view not in VIEWS:
        raise ConfigError(f"fleet needs groups or list, not {args.view!r}")
    if not ctx.config.fleet_database:
        raise ConfigError("no fleet database configured ([Fleet] Database= in "
                          f"{ctx.config.path or 'the configuration'})")
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    from coredumpd.fleet import queries
    from coredumpd.fleet.publisher import connect

    conn = connect(ctx.config.fleet_database)
    try:
        if args.view == "groups":
            rows = queries.groups(conn, since, until, args.match)
        else:
            if args.lines is not None and args.lines < 1:
                raise CoredumpdError(f"-n needs a positive number, not {args.lines}")
            rows = queries.crashes(conn, args.match, since, until, args.lines)
    finally:
        conn.close()
    if not rows:
        raise NoMatch()
    out = ctx.output()
    if args.json:
        jsonout.dump(rows, out.stream)
        return ExitStatus.OK
    width = terminal_width(ctx.env, out.tty)
    legend = not args.no_legend
    text = render_groups(rows, width, legend) if args.view == "groups" else \
        render_list(rows, width, legend)
    out.emit(text)
    return ExitStatus.OK


def terminal_width(env: Any, tty: bool) -> int:
    """$COLUMNS, else the terminal's width, else 80."""
    columns = env.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 20:
        return int(columns)
    return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns if tty else DEFAULT_WIDTH


def _local(iso: str | None) -> str:
    if not iso:
        return "-"
    moment = datetime.datetime.fromisoformat(iso)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def _fit(text: str, room: int) -> str:
    return text if len(text) <= room else text[:max(room - 1, 0)] + "…"


def render_groups(groups: Sequence[dict[str, Any]], width: int, legend: bool = True) -> str:
    """Two lines per signature, at most ``width`` columns."""
    widths = (7, 5, 16, max(10, max((len(escape(g["root_cause"] or "-")) for g in groups),
                                    default=10)))
    out = []
    if legend:
        out.append(_fit(" ".join(c.ljust(w) for c, w in zip(GROUP_HEADER, widths)) +
                        " " + GROUP_HEADER[-1], width))
    for group in groups:
        cells = (str(group["crashes"]).rjust(widths[0]), str(group["hosts"]).rjust(widths[1]),
                 _local(group["last_seen"]), escape(group["root_cause"] or "-").ljust(widths[3]))
        frames = escape(group["frames"] or "(no signature)")
        out.append(_fit(" ".join(cells) + " " + frames, width))
        example = group["example"]
        details = [f"first {_local(group['first_seen'])}",
                   f"e.g. {escape(example['host'] or '-')} {example['id'] or '-'}",
                   f"hash {(group['signature'] or '-')[:HASH_SHOWN]}"]
        out.append(_fit(DETAIL_INDENT + "  ".join(details), width))
        if group["versions"]:
            out.append(_fit(f"{DETAIL_INDENT}versions {escape(', '.join(group['versions']))}",
                            width))
    if legend:
        crashes = sum(g["crashes"] for g in groups)
        out += ["", (f"{len(groups)} signature{'s' if len(groups) != 1 else ''}, "
                     f"{crashes} crash{'es' if crashes != 1 else ''}.")]
    return "\n".join(out) + "\n"


def render_list(crashes: Sequence[dict[str, Any]], width: int, legend: bool = True) -> str:
    """One line per crash, the executable shortened to fit ``width``."""
    rows = [(_local(c["timestamp"]), escape(c["host"]), c["id"], str(c["pid"] or "-"),
             (c["signal_name"] or "-").removeprefix("SIG"),
             escape(c["exe"] or c["comm"] or "-"), escape(c["root_cause"] or "-"))
            for c in crashes]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(LIST_HEADER)]
    fixed = sum(w for i, w in enumerate(widths) if i != 5) + len(widths) - 1
    widths[5] = max(8, min(widths[5], width - fixed))

    def line(cells: Sequence[str]) -> str:
        parts = [_shorten(cell, widths[i]).rjust(widths[i]) if i == 3 else
                 _shorten(cell, widths[i]).ljust(widths[i]) for i, cell in enumerate(cells)]
        return " ".join(parts).rstrip()

    out = [line(LIST_HEADER)] if legend else []
    out += [line(row) for row in rows]
    if legend:
        hosts = len({c["host"] for c in crashes})
        out += ["", (f"{len(rows)} crash{'es' if len(rows) != 1 else ''} on {hosts} "
                     f"host{'s' if hosts != 1 else ''}.")]
    return "\n".join(out) + "\n"


def _shorten(text: str, room: int) -> str:
    """Keep the end of a path (the file name says most): …/bin/prog."""
    if len(text) <= room:
        return text
    return "…" + text[len(text) - room + 1:] if os.sep in text else _fit(text, room)
