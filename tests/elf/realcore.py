"""Real cores for tests: compile a C program from tests/elf/data, crash it, keep the core.

The core is written by the real kernel through a pipe handler installed with
tests.support.kernel.core_pattern (locked, restored), so tests that use it are
``@pytest.mark.kernel``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import time

from tests.support.kernel import core_pattern, raw_core_pattern

DATA = pathlib.Path(__file__).resolve().parent / "data"


@dataclasses.dataclass(frozen=True)
class RealCore:
    exe: pathlib.Path
    core: pathlib.Path
    pid: int


def compile_c(source: str, output: pathlib.Path, *cflags: str) -> pathlib.Path:
    subprocess.run(["gcc", "-g", *cflags, "-o", str(output), str(DATA / source), "-pthread"],
                   check=True)
    return output


def crash(exe: pathlib.Path, directory: pathlib.Path, *args: str) -> RealCore:
    """Run ``exe`` with RLIMIT_CORE unlimited under a raw-core handler; wait for the core."""
    with core_pattern(raw_core_pattern(str(directory)), pipe_limit=8):
        process = subprocess.Popen(["/bin/sh", "-c", 'ulimit -c unlimited && exec "$0" "$@"',
                                    str(exe), *args])
        process.wait(timeout=60)
    assert process.returncode < 0, f"{exe} did not die of a signal"
    path = directory / f"core.{process.pid}"
    for _ in range(100):  # the pipe handler may still be writing: wait for a stable size
        if path.exists():
            size = path.stat().st_size
            time.sleep(0.05)
            if size and size == path.stat().st_size:
                break
        time.sleep(0.05)
    return RealCore(exe, path, process.pid)
