"""After a library update the gdb comparisons still run, against gdb's references
recomputed for this machine (tests/support/fixtures.py), or fail loudly in CI.

A library update is simulated the way the loader sees one: the suite is pointed
(``COREDUMPD_TEST_FIXTURE_MANIFEST``) at a copy of MANIFEST.json in which the
libc build-id of two fixtures is another one.  The comparison tests then run in
a child pytest, with ``CI=true`` as CI runs them, and a private cache directory
(``COREDUMPD_TEST_FIXTURE_CACHE``), so that the fixtures are really made again.
The child's outcome is read from its summary line, not its exit status: the
child's own end-of-run host check (tests/conftest.py) may blame a concurrent
run on the machine, which the parent's host check judges anyway.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests.support.fixtures import CACHE_ENV, MANIFEST_ENV, MANIFEST_PATH, file_build_id

REPO = pathlib.Path(__file__).resolve().parent.parent
UPDATED = ("abort", "threads")  # fixtures whose libc "changed"
COMPARISONS = [
    "tests/test_backtraces_vs_gdb.py::test_thread_matches_gdb",
    "tests/test_backtraces_vs_gdb.py::test_exact_frames_come_from_context",
    "tests/analysis/test_analyze.py::test_fixture_frames_match_gdb",
    "tests/symbolize/test_symbols_fixtures.py",
]


def updated_manifest(tmp_path: pathlib.Path) -> pathlib.Path:
    """MANIFEST.json as if libc had been updated after ``UPDATED`` were made."""
    manifest = json.loads(MANIFEST_PATH.read_text())
    for name in UPDATED:
        entry = manifest["fixtures"][name]
        libc = next(path for path in entry["libraries"] if path.endswith("/libc.so.6"))
        entry["libraries"][libc] = entry["libc_build_id"] = "0" * 40
    path = tmp_path / "MANIFEST.json"
    path.write_text(json.dumps(manifest))
    return path


def run_comparisons(manifest: pathlib.Path, cache: pathlib.Path, ci: bool,
                    path: str | None = None,
                    selection: list[str] = COMPARISONS) -> tuple[str, dict[str, int]]:
    """Run the comparison tests of ``UPDATED`` in a child pytest; its output and its
    outcome counts (passed, failed, skipped, error...)."""
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env |= {MANIFEST_ENV: str(manifest), CACHE_ENV: str(cache)}
    if ci:
        env["CI"] = "true"
    if path is not None:
        env["PATH"] = path
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider",
         "-k", " or ".join(UPDATED), *selection],
        cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=600)
    summaries = [line for line in result.stdout.splitlines()
                 if re.match(r"^=+ .*\d+ (passed|failed|skipped|error).* in [\d.]+s", line)]
    assert summaries, result.stdout + result.stderr
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (\w+)", summaries[-1])}
    for word in ("deselected", "warning", "warnings"):
        counts.pop(word, None)
    return result.stdout + result.stderr, counts


@pytest.mark.kernel
def test_after_a_libc_update_the_comparisons_run_against_regenerated_gdb_references(tmp_path):
    cache = tmp_path / "cache"
    output, counts = run_comparisons(updated_manifest(tmp_path), cache, ci=True)
    assert set(counts) == {"passed"}, output  # nothing skipped, nothing failed
    for case in ("test_thread_matches_gdb[abort-0]", "test_thread_matches_gdb[threads-3]",
                 "test_exact_frames_come_from_context[threads]",
                 "test_fixture_frames_match_gdb[abort]"):
        assert re.search(re.escape(case) + r" PASSED", output), (case, output)
    assert "made again with gdb's references" in output

    # What they compared with: cores crashed again here, gdb run again on them.
    (made,) = [path for path in cache.iterdir() if not path.name.startswith(".")]
    manifest = json.loads((made / "MANIFEST.json").read_text())
    committed = json.loads(MANIFEST_PATH.read_text())["fixtures"]
    assert sorted(manifest["fixtures"]) == sorted(UPDATED)
    for name, entry in manifest["fixtures"].items():
        assert entry["pid"] != committed[name]["pid"]
        assert entry["core_sha256"] != committed[name]["core_sha256"]
        assert all(file_build_id(path) == build_id
                   for path, build_id in entry["libraries"].items())
        assert f"LWP {entry['pid']}" in (made / name / "gdb-bt.txt").read_text()

    # The control: the comparison reads those references, so a wrong one fails it.
    expected = json.loads((made / "threads" / "expected.json").read_text())
    physical = next(f for f in expected[0]["frames"] if not f["inlined"])  # an ELF name
    physical["symbol"] = "not_what_gdb_said"
    (made / "threads" / "expected.json").write_text(json.dumps(expected))
    output, counts = run_comparisons(updated_manifest(tmp_path), cache, ci=True,
                                     selection=COMPARISONS[:1])
    assert counts == {"failed": 1, "passed": 4}, output
    assert "not_what_gdb_said" in output


def test_when_they_cannot_be_regenerated_ci_fails_and_elsewhere_they_skip(tmp_path):
    """No gcc or gdb on PATH: in CI each comparison fails with the reason; elsewhere
    it is skipped with it.  Never a silent pass."""
    manifest = updated_manifest(tmp_path)
    selection = COMPARISONS[:2]
    output, counts = run_comparisons(manifest, tmp_path / "cache", ci=True,
                                     path="/nonexistent", selection=selection)
    assert counts == {"failed": 7}, output
    assert "gdb" in output and "not found on PATH" in output and "CI is set" in output
    output, counts = run_comparisons(manifest, tmp_path / "cache", ci=False,
                                     path="/nonexistent", selection=selection)
    assert counts == {"skipped": 7}, output
    assert "cannot regenerate the fixtures here" in output
