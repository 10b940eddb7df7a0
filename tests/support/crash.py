"""Crash real programs under the real coredumpd handler, for tests of any layer.

Usage::

    from tests.support.crash import compile_c, registered_handler

    @pytest.mark.kernel
    def test_null_deref(tmp_path):
        prog = compile_c("int main(void){ *(volatile int *)0 = 1; }", tmp_path)
        with registered_handler(tmp_path, rate_limit_burst=100) as handler:
            row = handler.crash([prog])          # waits for the index row + analysis
        assert row["signal"] == 11 and row["core_state"] == "present"

``compile_c(source, out_dir, flags=())`` compiles C source text (or a path to a
``.c`` file) with gcc (``-g -O0 -fno-omit-frame-pointer`` unless ``flags``
says otherwise; ``-pthread`` always) and returns the executable's path.

``registered_handler(tmp_path, **config_overrides)`` writes a configuration
file (``Directory=tmp_path/cores`` unless overridden; keyword names are the
fields of :class:`coredumpd.config.Config`, e.g. ``storage="none"``,
``external_size_max=1 << 20``, ``journal=False``; the journal entries go to the
run's private journald unless ``journal_namespace`` names another, see
:func:`write_config`) and yields a :class:`RegisteredHandler`:

- ``crash(argv, *, env=None, cwd=None, wait_analysis=True, timeout=60,
  rlimit_core=RLIM_INFINITY, pidfile=None)`` runs the program with
  kernel.core_pattern pointing at the real handler (the venv's ``coredumpd``
  script, absolute path, ``--config`` the file above) — the shared lock is
  held only while the program runs — then waits for its index row (and, with
  ``wait_analysis``, for ``analysis_state`` to leave ``pending``) and returns
  the row as a dict (CrashRecord fields; ``facts``, ``analysis`` and
  ``path_taken`` are dicts, empty text columns are ``""``).  ``argv[0]`` must
  be a path.  For a
  program that crashes a child rather than itself, ``pidfile`` names a file
  where the program writes the crashing PID (else the direct child's PID is
  looked up).
- ``wait_row(pid, wait_analysis=True, timeout=60)``: the same wait, for a
  crash you caused yourself (e.g. with ``core_pattern(handler.pattern)``).
- ``config`` (the loaded Config), ``config_path``, ``directory``, ``index``
  (a :class:`coredumpd.store.index.Index` on the store), ``pattern``.

The configuration file lives in a short directory under /tmp because the
whole core_pattern must fit in 127 bytes; it is removed on exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from coredumpd.model import CrashRecord
from coredumpd.pipeline import install
from tests.support import hostcheck, journald
from tests.support.kernel import core_pattern, last_restore

REPO = pathlib.Path(__file__).resolve().parents[2]
HANDLER = str(pathlib.Path(sys.executable).parent / "coredumpd")
SPECIFIERS = "%P %i %p %u %g %s %t %c %h %d %F"
PIPE_LIMIT = install.PIPE_LIMIT  # what `coredumpd install` sets
DEFAULT_FLAGS = ("-g", "-O0", "-fno-omit-frame-pointer")
# The kernel execs the handler before it writes a byte of the core: a crash that
# read a test's pattern has its handler running well within this after the restore.
HANDLER_EXEC_GRACE_S = 0.3


def compile_c(source: str | os.PathLike[str], out_dir: str | os.PathLike[str],
              flags: Sequence[str] = DEFAULT_FLAGS, name: str | None = None,
              libs: Sequence[str] = ()) -> str:
    """Compile C source text or a ``.c`` path with gcc; return the executable path.

    ``libs`` (``-lfoo``, ``-L...``) go after the source, where the linker needs them.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = str(source)
    if "\n" not in text and text.endswith(".c") and os.path.exists(text):
        src = pathlib.Path(text)
    else:
        src = pathlib.Path(tempfile.mkstemp(suffix=".c", dir=out_dir)[1])
        src.write_text(text)
    exe = out_dir / (name or src.stem)
    subprocess.run(["gcc", *flags, "-pthread", "-o", str(exe), str(src), *libs], check=True,
                   capture_output=True, text=True)
    return str(exe)


