"""systemd's own tools for interoperability tests, without installing them.

Installing Debian's systemd-coredump would rewrite kernel.core_pattern and
core_pipe_limit (its sysctl.d file) under every other test, so we fetch the
package with ``apt-get download`` and unpack it with ``dpkg -x`` into a cache
directory; its ``coredumpctl`` runs from there against the installed
libsystemd-shared (same systemd version).  It reads the private journals of
the tests (tests/support/journald.py) with ``-D DIRECTORY``.
"""

from __future__ import annotations

import glob
import os
import pathlib
import subprocess
import tempfile

import pytest

from tests.support.kernel import crashes_discarded, no_core_file

CACHE = pathlib.Path("/var/cache/coredumpd-tests/systemd-coredump")


def _download(into: str) -> str | None:
    for attempt in range(2):
        result = subprocess.run(["apt-get", "download", "-q", "systemd-coredump"], cwd=into,
                                capture_output=True, text=True, check=False)
        debs = glob.glob(os.path.join(into, "systemd-coredump_*.deb"))
        if debs:
            return debs[0]
        if attempt == 0:  # no package lists yet on a fresh machine
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
    pytest.skip(f"apt-get download systemd-coredump failed: {result.stderr.strip()[-200:]}")
    return None


def coredumpctl() -> str:
    """Path of Debian's coredumpctl unpacked in a cache directory (skip if unobtainable)."""
    binary = CACHE / "usr" / "bin" / "coredumpctl"
    if binary.exists():
        return str(binary)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE.parent) as work:
        deb = _download(work)
        unpacked = os.path.join(work, "root")
        subprocess.run(["dpkg", "-x", str(deb), unpacked], check=True)
        os.replace(unpacked, CACHE)  # atomic: concurrent runs see all or nothing
    return str(binary)


def run_coredumpctl(*args: str) -> subprocess.CompletedProcess[str]:
    """systemd's coredumpctl ARGS.  systemd 252's aborts on some entries (an entry
    without COREDUMP_UID): its crash must reach no handler, least of all the
    machine's (tests/support/kernel.py: crashes_discarded)."""
    program = coredumpctl()  # fetched before the lock is taken
    with crashes_discarded():
        return subprocess.run([program, "--no-pager", *args], capture_output=True,
                              text=True, check=False, preexec_fn=no_core_file, timeout=120,
                              env={**os.environ, "SYSTEMD_COLORS": "0", "TZ": "UTC"})
