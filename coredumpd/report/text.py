"""Text renderings of ``corectl list`` and ``corectl show`` for people.

Both render the JSON objects of :mod:`coredumpd.report.jsonout` (``show`` with
the analysis record they were made from), so text and JSON never disagree.  Every string that may come from the crashed process
goes through :func:`coredumpd.report.escape.escape` here, at the last step
before output; colours are ANSI SGR sequences only when ``Style.enabled``.
The layout follows coredumpctl(1)'s ``list`` and ``info`` where they overlap.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from coredumpd.model import (
    AnalysisResult,
    AnalysisState,
    CoreState,
    FrameStyle,
    Thread,
    format_frame,
)
from coredumpd.report.escape import escape, escape_cmdline
from coredumpd.values import Frozen

LIST_COLUMNS = ("TIME", "PID", "UID", "SIG", "COREFILE", "EXE", "SIZE", "ROOT CAUSE")
_RIGHT_ALIGNED = {"PID", "UID", "SIZE"}


class Style(Frozen):
    """ANSI colours (console_codes(4)) when ``enabled``; plain text otherwise."""

    enabled: bool = False

    def _sgr(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled and text else text

    def bold(self, text: str) -> str:
        return self._sgr("1", text)

    def red(self, text: str) -> str:
        return self._sgr("1;31", text)

    def yellow(self, text: str) -> str:
        return self._sgr("33", text)

    def dim(self, text: str) -> str:
        return self._sgr("2", text)


PLAIN = Style()  # no colours: the default of the renderers


def format_size(size: Any) -> str:
    """``16.3K`` like coredumpctl (base 1024); ``-`` when unknown."""
    if not isinstance(size, int) or size < 0:
        return "-"
    value = float(size)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"  # unreachable


def format_time(iso: str | None, *, utc: bool = False) -> str:
    """``Sun 2026-11-22 08:35:02 CET`` (local time unless ``utc``) from ISO 8601."""
    if not iso:
        return "-"
    moment = datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.UTC)
    if not utc:
        moment = moment.astimezone()
    return moment.strftime("%a %Y-%m-%d %H:%M:%S %Z")


def _signal_short(name: Any) -> str:
    text = escape(name)
    return text.removeprefix("SIG")


def list_row(entry: dict[str, Any], *, utc: bool = False) -> tuple[str, ...]:
    root_cause = entry.get("root_cause")
    if root_cause is None:
        state = entry.get("analysis_state")
        root_cause = f"({state})" if state in (AnalysisState.PENDING, AnalysisState.FAILED) \
            else "-"
    seen = entry.get("seen")
    if isinstance(seen, int) and seen > 1:
        root_cause = f"{root_cause} (seen {seen}x)"
    return (format_time(entry.get("timestamp"), utc=utc), escape(entry.get("pid")),
            escape(entry.get("uid")), _signal_short(entry.get("signal_name")),
            escape(entry.get("core_state")), escape(entry.get("exe") or entry.get("comm")),
            format_size(entry.get("stored_size")), escape(root_cause))


def render_list(entries: Sequence[dict[str, Any]], *, legend: bool = True,
                style: Style = PLAIN, utc: bool = False) -> str:
    """The ``corectl list`` table; ``entries`` are list objects (jsonout)."""
    rows = [list_row(entry, utc=utc) for entry in entries]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(LIST_COLUMNS)]
    widths[-1] = 0  # the last column is not padded

    def line(cells: Sequence[str]) -> str:
        parts = [cell.rjust(w) if col in _RIGHT_ALIGNED else cell.ljust(w)
                 for cell, w, col in zip(cells, widths, LIST_COLUMNS)]
        return " ".join(parts).rstrip()

    out = [style.bold(line(LIST_COLUMNS))] if legend else []
    for entry, row in zip(entries, rows):
        text = line(row)
        out.append(style.red(text) if entry.get("core_state") == CoreState.TRUNCATED else text)
    if legend:
        out.append("")
        out.append(f"{len(rows)} crash{'es' if len(rows) != 1 else ''} listed.")
    return "\n".join(out) + "\n"


def _hex(value: Any) -> str:
    return f"{value:#x}" if isinstance(value, int) and not isinstance(value, bool) else "-"


def _field(label: str, value: str) -> str:
    return f"{label:>14}: {value}"


def _annotations(show: dict[str, Any], analysis: AnalysisResult, style: Style) -> list[str]:
    if not analysis.annotations:
        state = (show.get("analysis") or {}).get("state")
        reasons = {AnalysisState.PENDING.value: "the analysis has not finished yet",
                   AnalysisState.FAILED.value: "the analysis failed"}
        reason = reasons.get(str(state), "no rule matched")
        return [style.bold("Root cause: ") + f"unknown ({reason})", ""]
    out = []
    for number, item in enumerate(analysis.annotations):
        heading = "Root cause" if number == 0 else "Also"
        out.append(style.bold(f"{heading}: ") + style.red(escape(item.title))
                   + f"  [{escape(item.id)}, {escape(item.confidence)} confidence]")
        out += [f"    - {escape(evidence)}" for evidence in item.evidence]
        if item.advice:
            out.append(f"    Advice: {escape(item.advice)}")
        out.append("")
    return out


def _metadata(show: dict[str, Any], user: str | None, group: str | None) -> list[str]:
    pid = escape(show.get("pid"))
    if show.get("comm") is not None:
        pid += f" ({escape(show.get('comm'))})"
    if show.get("namespace_pid") not in (None, show.get("pid")):
        pid += f", PID {show['namespace_pid']} in its namespace"
    signal = f"{escape(show.get('signal'))} ({escape(show.get('signal_name'))})"
    if show.get("si_code") is not None:
        signal += f", si_code {show['si_code']} ({escape(show.get('si_code_name'))})"
    if show.get("fault_address") is not None:
        signal += f", fault address {_hex(show.get('fault_address'))}"
    core = show.get("core") or {}
    storage = escape(core.get("state"))
    if core.get("path"):
        storage = f"{escape(core.get('path'))} ({storage})"
    if core.get("reason"):
        storage += f": {escape(core.get('reason'))}"
    analysis = show.get("analysis") or {}
    lines = [
        ("ID", escape(show.get("id"))), ("PID", pid),
        ("TID", escape(show.get("tid")) if show.get("tid") != show.get("pid") else "-"),
        ("UID", f"{escape(show.get('uid'))}" + (f" ({escape(user)})" if user else "")),
        ("GID", f"{escape(show.get('gid'))}" + (f" ({escape(group)})" if group else "")),
        ("Signal", signal), ("Timestamp", format_time(show.get("timestamp"))),
        ("Command Line", escape_cmdline(show["argv"]) if show.get("argv")
         else escape(show.get("cmdline"))), ("Executable", escape(show.get("exe"))),
        ("Unit", escape(show.get("unit"))), ("Container", _container(show.get("container"))),
        ("Hostname", escape(show.get("hostname"))),
        ("Storage", storage), ("Core Size", format_size(core.get("size"))),
        ("Size on Disk", format_size(core.get("stored_size"))),
        ("Analysis", escape(analysis.get("state"))
         + (f": {escape(analysis.get('error'))}" if analysis.get("error") else "")),
    ]
    sender = show.get("sender")
    if isinstance(sender, dict):
        lines.append(("Sent by", (f"PID {escape(sender.get('pid'))} "
                      f"({escape(sender.get('comm'))}), UID {escape(sender.get('uid'))}")))
    return [_field(label, value) for label, value in lines if value not in ("", "-", "- (-)")]


def _container(container: Any) -> str:
    """``docker 0123456789ab…, PID 1 inside, root overlay …`` or "" on the host."""
    if not isinstance(container, dict) or not container:
        return ""
    parts = [" ".join(escape(container[key]) for key in ("engine", "id") if container.get(key))
             or "own namespaces"]
    if container.get("pod"):
        parts.append(f"pod {escape(container['pod'])}")
    if container.get("namespace_pid") is not None:
        parts.append(f"PID {escape(container['namespace_pid'])} inside")
    if container.get("root"):
        parts.append(f"root {escape(container['root'])}")
    return ", ".join(parts)


# ``#0   0x00007f…  abort+368  (libc.so.6+0x2611f)  stdlib/abort.c:107  [context]``;
# an inlined or a Python frame has no pc of its own (gdb prints none either):
# ``#1                       operator()  (cxx+0x123d)  cxx_methods.cc:23  [inlined]``
# ``#9                       middle  (python)  /srv/app.py:5  [interpreter]``
FRAME_STYLE = FrameStyle(separator="  ", symbol_offset="+{}", module_offset="{module}+{offset:#x}",
                         module_no_offset="{module}+-", no_module="no module",
                         source="  {file}:{line}", trust="  [{trust}]", repeat="  ({note})",
                         escape=escape, no_pc=" " * 18, inlined="  [inlined]")


def _pc(value: Any) -> str:
    return f"0x{value:016x}" if isinstance(value, int) and value >= 0 else "-"


def _thread(thread: Thread, style: Style) -> list[str]:
    name = f" ({escape(thread.name)})" if thread.name else ""
    state = ", crashed" if thread.crashed else ""
    out = [style.bold(f"Thread {escape(thread.tid)}{name}{state}:")]
    out += ["  " + format_frame(frame, FRAME_STYLE) for frame in thread.frames]
    if thread.stop_reason:
        out.append(style.dim(f"  (unwinding stopped: {escape(thread.stop_reason)})"))
    return out


def _disassembly(analysis: AnalysisResult, style: Style) -> list[str]:
    if not analysis.disassembly:
        return []
    out = [style.bold("Disassembly around the crash address:")]
    for item in analysis.disassembly:
        mark = "=> " if item.current else "   "
        text = f"{mark}{_pc(item.address)}  {escape(item.bytes):<24} {escape(item.text)}"
        out.append(style.red(text) if item.current else text)
    return out + [""]


def _registers(thread: Thread, style: Style) -> list[str]:
    registers = thread.registers
    if not isinstance(registers, dict) or not registers:
        return []
    # Imported here: every corectl command imports this module, and coredumpd.arch
    # adds 2.1 ms to that (python -X importtime); only a report with registers needs it.
    from coredumpd.arch import for_registers

    # the machine's display order, then what it does not name
    arch = for_registers(registers)
    order = arch.register_display_order if arch is not None else ()
    names = [n for n in order if n in registers]
    names += sorted(n for n in registers if n not in order)
    cells = [f"{escape(n):>8} {_pc(registers[n])}" for n in names]
    rows = ["  ".join(cells[i:i + 3]) for i in range(0, len(cells), 3)]
    return [style.bold("Registers:"), *rows, ""]


def _modules(analysis: AnalysisResult, style: Style) -> list[str]:
    if not analysis.modules:
        return []
    out = [style.bold("Modules:")]
    for module in analysis.modules:
        build_id = escape(module.build_id) if module.build_id else "no build-id"
        flags = f"  [{escape(', '.join(module.flags()))}]" if module.flags() else ""
        text = f"  {_pc(module.start)}-{_pc(module.end)}  {escape(module.path)}  {build_id}{flags}"
        out.append(style.yellow(text) if flags else text)
    return out + [""]


def render_show(show: dict[str, Any], analysis: AnalysisResult | None = None, *,
                style: Style = PLAIN, user: str | None = None,
                group: str | None = None) -> str:
    """The ``corectl show`` report: root cause, metadata, threads, disassembly…

    ``show`` is the object of :func:`coredumpd.report.jsonout.show_object` (the
    metadata, as ``--json`` prints it), ``analysis`` the result it was made from.
    """
    analysis = analysis or AnalysisResult()
    out = _annotations(show, analysis, style)
    out += _metadata(show, user, group) + [""]
    threads = analysis.threads
    crashed = [t for t in threads if t.crashed] or threads[:1]
    for thread in crashed:
        out += _thread(thread, style) + [""]
    out += _disassembly(analysis, style)
    for thread in crashed:
        out += _registers(thread, style)
    others = [t for t in threads if t not in crashed]
    for thread in others:
        out += _thread(thread, style) + [""]
    out += _modules(analysis, style)
    problems = show.get("problems") or []
    if problems:
        out.append(style.bold("Problems met while reading this crash:"))
        out += [f"  - {escape(p)}" for p in problems]
    return "\n".join(out).rstrip("\n") + "\n"