def _ini_keys() -> dict[str, tuple[str, str]]:
    """Config field -> (section, key)."""
    from coredumpd.config import KEYS
    return {key.field: (key.section, key.name) for key in KEYS}


def _ini_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def write_config(path: str | os.PathLike[str], directory: str, **overrides: Any) -> None:
    """Write a [Coredump] INI file; keyword names are Config field names.

    The journal is never the host's: without ``journal_namespace`` the entries go to
    the run's private journald (:func:`tests.support.journald.session_journal`),
    or, where none can run, ``Journal=no``.  ``journal=True`` without a namespace
    is refused.
    """
    overrides = {**overrides, **_journal_settings(overrides)}
    hostcheck.note_store(directory)
    keys = _ini_keys()
    sections: dict[str, list[str]] = {"Coredump": [f"Directory={directory}"]}
    for field, value in overrides.items():
        if field not in keys:
            raise TypeError(f"unknown Config field {field!r}")
        section, key = keys[field]
        sections.setdefault(section, []).append(f"{key}={_ini_value(value)}")
    lines = [line for section, entries in sections.items()
             for line in (f"[{section}]", *entries)]
    pathlib.Path(path).write_text("\n".join(lines) + "\n")


def _journal_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    if overrides.get("journal_namespace") or overrides.get("journal") is False:
        return {}
    if overrides.get("journal") is True:
        raise ValueError("journal=True needs journal_namespace=: tests never write into the "
                         "host's journal (tests/support/journald.py)")
    session = journald.session_journal()
    if session is None:
        return {"journal": False}
    return {"journal_namespace": session.namespace}


def handler_pattern(config_path: str | None = None, handler: str = HANDLER) -> str:
    """The core_pattern registering the venv's handler (what `coredumpd install` writes),
    or ``handler`` (e.g. tests/support/measured_handler.write_script's)."""
    pattern = f"|{handler} {SPECIFIERS}"
    if config_path:
        pattern += f" --config {config_path}"
    return pattern


def _row_dict(record: CrashRecord | None) -> dict[str, Any]:
    """An index record as the dict of its columns (JSON columns as JSON)."""
    return record.to_json() if record is not None else {}


