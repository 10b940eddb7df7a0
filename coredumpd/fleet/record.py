"""The fleet record: what one crash tells the fleet database, built from a CrashRecord.

It carries the index row's metadata, the annotations (id and confidence),
the signature and its frames, the crashed thread's frames, the modules with
their build-ids and package (the ELF package note, systemd's "Package
Metadata for Core Files", https://systemd.io/ELF_PACKAGE_METADATA/, else
dpkg's database: :mod:`coredumpd.fleet.dpkg`), the time of the analysis, and
who holds the core: machine-id, host name, container id (the facts' container, as
:mod:`coredumpd.ingest.container` found it: the same id as the index's
``container_id`` column and the journal's ``COREDUMP_CONTAINER_ID``).

Never the core's memory: no registers, no disassembly, no annotation evidence,
titles or advice (evidence quotes bytes read from the process, and some titles
too: the abort message, a panic message, an exception's what()), no facts
(environment, /proc maps), no frame's ``cfa``.  The core itself stays
on the host; ``core_path`` says where.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, ClassVar

from coredumpd.errors import CoredumpdError
from coredumpd.fleet import dpkg
from coredumpd.ingest.container import from_cgroup
from coredumpd.model import CrashRecord, Frame, Module, Record, Versioned

MACHINE_ID_PATH = "/etc/machine-id"
# binutils' --package-metadata: owner "FDO", type NT_FDO_PACKAGING_METADATA
FDO_OWNER = "FDO"
NT_FDO_PACKAGING_METADATA = 0xCAFE1A7E
PACKAGE_KEYS = ("type", "name", "version", "architecture", "os", "osVersion")
MAX_PACKAGE_NOTE = 4096
# The row's columns a fleet reader may need (never facts, never the analysis JSON).
ROW_FIELDS = ("pid", "tid", "ns_pid", "uid", "gid", "signal", "si_code", "fault_address",
              "comm", "exe", "cmdline", "unit", "cgroup", "core_path", "core_state",
              "core_reason", "core_size", "stored_size", "analysis_state")


class FleetModule(Record):
    """A mapped file: where, which build, which package."""

    path: str
    build_id: str | None = None
    package: dict[str, str] | None = None  # the ELF package note's keys
    package_from: str | None = None  # "note" (the ELF package note) or "dpkg" (its database)


class FleetRecord(Versioned):
    """One crash as the fleet database stores it (the ``record`` column)."""

    VERSION: ClassVar[int] = 2  # 2: analyzed_us
    version: int = 2
    crash_id: str = ""
    analyzed_us: int = 0  # when this record was built: a newer analysis replaces an older
    machine_id: str = ""
    host: str = ""
    boot_id: str = ""
    container_id: str | None = None
    timestamp_us: int = 0
    signal_name: str | None = None
    row: dict[str, Any] = {}  # noqa: RUF012 - a record field (copied per instance)
    root_cause: str | None = None
    signature: str | None = None
    signature_frames: list[str] = []  # noqa: RUF012 - a record field (copied per instance)
    annotations: list[dict[str, Any]] = []  # noqa: RUF012 - a record field (copied per instance)
    frames: list[Frame] = []  # noqa: RUF012 - a record field (copied per instance)
    modules: list[FleetModule] = []  # noqa: RUF012 - a record field (copied per instance)
    product_version: str | None = None  # the executable's package version, else its build-id
    _readers: ClassVar[dict[str, Any]] = {"frames": Frame, "modules": FleetModule}


def read_machine_id(path: str = MACHINE_ID_PATH) -> str:
    """/etc/machine-id (machine-id(5)), or "" when it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def container_id(record: CrashRecord) -> str | None:
    """The id of the container the process ran in: the facts' (64 hex digits of a
    docker, podman, containerd or CRI-O container; an nspawn machine's name), else,
    for a row stored before the facts had a container, the same parser over its cgroup."""
    found = record.container.get("id") or record.container_id
    if not found and record.cgroup:
        found = (from_cgroup(record.cgroup) or {}).get("id")
    return str(found) if found else None


def package_note(path: str, build_id: str | None) -> dict[str, str] | None:
    """The package note of the ELF file at ``path``, only when its build-id is ``build_id``
    (a file replaced since the crash describes another build)."""
    from coredumpd.elf.elffile import ElfFile

    try:
        with ElfFile.open(path) as elf:
            file_id = elf.build_id
            if build_id is None or file_id is None or file_id.hex() != build_id:
                return None
            for note in elf.notes():
                if note.name == FDO_OWNER and note.type == NT_FDO_PACKAGING_METADATA:
                    return _package_json(note.desc)
    except (CoredumpdError, OSError):
        return None
    return None


