"""Crash the programs of tests/annotate/programs and get their analysis.

Preferred path: the real coredumpd handler through the kernel pipe
(:func:`tests.support.crash.registered_handler`), which records the facts at
dump time and runs the analysis.  Until the handler can run end to end (the
index must exist), :func:`crash` falls back to saving the raw core with a
``cat`` pattern (:func:`tests.support.kernel.raw_core_pattern`) and running
:func:`coredumpd.analysis.analyze` on it without facts; tests that need facts
ask for ``need_facts=True`` and are skipped on that path (the skip says why).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.support.crash import compile_c
from tests.support.kernel import core_pattern, raw_core_pattern

PROGRAMS = pathlib.Path(__file__).resolve().parent / "programs"
DEFAULT_FLAGS = ("-g", "-O0", "-fno-omit-frame-pointer")
SPECIAL_FLAGS = {
    "stack_smash": ("-g", "-O0", "-fstack-protector-all"),
    "fortify": ("-g", "-O2", "-D_FORTIFY_SOURCE=2"),
}


@dataclasses.dataclass
class Crash:
    """One analysed crash: the analysis result and the facts it was made with."""

    analysis: dict[str, Any]
    facts: dict[str, Any]
    via: str  # "handler" or "raw"
    row: dict[str, Any] | None = None
    core_path: str | None = None  # the stored core (raw ELF or our lz4)

    def reanalyze(self, facts: dict[str, Any]) -> dict[str, Any]:
        """The analysis of the same core with other facts."""
        from coredumpd.store.lz4seek import open_core_source
        from tests.support.analysis import analyze_json
        assert self.core_path, "no stored core"
        return analyze_json(open_core_source(self.core_path), facts)

    @property
    def ids(self) -> list[str]:
        return [annotation["id"] for annotation in self.analysis.get("annotations", [])]

    def annotation(self, rule_id: str) -> dict[str, Any]:
        for annotation in self.analysis.get("annotations", []):
            if annotation["id"] == rule_id:
                return annotation
        raise AssertionError(f"no {rule_id} annotation; got {self.ids}; "
                             f"problems {self.analysis.get('problems')}")

    def evidence(self, rule_id: str) -> str:
        return "\n".join(self.annotation(rule_id)["evidence"])


def handler_available() -> bool:
    """True when the handler can store, index and analyse a crash end to end."""
    return importlib.util.find_spec("coredumpd.store.index") is not None and \
        os.environ.get("COREDUMPD_TEST_RAW_CORES") != "1"


def build(name: str, out_dir: str | os.PathLike[str]) -> str:
    """Compile programs/NAME.c into out_dir with the flags its crash needs."""
    return compile_c(str(PROGRAMS / f"{name}.c"), out_dir,
                     SPECIAL_FLAGS.get(name, DEFAULT_FLAGS), name=name)


def crash(argv: Sequence[str], tmp_path: pathlib.Path, *, pidfile: str | None = None,
          need_facts: bool = False, cwd: str | None = None, raw: bool = False) -> Crash:
    """Run ``argv`` until it (or the process named in ``pidfile``) dumps core; analyse it.

    ``raw``: always save the raw ELF core (``core_path``) with a ``cat`` pattern.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    if handler_available() and not raw:
        return _through_handler(argv, tmp_path, pidfile, cwd)
    if need_facts:
        pytest.skip("needs dump-time facts from the coredumpd handler, which cannot run end to "
                    "end yet (coredumpd.store.index is missing)")
    return _through_raw_core(argv, tmp_path, pidfile, cwd)


def _through_handler(argv: Sequence[str], tmp_path: pathlib.Path, pidfile: str | None,
                     cwd: str | None) -> Crash:
    from tests.support.crash import registered_handler
    with registered_handler(tmp_path) as handler:
        row = handler.crash(list(argv), pidfile=pidfile, cwd=cwd)
    analysis, facts = _json(row.get("analysis")), _json(row.get("facts"))
    assert analysis, f"no analysis in the index row: {row}"

    return Crash(analysis, facts, "handler", row, row.get("core_path"))


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str) and value:
        loaded = json.loads(value)
        return loaded if isinstance(loaded, dict) else {}
    return value if isinstance(value, dict) else {}


