"""Where corectl's text goes: a pager on a terminal, the stream otherwise.

As coredumpctl does (systemd src/shared/pager.c), output to a terminal goes
through ``$PAGER`` (default ``less`` with ``LESS=FRSXMK``: quit if one
screen, raw colour codes, no init) unless ``--no-pager``; colours are used
only on a terminal, never when ``NO_COLOR`` is set or ``TERM=dumb``
(https://no-color.org).

A corectl run by the analysis worker of ``coredumpd serve`` (coredumpd.cli.worker)
has the user's terminal as its stdout but no controlling terminal: it hands
the text to the ``corectl`` client, which pages it (:data:`handoff`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TextIO

from coredumpd.report.text import Style


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Output:
    """Collects the text of one command, then writes or pages it."""

    def __init__(self, env: Mapping[str, str], *, pager: bool, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.env = env
        self.tty = _isatty(self.stream)
        self.use_pager = pager and self.tty
        self.style = Style(enabled=self.tty and "NO_COLOR" not in env
                           and env.get("TERM") != "dumb")

    def emit(self, text: str) -> None:
        """Write ``text`` (already escaped) to the pager or the stream."""
        command = self._pager_command() if self.use_pager else None
        if command is None:
            self.stream.write(text)
            self.stream.flush()
            return
        if handoff is not None:
            handoff(command, text)
            return
        page(command, text, self.env, self.stream)

    def _pager_command(self) -> list[str] | None:
        pager = self.env.get("COREDUMPD_PAGER", self.env.get("PAGER", "less"))
        if pager.strip() in ("", "cat"):
            return None
        import shlex  # with subprocess, only on a terminal: start-up when piped

        return shlex.split(pager)


# Set in a corectl run by the analysis worker: who pages instead of this process.
handoff: Callable[[list[str], str], None] | None = None


def page(command: list[str], text: str, env: Mapping[str, str], stream: TextIO) -> None:
    """Show ``text`` through the pager ``command`` (environment ``env``) on ``stream``."""
    import subprocess

    pager_env = dict(env)
    pager_env.setdefault("LESS", "FRSXMK")
    pager_env.setdefault("LESSCHARSET", "utf-8")
    stream.flush()
    try:
        pager = subprocess.Popen(command, stdin=subprocess.PIPE, env=pager_env,
                                 stdout=stream.fileno())
    except OSError:
        stream.write(text)  # no pager installed: print directly
        stream.flush()
        return
    assert pager.stdin is not None
    try:
        pager.stdin.write(text.encode("utf-8", "surrogateescape"))
        pager.stdin.close()
    except BrokenPipeError:
        pass  # the user quit the pager early
    with ignoring_sigint():  # Ctrl-C belongs to the pager (less)
        pager.wait()


@contextlib.contextmanager
def ignoring_sigint() -> Iterator[None]:
    """Ignore SIGINT while a child (pager, debugger) owns the terminal."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
