"""What a bench measured: the commit, so that a table can say it, and the journal
a bench with the journal on writes to (never the host's).

Every bench prints :func:`measured_line` first; README tables quote it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

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


@dataclasses.dataclass
class BenchJournal:
    """Where a bench's journal entries go: a private journald namespace, or nowhere."""

    settings: dict[str, Any]  # Config fields for tests.support.crash.write_config
    description: str
    journal: Any = None  # tests.support.journald.PrivateJournal, when one runs

    def entries_line(self) -> str:
        """How many coredump entries the private journal received (the journal was on)."""
        if self.journal is None:
            return "journal: off"
        from coredumpd.report.journal import MESSAGE_ID

        count = len(self.journal.entries(f"MESSAGE_ID={MESSAGE_ID}"))
        return (f"journal: {count} coredump entries in the private namespace "
                f"{self.journal.namespace}")


@contextlib.contextmanager
def private_journal() -> Iterator[BenchJournal]:
    """The journal on, as by default, but into a systemd-journald namespace of the
    bench's own (tests/support/journald.py), never the host's journal; Journal=no,
    said so, where no private journald can run (not root, no systemd-journald)."""
    from tests.support.journald import PrivateJournal, can_run_private

    if not can_run_private():
        yield BenchJournal({"journal": False}, "Journal=no (no private journald can run here)")
        return
    with PrivateJournal() as journal:
        yield BenchJournal({"journal_namespace": journal.namespace},
                           f"the journal on, into the private namespace {journal.namespace} "
                           "(JournalNamespace=)", journal)
