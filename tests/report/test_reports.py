"""JSON objects and text reports built from index rows: shape, escaping, bad rows."""

from __future__ import annotations

import io
import json
from typing import Any

import jsonschema
import pytest

from coredumpd.model import CrashRecord
from coredumpd.report import jsonout, schema, text
from coredumpd.store.index import record_from_row

EVIL = "evil\x1b[2J\x1b]0;title\x07\u202e"

ANALYSIS = {
    "version": 1, "state": "done", "error": None, "duration_ms": 12, "crashed_tid": 1234,
    "signal": {"signo": 11, "name": "SIGSEGV", "code": 128, "code_name": "SI_KERNEL",
               "errno": 0, "address": 0, "sender_pid": None, "sender_uid": None},
    "threads": [
        {"tid": 1234, "crashed": True, "name": EVIL, "stop_reason": None,
         "registers": {"rip": 0x7F0000001000, "rsp": 0x7FFC00000000, "rax": 0},
         "frames": [{"index": 0, "pc": 0x7F0000001000, "module": "/lib/libc.so.6",
                     "build_id": "ab" * 20, "offset": 0x2611F, "symbol": "abort",
                     "symbol_offset": 368, "file": "stdlib/abort.c", "line": 107,
                     "trust": "context", "repeat": 1},
                    {"index": 1, "pc": 0x55550000, "module": None, "build_id": None,
                     "offset": None, "symbol": None, "symbol_offset": None, "file": None,
                     "line": None, "trust": "scan", "repeat": 1}]},
        {"tid": 1235, "crashed": False, "name": "worker", "registers": {},
         "frames": [{"index": 0, "pc": 0x7F0000002000, "module": "/lib/libc.so.6",
                     "build_id": "ab" * 20, "offset": 0x9000, "symbol": "read",
                     "symbol_offset": 0, "file": None, "line": None, "trust": "cfi"}]},
    ],
    "modules": [{"path": "/lib/libc.so.6", "start": 0x7F0000000000, "end": 0x7F0000200000,
                 "load_bias": 0x7F0000000000, "build_id": "ab" * 20, "deleted": True,
                 "replaced": False, "modified_in_place": False}],
    "disassembly": [{"address": 0x7F0000000FFF, "bytes": "90", "text": "nop",
                     "current": False},
                    {"address": 0x7F0000001000, "bytes": "f4", "text": "hlt",
                     "current": True}],
    "annotations": [{"id": "abort-hlt", "title": "abort() ended in hlt",
                     "confidence": "high", "evidence": [f"message: {EVIL}"],
                     "advice": "look at the assertion"}],
    "signature": "0" * 40, "signature_frames": ["abort"], "problems": [],
}


def row(**changes: object) -> dict[str, object]:
    values: dict[str, object] = {
        "id": "0123456789ab", "pid": 4321, "tid": 4321, "ns_pid": 1, "uid": 0, "gid": 0,
        "signal": 11, "si_code": 128, "fault_address": 0, "timestamp_us": 1795332902000000,
        "boot_id": "b" * 32, "hostname": "host", "comm": EVIL, "exe": f"/tmp/{EVIL}",
        "cmdline": f"{EVIL} --flag", "unit": "x.service", "cgroup": "0::/x", "core_path":
        "/var/lib/coredumpd/core.x.lz4", "core_state": "present", "core_reason": None,
        "core_size": 323584, "stored_size": 16685, "facts": json.dumps({"version": 1}),
        "analysis_state": "done", "analysis_error": None, "analysis": json.dumps(ANALYSIS),
        "root_cause": "abort-hlt", "signature": "0" * 40, "path_taken": "{}",
    }
    values.update(changes)
    return values


def record(**changes: object) -> CrashRecord:
    """The record the index reads back from such a row."""
    return record_from_row(row(**changes))


def render(crash: CrashRecord, **options: Any) -> str:
    """``corectl show`` text of a record, as cli/commands.py print_show() makes it."""
    return text.render_show(jsonout.show_object(crash), crash.analysis, **options)


def test_show_object_follows_the_documented_schema() -> None:
    show = jsonout.show_object(record())
    jsonschema.validate(show, schema.SHOW)
    assert show["namespace_pid"] == 1 and show["si_code_name"] == "SI_KERNEL"
    assert show["timestamp"] == "2026-11-22T07:35:02Z"
    assert show["core"] == {"path": "/var/lib/coredumpd/core.x.lz4", "state": "present",
                            "reason": None, "size": 323584, "stored_size": 16685}
    assert show["threads"][0]["frames"][0]["symbol"] == "abort"


def test_list_object_follows_the_documented_schema() -> None:
    entries = [jsonout.list_object(record()), jsonout.list_object(record(root_cause=None))]
    jsonschema.validate(entries, schema.LIST)
    assert entries[1]["root_cause"] == "abort-hlt"  # from the analysis when the column is empty


