"""The handler's per-crash state: what both phases of one crash read and write.

Phase 1 (:mod:`coredumpd.pipeline.handler`, while the kernel holds the crashed
process) fills it; phase 2 (:mod:`coredumpd.pipeline.store_crash`, after the
release) reads it to make the crash durable.  Both import this module, never
each other (systemd keeps the same in one struct, src/coredump/coredump-context.h).

Imported during phase 1, so it imports no more than that phase already needs
(no ``dataclasses``, ``typing`` or configuration at import time).
"""

from __future__ import annotations

import os
import time

from coredumpd.errors import CoredumpdError
from coredumpd.ingest.changed import read_held_objects
from coredumpd.ingest.stream import StreamResult

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from coredumpd.config import Config
    from coredumpd.ingest.args import HandlerArgs
    from coredumpd.ingest.output import TempCore
    from coredumpd.ingest.stream import CoreStream
    from coredumpd.store.lz4seek import SeekableLz4Writer

AT_SECURE = 23  # <linux/auxvec.h>
FACTS_VERSION = 1
JOURNALD_COMMS = ("systemd-journal", "systemd-journald")
# The kernel's specifier of each id; the core's NT_PRPSINFO has pr_<id> for each
# (it stands in when the argument is missing: run by hand, a pattern without it).
ID_SPECIFIERS = {"pid": "%P", "uid": "%u", "gid": "%g"}


