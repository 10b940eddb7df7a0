"""corectl's exit statuses (documented in corectl(1), EXIT STATUS)."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """What ``corectl`` returns; ``debug`` returns the debugger's own status."""

    OK = 0
    NO_MATCH = 1  # "No coredumps found.", as coredumpctl
    USAGE = 2  # argparse's status for a bad command line; also a bad configuration file
    ERROR = 3  # configuration, store, unreadable core...
    NO_CORE = 4  # the crash matched but its core is not stored
    INTERRUPTED = 130  # 128 + SIGINT, as shells report it
