"""What the facts say about a mapped file that changed on disk, as evidence lines.

Shared by the ``library-replaced``, ``library-modified-in-place`` and
``symbol-version-miss`` rules.  The handler recorded, while the process was
held (docs/ARCHITECTURE.md "Facts"): ``proc.files[path]`` = ``{"mapped":
stat of /proc/PID/map_files/…, "now": stat of the path through
/proc/PID/root}``, ``proc.start_time_us``, and ``mapped_objects[path]`` (the
mapped copy's build-id and versions).  The space marks the module
(``deleted``/``replaced``/``modified_in_place``).
"""

from __future__ import annotations

import datetime
from typing import Any

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext
from coredumpd.clock import start_time_slack_ns
from coredumpd.elf.layouts import ELFMAG
from coredumpd.errors import CoredumpdError
from coredumpd.image.types import Module

IGNORED_PREFIXES = ("/memfd:", "/SYSV", "/dev/", "[", "/dmabuf", "/anon_hugepage")


def changed_modules(ctx: AnalysisContext, *, in_place: bool) -> list[Module]:
    """Mapped ELF objects modified in place (``in_place``) or deleted/replaced (not)."""
    found = []
    for module in ctx.space.modules:
        if module.is_vdso or module.path.startswith(IGNORED_PREFIXES) or not is_elf(ctx, module):
            continue
        if module.modified_in_place:
            if in_place and modified_after_start(ctx, module):
                found.append(module)
        elif not in_place and (module.deleted or module.replaced):
            found.append(module)
    return found


def modified_after_start(ctx: AnalysisContext, module: Module) -> bool:
    """The handler judged it "modified", or the mapped file's mtime is clearly after the
    process started: the start time is known to a clock tick only (proc(5) starttime),
    so a file written just before a fork (a program built and run at once) is not."""
    if mapped_object(ctx, module.path).get("reason") == "modified" or \
            module.relocation_evidence:
        return True
    mapped, _now = file_record(ctx, module.path)
    start_us = E.fact(ctx, "proc", "start_time_us")
    mtime_ns = mapped.get("mtime_ns")
    if not isinstance(start_us, int) or not isinstance(mtime_ns, int):
        return True  # the space's own evidence (e.g. the file differs): keep its verdict
    return mtime_ns > start_us * 1000 + start_time_slack_ns()


def is_elf(ctx: AnalysisContext, module: Module) -> bool:
    """True for an ELF object; a mapped data file (a database, a cache) is not a library."""
    if module.build_id or module.file_build_id or module.eh_frame_hdr is not None:
        return True
    try:
        return ctx.space.read(module.start, len(ELFMAG)) == ELFMAG
    except CoredumpdError:
        return False


def file_record(ctx: AnalysisContext, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(mapped stat, stat now) of ``path`` from the facts; empty dicts when unknown."""
    files = E.fact(ctx, "proc", "files")
    record = files.get(path) if isinstance(files, dict) else None
    if not isinstance(record, dict):
        return {}, {}
    mapped, now = record.get("mapped"), record.get("now")
    return (mapped if isinstance(mapped, dict) else {}), (now if isinstance(now, dict) else {})


def mapped_object(ctx: AnalysisContext, path: str) -> dict[str, Any]:
    objects = E.fact(ctx, "mapped_objects")
    entry = objects.get(path) if isinstance(objects, dict) else None
    return entry if isinstance(entry, dict) else {}


def stat_lines(ctx: AnalysisContext, module: Module) -> list[str]:
    """Inode, mtime and build-id evidence of one changed module."""
    mapped, now = file_record(ctx, module.path)
    lines = []
    if mapped.get("inode") is not None:
        lines.append(f"mapped: inode {mapped['inode']} (dev {mapped.get('dev')}), "
                     f"size {mapped.get('size')}, modified {_time(mapped.get('mtime_ns'))}")
    if "error" in now:
        lines.append(f"on disk now: {now['error']} (the file was deleted)")
    elif now.get("inode") is not None:
        lines.append(f"on disk now: inode {now['inode']} (dev {now.get('dev')}), "
                     f"size {now.get('size')}, modified {_time(now.get('mtime_ns'))}")
    elif module.deleted:
        lines.append("the mapping is marked '(deleted)' (NT_FILE or /proc/PID/maps)")
    start = E.fact(ctx, "proc", "start_time_us")
    if isinstance(start, int):
        lines.append(f"process started {_time(start * 1000)}")
    lines.extend(build_id_lines(ctx, module))
    return [f"{module.path}: {line}" for line in lines]


def build_id_lines(ctx: AnalysisContext, module: Module) -> list[str]:
    recorded = mapped_object(ctx, module.path).get("build_id")
    core_id = module.build_id.hex() if module.build_id else recorded
    file_id = module.file_build_id.hex() if module.file_build_id else None
    if core_id and file_id and core_id != file_id:
        return [f"build-id mapped {core_id}, on disk {file_id}"]
    if core_id and file_id:
        return [f"build-id {core_id} (same in the core's header page and on disk)"]
    return []


def frames_in(ctx: AnalysisContext, module: Module) -> list[str]:
    """Crashed-thread frames whose pc is inside ``module``."""
    thread = ctx.crashed
    if thread is None:
        return []
    return [f"#{frame.index} {symbol.name or hex(frame.pc)}"
            for frame, symbol, owner in zip(thread.frames, thread.symbols, thread.modules)
            if owner is module or (owner is not None and owner.path == module.path)]


def _time(ns: object) -> str:
    if not isinstance(ns, int):
        return "?"
    moment = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