def test_schema_rejects_what_the_contract_forbids() -> None:
    show = jsonout.show_object(record())
    show["core"]["state"] = "gone"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(show, schema.SHOW)


@pytest.mark.parametrize("bad", ["{not json", "[1, 2", b"\xff\xfe", 42])
def test_malformed_json_columns_do_not_stop_the_report(bad: object) -> None:
    row = record(analysis=bad, facts=bad, root_cause=None)
    entry = jsonout.list_object(row)
    assert entry["root_cause"] is None
    show = jsonout.show_object(row)
    jsonschema.validate(show, schema.SHOW)
    assert show["threads"] == [] and any("not valid JSON" in p or "unexpected type" in p
                                         for p in show["problems"])
    assert "\x1b" not in text.render_show(show)


def test_unknown_core_state_and_missing_fields_still_render() -> None:
    row = record_from_row({"id": "x", "core_state": "weird"})
    entry = jsonout.list_object(row)
    assert entry["core_state"] == "missing"
    jsonschema.validate([entry], schema.LIST)
    assert "x" in text.render_show(jsonout.show_object(row))


def test_text_report_escapes_everything_from_the_process() -> None:
    report = render(record())
    assert "\x1b" not in report and "\x07" not in report and "\u202e" not in report
    assert "evil\\x1b[2J" in report


def test_text_report_order_and_content() -> None:
    report = render(record(), user="root", group="root")
    assert report.startswith("Root cause: abort() ended in hlt  [abort-hlt, high confidence]")
    order = [report.index(s) for s in ("Root cause", "PID: 4321", "Thread 1234",
                                       "Disassembly", "Registers", "Thread 1235", "Modules")]
    assert order == sorted(order)
    assert "PID 1 in its namespace" in report
    assert "0 (root)" in report
    assert "si_code 128 (SI_KERNEL), fault address 0x0" in report
    assert "abort+368  (libc.so.6+0x2611f)  stdlib/abort.c:107  [context]" in report
    assert "=> 0x00007f0000001000  f4" in report
    assert "[deleted]" in report
    assert "??  (no module)" in report


def test_colours_only_when_enabled() -> None:
    assert "\x1b[" in render(record(), style=text.Style(enabled=True))
    assert "\x1b" not in render(record(), style=text.Style(enabled=False))


def test_list_table() -> None:
    rows = [jsonout.list_object(record()), jsonout.list_object(
        record(id="2", pid=99999, core_state="none", stored_size=None, root_cause=None,
               analysis="", analysis_state="pending"))]
    table = text.render_list(rows, utc=True).splitlines()
    assert table[0].split() == ["TIME", "PID", "UID", "SIG", "COREFILE", "EXE", "SIZE",
                                "ROOT", "CAUSE"]
    assert "Sun 2026-11-22 07:35:02 UTC" in table[1] and "SEGV" in table[1]
    assert "16.3K" in table[1] and table[1].endswith("abort-hlt")
    assert table[2].endswith("(pending)") and " none " in table[2]
    assert "\x1b" not in "".join(table)
    assert text.render_list(rows, legend=False).count("\n") == 2


def test_json_dump_is_ascii() -> None:
    stream = io.StringIO()
    jsonout.dump(jsonout.show_object(record()), stream)
    assert stream.getvalue().isascii()
    assert json.loads(stream.getvalue())["comm"] == EVIL


def test_command_line_keeps_argument_boundaries() -> None:
    facts = json.dumps({"proc": {"cmdline": ["prog", "a b", "\x1b[2J"]}})
    show = jsonout.show_object(record(facts=facts, cmdline="prog a b \x1b[2J"))
    assert show["argv"] == ["prog", "a b", "\x1b[2J"]
    assert "Command Line: prog 'a b' \\x1b[2J" in text.render_show(show)


def test_empty_text_columns_are_absent() -> None:
    entry = jsonout.list_object(record(root_cause="", analysis=None, unit=""))
    assert entry["root_cause"] is None and entry["unit"] is None
    assert text.list_row(entry)[-1] == "-"


def test_list_counts_repeats_of_a_signature():
    from coredumpd.report import jsonout, text

    entries = [{"id": str(n), "signature": sig, "root_cause": "null-deref", "seen": 1,
                "timestamp": None, "pid": n, "uid": 0, "signal_name": "SIGSEGV",
                "core_state": "present", "exe": "/x", "stored_size": 1}
               for n, sig in enumerate(["a", "b", "a", None, "a"])]
    jsonout.count_repeats(entries)
    assert [entry["seen"] for entry in entries] == [3, 1, 3, 1, 3]
    assert text.list_row(entries[0])[-1] == "null-deref (seen 3x)"
    assert text.list_row(entries[1])[-1] == "null-deref"
