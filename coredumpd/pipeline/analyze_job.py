"""The detached analysis job the handler starts after storing a crash.

``python -m coredumpd.pipeline.analyze_job --id ID [--config FILE] [--core-fd N]``

Runs niced in its own session, long after the kernel let the crashed process
go: loads the index row, analyses the core in the sandbox
(:func:`coredumpd.pipeline.sandbox.run_analysis`), stores the result
(``analysis``, ``analysis_state``/``analysis_error``, ``root_cause``,
``signature``), then sends the crash's one journal entry (never for a crash of
journald itself), falling back to a /dev/kmsg line when the journal cannot
take it.  ``path_taken`` in the row records what happened.

``--core-fd`` is an inherited descriptor of a core that was not kept
(Storage=none, rate limit): it is analysed through ``/proc/self/fd/N`` and
vanishes when this job exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from coredumpd.config import Config, load_config
from coredumpd.errors import CoredumpdError
from coredumpd.report import journal
from coredumpd.store.index import Index


def _row_dict(record: Any) -> dict[str, Any]:
    if isinstance(record, dict):
        return dict(record)
    if dataclasses.is_dataclass(record):
        return dataclasses.asdict(record)  # type: ignore[arg-type]
    return dict(vars(record))


def _loads(value: Any) -> dict[str, Any]:
    """A JSON column (the index gives dicts; tolerate text and None)."""
    if isinstance(value, str):
        try:
            value = json.loads(value or "{}")
        except ValueError:
            return {}
    return dict(value) if isinstance(value, dict) else {}


def _skipped(reason: str) -> dict[str, Any]:
    return {"version": 1, "state": "failed", "error": reason, "threads": [],
            "annotations": [], "problems": []}


def analyse(config: Config, row: dict[str, Any], facts: dict[str, Any],
            core_fd: int | None) -> dict[str, Any]:
    """The analysis result for a row, or a ``failed`` result saying why not."""
    if not config.analysis:
        return _skipped("disabled by Analysis=no")
    core_path = row.get("core_path") or (f"/proc/self/fd/{core_fd}" if core_fd else None)
    if core_path is None:
        return _skipped(f"no core ({row.get('core_reason')})")
    if (row.get("core_size") or 0) > config.process_size_max:
        return _skipped(f"core of {row.get('core_size')} bytes is over ProcessSizeMax="
                        f"{config.process_size_max}")
    try:
        from coredumpd.pipeline.sandbox import run_analysis
    except ImportError:  # the sandbox is optional: analyse in this (niced) process
        from coredumpd.analysis import analyze
        from coredumpd.store.lz4seek import open_core_source
        return analyze(open_core_source(core_path), facts, row.get("exe"))
    return run_analysis(config, core_path, facts, row.get("exe"))


def analysis_fields(result: dict[str, Any]) -> dict[str, Any]:
    """The index columns the analysis fills."""
    annotations = result.get("annotations") or []
    fields = {
        "analysis": result, "analysis_state": result.get("state") or "failed",
        "analysis_error": result.get("error"),
        "root_cause": annotations[0].get("id") if annotations else None,
        "signature": result.get("signature"),
    }
    if fields["analysis_state"] not in ("done", "failed"):
        fields["analysis_state"] = "failed"
    return fields


def report(config: Config, row: dict[str, Any], facts: dict[str, Any],
           result: dict[str, Any]) -> dict[str, Any]:
    """Send the journal entry (or the kmsg line); return the updated path_taken."""
    path_taken = _loads(row.get("path_taken"))
    kind = path_taken.get("crasher")
    if kind == "journald":
        path_taken["journal"] = "skipped: journald crashed"
    elif not config.journal:
        path_taken["journal"] = "skipped: Journal=no"
    else:
        fields = journal.journal_fields(row, facts, result)
        path_taken["journal"] = journal.send(fields, timeout=config.journal_timeout)
    if path_taken["journal"] != "sent" and "kmsg" not in path_taken:
        where = row.get("core_path") or f"no core ({row.get('core_reason')})"
        line = journal.kmsg_line(row.get("pid"), row.get("comm") or "unknown", row.get("uid"),
                                 row.get("signal"), f"stored {where}; journal "
                                 f"{path_taken['journal']}; root cause {row.get('root_cause')}")
        path_taken["kmsg"] = "written" if journal.write_kmsg(line) else "failed"
    path_taken["analysis"] = result.get("state")
    return path_taken


def run(row_id: str, config_path: str | None, core_fd: int | None) -> int:
    config = load_config(config_path)
    index = Index(config.index_path)
    record = index.get(row_id)
    if record is None:
        return 1
    row = _row_dict(record)
    facts = _loads(row.get("facts"))
    try:
        result = analyse(config, row, facts, core_fd)
    except Exception as err:  # noqa: BLE001 - a broken analysis must not lose the entry
        result = _skipped(f"analysis crashed: {type(err).__name__}: {err}")
    fields = analysis_fields(result)
    row.update(fields)
    # one update, after the journal: a reader that sees the analysis sees the outcome too
    index.update(row["id"], **fields, path_taken=report(config, row, facts, result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coredumpd-analyze-job")
    parser.add_argument("--id", required=True)
    parser.add_argument("--config")
    parser.add_argument("--core-fd", type=int)
    options = parser.parse_args(argv)
    try:
        return run(options.id, options.config, options.core_fd)
    except CoredumpdError as err:
        journal.write_kmsg(f"analysis job for crash {options.id} failed: {err}")
        return 1
    finally:
        if options.core_fd is not None:
            try:
                os.close(options.core_fd)
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
