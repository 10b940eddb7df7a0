"""library-replaced: a mapped ELF object was deleted or replaced on disk after it was mapped.

Package managers replace a library by writing a new file and renaming it over
the old one (a new inode): running processes keep the old copy mapped, which
/proc/PID/maps shows as "(deleted)" (lsof: DEL).  Code that later loads
anything (dlopen, NSS, iconv, a graceful reload) mixes the old copy with new
files and may fail (incidents/glibc-upgrade-symbol-version.txt).  A restart
loads a consistent set; a reload does not.
"""

from __future__ import annotations

import os

from coredumpd.annotate import changed as C
from coredumpd.annotate.context import AnalysisContext, Annotation
from coredumpd.annotate.loader_errors import find_loader_errors
from coredumpd.image.types import Module

RULE_ID = "library-replaced"
MAX_LISTED = 8


def check(ctx: AnalysisContext) -> list[Annotation]:
    modules = C.changed_modules(ctx, in_place=False)
    if not modules:
        return []
    lines: list[str] = []
    involved = False
    for module in modules[:MAX_LISTED]:
        lines.append(f"{module.path} ({module.start:#x}-{module.end:#x}) {_state(ctx, module)}")
        lines.extend(C.stat_lines(ctx, module))
        frames = C.frames_in(ctx, module)
        if frames:
            involved = True
            lines.append(f"{module.path}: crashed thread frames in it: {', '.join(frames[:6])}")
        named = _named_by_loader_error(ctx, module)
        if named:
            involved = True
            lines.append(f"{module.path}: named by the loader error in memory: \"{named}\"")
    if len(modules) > MAX_LISTED:
        lines.append(f"… and {len(modules) - MAX_LISTED} more")
    names = ", ".join(module.name for module in modules[:3])
    return [Annotation(
        RULE_ID,
        f"Mapped object{'s' if len(modules) > 1 else ''} replaced on disk after the process "
        f"started: {names}{'…' if len(modules) > 3 else ''}",
        _confidence(ctx, modules, involved),
        tuple(lines),
        "The process ran an old copy of these files. Restart it (a reload or re-exec of "
        "plugins mixes old and new libraries); after upgrades, restart every process that "
        "maps a deleted file (needrestart, checkrestart, 'lsof | grep DEL').",
    )]


def _named_by_loader_error(ctx: AnalysisContext, module: Module) -> str | None:
    """A dynamic-loader error in the core that names this module (a failed dlopen)."""
    if ctx.core is None:
        return None
    for error in find_loader_errors(ctx.core):
        names = {error.provider, error.requirer}
        if module.path in names or module.name in {os.path.basename(n or "") for n in names}:
            return error.text
    return None


def _state(ctx: AnalysisContext, module: Module) -> str:
    mapped, now = C.file_record(ctx, module.path)
    if module.deleted and (now.get("inode") is not None or module.file_build_id):
        return "was deleted while mapped, and the path now holds another file"
    if module.deleted:
        return "was deleted while mapped"
    if mapped.get("inode") is not None and now.get("inode") is not None:
        return "was replaced: the path now names another inode"
    return "differs from the file now at its path (another build-id)"


def _confidence(ctx: AnalysisContext, modules: list[Module], involved: bool) -> str:
    """Low when only a build-id comparison made on this machine says so (no dump-time
    evidence: a core analysed on another machine differs from every local file)."""
    dump_time = any(module.deleted or any(C.file_record(ctx, module.path))
                    for module in modules)
    if not dump_time:
        return "low"
    return "high" if involved else "medium"
