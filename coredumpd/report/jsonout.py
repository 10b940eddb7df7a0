"""The JSON objects of ``corectl --json`` (CONTRACT.md "JSON").

:func:`list_object` and :func:`show_object` turn a crash record
(:class:`coredumpd.model.CrashRecord`) and its analysis into plain JSON-able
dicts; :mod:`coredumpd.report.text` renders the same show object for people,
so the two never disagree.  The shapes are documented as JSON Schema in
:mod:`coredumpd.report.schema`.

A record read from the index may carry ``problems``: JSON columns that could not
be read (store/index.py reads them defensively, so that a row written by an
older or broken handler does not stop ``corectl list``); ``show`` lists them.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, TextIO

from coredumpd.elf.layouts import si_code_name, signal_name
from coredumpd.model import AnalysisResult, AnalysisState, CrashRecord, Record


def iso_timestamp(timestamp_us: Any) -> str | None:
    """``2026-11-22T07:35:02Z`` from microseconds since the Epoch (None if unusable)."""
    if not isinstance(timestamp_us, int) or isinstance(timestamp_us, bool):
        return None
    try:
        moment = datetime.datetime.fromtimestamp(timestamp_us / 1e6, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    """Text, or None when absent (the index stores absent text as "")."""
    if value is None or value == "":
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def list_object(record: CrashRecord) -> dict[str, Any]:
    """One element of ``corectl --json list``."""
    signo = _int(record.signal)
    root_cause = _str(record.root_cause)
    if root_cause is None and record.analysis is not None:
        root_cause = record.analysis.root_cause
    return {
        "id": _str(record.id), "pid": _int(record.pid), "uid": _int(record.uid),
        "gid": _int(record.gid), "signal": signo,
        "signal_name": signal_name(signo) if signo is not None else None,
        "timestamp": iso_timestamp(record.timestamp_us),
        "timestamp_us": _int(record.timestamp_us),
        "comm": _str(record.comm), "exe": _str(record.exe),
        "unit": _str(record.unit), "hostname": _str(record.hostname),
        "container_id": _str(record.container.get("id")),
        "core_state": record.core_state.value,
        "core_size": _int(record.core_size), "stored_size": _int(record.stored_size),
        "analysis_state": record.analysis_state.value if record.analysis_state else None,
        "root_cause": root_cause,
        "signature": _str(record.signature),
        "seen": 1,  # crashes with this signature among those listed (corectl list sets it)
    }


def count_repeats(entries: list[dict[str, Any]]) -> None:
    """Set each entry's ``seen``: how many of ``entries`` share its crash signature
    (annotate/signature.py), so that a list shows a crash that keeps coming back."""
    counts: dict[str, int] = {}
    for entry in entries:
        if entry.get("signature"):
            counts[entry["signature"]] = counts.get(entry["signature"], 0) + 1
    for entry in entries:
        entry["seen"] = counts.get(entry.get("signature") or "", 1)


def _analysis_part(record: CrashRecord, analysis: AnalysisResult | None) -> dict[str, Any]:
    state: Any = record.analysis_state
    error: Any = record.analysis_error
    if analysis is not None:
        state = state or analysis.state
        error = error or analysis.error
    default = AnalysisState.DONE if analysis is not None else AnalysisState.PENDING
    return {"state": _str(state) or default.value,
            "error": _str(error)}


def _sorted_keys(value: Any) -> Any:
    """``value`` with every object's keys sorted, as the index stores them."""
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def show_object(record: CrashRecord, analysis: AnalysisResult | None = None,
                with_records: bool = True) -> dict[str, Any]:
    """The object of ``corectl --json show``: metadata, core, analysis results.

    ``analysis`` overrides the record's own (``corectl analyze``: a record made
    from the core's notes, with no index row).  ``with_records=False`` leaves the
    annotations, threads, modules and disassembly out (empty): the text report
    reads them from the analysis itself, and a 200-thread core's 1,900 frames
    cost ~10 ms to convert for nothing.
    """
    stored = analysis is None
    if analysis is None:
        analysis = record.analysis
    facts = record.facts
    found = analysis or AnalysisResult()
    signal_info = found.signal

    def embed(items: list[Any]) -> list[dict[str, Any]]:
        # a stored analysis comes back from the index with sorted keys, and has
        # always been shown so; a fresh one in the order of its record's fields
        if not with_records:
            return []
        plain = [item.to_json() if isinstance(item, Record) else item for item in items]
        return _sorted_keys(plain) if stored else plain

    out = list_object(record)
    signo = out["signal"] if out["signal"] is not None else \
        (signal_info.signo if signal_info else None)
    si_code = _int(record.si_code)
    si_code = si_code if si_code is not None else (signal_info.code if signal_info else None)
    fault = _int(record.fault_address)
    out.update({
        "tid": _int(record.tid) or _int(found.crashed_tid),
        "namespace_pid": _int(record.ns_pid),
        "signal": signo, "signal_name": signal_name(signo) if signo is not None else None,
        "si_code": si_code,
        "si_code_name": (si_code_name(signo, si_code)
                         if signo is not None and si_code is not None else None),
        "fault_address": fault if fault is not None else
        (signal_info.address if signal_info else None),
        "cmdline": _str(record.cmdline), "argv": facts.argv if facts else None,
        "boot_id": _str(record.boot_id), "cgroup": _str(record.cgroup),
        "container": record.container or None,
        "core": {"path": _str(record.core_path), "state": out["core_state"],
                 "reason": _str(record.core_reason), "size": out["core_size"],
                 "stored_size": out["stored_size"]},
        "analysis": _analysis_part(record, analysis),
        "annotations": embed(found.annotations),
        "threads": embed(found.threads),
        "modules": embed(found.modules),
        "disassembly": embed(found.disassembly),
        "signature": _str(found.signature),
        "problems": list(record.problems) + [str(p) for p in found.problems],
    })
    out["root_cause"] = out["root_cause"] or found.root_cause
    sender = facts.sender if facts else None
    # A process that signalled itself (raise, abort) is not worth naming.
    own = isinstance(sender, dict) and sender.get("pid") == out["pid"]
    out["sender"] = sender if isinstance(sender, dict) and not own else None
    for key in ("core_size", "stored_size"):
        out.pop(key)
    return out


def dump(value: Any, stream: TextIO) -> None:
    """Write ``value`` as indented JSON.  ASCII only: no raw control or bidi
    characters from the crashed process reach a terminal through JSON either."""
    json.dump(value, stream, indent=2, ensure_ascii=True, default=str)
    stream.write("\n")
