#!/usr/bin/env python3
"""The hardening figures of issue 6, measured now on this machine.

Runs (as root: it swaps kernel.core_pattern through tests.support.kernel, which
locks, saves and restores it):

1. the crash storm (tests/hardening/storm.py): N processes crashing at once,
   some with large cores, registered by ``coredumpd install`` in the default
   configuration (the analysis and the journal on; the journal is the run's
   private journald namespace, never the host's: STORM_CONFIGURATION, printed)
   — crashed, index rows, stored and verified, lost, duplicated, analysed,
   handler peak RSS;
2. the fault and security cases: the tests marked ``fault_case`` in
   tests/hardening/test_faults.py, test_security.py and test_sandbox.py, each
   of which injects a fault or a hostile input into the real handler or the
   real analysis sandbox — run, survived (passed), failed, skipped; the unit
   tests and controls in those files are not fault cases and are only counted
   as such;
3. the fuzzer (bench/fuzz.py) on every target — inputs run (of those
   requested), how they ended, findings.

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
import re
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

from bench.provenance import commit

FUZZ_COUNTS = {"reader": 100_000, "stream": 20_000, "lz4": 20_000, "unwind": 5_000,
               "analysis": 1_000, "cache": 500, "answer": 5_000,
               "args": 50_000, "procfs": 2_000}
FAULT_TESTS = ["tests/hardening/test_faults.py", "tests/hardening/test_security.py",
               "tests/hardening/test_sandbox.py"]


# Where the storm departs from the default configuration beyond what run_storm itself
# sets (the run's private journal: the host's must not receive the bench's crashes).
STORM_SETTINGS: dict[str, Any] = {}
STORM_CONFIGURATION = ("registered by `coredumpd install` (its core_pipe_limit), the default "
                       "configuration except JournalNamespace= (the run's private journald); "
                       "distinct programs, so the rate limit does not apply")


def run_storm(count: int, large: int, large_mib: int) -> dict[str, Any]:
    from tests.hardening.storm import run_storm as storm

    with tempfile.TemporaryDirectory(prefix="cdstorm", dir="/var/tmp") as work:
        try:
            result = storm(work, count=count, large=large, large_mib=large_mib,
                           wait_analysis=True, **STORM_SETTINGS).as_dict()
        except Exception as err:  # noqa: BLE001 - the report says what broke
            return {"error": f"{type(err).__name__}: {err}"}
    return result | {"configuration": STORM_CONFIGURATION}


def run_fault_cases() -> dict[str, Any]:
    """pytest on the fault cases (``-m fault_case``); counts from its JUnit XML, and how
    many other tests those files hold (deselected: unit tests and controls)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = os.path.join(scratch, "junit.xml")
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "-m", "fault_case", f"--junitxml={report}", *FAULT_TESTS],
                             cwd=REPO, check=False, capture_output=True, text=True)
        if not os.path.exists(report):
            return {"error": "pytest wrote no report"}
        summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
        deselected = re.search(r"(\d+) deselected", summary)
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
    return {"tried": tried, "survived": survived, "skipped": skipped, "failed": failed,
            "not_fault_cases": int(deselected[1]) if deselected else 0}


def run_fuzz(counts: dict[str, int], save: bool) -> dict[str, Any]:
    results = {}
    for target, count in counts.items():
        time_limit = 10.0 if target in ("analysis", "cache", "unwind") else 2.0
        summary = fuzz.fuzz(target, count, run_seed=int(time.strftime("%Y%m%d")),
                            time_limit=time_limit, save=save)
        summary.pop("seeds", None)
        results[target] = summary
    return results


def storm_lines(storm: dict[str, Any]) -> list[str]:
    if "error" in storm:
        return [f"storm: FAILED TO RUN: {storm['error']}"]
    return [
        f"storm, {storm['configuration']}:",
        (f"  {storm['crashed']} processes died of SIGSEGV at the same moment; "
         f"{storm['rows']} index rows for them; {storm['stored']} cores stored and verified "
         f"(lz4 -t, decompressed size, Core.open); lost (no row) {len(storm['lost'])}, "
         f"duplicated {len(storm['duplicated'])}, not stored or not verifying "
         f"{len(storm['bad'])}"),
        (f"  analyses: {storm['analysis_states']}; large cores {storm['large_cores_mib']} MiB; "
         f"core_pipe_limit {storm['pipe_limit']}; handlers at once: {storm['handlers_alive_max']}"
         f" alive, {storm['handlers_working_max']} working; their peak RSS max "
         f"{storm['handler_max_rss_mib']} MiB, summed at one moment RSS "
         f"{storm['handler_rss_sum_mib']} MiB, PSS {storm['handler_pss_sum_mib']} MiB; "
         f"analysis jobs + sandboxes RSS {storm['analysis_rss_sum_mib']} MiB "
         f"({storm['sandboxes_alive_max']} sandboxes at once); core_pattern held "
         f"{storm['lock_held_s']} s"),
        *(f"  {bad}" for bad in storm["bad"][:10])]


def fault_lines(faults: dict[str, Any]) -> list[str]:
    if "error" in faults:
        return [f"fault cases: FAILED TO RUN: {faults['error']}"]
    return [(f"fault and security cases (pytest -m fault_case: a fault or hostile input "
             f"injected into the real handler or sandbox): {faults['tried']} run, "
             f"{faults['survived']} survived, {len(faults['failed'])} failed, "
             f"{faults['skipped']} skipped; {faults['not_fault_cases']} other tests in those "
             f"files (a unit test, controls, the normal path) not counted"),
            *(f"  FAILED {entry}" for entry in faults["failed"])]


def fuzz_lines(fuzzing: dict[str, Any]) -> list[str]:
    run = sum(result.get("executions", 0) for result in fuzzing.values())
    requested = sum(result.get("requested", 0) for result in fuzzing.values())
    found = sum(len(result.get("findings", [])) for result in fuzzing.values())
    lines = [(f"fuzz: {run} mutated inputs run (of {requested} requested), {found} findings "
              f"(uncaught exception, hang, memory, worker killed)")]
    for target, result in fuzzing.items():
        if result.get("skipped"):
            lines.append(f"  {target:9} skipped: {result['skipped']}")
            continue
        lines.append(f"  {target:9} {result['executions']:>7} inputs run of "
                     f"{result['requested']} ({result['per_second']}/s), ended "
                     f"{result.get('outcomes')}, {len(result['findings'])} findings")
        lines.extend(f"    {finding['signature']} -> {finding.get('saved')}"
                     for finding in result["findings"])
    return lines


def table(figures: dict[str, Any]) -> str:
    lines = ["coredumpd hardening report", "=" * 26,
             (f"measured on commit {figures['commit']}, {figures['date']}, kernel "
              f"{figures['kernel']}, {figures['cpus']} CPUs")]
    if figures.get("storm"):
        lines += storm_lines(figures["storm"])
    if figures.get("faults"):
        lines += fault_lines(figures["faults"])
    if figures.get("fuzz"):
        lines += fuzz_lines(figures["fuzz"])
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
    figures: dict[str, Any] = {"commit": commit(),
                               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
