"""The binaries a crashed process ran, laid out as a sysroot for gdb.

``corectl dump MATCH -o DIR --with-binaries`` writes ``DIR/core`` and, under
``DIR``, each mapped executable and library at the path the process mapped it
from: the kept copy (store/binaries.py) when the file on disk changed, else the
file on this machine.  ``gdb -ex 'set sysroot DIR' DIR/EXE DIR/core`` then
reads exactly those files.  gdb finds shared libraries by the names the loader
used (the link map), which on a merged-/usr system go through ``/lib`` and
``/lib64``: the top-level symbolic links of this machine are copied into DIR,
and the executable's PT_INTERP gets a link to the loader that was mapped.
``corectl debug`` makes the same layout of symbolic links in its private
directory when a file changed since the crash.
"""

from __future__ import annotations

import os
import shutil

from coredumpd.elf import layouts as L
from coredumpd.elf.elffile import ElfFile
from coredumpd.errors import CoredumpdError
from coredumpd.model import CrashRecord
from coredumpd.values import Frozen

CHANGED = ("deleted", "replaced", "other-namespace", "modified")


class RanFile(Frozen):
    """One mapped file: its path in the process, the file holding it here, its verdict."""

    path: str
    source: str | None  # None: nowhere on this machine
    state: str
    main: bool = False


def ran_files(record: CrashRecord) -> list[RanFile]:
    """The executable first, then the libraries of ``record`` (from its analysis)."""
    objects = record.facts.mapped_objects if record.facts is not None else {}
    modules = record.analysis.modules if record.analysis is not None else []
    exe = record.exe.removesuffix(" (deleted)") if record.exe else None
    found: dict[str, RanFile] = {}
    for module in modules:
        if not module.path.startswith("/") or module.path in found:
            continue
        kept = module.kept or (objects.get(module.path) or {}).get("kept")
        state = module.state or "same"
        if isinstance(kept, str) and os.path.isfile(kept):
            source: str | None = kept
        elif state in ("same", "modified") and os.path.isfile(module.path):
            source = module.path
        else:
            source = None
        found[module.path] = RanFile(module.path, source, state, module.path == exe)
    return sorted(found.values(), key=lambda item: not item.main)


def _inside(root: str, path: str) -> str:
    target = os.path.normpath(os.path.join(root, path.lstrip("/")))
    if not target.startswith(os.path.normpath(root) + os.sep):
        raise CoredumpdError(f"refusing a path outside the sysroot: {path!r}")
    return target


def _mirror_top_links(root: str) -> None:
    """``/lib -> usr/lib`` and the like (merged /usr), as relative links in ``root``."""
    for name in os.listdir("/"):
        here = os.path.join("/", name)
        if os.path.islink(here):
            target = os.readlink(here)
            if not os.path.isabs(target) and os.path.isdir(here) and \
                    not os.path.lexists(os.path.join(root, name)):
                os.makedirs(_inside(root, target), exist_ok=True)  # never a dangling link
                os.symlink(target, os.path.join(root, name))


def _interpreter(path: str) -> str | None:
    try:
        with ElfFile.open(path) as elf:
            for phdr in elf.program_headers:
                if phdr.p_type == L.PT.INTERP and 0 < phdr.p_filesz < 4096:
                    raw = elf.read(phdr.p_offset, phdr.p_filesz, "PT_INTERP")
                    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    except CoredumpdError:
        return None
    return None


def lay_out(files: list[RanFile], root: str, copy: bool) -> list[str]:
    """Place ``files`` under ``root`` (copies, or symbolic links when not ``copy``);
    the problems (files nowhere, changed files that are not what ran)."""
    problems = []
    os.makedirs(root, mode=0o700, exist_ok=True)
    _mirror_top_links(root)
    placed: dict[str, str] = {}
    for item in files:
        if item.source is None:
            problems.append(f"{item.path} ({item.state}): not on this machine and not kept")
            continue
        if item.state == "modified":
            problems.append(f"{item.path} was modified in place: its bytes now are not "
                            "the ones that ran")
        target = _inside(root, item.path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(target):
            os.unlink(target)
        if copy:
            shutil.copyfile(item.source, target)
            os.chmod(target, 0o500 if item.main else 0o400)
        else:
            os.symlink(os.path.abspath(item.source), target)
        placed[os.path.basename(item.path)] = target
    main = next((item for item in files if item.main and item.source), None)
    interp = _interpreter(main.source) if main is not None and main.source else None
    if interp and os.path.basename(interp) in placed:
        link = _inside(root, interp)
        if not os.path.exists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(placed[os.path.basename(interp)], link)
    return problems


def changed(files: list[RanFile]) -> bool:
    """True when a file the process ran is no longer what its path gives here."""
    return any(item.state in CHANGED for item in files)
