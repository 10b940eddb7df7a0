"""Golden outputs of the report layer: what users and scripts see, byte for byte.

``python -m tests.report.goldens`` (from the repository root, with the venv's
python) writes ``tests/report/golden/out/`` from two inputs:

* every fixture core of ``fixtures/cores`` (tests/support/fixtures.py):
  ``corectl analyze`` (text and ``--json``), ``python -m coredumpd.analysis``
  (text), and the journal fields (coredumpd/report/journal.py
  ``journal_fields``) of a row made from the core's own notes;
* a frozen store, ``tests/report/golden/store/``: real crashes of the programs
  in :data:`PROGRAMS`, stored by the real handler through the kernel pipe
  (``--crash`` remakes it; needs root, a writable ``kernel.core_pattern`` and
  ``Journal=no``): ``corectl show`` (text and ``--json``) of each crash,
  ``corectl list`` (text and ``--json``), the journal fields of each row, and
  ``corectl analyze`` of each stored core.

The goldens were first written by the code of commit 1137393 (before the typed
crash model of issue 12); ``tests/report/test_golden.py`` recomputes every
output with the current code and compares bytes.  Only what legitimately varies
between two runs of the same code is normalised (:func:`normalise`): the
analysis ``duration_ms``, and the repository's absolute path.  Timestamps are
rendered in UTC (``TZ=UTC``) so the text does not depend on the machine's zone.

Analyses read the libraries on this machine: when the host's libraries differ
from the ones the goldens were made with (``libraries.json``), those goldens
are skipped with the reason, as fixture tests are.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import pathlib
import re
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
STORE = GOLDEN / "store"
OUT = GOLDEN / "out"
LIBRARIES = GOLDEN / "libraries.json"
PROGRAM_DIR = REPO / "tests" / "annotate" / "programs"
# (name, source, argv after the program)
PROGRAMS = (
    ("null_deref", "null_deref.c", []),
    ("aborter", "aborter.c", []),
    ("divzero", "everyday.c", ["divzero"]),
    ("threads", str(REPO / "fixtures" / "cores" / "src" / "threads.c"), []),
)
DURATION = re.compile(r'("duration_ms": ?)\d+|(duration: )\d+( ms)')


@functools.cache
def _checkouts_fixtures_ran_in() -> tuple[str, ...]:
    """The checkouts in which make_cores.py ran the fixture programs (MANIFEST ``run_path``).

    Those paths are inside the cores (NT_FILE, the command line) and so in every output;
    when this checkout happens to live at one of them, replacing only :data:`REPO` would
    turn the core's own paths into ``<repo>`` too, and the goldens would pass or fail by
    where the repository was cloned.  Every such path becomes ``<repo>``.
    """
    manifest = json.loads((REPO / "fixtures" / "cores" / "MANIFEST.json").read_text())
    found = set()
    for name, entry in manifest["fixtures"].items():
        run_path = str(entry.get("run_path") or "")
        suffix = f"/fixtures/cores/{name}/{entry.get('binary', name)}"
        if run_path.endswith(suffix):
            found.add(run_path.removesuffix(suffix))
    return tuple(sorted(found, key=len, reverse=True))


def normalise(text: str) -> str:
    """What varies between two runs of the same code on the same input, made fixed."""
    text = DURATION.sub(lambda m: f"{m[1]}0" if m[1] else f"{m[2]}0{m[3]}", text)
    for checkout in (str(REPO), *_checkouts_fixtures_ran_in()):
        text = text.replace(checkout, "<repo>")
    return text


@contextlib.contextmanager
def utc() -> Iterator[None]:
    import time

    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def corectl(argv: list[str], env: dict[str, str] | None = None) -> str:
    """corectl in-process; its standard output (stderr is left alone)."""
    from coredumpd.cli.corectl import main

    buffer = io.StringIO()
    with utc(), contextlib.redirect_stdout(buffer):
        main(["--no-pager", *argv] if argv[0] != "--json" else argv, env=env or {})
    return normalise(buffer.getvalue())


def developer_text(core: pathlib.Path, exe: pathlib.Path | None) -> str:
    """``python -m coredumpd.analysis CORE [--exe]`` (the developer's backtrace)."""
    from coredumpd.analysis.__main__ import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        main([str(core), *(["--exe", str(exe)] if exe else [])])
    return normalise(buffer.getvalue())


def _json(value: Any) -> str:
    return normalise(json.dumps(value, indent=1, sort_keys=False) + "\n")


def fixture_journal(core: pathlib.Path, exe: pathlib.Path) -> str:
    """Journal fields for a fixture core: the record corectl analyze builds from its notes."""
    from coredumpd.analysis import analyze
    from coredumpd.cli.cores import core_record
    from coredumpd.report.journal import journal_fields
    from coredumpd.store.lz4seek import open_core_source

    source = open_core_source(str(core))
    try:
        record = core_record(source, str(core))
        result = analyze(source, None, str(exe))
    finally:
        source.close()
    record.id, record.timestamp_us = "0123456789ab", 1_700_000_000_000_000
    record.set_analysis(result)
    return _json(journal_fields(record))


def fixture_outputs() -> dict[str, str]:
    """name -> output, for every fixture core."""
    from tests.support.fixtures import FIXTURES_DIR, core_file, fixture_names, read_manifest

    outputs = {}
    manifest = read_manifest()["fixtures"]
    for name in fixture_names():
        core = core_file(FIXTURES_DIR / name)
        if core is None:
            continue
        exe = FIXTURES_DIR / name / manifest[name]["binary"]
        outputs[f"fixture-{name}-analyze.txt"] = corectl(["analyze", str(core), "--exe", str(exe)])
        outputs[f"fixture-{name}-analyze.json"] = corectl(
            ["--json", "analyze", str(core), "--exe", str(exe)])
        outputs[f"fixture-{name}-devtext.txt"] = developer_text(core, exe)
        outputs[f"fixture-{name}-journal.json"] = fixture_journal(core, exe)
    return outputs


@contextlib.contextmanager
def store_copy() -> Iterator[str]:
    """A private copy of the frozen store (reading it creates WAL files) and its config."""
    with tempfile.TemporaryDirectory(prefix="golden-") as directory:
        shutil.copytree(STORE, os.path.join(directory, "cores"))
        config = os.path.join(directory, "c.conf")
        pathlib.Path(config).write_text(f"[Coredump]\nDirectory={directory}/cores\n")
        yield config


def stored_rows() -> list[dict[str, Any]]:
    db = sqlite3.connect(f"file:{STORE / 'index.sqlite'}?mode=ro&immutable=1", uri=True)
    try:
        cursor = db.execute("SELECT id, core_path FROM crashes ORDER BY timestamp_us, rowid")
        return [{"id": row[0], "core_path": row[1]} for row in cursor.fetchall()]
    finally:
        db.close()


def store_outputs() -> dict[str, str]:
    """name -> output, for the crashes of the frozen store."""
    from coredumpd.report.journal import journal_fields
    from coredumpd.store.index import Index

    outputs = {}
    with store_copy() as config:
        env = {"COREDUMPD_CONFIG": config}
        outputs["store-list.txt"] = corectl(["list"], env)
        outputs["store-list.json"] = corectl(["--json", "list"], env)
        index = Index(os.path.join(os.path.dirname(config), "cores", "index.sqlite"),
                      create=False)
        try:
            for number, row in enumerate(stored_rows()):
                name = f"store-{number}"
                outputs[f"{name}-show.txt"] = corectl(["show", row["id"]], env)
                outputs[f"{name}-show.json"] = corectl(["--json", "show", row["id"]], env)
                record = index.get(row["id"])
                assert record is not None
                outputs[f"{name}-journal.json"] = _json(journal_fields(record))
                core = STORE / os.path.basename(row["core_path"])
                exe = STORE / "bin" / PROGRAMS[number][0]
                outputs[f"{name}-analyze.json"] = corectl(
                    ["--json", "analyze", str(core), "--exe", str(exe)])
                outputs[f"{name}-analyze.txt"] = corectl(["analyze", str(core), "--exe", str(exe)])
        finally:
            index.close()
    return outputs


def host_libraries() -> dict[str, str | None]:
    from tests.support.fixtures import file_build_id

    wanted: dict[str, str] = json.loads(LIBRARIES.read_text()) if LIBRARIES.exists() else {}
    return {path: file_build_id(path) for path in wanted}


def library_mismatch() -> str | None:
    """Why the host cannot reproduce the store's analyses, or None."""
    if not LIBRARIES.exists():
        return None
    wanted = json.loads(LIBRARIES.read_text())
    for path, here in host_libraries().items():
        if here != wanted[path]:
            return f"{path} here has build-id {here}, the goldens were made with {wanted[path]}"
    return None


def all_outputs() -> dict[str, str]:
    return {**fixture_outputs(), **store_outputs()}


def crash_store() -> None:
    """Remake the frozen store: crash each program under the real handler."""
    from tests.support.crash import compile_c, registered_handler

    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        binaries = pathlib.Path(tmp) / "bin"
        with registered_handler(tmp, journal=False, rate_limit_burst=100) as handler:
            libraries: dict[str, str] = {}
            for name, source, args in PROGRAMS:
                path = source if os.path.isabs(source) else str(PROGRAM_DIR / source)
                # a copy outside the repository: its path is in the DWARF and the
                # analyses, and must not depend on where the repository is checked out
                copy = binaries / f"{name}.c"
                binaries.mkdir(exist_ok=True)
                shutil.copyfile(path, copy)
                program = compile_c(str(copy), binaries, name=name)
                row = handler.crash([program, *args], env={"PATH": "/usr/bin:/bin"}, cwd="/")
                for module in (row.get("analysis") or {}).get("modules") or []:
                    if module["path"].startswith("/usr/") and module.get("build_id"):
                        libraries[module["path"]] = module["build_id"]
            if STORE.exists():
                shutil.rmtree(STORE)
            shutil.copytree(handler.directory, STORE,
                            ignore=shutil.ignore_patterns("*-wal", "*-shm", "users"))
            shutil.copytree(binaries, STORE / "bin", ignore=shutil.ignore_patterns("*.c"))
            LIBRARIES.write_text(json.dumps(libraries, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.report.goldens", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crash", action="store_true",
                        help="remake the frozen store first (root, real kernel pipe)")
    options = parser.parse_args(argv)
    if options.crash:
        crash_store()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for name, text in sorted(all_outputs().items()):
        (OUT / name).write_text(text)
    print(f"wrote {len(list(OUT.iterdir()))} goldens to {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
