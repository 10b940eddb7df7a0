"""Shared pytest set-up: markers, the skip rule for kernel tests, a private
journald fixture, and the end-of-run check that the host is as it was
(tests/support/hostcheck.py): a run that changed it fails, naming what changed."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support import hostcheck, journald
from tests.support.journald import PrivateJournal
from tests.support.kernel import can_swap_core_pattern

HOST_BEFORE = pytest.StashKey[hostcheck.HostState]()
HOST_REPORT = pytest.StashKey[tuple[list[str], list[str]]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[HOST_BEFORE] = hostcheck.snapshot()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    journald.close_session()
    before = session.config.stash.get(HOST_BEFORE, None)
    if before is None:
        return
    changed, notes = hostcheck.differences(before, hostcheck.snapshot())
    session.config.stash[HOST_REPORT] = (changed, notes)
    if changed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if changed:  # also where no terminal summary is printed (-p no:terminal)
        print("\nTHE TEST RUN CHANGED THE HOST:\n  " + "\n  ".join(changed), file=sys.stderr)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    changed, notes = terminalreporter.config.stash.get(HOST_REPORT, ([], []))
    for note in notes:
        terminalreporter.write_line(f"host check: {note}")
    if changed:
        terminalreporter.section("the test run changed the host", sep="!", red=True, bold=True)
        for line in changed:
            terminalreporter.write_line(line, red=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if can_swap_core_pattern():
        return
    skip = pytest.mark.skip(reason="needs root and a writable kernel.core_pattern")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def private_journal() -> Iterator[PrivateJournal]:
    """A systemd-journald of its own (tests/support/journald.py), removed afterwards."""
    if not journald.can_run_private():
        pytest.skip("a private systemd-journald needs root, unshare and systemd-journald")
    with journald.PrivateJournal() as journal:
        yield journal
