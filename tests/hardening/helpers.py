"""Shared pieces of the hardening tests: crashing under a pattern with extra
sysctls, tmpfs mounts, the kernel log, and index rows without waiting for an
analysis that may never come."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Any

from tests.support.kernel import core_pattern

SUID_DUMPABLE = "/proc/sys/fs/suid_dumpable"


@contextlib.contextmanager
def sysctl(path: str, value: str) -> Iterator[None]:
    """Set a /proc/sys value for the block and restore it (call inside core_pattern)."""
    with open(path, encoding="ascii") as handle:
        saved = handle.read().strip()
    with open(path, "w", encoding="ascii") as handle:
        handle.write(value)
    try:
        yield
    finally:
        with open(path, "w", encoding="ascii") as handle:
            handle.write(saved)


def crash_under(pattern: str, argv: Sequence[str], *, user: int | None = None,
                cwd: str | None = None, env: dict[str, str] | None = None,
                suid_dumpable: str | None = None, timeout: float = 60,
                pipe_limit: int = 16) -> tuple[int, int, float]:
    """Run ``argv`` under ``pattern``; (pid, returncode, seconds until reaped).

    The returncode is Popen's (``-11`` for SIGSEGV).  The lock on core_pattern
    is held only while the program runs; reaping means the handler has closed
    the pipe (FACTS.md), so the seconds measure the handler's phase 1.
    """
    def unlimited() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)

    with core_pattern(pattern, pipe_limit):
        dumpable = sysctl(SUID_DUMPABLE, suid_dumpable) if suid_dumpable else \
            contextlib.nullcontext()
        with dumpable:
            started = time.monotonic()
            process = subprocess.Popen(
                list(argv), cwd=cwd, env=env, user=user, group=user,
                extra_groups=[] if user is not None else None, preexec_fn=unlimited,  # noqa: PLW1509
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                returncode = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
            return process.pid, returncode, time.monotonic() - started


@contextlib.contextmanager
def tmpfs(path: str, size: str, read_only: bool = False) -> Iterator[str]:
    """A small tmpfs mounted at ``path`` (created), unmounted afterwards."""
    os.makedirs(path, exist_ok=True)
    options = f"size={size},mode=0755" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def kmsg_lines(since_us: int = 0) -> list[str]:
    """The kernel log records (text after the header) newer than ``since_us`` of uptime."""
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    lines = []
    try:
        while True:
            try:
                record = os.read(fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                break
            except BrokenPipeError:  # overwritten while reading: go on
                continue
            header, _, text = record.partition(";")
            fields = header.split(",")
            if len(fields) >= 3 and fields[2].isdigit() and int(fields[2]) >= since_us:
                lines.append(text.rstrip("\n"))
    finally:
        os.close(fd)
    return lines


def uptime_us() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def rows_for(config_path: str, pid: int, timeout: float = 30,
             analysed: bool = False) -> list[dict[str, Any]]:
    """Index rows of ``pid`` (waiting until one exists, and analysed if asked)."""
    from tests.hardening.storm import _index_rows

    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = [row for row in _index_rows(config_path) if row.get("pid") == pid]
        if rows and (not analysed or all(r.get("analysis_state") != "pending" for r in rows)):
            return rows
        time.sleep(0.1)
    return rows
