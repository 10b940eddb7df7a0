"""Mapped ELF objects that are deleted, replaced or changed on disk.

Such a mapping is what the ``library-replaced``, ``library-modified-in-place``
and ``symbol-version-miss`` rules need evidence about, and the copy the process
ran is only reachable while the process exists: through
``/proc/PID/map_files/START-END`` (proc(5)), which opens the mapped inode even
when it was unlinked.  So the handler opens those files while the kernel holds
the process, and reads their version information (which needs the heavier ELF
reader) only after it has closed the pipe.
"""

from __future__ import annotations

import os

from coredumpd.clock import start_time_slack_ns
from coredumpd.ingest import procfs

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_HELD = 64
# Verdicts whose mapped file the host path no longer gives: a copy is kept (store/binaries.py).
# A file "modified" in place is not: its inode holds the new bytes, not what ran.
KEEP_VERDICTS = ("deleted", "replaced", "other-namespace")


def verdict(entry: dict[str, Any], record: dict[str, Any], start_time_ns: int | None) -> str | None:
    """``same|deleted|replaced|modified|other-namespace`` for one mapped file (CONTRACT.md
    ``modules``), from the stats of ``record`` (procfs.read_files); None when unknown.

    ``modified`` here is the timestamp evidence only; the analysis adds what the core's
    relocated pages say (image/relocated.py)."""
    now, mapped = record.get("now") or {}, record.get("mapped") or {}
    if entry.get("deleted"):  # unlinked; a new file at the path means it was replaced
        return "replaced" if "inode" in now else "deleted"
    if "inode" not in mapped:
        return None
    if "inode" not in now:
        return "deleted"
    if (now["dev"], now["inode"]) != (mapped["dev"], mapped["inode"]):
        return "replaced"
    if start_time_ns is not None and mapped["mtime_ns"] > start_time_ns + start_time_slack_ns():
        return "modified"
    host = record.get("host")
    if host is not None and (host.get("dev"), host.get("inode")) != (mapped["dev"],
                                                                   mapped["inode"]):
        return "other-namespace"  # the process's own file; the host's path names another
    return "same"


def hold_changed_objects(pid: int, proc: dict[str, Any],
                         missing: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Give every mapped file its ``state`` (:func:`verdict`) in ``proc["files"]``, and open
    those that are not ``same``: path -> {"reason", "fd"} (at most MAX_HELD)."""
    files = proc.get("files") or {}
    start_us = proc.get("start_time_us")
    start_ns = None if start_us is None else start_us * 1000
    held: dict[str, dict[str, Any]] = {}
    for entry in proc.get("maps") or []:
        path = entry["path"]
        record = files.get(path)
        if entry["inode"] == 0 or not path.startswith("/") or path in held or \
                not isinstance(record, dict) or "state" in record:
            continue
        reason = record["state"] = verdict(entry, record, start_ns)
        if reason in (None, "same"):
            continue
        if len(held) >= MAX_HELD:
            missing["mapped_objects"] = f"more than {MAX_HELD} changed objects"
            break
        name = procfs.proc(pid, "map_files", procfs.map_files_name(entry))
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            held[path] = {"reason": reason, "fd": None, "error": os.strerror(err.errno or 0)}
            continue
        held[path] = {"reason": reason, "fd": fd}
    return held


def read_held_objects(held: dict[str, dict[str, Any]], missing: dict[str, str],
                      keep: Callable[[int, str | None], str] | None = None,
                      ) -> dict[str, dict[str, Any]]:
    """Version facts of each held object (``mapped_objects`` of the facts); closes the fds.

    ``keep(fd, build_id) -> path`` copies a file whose verdict is in KEEP_VERDICTS into
    the store of kept binaries (``kept``: its path; ``not_kept``: why not)."""
    from coredumpd.elf.elffile import version_info
    from coredumpd.errors import CoredumpdError
    result: dict[str, dict[str, Any]] = {}
    for path, item in held.items():
        entry: dict[str, Any] = {"reason": item["reason"]}
        fd = item.get("fd")
        if fd is None:
            entry["error"] = item.get("error", "not opened")
        else:
            try:
                entry.update(version_info(fd))
            except (CoredumpdError, OSError, ValueError) as err:
                entry["error"] = str(err)
            try:
                if keep is not None and item["reason"] in KEEP_VERDICTS:
                    entry["kept"] = keep(fd, entry.get("build_id"))
            except (CoredumpdError, OSError) as err:
                entry["not_kept"] = str(err)
            finally:
                os.close(fd)
                item["fd"] = None
        result[path] = entry
    return result
