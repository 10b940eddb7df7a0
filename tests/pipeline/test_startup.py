"""What the handler imports before it releases the kernel (the crashed process waits)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("dataclasses", "inspect", "configparser", "sqlite3", "json", "concurrent.futures",
         "lz4.frame", "coredumpd.config", "coredumpd.elf.notes", "coredumpd.store.lz4seek",
         "coredumpd.store.index", "lief", "capstone", "elftools", "systemd")


def test_handler_module_imports_nothing_heavy():
    code = ("import sys; before = set(sys.modules); "
            "import coredumpd.pipeline.main, coredumpd.pipeline.handler; "
            "print('\\n'.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={}, cwd="/").stdout.split()
    assert "coredumpd.ingest.stream" in out  # the check sees our imports at all
    assert [name for name in out if name in HEAVY] == []
