"""file-mapping-past-eof: SIGBUS touching a file mapping beyond the end of the file.

mmap(2) "SIGBUS: Attempted access to a page of the buffer that lies beyond
the end of the mapped file"; this happens when the file was truncated after
it was mapped (a log rotated by truncation, a file rewritten in place).  The
kernel sends SIGBUS BUS_ADRERR with the address (mm/filemap.c
``filemap_fault`` returns VM_FAULT_SIGBUS past i_size).  The file's size now
comes from the facts (``proc.files[path].now``) when the handler recorded it.
"""

from __future__ import annotations

from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation

RULE_ID = "file-mapping-past-eof"
BUS_ADRERR = 2


def check(ctx: AnalysisContext) -> list[Annotation]:
    fault = E.fault(ctx)
    if fault is None or fault.signo != E.SIGBUS or fault.code != BUS_ADRERR:
        return []
    if fault.address is None:
        return []
    mapping = ctx.space.mapping_at(fault.address)
    if mapping is None or mapping.path is None or mapping.path.startswith("["):
        return []
    offset = mapping.file_offset + fault.address - mapping.start
    lines = [fault.describe(),
             (f"{fault.address:#x} is at file offset {offset:#x} of {mapping.path} "
             f"(mapped {mapping.start:#x}-{mapping.end:#x} {mapping.perms})")]
    size = _size_now(ctx, mapping.path)
    if size is not None:
        if size > offset:
            return []  # not past the end: another SIGBUS cause (I/O error, hugepages...)
        lines.append(f"the file is {size} bytes long at dump time: the page at offset "
                     f"{offset & ~0xFFF:#x} lies beyond its end")
    where = E.instruction_at_pc(ctx)
    if where is not None:
        lines.append(f"faulting instruction at {E.where(ctx, where.address)}: {where.text}")
    return [Annotation(
        RULE_ID,
        f"SIGBUS: access past the end of the mapped file {mapping.path}",
        "high" if size is not None else "medium",
        tuple(lines),
        "The file shrank while mapped (truncated or rewritten in place by another process?). "
        "Replace files by writing a new one and renaming it over the old, or check the size "
        "before touching the mapping.",
    )]


def _size_now(ctx: AnalysisContext, path: str) -> int | None:
    files = E.fact(ctx, "proc", "files")
    entry = files.get(path) if isinstance(files, dict) else None
    now = entry.get("now") if isinstance(entry, dict) else None
    size = now.get("size") if isinstance(now, dict) else None
    return size if isinstance(size, int) else None