class CrashState:
    """Everything the handler learns about one crash, phase by phase.

    ``started`` is the monotonic time the handler started (its caller's reading;
    now if not given): the handler itself needs none, a caller that measures it may.
    """

    def __init__(self, args: HandlerArgs, started: float | None = None) -> None:
        self.args = args
        self.started = time.monotonic() if started is None else started
        self.config: Config | None = None  # loaded when first needed (load_config)
        self.config_errors: list[str] = []  # what of it could not be read (defaults used)
        self.problems: list[str] = list(args.problems)
        self.missing: dict[str, str] = {}
        self.proc: dict[str, Any] = {}
        self.sender: dict[str, Any] | None = None
        self.pidfd_check: dict[str, Any] = {}
        self.stream = StreamResult()
        self.core_stream: CoreStream | None = None
        self.temp: TempCore | None = None
        self.writer: SeekableLz4Writer | None = None
        self.dir_fd = -1
        self.skip_core: str | None = None  # why no core is kept on purpose (state "none")
        self.core_failure: str | None = None  # why storing it failed (state "missing")
        self.held: dict[str, dict[str, Any]] = {}
        self.timestamp_us = time.time_ns() // 1000
        self.released = 0.0  # monotonic time when fd 0 was closed
        self.reap_wait_ms: float | None = None  # then waited for the process to exit
        self.record_pid = 0  # the PID the index row and the file name carry
        self.ids: dict[str, int | None] = {}  # pid, uid, gid: see resolve_ids()
        self.id_sources: dict[str, str | None] = {}
        self.proc_pid = args.pid  # whose /proc we read; None once found not to be the crasher
        self.row_id: str | None = None  # the index row, once inserted
        self.status = 0  # the handler's exit status, once finished
        self.front_door = "pipe"  # how the kernel handed the core over: pipe or socket
        self.args_source: str | None = None  # where args came from, if not the specifiers
        self.decision: str | None = None  # socket only: kernel (streamed) or reject
        self.timings_ms: dict[str, float] = {}  # socket only: accept -> decision, -> release

    @property
    def pid(self) -> int | None:
        return self.args.pid

    def comm(self) -> str:
        """The crashed process's comm: /proc, else NT_PRPSINFO, else ``unknown``."""
        if self.proc.get("comm"):
            return str(self.proc["comm"])
        if self.stream.prpsinfo is not None and self.stream.prpsinfo.pr_fname:
            return self.stream.prpsinfo.pr_fname
        return "unknown"

    def load_config(self) -> Config:
        """The configuration, loaded once and never fatal: a value that cannot be read
        keeps its default, an unreadable file gives the defaults; ``config_errors``
        says which (the row's problems and a kmsg line carry them)."""
        if self.config is None:
            self.adopt_config(*read_config(self.args.config_path))
        assert self.config is not None
        return self.config

    def adopt_config(self, config: Config, errors: tuple[str, ...]) -> None:
        """Use ``config`` as read by :func:`read_config` (the socket server reads it once
        for many crashes): its warnings and ``errors`` go to this crash's problems."""
        self.config = config
        self.problems.extend(config.warnings)
        self.config_errors.extend(errors)
        self.problems.extend(self.config_errors)

    def resolve_ids(self) -> None:
        """PID, UID and GID of the crash, each with its source (``id_sources``).

        ``%P %u %g`` first (the socket door's pidfd: ``args_source``); else the core's NT_PRPSINFO ``pr_pid pr_uid pr_gid``
        (the kernel's fill_psinfo() writes them as the process saw them: its own
        PID namespace and user namespace); else unknown (source None), and the
        index row's PID is the handler's own (a unique number).
        """
        info = self.stream.prpsinfo
        for field, specifier in ID_SPECIFIERS.items():
            value = getattr(self.args, field)
            source = (self.args_source or specifier) if value is not None else None
            if value is None and info is not None and (field != "pid" or info.pr_pid > 0):
                value, source = getattr(info, f"pr_{field}"), "NT_PRPSINFO"
                self.problems.append(f"no {specifier}: {field} taken from the core's NT_PRPSINFO")
            elif value is None:
                self.problems.append(f"no {specifier} and no NT_PRPSINFO: {field} unknown")
            self.ids[field] = value
            self.id_sources[field] = source
        self.record_pid = self.ids["pid"] if self.ids["pid"] is not None else os.getpid()

    def crasher_kind(self) -> str | None:
        """``pid1``, ``init.scope`` or ``journald`` when the crash is of one of those."""
        if self.args.pid == 1:
            return "pid1"
        if self.proc.get("unit") == "init.scope":
            return "init.scope"
        exe = self.proc.get("exe") or ""
        if self.comm() in JOURNALD_COMMS or exe.endswith("/systemd-journald"):
            return "journald"
        return None

    def at_secure(self) -> int | None:
        """AT_SECURE from the core's auxv, else from /proc/PID/auxv."""
        value = self.stream.auxv_value(AT_SECURE)
        if value is None:
            for a_type, a_val in self.proc.get("auxv") or []:
                if a_type == AT_SECURE:
                    return int(a_val)
        return value

    def build_facts(self) -> dict[str, Any]:
        """The ``facts`` JSON of the index (docs/ARCHITECTURE.md "Facts")."""
        args_facts = self.args.facts()
        args_facts["comm"] = self.comm()
        from coredumpd.ingest.container import describe as describe_container  # not held
        return {
            "version": FACTS_VERSION, "args": args_facts, "boot_id": read_boot_id(),
            "handler_pid": os.getpid(), "proc": self.proc,
            "mapped_objects": read_held_objects(self.held, self.missing, self._keeper()),
            "sender": self.sender, "stream": self.stream.summary(),
            "pidfd_check": self.pidfd_check, "front_door": self.front_door,
            "decision": self.decision, "timings_ms": self.timings_ms,
            "problems": self.problems,
            "missing": self.missing, "container": describe_container(self.proc),
            "id_sources": self.id_sources,
        }

    def _keeper(self) -> Callable[[int, str | None], str] | None:
        """Keeps copies of changed mapped files in the store (after the release only)."""
        if not self.held or self.released == 0.0:
            return None
        config = self.load_config()
        if config.binaries_max_use <= 0:
            return None
        from coredumpd.store.binaries import BinaryStore
        return BinaryStore(config.directory, config.binaries_max_use).keep


def read_config(path: str | None) -> tuple[Config, tuple[str, ...]]:
    """The configuration at ``path``, never fatal (:meth:`CrashState.load_config`), and what
    of it could not be read."""
    from coredumpd.config import Config, load_config
    try:
        config = load_config(path, strict=False)
    except CoredumpdError as err:
        return Config(), (f"configuration: {err}; all defaults are used",)
    return config, tuple(f"configuration: {error}" for error in config.errors)


def read_boot_id() -> str:
    """This boot's ID, or zeros when the kernel does not say."""
    from coredumpd.store.naming import read_boot_id as naming_boot_id
    try:
        return naming_boot_id()
    except CoredumpdError:
        return "0" * 32
