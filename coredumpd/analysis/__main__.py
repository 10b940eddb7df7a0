"""``python -m coredumpd.analysis CORE [--exe PATH] [--facts FILE] [--root DIR] [--json]``.

A debugging aid for developers (corectl analyze is the user's command): runs
:func:`coredumpd.analysis.analyze` on a raw or stored core and writes the
result as JSON, or as a short gdb-like backtrace.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from coredumpd.analysis import analyze
from coredumpd.report.text import repeat_note
from coredumpd.store.lz4seek import open_core_source


def _frame_line(frame: dict[str, Any]) -> str:
    symbol = frame["symbol"] or "??"
    if frame["symbol"] and frame["symbol_offset"]:
        symbol += f"+{frame['symbol_offset']:#x}"
    where = f" at {frame['file']}:{frame['line']}" if frame["file"] else ""
    module = (frame["module"] or "?").rsplit("/", 1)[-1]
    offset = f" + {frame['offset']:#x}" if frame["offset"] is not None else ""
    note = repeat_note(frame)
    repeat = f" ({note})" if note else ""
    return (f"#{frame['index']:<3} {frame['pc']:#018x} {symbol} ({module}{offset})"
            f"{where} [{frame['trust']}]{repeat}")


def render_text(result: dict[str, Any]) -> str:
    lines = [f"state: {result['state']}" + (f" ({result['error']})" if result["error"] else "")]
    if result["signal"]:
        lines.append(f"signal: {result['signal']['name']} {result['signal']['code_name']}")
    for thread in result["threads"]:
        mark = " (crashed)" if thread["crashed"] else ""
        lines.append(f"\nThread {thread['tid']} {thread['name'] or ''}{mark}:")
        lines.extend("  " + _frame_line(frame) for frame in thread["frames"])
        if thread["stop_reason"]:
            lines.append(f"  stopped: {thread['stop_reason']}")
    lines.extend(f"annotation: {a['id']}: {a['title']}" for a in result["annotations"])
    lines.extend(f"problem: {problem}" for problem in result["problems"])
    lines.append(f"duration: {result['duration_ms']} ms")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coredumpd.analysis", description=__doc__)
    parser.add_argument("core")
    parser.add_argument("--exe")
    parser.add_argument("--facts", help="facts JSON file (docs/ARCHITECTURE.md)")
    parser.add_argument("--root", default="/")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    facts = None
    if args.facts:
        with open(args.facts, encoding="utf-8") as handle:
            facts = json.load(handle)
    source = open_core_source(args.core)
    try:
        result = analyze(source, facts, args.exe, args.root)
    finally:
        source.close()
    sys.stdout.write(json.dumps(result, indent=1) + "\n" if args.json else render_text(result))
    return 0 if result["state"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