def _through_raw_core(argv: Sequence[str], tmp_path: pathlib.Path, pidfile: str | None,
                      cwd: str | None) -> Crash:
    from coredumpd.source import RawFileSource
    from tests.support.analysis import analyze_json
    directory = tempfile.mkdtemp(prefix="cda", dir="/tmp")  # short, no spaces
    try:
        pid = _run_raw(argv, directory, pidfile, cwd)
        core = os.path.join(directory, f"core.{pid}")
        kept = tmp_path / f"core.{pid}"
        shutil.move(core, kept)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return Crash(analyze_json(RawFileSource(str(kept))), {}, "raw", None, str(kept))


def _run_raw(argv: Sequence[str], directory: str, pidfile: str | None, cwd: str | None) -> int:
    def unlimited_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
    with core_pattern(raw_core_pattern(directory), 16):
        proc = subprocess.run(list(argv), preexec_fn=unlimited_core, cwd=cwd, timeout=60,
                              stdin=subprocess.DEVNULL, capture_output=True, check=False)
    pid = int(pathlib.Path(pidfile).read_text().split()[0]) if pidfile else None
    if pid is None:
        assert proc.returncode < 0, f"{argv[0]} did not die of a signal: {proc}"
        pid = _only_core(directory)
    path = os.path.join(directory, f"core.{pid}")
    _wait_complete(path)
    return pid


def _only_core(directory: str) -> int:
    names = [name for name in os.listdir(directory) if name.startswith("core.")]
    assert len(names) == 1, f"expected one core in {directory}, got {names}"
    return int(names[0].split(".", 1)[1])


def _wait_complete(path: str) -> None:
    """The cat handler may still be writing: wait until the size stops changing."""
    import time
    last = -1
    for _ in range(200):
        size = os.path.getsize(path) if os.path.exists(path) else -1
        if size == last and size > 0:
            return
        last = size
        time.sleep(0.05)
    raise AssertionError(f"core {path} never completed")


def live_facts(pid: int) -> dict[str, Any]:
    """Facts of a live process read with the handler's own code (ingest.procfs/changed).

    For the raw-core path only: the handler reads the same things at dump time;
    here they are read just before the test triggers the crash.
    """
    from coredumpd.ingest import changed, procfs
    missing: dict[str, str] = {}
    proc = procfs.collect_process(pid, missing, environ=False)
    held = changed.hold_changed_objects(pid, proc, missing)
    return {"version": 1, "args": {"pid": pid}, "proc": proc,
            "mapped_objects": changed.read_held_objects(held, missing), "missing": missing}


def crash_prepared(argv: Sequence[str], tmp_path: pathlib.Path, *, pidfile: str,
                   prepare: Callable[[], None], trigger: int, driver: Sequence[str]) -> Crash:
    """A crash that needs set-up while the process runs (a library swapped under it).

    Through the handler: ``driver`` (a script doing start, set-up and trigger)
    runs under :func:`crash`.  On the raw-core path: start ``argv``, wait for
    ``pidfile``, ``prepare()``, read :func:`live_facts`, send ``trigger``, and
    analyse the core with those facts.
    """
    if handler_available():
        return crash(driver, tmp_path, pidfile=pidfile)
    tmp_path.mkdir(parents=True, exist_ok=True)
    from coredumpd.source import RawFileSource
    from tests.support.analysis import analyze_json
    directory = tempfile.mkdtemp(prefix="cda", dir="/tmp")
    try:
        with core_pattern(raw_core_pattern(directory), 16):
            facts, pid = _start_prepare_trigger(argv, pidfile, prepare, trigger)
        path = os.path.join(directory, f"core.{pid}")
        _wait_complete(path)
        kept = tmp_path / f"core.{pid}"
        shutil.move(path, kept)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return Crash(analyze_json(RawFileSource(str(kept)), facts), facts, "raw+live-facts", None,
                 str(kept))


def _start_prepare_trigger(argv: Sequence[str], pidfile: str, prepare: Callable[[], None],
                           trigger: int) -> tuple[dict[str, Any], int]:
    import time

    def unlimited_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
    process = subprocess.Popen(list(argv), preexec_fn=unlimited_core,  # noqa: PLW1509
                               cwd=os.path.dirname(argv[0]), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (os.path.exists(pidfile) and pathlib.Path(pidfile).read_text().strip()):
            assert time.monotonic() < deadline and process.poll() is None, "never ready"
            time.sleep(0.02)
        prepare()
        facts = live_facts(process.pid)
        os.kill(process.pid, trigger)
        assert process.wait(30) < 0, "the process did not die of a signal"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return facts, process.pid
