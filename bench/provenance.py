"""What a bench measured: the commit, so that a table can say it.

Every bench prints :func:`measured_line` first; README tables quote it.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                            check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def commit() -> str:
    """``git rev-parse --short HEAD``, plus `` dirty`` when tracked files differ from it
    (what ``git describe --dirty`` calls dirty; untracked files do not count)."""
    head = _git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{head} dirty" if dirty else head


def measured_line(configuration: str) -> str:
    """One line for the top of a bench's output: commit, date, machine, configuration."""
    return (f"measured on commit {commit()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
            f", {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {configuration}")
