"""On a terminal: colours and the pager; piped: plain text (analyze needs no store)."""

from __future__ import annotations

import os
import pathlib
import pty
import subprocess
import sys

from tests.support.terminal import read_all as terminal_output

CORE = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "cores" / "abort" / "core.lz4"


def _env(**extra: str) -> dict[str, str]:
    """PATH and the run's default configuration (tests/conftest.py: no machine store)."""
    return {"PATH": os.environ["PATH"],
            "COREDUMPD_CONFIG": os.environ.get("COREDUMPD_CONFIG", ""), **extra}


def run_on_terminal(args: list[str], **env: str) -> tuple[int, str]:
    """Run corectl with stdout on a pseudo-terminal; return (status, what it showed)."""
    controller, terminal = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "coredumpd.cli.corectl", *args],
                             stdout=terminal, stderr=subprocess.PIPE,
                             env=_env(TERM="xterm", **env))
    os.close(terminal)
    shown = terminal_output(controller)
    assert child.wait(60) == 0, child.stderr.read() if child.stderr else ""
    return child.returncode, shown.decode("utf-8", "replace")


def test_terminal_gets_colours_and_the_pager() -> None:
    _status, shown = run_on_terminal(["analyze", str(CORE)], PAGER="sed s/^/PAGED:/")
    assert "PAGED:" in shown and "\x1b[1m" in shown


def test_no_pager_and_no_color() -> None:
    _status, shown = run_on_terminal(["--no-pager", "analyze", str(CORE)],
                                     PAGER="sed s/^/PAGED:/", NO_COLOR="1")
    assert "PAGED:" not in shown and "\x1b[" not in shown and "Root cause" in shown


def test_piped_output_is_plain() -> None:
    result = subprocess.run([sys.executable, "-m", "coredumpd.cli.corectl", "analyze",
                             str(CORE)], capture_output=True, text=True, check=True,
                            env=_env(PAGER="sed s/^/PAGED:/"))
    assert "PAGED:" not in result.stdout and "\x1b" not in result.stdout
