"""Shared pytest set-up: markers, the skip rule for kernel tests, a private
journald fixture, and the end-of-run check that the host is as it was
(tests/support/hostcheck.py): a run that changed it fails, naming what changed."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import sys
import tempfile
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
DEFAULT_CONFIG = pytest.StashKey[str]()


def pytest_sessionstart(session: pytest.Session) -> None:
    _default_interrupt_signals()
    session.config.stash[HOST_BEFORE] = hostcheck.snapshot()
    session.config.stash[DEFAULT_CONFIG] = _private_default_config()


def _default_interrupt_signals() -> None:
    """SIGINT and SIGQUIT as in a terminal, for the run and every process it starts.

    A shell without job control starts a command run with ``&`` with both ignored, and
    an ignored signal stays ignored across fork and exec: the programs the tests send
    them to (a corectl client interrupted, a program that sends itself SIGQUIT) would
    not react, and those tests failed only when ./test.sh ran in the background."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _private_default_config() -> str:
    """A default configuration of the run's own, for corectl without --config.

    Its default is /etc/coredumpd/coredumpd.conf, else Directory=/var/lib/coredumpd:
    on a machine where coredumpd is installed, tests that ran ``corectl analyze``
    on a loose core filled that store's module cache, and ``corectl list`` saw the
    machine's crashes.  Here the default file names a store that does not exist
    (as on a fresh machine): in-process through coredumpd.config, in children
    through COREDUMPD_CONFIG.  Returns the directory, removed at the end."""
    import coredumpd.config
    from tests.support.crash import write_config
    directory = tempfile.mkdtemp(prefix="coredumpd-tests-default-")
    path = os.path.join(directory, "coredumpd.conf")
    write_config(path, os.path.join(directory, "store"), journal=False)
    coredumpd.config.DEFAULT_CONFIG_PATH = path
    os.environ["COREDUMPD_CONFIG"] = path
    return directory


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    journald.close_session()
    default_config = session.config.stash.get(DEFAULT_CONFIG, None)
    if default_config is not None:
        shutil.rmtree(default_config, ignore_errors=True)
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
