"""``python -m coredumpd.analysis CORE [--exe PATH] [--facts FILE] [--root DIR] [--json]``.

A debugging aid for developers (corectl analyze is the user's command): runs
:func:`coredumpd.analysis.analyze` on a raw or stored core and writes the
result as JSON, or as a short gdb-like backtrace.
"""

from __future__ import annotations

import argparse
import json
import sys

from coredumpd.analysis import analyze
from coredumpd.model import AnalysisResult, AnalysisState, Facts, FrameStyle, format_frame
from coredumpd.store.lz4seek import open_core_source

# ``#2   0x00007f…a3b4 abort+0x170 (libc.so.6 + 0x2611f) at stdlib/abort.c:107 [cfi]``
FRAME_STYLE = FrameStyle()


def render_text(result: AnalysisResult) -> str:
    lines = [f"state: {result.state}" + (f" ({result.error})" if result.error else "")]
    if result.signal:
        lines.append(f"signal: {result.signal.name} {result.signal.code_name}")
    for thread in result.threads:
        mark = " (crashed)" if thread.crashed else ""
        lines.append(f"\nThread {thread.tid} {thread.name or ''}{mark}:")
        lines.extend("  " + format_frame(frame, FRAME_STYLE) for frame in thread.frames)
        if thread.stop_reason:
            lines.append(f"  stopped: {thread.stop_reason}")
    lines.extend(f"annotation: {a.id}: {a.title}" for a in result.annotations)
    lines.extend(f"problem: {problem}" for problem in result.problems)
    lines.append(f"duration: {result.duration_ms} ms")
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
            facts = Facts.from_json(json.load(handle))
    source = open_core_source(args.core)
    try:
        result = analyze(source, facts, args.exe, args.root)
    finally:
        source.close()
    sys.stdout.write(json.dumps(result.to_json(), indent=1) + "\n" if args.json
                     else render_text(result))
    return 0 if result.state == AnalysisState.DONE else 1


if __name__ == "__main__":
    sys.exit(main())
