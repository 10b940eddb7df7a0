"""The tests' private journald (tests/support/journald.py) outlives journald's idle exit.

A namespace's journald exits 30 s after its last client (systemd's journald-server.c,
IDLE_TIMEOUT_USEC); without socket activation its queue goes with it.  That lost the
interop test's entry under load (row "journal: sent", coredumpctl: nothing, journald
dead) whenever 30 s passed without an entry: a slow test before it, a slow analysis.
"""

from __future__ import annotations

import time

import pytest

from coredumpd.report import journal
from tests.support import journald

IDLE_TIMEOUT_S = 30  # journald-server.c: IDLE_TIMEOUT_USEC


@pytest.fixture
def idle_journal():
    if not journald.can_run_private():
        pytest.skip("a private systemd-journald needs root, unshare and systemd-journald")
    with journald.PrivateJournal() as private:
        yield private


def test_private_journald_stores_an_entry_sent_after_its_idle_timeout(idle_journal) -> None:
    assert journal.send({"MESSAGE": "before", "PROBE": "before"},
                        path=idle_journal.socket_path) == "sent"
    idle_journal.wait_entry("PROBE=before")
    time.sleep(IDLE_TIMEOUT_S + 3)
    assert idle_journal.alive, idle_journal.log_text()[-500:]
    assert journal.send({"MESSAGE": "after", "PROBE": "after"},
                        path=idle_journal.socket_path) == "sent"
    assert idle_journal.wait_entry("PROBE=after")["MESSAGE"] == "after"
    # the held stream wrote nothing: the journal holds the two entries sent (and
    # journald's own start-up messages, which carry no PROBE)
    assert [e["PROBE"] for e in idle_journal.entries() if "PROBE" in e] == ["before", "after"]


def test_a_stopped_private_journald_restarts_with_its_stream(idle_journal) -> None:
    idle_journal.stop()
    assert not idle_journal.alive
    assert journal.send({"MESSAGE": "down"}, path=idle_journal.socket_path).startswith(
        "unreachable")
    idle_journal.start()
    assert idle_journal.alive
    assert journal.send({"MESSAGE": "up", "PROBE": "up"}, path=idle_journal.socket_path) == "sent"
    idle_journal.wait_entry("PROBE=up")