def _package_json(desc: bytes) -> dict[str, str] | None:
    try:
        data = json.loads(desc[:MAX_PACKAGE_NOTE].rstrip(b"\0").decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {key: str(data[key]) for key in PACKAGE_KEYS if isinstance(data.get(key), str)}


def _modules(record: CrashRecord, dpkg_admin: str) -> list[FleetModule]:
    """One per mapped file, with its package: the ELF note where the file has one,
    else dpkg's database where the file is still the one that ran (:func:`same_inode`)."""
    analysis = record.analysis
    if analysis is None:
        return []
    modules: dict[str, FleetModule] = {}
    ask_dpkg = []
    for module in analysis.modules:
        if module.path in modules:  # one row per mapping in the analysis, one per file here
            continue
        note = _package_of(module)
        modules[module.path] = FleetModule(path=module.path, build_id=module.build_id,
                                           package=note, package_from="note" if note else None)
        if note is None and _package_candidate(module) and same_inode(record, module.path):
            ask_dpkg.append(module.path)
    for path, package in dpkg.packages(ask_dpkg, dpkg_admin).items() if ask_dpkg else ():
        modules[path].package, modules[path].package_from = package, "dpkg"
    return list(modules.values())


def _package_candidate(module: Module) -> bool:
    return not (module.deleted or module.replaced or module.modified_in_place) and \
        module.path.startswith("/") and module.state in (None, "same")


def _package_of(module: Module) -> dict[str, str] | None:
    if module.deleted or module.replaced or not module.path.startswith("/"):
        return None
    return package_note(module.path, module.build_id)


def same_inode(record: CrashRecord, path: str) -> bool:
    """Whether the file at ``path`` is, now, the inode the process mapped at dump time
    (the handler's ``proc.files`` facts) and the process saw this machine's files (no
    other mount namespace or root).  Then the package database still describes the file
    that ran: dpkg writes every file of an upgraded package to a new inode.  Read at
    analysis time, not in the capture, which must stay fast; and a reanalysis weeks
    later, after an upgrade, gets no version rather than the new one."""
    facts = record.facts
    proc = facts.proc if facts is not None else {}
    files = proc.get("files") if isinstance(proc, dict) else None
    entry = files.get(path) if isinstance(files, dict) else None
    if not isinstance(entry, dict) or "host" in entry:
        return False
    mapped = entry.get("mapped")
    if not isinstance(mapped, dict) or not isinstance(mapped.get("inode"), int):
        return False
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino, now.st_mtime_ns) == \
        (mapped.get("dev"), mapped.get("inode"), mapped.get("mtime_ns"))


def _product_version(record: CrashRecord, modules: list[FleetModule]) -> str | None:
    for module in modules:
        if module.path == record.exe:
            if module.package and module.package.get("version"):
                return module.package["version"]
            return f"build-id {module.build_id[:12]}" if module.build_id else None
    return None


def _crashed_frames(record: CrashRecord) -> list[Frame]:
    """The crashed thread's frames, without ``cfa``: a stack address, read from the
    process's registers, that no fleet reader needs."""
    analysis = record.analysis
    if analysis is None or not analysis.threads:
        return []
    thread = analysis.crashed_thread or analysis.threads[0]
    return [frame.replace(cfa=None) for frame in thread.frames]


def _annotations(record: CrashRecord) -> list[dict[str, Any]]:
    analysis = record.analysis
    if analysis is None:
        return []
    return [{"id": a.id, "confidence": a.confidence}
            for a in analysis.annotations]


def _signal_name(record: CrashRecord) -> str | None:
    analysis = record.analysis
    if analysis is not None and analysis.signal is not None and analysis.signal.name:
        return analysis.signal.name
    if record.signal is None:
        return None
    from coredumpd.elf.layouts import signal_name
    return signal_name(record.signal)


def build_record(record: CrashRecord, host: str = "", machine_id: str | None = None,
                 analyzed_us: int | None = None,
                 dpkg_admin: str = dpkg.ADMIN_DIRECTORY) -> FleetRecord:
    """The fleet record of an analysed crash; ``host`` "" means this host's name.
    ``analyzed_us`` (default: now) orders the analyses of one crash: the database
    keeps the newest (:mod:`coredumpd.fleet.schema`, version 2)."""
    modules = _modules(record, dpkg_admin)
    analysis = record.analysis
    columns = record.to_json()
    return FleetRecord(
        crash_id=record.id, machine_id=read_machine_id() if machine_id is None else machine_id,
        analyzed_us=time.time_ns() // 1000 if analyzed_us is None else analyzed_us,
        host=host or default_host(), boot_id=record.boot_id,
        container_id=container_id(record), timestamp_us=record.timestamp_us or 0,
        signal_name=_signal_name(record), row={name: columns[name] for name in ROW_FIELDS},
        root_cause=record.root_cause or None, signature=record.signature or None,
        signature_frames=list(analysis.signature_frames) if analysis is not None else [],
        annotations=_annotations(record), frames=_crashed_frames(record), modules=modules,
        product_version=_product_version(record, modules))


def record_json(record: FleetRecord) -> str:
    """The record as JSON that PostgreSQL's jsonb accepts: no NUL characters and no lone
    surrogates (strings from the crashed process may hold both)."""
    data = record.to_json()
    data["frames"] = [_compact_frame(frame) for frame in data["frames"]]
    return json.dumps(_clean(data), separators=(",", ":"))


def _compact_frame(frame: dict[str, Any]) -> dict[str, Any]:
    """A frame without the keys that hold their default (Frame.from_json puts them
    back): a fifth less JSON per record, which is what ingest spends its time on
    (parsing, compressing and logging the record: docs/FLEET.md "Ingest")."""
    defaults = Frame._defaults
    return {key: value for key, value in frame.items()
            if key not in defaults or value != defaults[key]}


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        if "\0" in value:
            value = value.replace("\0", "\\x00")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return value
    if isinstance(value, dict):
        return {_clean(key): _clean(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean(item) for item in value]
    return value


def readable_frames(frames: list[str]) -> str:
    """Signature frames as Socorro writes a signature: ``parse_header | main``
    (the function without its module; an unsymbolized frame keeps module+offset)."""
    return " | ".join(frame.split("!", 1)[1] if "!" in frame else frame for frame in frames)


def default_host() -> str:
    """The name this host reports when ``Host=`` is empty."""
    return socket.gethostname() or os.uname().nodename
