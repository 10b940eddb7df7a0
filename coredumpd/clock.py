"""How precisely a process's start time is known.

proc(5): /proc/PID/stat field 22, starttime, counts clock ticks since boot
(sysconf(_SC_CLK_TCK), USER_HZ: 100 on x86-64), so the start time is only
known to a tick.  A file whose mtime falls within two ticks of it cannot be
said to have changed *after* the process started.
"""

from __future__ import annotations

import os


def start_time_slack_ns() -> int:
    """Two clock ticks, in nanoseconds."""
    return 2 * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
