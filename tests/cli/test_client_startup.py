"""The installed ``corectl`` script starts the analysis client without importing ``re``
(setup.sh writes it: pip's console script imports re, ~6 ms of every start)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_corectl_script_imports_the_client_before_re() -> None:
    script = pathlib.Path(sys.executable).parent / "corectl"
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1", COREDUMPD_ANALYZE_SOCKET="")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                            env=env, check=False, cwd=REPO)
    names = [line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
             if line.startswith("import time:") and "|" in line]
    assert "coredumpd.cli.client" in names, result.stderr[-2000:]
    before = names[:names.index("coredumpd.cli.client")]
    assert "re" not in before and "enum" not in before, before
