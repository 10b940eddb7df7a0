"""library-replaced: a mapped ELF object was deleted or replaced on disk after it was mapped.

Package managers replace a library by writing a new file and renaming it over
the old one (a new inode): running processes keep the old copy mapped, which
/proc/PID/maps shows as "(deleted)" (lsof: DEL).  Code that later loads
anything (dlopen, NSS, iconv, a graceful reload) mixes the old copy with new
files and may fail (incidents/glibc-upgrade-symbol-version.txt).  A restart
loads a consistent set; a reload does not.
"""

from __future__ import annotations

from coredumpd.annotate import changed as C
from coredumpd.annotate.context import AnalysisContext, Annotation

RULE_ID = "library-replaced"
MAX_LISTED = 8


def check(ctx: AnalysisContext) -> list[Annotation]:
    modules = C.changed_modules(ctx, in_place=False)
    if not modules:
        return []
    lines: list[str] = []
    involved = False
    for module in modules[:MAX_LISTED]:
        state = "deleted" if module.deleted else "replaced by another file"
        lines.append(f"{module.path} ({module.start:#x}-{module.end:#x}) is {state} on disk")
        lines.extend(C.stat_lines(ctx, module))
        frames = C.frames_in(ctx, module)
        if frames:
            involved = True
            lines.append(f"{module.path}: crashed thread frames in it: {', '.join(frames[:6])}")
    if len(modules) > MAX_LISTED:
        lines.append(f"… and {len(modules) - MAX_LISTED} more")
    names = ", ".join(module.name for module in modules[:3])
    return [Annotation(
        RULE_ID,
        f"Mapped object{'s' if len(modules) > 1 else ''} replaced on disk after the process "
        f"started: {names}{'…' if len(modules) > 3 else ''}",
        "high" if involved else "medium",
        tuple(lines),
        "The process ran an old copy of these files. Restart it (a reload or re-exec of "
        "plugins mixes old and new libraries); after upgrades, restart every process that "
        "maps a deleted file (needrestart, checkrestart, 'lsof | grep DEL').",
    )]
