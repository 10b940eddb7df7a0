"""The JSON objects of ``corectl --json`` (CONTRACT.md "JSON").

:func:`list_object` and :func:`show_object` turn an index row (a
``CrashRecord``, or any mapping of its fields) and its analysis into plain
JSON-able dicts; :mod:`coredumpd.report.text` renders the same show object
for people, so the two never disagree.  The shapes are documented as JSON
Schema in :mod:`coredumpd.report.schema`.

Index columns holding JSON (facts, analysis, path_taken) are parsed here
defensively: a row written by an older or broken handler must not stop
``corectl list``, so a malformed column becomes ``None`` plus a line in
``problems``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from coredumpd.elf.layouts import si_code_name, signal_name

CORE_STATES = ("present", "truncated", "missing", "none")


def record_fields(record: Any) -> dict[str, Any]:
    """An index row as a dict, whatever type the index returns."""
    if record is None:
        return {}
    if isinstance(record, Mapping):
        return dict(record)
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    if hasattr(record, "_asdict"):
        return dict(record._asdict())
    return dict(vars(record))


def json_column(value: Any, name: str, problems: list[str]) -> Any:
    """A JSON column's value: dicts pass, text is parsed, garbage becomes None."""
    if value is None or isinstance(value, (dict, list)):
        return value
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except ValueError as err:
            problems.append(f"index column {name} is not valid JSON: {err}")
            return None
    problems.append(f"index column {name} has an unexpected type {type(value).__name__}")
    return None


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


def _core_state(value: Any) -> str:
    return value if value in CORE_STATES else "missing"


def _first_annotation(analysis: Any) -> str | None:
    if isinstance(analysis, dict):
        annotations = analysis.get("annotations")
        if isinstance(annotations, list) and annotations and isinstance(annotations[0], dict):
            return _str(annotations[0].get("id"))
    return None


def list_object(record: Any) -> dict[str, Any]:
    """One element of ``corectl --json list``."""
    row = record_fields(record)
    problems: list[str] = []
    signo = _int(row.get("signal"))
    root_cause = _str(row.get("root_cause"))
    if root_cause is None and row.get("analysis") is not None:
        root_cause = _first_annotation(json_column(row.get("analysis"), "analysis", problems))
    return {
        "id": _str(row.get("id")), "pid": _int(row.get("pid")), "uid": _int(row.get("uid")),
        "gid": _int(row.get("gid")), "signal": signo,
        "signal_name": signal_name(signo) if signo is not None else None,
        "timestamp": iso_timestamp(row.get("timestamp_us")),
        "timestamp_us": _int(row.get("timestamp_us")),
        "comm": _str(row.get("comm")), "exe": _str(row.get("exe")),
        "unit": _str(row.get("unit")), "hostname": _str(row.get("hostname")),
        "core_state": _core_state(row.get("core_state")),
        "core_size": _int(row.get("core_size")), "stored_size": _int(row.get("stored_size")),
        "analysis_state": _str(row.get("analysis_state")),
        "root_cause": root_cause,
        "signature": _str(row.get("signature")),
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


def _cmdline(row: dict[str, Any], facts: Any) -> str | None:
    cmdline = row.get("cmdline")
    if isinstance(cmdline, list):
        return " ".join(str(a) for a in cmdline)
    if cmdline is None and isinstance(facts, dict):
        argv = (facts.get("proc") or {}).get("cmdline")
        if isinstance(argv, list):
            return " ".join(str(a) for a in argv)
    return _str(cmdline)


def _argv(facts: Any) -> list[str] | None:
    """The command line as a list, from the dump-time facts (keeps argument boundaries)."""
    proc = facts.get("proc") if isinstance(facts, dict) else None
    argv = proc.get("cmdline") if isinstance(proc, dict) else None
    return [str(arg) for arg in argv] if isinstance(argv, list) else None


def _analysis_part(analysis: Any, state: Any, error: Any) -> dict[str, Any]:
    if isinstance(analysis, dict):
        state = state or analysis.get("state")
        error = error or analysis.get("error")
    return {"state": _str(state) or ("done" if isinstance(analysis, dict) else "pending"),
            "error": _str(error)}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _list_of_dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def show_object(record: Any = None, analysis: Any = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The object of ``corectl --json show``: metadata, core, analysis results.

    ``record`` is an index row (or None for ``corectl analyze``); ``analysis``
    overrides the row's analysis column; ``extra`` fills fields the row lacks.
    """
    row = {**(extra or {}), **{k: v for k, v in record_fields(record).items() if v is not None}}
    problems: list[str] = []
    if analysis is None:
        analysis = json_column(row.get("analysis"), "analysis", problems)
    facts = json_column(row.get("facts"), "facts", problems)
    if not isinstance(analysis, dict):
        analysis = {}
    signal_info = analysis.get("signal") if isinstance(analysis.get("signal"), dict) else {}
    out = list_object(row)
    signo = out["signal"] if out["signal"] is not None else _int(signal_info.get("signo"))
    si_code = _int(row.get("si_code"))
    si_code = si_code if si_code is not None else _int(signal_info.get("code"))
    fault = _int(row.get("fault_address"))
    out.update({
        "tid": _int(row.get("tid")) or _int(analysis.get("crashed_tid")),
        "namespace_pid": _int(row.get("ns_pid")),
        "signal": signo, "signal_name": signal_name(signo) if signo is not None else None,
        "si_code": si_code,
        "si_code_name": (si_code_name(signo, si_code)
                         if signo is not None and si_code is not None else None),
        "fault_address": fault if fault is not None else _int(signal_info.get("address")),
        "cmdline": _cmdline(row, facts), "argv": _argv(facts), "boot_id": _str(row.get("boot_id")),
        "cgroup": _str(row.get("cgroup")),
        "core": {"path": _str(row.get("core_path")), "state": out["core_state"],
                 "reason": _str(row.get("core_reason")), "size": out["core_size"],
                 "stored_size": out["stored_size"]},
        "analysis": _analysis_part(analysis or None, row.get("analysis_state"),
                                   row.get("analysis_error")),
        "annotations": _list_of_dicts(analysis.get("annotations")),
        "threads": _list_of_dicts(analysis.get("threads")),
        "modules": _list_of_dicts(analysis.get("modules")),
        "disassembly": _list_of_dicts(analysis.get("disassembly")),
        "signature": _str(analysis.get("signature")),
        "problems": problems + [str(p) for p in _list(analysis.get("problems"))],
    })
    out["root_cause"] = out["root_cause"] or _first_annotation(analysis)
    sender = facts.get("sender") if isinstance(facts, dict) else None
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


def dump_list(records: Iterable[Any], stream: TextIO) -> None:
    dump([list_object(record) for record in records], stream)
