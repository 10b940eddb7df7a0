"""A listening systemd-journald for the tests and the set-up script.

A journal socket file can outlive its journald: ``/run`` is not a tmpfs on
every machine, so the file's existence says nothing.  Whether a daemon is
listening is what counts: connecting a datagram socket to the path is refused
(ECONNREFUSED) when none is.  Debian's journald runs standalone when started
by hand (shared/FACTS.md); it unlinks a stale socket file and binds anew.

``python -m tests.support.journald`` starts one when none listens (root only)
and exits 0 when one listens afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

JOURNAL_SOCKET = "/run/systemd/journal/socket"
JOURNALD = "/lib/systemd/systemd-journald"


def listening(path: str = JOURNAL_SOCKET) -> bool:
    """True when a process accepts datagrams on the journal socket."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def ensure(wait_s: float = 10.0) -> bool:
    """Start a standalone journald unless one listens; True when one listens."""
    if listening():
        return True
    if os.geteuid() != 0 or not os.access(JOURNALD, os.X_OK):
        return False
    subprocess.Popen([JOURNALD], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if listening():
            return True
        time.sleep(0.05)
    return False


if __name__ == "__main__":
    ok = ensure()
    if not ok:
        print(f"no systemd-journald listens on {JOURNAL_SOCKET}", file=sys.stderr)
    sys.exit(0 if ok else 1)