@dataclasses.dataclass
class RegisteredHandler:
    """The handler registered for one test: see the module docstring."""

    config_path: str
    directory: str
    pattern: str

    @property
    def config(self) -> Any:
        from coredumpd.config import load_config
        return load_config(self.config_path)

    @property
    def index(self) -> Any:
        from coredumpd.store.index import Index
        return Index(self.config.index_path)

    def crash(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
              cwd: str | None = None, wait_analysis: bool = True, timeout: float = 60,
              rlimit_core: int = resource.RLIM_INFINITY,
              pidfile: str | None = None) -> dict[str, Any]:
        """Run ``argv`` until it dies under the handler; return its index row."""
        pid, status = self._run(argv, env, cwd, timeout, rlimit_core)
        if pidfile is not None:
            pid = int(pathlib.Path(pidfile).read_text().split()[0])
        elif not os.WIFSIGNALED(status):
            raise AssertionError(f"{argv[0]} did not die of a signal (status {status:#x})")
        return self.wait_row(pid, wait_analysis=wait_analysis, timeout=timeout)

    def _run(self, argv: Sequence[str], env: dict[str, str] | None, cwd: str | None,
             timeout: float, rlimit_core: int) -> tuple[int, int]:
        def child_setup() -> None:
            resource.setrlimit(resource.RLIMIT_CORE, (rlimit_core, rlimit_core))
        with core_pattern(self.pattern, PIPE_LIMIT):
            proc = subprocess.Popen(list(argv), env=env, cwd=cwd, preexec_fn=child_setup,  # noqa: PLW1509
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                raise
        return proc.pid, proc.returncode if proc.returncode >= 0 else _status(proc.returncode)

    def wait_row(self, pid: int, *, wait_analysis: bool = True,
                 timeout: float = 60) -> dict[str, Any]:
        """Poll the index until the crash of global ``pid`` is there (and analysed)."""
        deadline = time.monotonic() + timeout
        row: dict[str, Any] = {}
        while time.monotonic() < deadline:
            row = self._find(pid)
            if row and (not wait_analysis or row.get("analysis_state") != "pending"):
                return row
            time.sleep(0.05)
        raise TimeoutError(f"no {'analysed ' if wait_analysis else ''}index row for pid {pid}"
                           f" in {self.directory} after {timeout}s (last: {row or None})")

    def _find(self, pid: int) -> dict[str, Any]:
        if not os.path.exists(os.path.join(self.directory, "index.sqlite")):
            return {}
        index = self.index
        try:
            rows = [_row_dict(r) for r in index.find([str(pid)])]
        finally:
            close = getattr(index, "close", None)
            if close:
                close()
        return rows[-1] if rows else {}


@dataclasses.dataclass
class Installation:
    """What :func:`installed` did: the launcher, the kernel settings found before
    install, those install set, and those uninstall left (read under the lock)."""

    launcher: str
    found: tuple[str, str]  # (core_pattern, core_pipe_limit) before install
    installed: tuple[str, str]
    after_uninstall: tuple[str, str] | None = None


@contextlib.contextmanager
def installed(config_path: str) -> Iterator[Installation]:
    """``coredumpd install --config CONFIG_PATH`` as a user runs it (its launcher, its
    core_pattern, its core_pipe_limit), for the block; then ``uninstall``, and the
    lock of tests/support/kernel.py restores whatever was there before.  The
    launcher and the saved values live in a short /tmp directory, not under
    /usr/local/lib or /var/lib/coredumpd."""
    from tests.support.kernel import current_settings, settings_restored
    short = tempfile.mkdtemp(prefix="cdi", dir="/tmp")
    saved, launchers = os.path.join(short, "saved"), os.path.join(short, "lib")
    try:
        with settings_restored() as found:
            install.install(config_path, saved_path=saved, launcher_dir=launchers)
            done = Installation(os.path.join(launchers, "coredumpd"), found, current_settings())
            try:
                yield done
            finally:
                install.uninstall(saved_path=saved, launcher_dir=launchers)
                done.after_uninstall = current_settings()
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _status(returncode: int) -> int:
    """Popen's negative returncode back to a wait status (killed by a signal)."""
    return -returncode & 0x7F


@contextlib.contextmanager
def registered_handler(tmp_path: str | os.PathLike[str],
                       **config_overrides: Any) -> Iterator[RegisteredHandler]:
    """Write a config under a short /tmp directory and yield a RegisteredHandler.

    The config is removed only once no handler or analysis job of it runs any
    more (:func:`wait_for_handlers`): one that loaded it late would fall back to
    the default store, /var/lib/coredumpd, and the default journal."""
    directory = str(config_overrides.pop("directory", pathlib.Path(tmp_path) / "cores"))
    os.makedirs(directory, exist_ok=True)
    short = tempfile.mkdtemp(prefix="cd", dir="/tmp")
    config_path = os.path.join(short, "c.conf")
    try:
        write_config(config_path, directory, **config_overrides)
        yield RegisteredHandler(config_path, directory, handler_pattern(config_path))
    finally:
        try:
            wait_for_handlers(config_path)
        finally:
            shutil.rmtree(short, ignore_errors=True)


def running_with(needle: bytes) -> bool:
    """Whether some process has ``needle`` in its command line."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if needle in handle.read():
                        return True
            except OSError:
                continue
    return False


def wait_for_handlers(config_path: str, timeout: float = 60) -> bool:
    """Until no handler of ``config_path`` can still start or run; False on timeout.

    Call it after the test's pattern was restored.  While it was registered any
    crash on the machine (another test run's too) went to it, and the kernel
    starts the handler a moment after it read the pattern (it formats the
    pattern, then execs the handler before it writes a byte of the core).  So
    first :data:`HANDLER_EXEC_GRACE_S` must have passed since the last restore
    (tests.support.kernel.last_restore), then no process may run with
    ``config_path`` on its command line (pipe handlers, analysis jobs)."""
    deadline = time.monotonic() + timeout
    time.sleep(max(0.0, last_restore() + HANDLER_EXEC_GRACE_S - time.monotonic()))
    needle = config_path.encode()
    while running_with(needle):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
