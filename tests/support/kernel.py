"""Safe use of kernel.core_pattern by tests, fixture scripts and benchmarks.

core_pattern is one setting for the whole machine, so every user takes an
exclusive lock first (several test runs may share a machine), saves the old
values and restores them in ``finally`` — and at interpreter exit as a last
resort.  Import this module from anywhere with ``tests.support.kernel``; it
depends on nothing but the standard library.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

CORE_PATTERN = "/proc/sys/kernel/core_pattern"
CORE_PIPE_LIMIT = "/proc/sys/kernel/core_pipe_limit"
LOCK_PATH = "/run/coredumpd-test-core-pattern.lock"
PATTERN_MAX = 127  # the kernel's CORENAME_MAX_SIZE is 128 including the NUL
_last_restore = [0.0]  # time.monotonic() when this process last put the values back


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().rstrip("\n")


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(value)


def can_swap_core_pattern() -> bool:
    """True when this process may rewrite core_pattern (root, /proc writable)."""
    return os.geteuid() == 0 and os.access(CORE_PATTERN, os.W_OK)


@contextlib.contextmanager
def core_pattern(pattern: str, pipe_limit: int | None = None) -> Iterator[None]:
    """Set core_pattern (and core_pipe_limit) for the duration of the block.

    Holds an exclusive lock for the whole block, so blocks never interleave
    across processes; restores the saved values on any exit.
    """
    if len(pattern.encode()) > PATTERN_MAX:
        raise ValueError(f"core_pattern over {PATTERN_MAX} bytes: {pattern!r}")
    with settings_restored():
        if pipe_limit is not None:
            _write(CORE_PIPE_LIMIT, str(pipe_limit))
        _write(CORE_PATTERN, pattern)
        yield


def current_settings() -> tuple[str, str]:
    """(core_pattern, core_pipe_limit) now; stable only while the lock is held."""
    return _read(CORE_PATTERN), _read(CORE_PIPE_LIMIT)


@contextlib.contextmanager
def settings_restored() -> Iterator[tuple[str, str]]:
    """Hold the lock; on any exit put core_pattern and core_pipe_limit back as found.

    For a block that lets the product set them itself (``coredumpd install``);
    yields the values found.
    """
    lock = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved_pattern = _read(CORE_PATTERN)
        saved_limit = _read(CORE_PIPE_LIMIT)

        def restore() -> None:
            _write(CORE_PATTERN, saved_pattern)
            _write(CORE_PIPE_LIMIT, saved_limit)
            _last_restore[0] = time.monotonic()

        atexit.register(restore)
        try:
            yield saved_pattern, saved_limit
        finally:
            restore()
            atexit.unregister(restore)
    finally:
        os.close(lock)  # releases the flock


@contextlib.contextmanager
def crashes_discarded() -> Iterator[str]:
    """For a block that runs programs which may crash (systemd's coredumpctl aborts on
    some entries): no crash in it reaches any handler, the machine's included.

    RLIMIT_CORE alone cannot promise that: the kernel ignores it for pipe and
    socket patterns (a process with RLIMIT_CORE 0 still went to the machine's
    ``coredumpd serve`` and got a row and a journal entry there).  So the block
    holds the lock with core_pattern set to a plain file pattern in a fresh
    private directory: the kernel then honours RLIMIT_CORE, and with the limit 0
    (:func:`no_core_file`, for the children) writes nothing and starts nothing.
    A child that raised its limit would leave its core in that directory, which
    is removed afterwards.  Yields the directory.  Where core_pattern cannot be
    swapped (not root) the block runs as it is: RLIMIT_CORE 0 is all there is.
    """
    directory = tempfile.mkdtemp(prefix="coredumpd-discard-", dir="/tmp")
    try:
        if not can_swap_core_pattern():
            yield directory
            return
        with core_pattern(f"{directory}/core.%P"):
            yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def no_core_file() -> None:
    """``preexec_fn`` for a child run under :func:`crashes_discarded`: RLIMIT_CORE 0."""
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def last_restore() -> float:
    """``time.monotonic()`` when this process last restored core_pattern (0: never).

    A crash whose dump began before that moment may still be starting the handler
    of the pattern that was in force (the kernel reads the pattern first, then
    starts the handler)."""
    return _last_restore[0]


def raw_core_pattern(directory: str) -> str:
    """A pattern that saves raw cores as DIRECTORY/core.<global pid>.

    The kernel splits core_pattern at spaces without any shell quoting, and
    starts the handler with an empty environment, hence one argument for
    ``sh -c`` with no spaces and absolute paths.
    """
    if " " in directory:
        raise ValueError("core_pattern arguments cannot contain spaces")
    return f"|/bin/sh -c /bin/cat>{directory}/core.%P"
