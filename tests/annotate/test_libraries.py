"""symbol-version-miss, library-replaced, library-modified-in-place on real crashes."""

from __future__ import annotations

import shutil
import signal

import pytest

from tests.annotate.crashing import PROGRAMS, crash, crash_prepared, handler_available

pytestmark = pytest.mark.kernel


def _run_daemon(scenario, tmp_path, *build_args, run_args=()):
    out = scenario("versions", *build_args)
    result = crash(["/bin/sh", str(PROGRAMS / "versions" / "run.sh"), str(out), *run_args],
                   tmp_path, pidfile=str(out / "daemon.pid"))
    return out, result


def test_symbol_version_miss_new_version(scenario, tmp_path):
    """v1 has no FOO_PRIVATE at all: "version `FOO_PRIVATE' not found (required by ...)"."""
    out, result = _run_daemon(scenario, tmp_path)
    assert result.ids[0] == "symbol-version-miss"
    assert result.ids.count("symbol-version-miss") == 1  # exception text and dlerror() copy
    evidence = result.evidence("symbol-version-miss")
    assert "version `FOO_PRIVATE' not found (required by ./plugin.so)" in evidence
    assert "copy on disk now" in evidence and "FOO_PRIVATE — has it" in evidence
    assert "library-replaced" in result.ids
    assert str(out / "libfoo.so.1") in result.evidence("library-replaced")
    assert "named by the loader error in memory" in result.evidence("library-replaced")
    assert result.annotation("library-replaced")["confidence"] == "high"
    if result.via == "handler":  # the mapped copy's versions were read at dump time
        assert "LACKS it" in evidence and "plugin.so version-needs" in evidence
        assert result.annotation("symbol-version-miss")["confidence"] == "high"


def test_symbol_version_miss_private_symbol(scenario, tmp_path):
    """v1 has FOO_PRIVATE without bar (glibc's GLIBC_PRIVATE without __h_errno)."""
    _out, result = _run_daemon(scenario, tmp_path, "private")
    assert result.ids[0] == "symbol-version-miss"
    annotation = result.annotation("symbol-version-miss")
    assert "bar@FOO_PRIVATE" in annotation["title"]
    evidence = result.evidence("symbol-version-miss")
    assert "bar, version FOO_PRIVATE" in evidence or "symbol bar version FOO_PRIVATE" in evidence
    assert "bar: bar@FOO_PRIVATE — has it" in evidence
    if result.via == "handler":
        assert "bar: not defined — LACKS it" in evidence


def test_loader_error_without_an_upgrade_is_not_symbol_version_miss(scenario, tmp_path):
    """The same loader error, but libfoo was never replaced: neither copy has the version
    (a plugin built against another libfoo), so this is not the upgrade race."""
    _out, result = _run_daemon(scenario, tmp_path, run_args=("keep",))
    assert result.analysis["signal"]["name"] == "SIGABRT"
    assert "symbol-version-miss" not in result.ids
    assert "library-replaced" not in result.ids


def _run_worker(scenario, tmp_path):
    out = scenario("inplace")
    pidfile = out / "worker.pid"
    result = crash_prepared(
        [str(out / "worker"), str(pidfile)], tmp_path, pidfile=str(pidfile),
        prepare=lambda: shutil.copyfile(out / "libcodec_b.so", out / "libcodec.so"),
        trigger=signal.SIGUSR1,
        driver=["/bin/sh", str(PROGRAMS / "inplace" / "run.sh"), str(out)])
    return out, result


def test_library_modified_in_place(scenario, tmp_path):
    """incidents/library-overwritten-in-place.txt: cp over libcodec.so while mapped."""
    out, result = _run_worker(scenario, tmp_path)
    assert result.ids[0] == "library-modified-in-place"
    annotation = result.annotation("library-modified-in-place")
    assert annotation["confidence"] == "high"  # the crash is in that module
    evidence = result.evidence("library-modified-in-place")
    assert str(out / "libcodec.so") in evidence
    assert "same inode" in evidence and "suspect" in evidence
    assert "library-replaced" not in result.ids


def test_library_replaced_by_rename_is_not_modified_in_place(scenario, tmp_path):
    """A rename (new inode) over a mapped library is "replaced", never "modified in place"."""
    if not handler_available():
        pytest.skip("needs dump-time facts from the coredumpd handler: without them "
                    "library-modified-in-place cannot fire, so this check would prove nothing")
    _out, result = _run_daemon(scenario, tmp_path)
    assert "library-replaced" in result.ids
    assert "library-modified-in-place" not in result.ids


def test_no_library_rule_without_changes(program, tmp_path):
    result = crash([program("null_deref")], tmp_path)
    assert not {"library-replaced", "library-modified-in-place", "symbol-version-miss"} \
        & set(result.ids)
