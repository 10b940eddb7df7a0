#!/usr/bin/env python3
"""The hardening figures of issue 6, measured now on this machine.

Runs (as root: it swaps kernel.core_pattern through tests.support.kernel, which
locks, saves and restores it):

1. the crash storm (tests/hardening/storm.py): N processes crashing at once,
   some with large cores — crashed, stored and verified, lost, duplicated,
   handler peak RSS;
2. the fault and security cases (pytest on tests/hardening/test_faults.py,
   test_security.py, test_sandbox.py) — tried, survived (passed), failed;
3. the fuzzer (bench/fuzz.py) on every target — executions, crashes found.

Usage::

    sudo .venv/bin/python bench/hardening_report.py              # full run
    sudo .venv/bin/python bench/hardening_report.py --quick      # small counts
    ... --skip storm --skip faults --json out.json

Prints one table, then the JSON of every figure (also written with --json).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import fuzz

FUZZ_COUNTS = {"reader": 100_000, "stream": 20_000, "lz4": 20_000, "unwind": 5_000,
               "analysis": 1_000,
               "args": 50_000, "procfs": 2_000}
FAULT_TESTS = ["tests/hardening/test_faults.py", "tests/hardening/test_security.py",
               "tests/hardening/test_sandbox.py"]


def run_storm(count: int, large: int, large_mib: int) -> dict[str, Any]:
    from tests.hardening.storm import run_storm as storm

    with tempfile.TemporaryDirectory(prefix="cdstorm", dir="/var/tmp") as work:
        try:
            return storm(work, count=count, large=large, large_mib=large_mib).as_dict()
        except Exception as err:  # noqa: BLE001 - the report says what broke
            return {"error": f"{type(err).__name__}: {err}"}


def run_fault_cases() -> dict[str, Any]:
    """pytest on the fault/security/sandbox tests; counts from its JUnit XML."""
    with tempfile.TemporaryDirectory() as scratch:
        report = os.path.join(scratch, "junit.xml")
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={report}", *FAULT_TESTS], cwd=REPO, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not os.path.exists(report):
            return {"error": "pytest wrote no report"}
        cases = ET.parse(report).getroot().iter("testcase")
        tried, survived, skipped, failed = 0, 0, 0, []
        for case in cases:
            name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
            outcome = {child.tag for child in case}
            if "skipped" in outcome:
                skipped += 1
                continue
            tried += 1
            if outcome & {"failure", "error"}:
                message = next(child.get("message", "") for child in case
                               if child.tag in ("failure", "error"))
                failed.append(f"{name}: {message[:300]}")
            else:
                survived += 1
    return {"tried": tried, "survived": survived, "skipped": skipped, "failed": failed}


def run_fuzz(counts: dict[str, int], save: bool) -> dict[str, Any]:
    results = {}
    for target, count in counts.items():
        time_limit = 10.0 if target in ("analysis", "unwind") else 2.0
        summary = fuzz.fuzz(target, count, run_seed=int(time.strftime("%Y%m%d")),
                            time_limit=time_limit, save=save)
        summary.pop("seeds", None)
        results[target] = summary
    return results


def table(figures: dict[str, Any]) -> str:
    lines = ["coredumpd hardening report", "=" * 26]
    storm = figures.get("storm")
    if storm and "error" not in storm:
        lines.append(f"storm: {storm['crashed']} crashed at once, {storm['rows']} rows, "
                     f"{storm['stored']} stored and verified, lost {len(storm['lost'])}, "
                     f"duplicated {len(storm['duplicated'])}, bad {len(storm['bad'])}; large "
                     f"cores {storm['large_cores_mib']} MiB; handler peak RSS max "
                     f"{storm['handler_max_rss_mib']} MiB, sum {storm['handler_rss_sum_mib']}"
                     f" MiB; core_pattern held {storm['lock_held_s']} s")
    elif storm:
        lines.append(f"storm: FAILED TO RUN: {storm['error']}")
    faults = figures.get("faults")
    if faults and "error" not in faults:
        lines.append(f"fault/security/sandbox cases: {faults['tried']} tried, "
                     f"{faults['survived']} survived, {len(faults['failed'])} failed, "
                     f"{faults['skipped']} skipped")
        lines.extend(f"  FAILED {entry}" for entry in faults["failed"])
    fuzzing = figures.get("fuzz") or {}
    total = sum(result.get("executions", 0) for result in fuzzing.values())
    found = sum(len(result.get("findings", [])) for result in fuzzing.values())
    if fuzzing:
        lines.append(f"fuzz: {total} bad inputs tried, {found} crashes found")
    for target, result in fuzzing.items():
        if result.get("skipped"):
            lines.append(f"  {target:9} skipped: {result['skipped']}")
            continue
        lines.append(f"  {target:9} {result['executions']:>7} executions "
                     f"({result['per_second']}/s), outcomes {result.get('outcomes')}, "
                     f"{len(result['findings'])} crashes")
        lines.extend(f"    {finding['signature']} -> {finding.get('saved')}"
                     for finding in result["findings"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the fuzz counts, "
                        "a storm of 16 with one 64 MiB core")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["storm", "faults", "fuzz"])
    parser.add_argument("--no-save", action="store_true", help="do not keep fuzz findings")
    parser.add_argument("--json", type=pathlib.Path)
    options = parser.parse_args(argv)
    figures: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "kernel": os.uname().release, "cpus": os.cpu_count()}
    if "storm" not in options.skip:
        figures["storm"] = run_storm(16, 1, 64) if options.quick else run_storm(64, 4, 192)
    if "faults" not in options.skip:
        figures["faults"] = run_fault_cases()
    if "fuzz" not in options.skip:
        counts = {target: max(50, count // 10) if options.quick else count
                  for target, count in FUZZ_COUNTS.items()}
        figures["fuzz"] = run_fuzz(counts, save=not options.no_save)
    print(table(figures))
    text = json.dumps(figures, indent=1)
    print(text)
    if options.json:
        options.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
