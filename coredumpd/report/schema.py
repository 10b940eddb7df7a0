"""JSON Schema (draft 2020-12) of ``corectl --json`` output, per CONTRACT.md.

These are the documented shapes that scripts may rely on; tests validate the
real output of ``corectl --json list``, ``show`` and ``analyze`` against
them.  Objects allow more properties than listed (the contract says "at
least"), so adding fields never breaks a consumer.
"""

from __future__ import annotations

from typing import Any

from coredumpd.model import AnalysisState, CoreState

_INT = {"type": "integer"}
_INT_OR_NULL = {"type": ["integer", "null"]}
_STR_OR_NULL = {"type": ["string", "null"]}
_TIMESTAMP = {"type": ["string", "null"],
              "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"}
_CORE_STATE = {"enum": [state.value for state in CoreState]}
# interpreter: a Python frame, read from the interpreter's own frame objects
_TRUST = {"enum": ["context", "cfi", "frame-pointer", "scan", "interpreter"]}

LIST_ENTRY: dict[str, Any] = {
    "type": "object",
    "required": ["id", "pid", "uid", "signal_name", "timestamp", "comm", "exe",
                 "core_state", "root_cause"],
    "properties": {
        "id": {"type": "string"}, "pid": _INT_OR_NULL, "uid": _INT_OR_NULL,
        "signal_name": _STR_OR_NULL, "timestamp": _TIMESTAMP, "comm": _STR_OR_NULL,
        "exe": _STR_OR_NULL, "core_state": _CORE_STATE, "root_cause": _STR_OR_NULL,
        "signature": _STR_OR_NULL, "seen": {"type": "integer", "minimum": 1},
    },
}

LIST: dict[str, Any] = {"type": "array", "items": LIST_ENTRY}

ANNOTATION: dict[str, Any] = {
    "type": "object",
    "required": ["id", "title", "confidence", "evidence", "advice"],
    "properties": {
        "id": {"type": "string", "pattern": r"^[a-z0-9]+(-[a-z0-9]+)*$"},
        "title": {"type": "string"},
        "confidence": {"enum": ["high", "medium", "low"]},
        "evidence": {"type": "array", "items": {"type": "string"}},
        "advice": _STR_OR_NULL,
    },
}

FRAME: dict[str, Any] = {
    "type": "object",
    "required": ["index", "pc", "module", "build_id", "offset", "symbol", "symbol_offset",
                 "file", "line", "trust"],
    "properties": {
        "index": _INT, "pc": _INT_OR_NULL, "module": _STR_OR_NULL, "build_id": _STR_OR_NULL,
        "offset": _INT_OR_NULL, "symbol": _STR_OR_NULL, "symbol_offset": _INT_OR_NULL,
        "file": _STR_OR_NULL, "line": _INT_OR_NULL, "trust": _TRUST,
        "repeat": _INT, "cycle": _INT, "cfa": _INT_OR_NULL,
        "inlined": {"type": "boolean"}, "language": _STR_OR_NULL,
    },
}

THREAD: dict[str, Any] = {
    "type": "object",
    "required": ["tid", "crashed", "frames"],
    "properties": {
        "tid": _INT, "crashed": {"type": "boolean"}, "name": _STR_OR_NULL,
        "frames": {"type": "array", "items": FRAME},
    },
}

SHOW: dict[str, Any] = {
    "type": "object",
    "required": ["id", "pid", "tid", "namespace_pid", "uid", "gid", "signal", "signal_name",
                 "si_code", "fault_address", "timestamp", "comm", "exe", "cmdline", "core",
                 "analysis", "annotations", "threads"],
    "properties": {
        **LIST_ENTRY["properties"],
        "id": _STR_OR_NULL,  # null for `corectl analyze` (no index row)
        "tid": _INT_OR_NULL, "namespace_pid": _INT_OR_NULL, "gid": _INT_OR_NULL,
        "signal": _INT_OR_NULL, "si_code": _INT_OR_NULL, "fault_address": _INT_OR_NULL,
        "cmdline": _STR_OR_NULL,
        "core": {
            "type": "object", "required": ["path", "state", "size", "stored_size"],
            "properties": {"path": _STR_OR_NULL, "state": _CORE_STATE,
                           "size": _INT_OR_NULL, "stored_size": _INT_OR_NULL},
        },
        "analysis": {
            "type": "object", "required": ["state", "error"],
            "properties": {"state": {"enum": [state.value for state in AnalysisState]},
                           "error": _STR_OR_NULL},
        },
        "annotations": {"type": "array", "items": ANNOTATION},
        "threads": {"type": "array", "items": THREAD},
        "modules": {"type": "array", "items": {"type": "object"}},
        "disassembly": {"type": "array", "items": {"type": "object"}},
    },
}
