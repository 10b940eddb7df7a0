"""prepare(): a process that forks analyses readies itself once, so that its children
import nothing and compile no pattern (coredumpd/analysis/runner.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.fixtures import load_fixture

CHILD = """
import json, sys
from coredumpd import patterns
from coredumpd.analysis import analyze, prepare
from coredumpd.store.lz4seek import open_core_source
prepare()
before = set(sys.modules)
for core, exe in json.loads(sys.argv[1]):
    source = open_core_source(core)
    try:
        result = analyze(source, None, exe)
    finally:
        source.close()
    assert result.state == "done", result.error
print(json.dumps({"imported": sorted(set(sys.modules) - before),
                  "compiled": patterns.compile_all()}))
"""

# a C abort, a C++ exception, a Rust panic, a Python process, threads
KINDS = ("abort", "cxx-exception", "rust-panic", "python", "threads")


def test_after_prepare_an_analysis_imports_and_compiles_nothing() -> None:
    fixtures = [load_fixture(name) for name in KINDS]
    cores = [(str(fixture.core_path), str(fixture.binary_path)) for fixture in fixtures]
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cores)],
                          capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(done.stdout.splitlines()[-1]) == {"imported": [], "compiled": 0}
