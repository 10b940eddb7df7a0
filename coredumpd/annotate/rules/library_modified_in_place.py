"""library-modified-in-place: a mapped ELF file was overwritten in place (same inode).

``cp new.so old.so`` truncates and rewrites the *same* inode.  Pages of a
MAP_PRIVATE file mapping that the process never wrote are the page cache's
pages, so after the copy they show the new file's bytes while the relocated
and written pages (GOT, data) still hold the old layout: code, tables and
offsets no longer agree (incidents/library-overwritten-in-place.txt: the
loader read a string-table offset, 0x2559, as a pointer).  The evidence is the
module's relocated ``.dynamic`` in the core that no longer matches the file
(image/relocated.py: found without any timestamp, also when the copy happened
milliseconds before the crash or kept the old mtime), or the same inode mapped
and on disk, modified after the process started.  The core
holds only the first page and written pages of the file, and that first page
itself comes from the page cache at dump time, so code and symbols read from
disk for this module are the new build's, not what ran.
"""

from __future__ import annotations

from coredumpd.annotate import changed as C
from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation

RULE_ID = "library-modified-in-place"


def check(ctx: AnalysisContext) -> list[Annotation]:
    found = []
    for module in C.changed_modules(ctx, in_place=True):
        mapped, now = C.file_record(ctx, module.path)
        lines = [(f"{module.path} ({module.start:#x}-{module.end:#x}) was overwritten in place "
                 "while mapped")]
        if mapped.get("inode") is not None and mapped.get("inode") == now.get("inode"):
            lines.append(f"{module.path}: same inode {mapped['inode']} mapped and on disk, "
                         "so the file was rewritten, not replaced")
        lines.extend(module.relocation_evidence)
        lines.extend(C.stat_lines(ctx, module))
        if module.build_id and module.build_id == module.file_build_id:
            lines.append("the core's copy of the ELF header page was read from the page cache "
                         "at dump time, so it already shows the new file's build-id")
        frames = C.frames_in(ctx, module)
        pc = E.pc_of(ctx)
        if frames:
            lines.append(f"crashed thread frames in it: {', '.join(frames[:6])}")
        if pc is not None and pc in module:
            lines.append(f"the crash pc {pc:#x} is inside this module")
        lines.append("frames, symbols and disassembly for this module come from the file on "
                     "disk now and are suspect: they are not the bytes that ran")
        found.append(Annotation(
            RULE_ID,
            f"{module.name} was overwritten in place (same inode) while the process ran",
            "high" if frames else "medium",
            tuple(lines),
            "Never copy over a library or executable in use (cp, or a build writing in place): "
            "install with 'install' or write a new file and mv/rename it over the old one (a "
            "new inode), then restart the processes that use it.",
        ))
    return found
