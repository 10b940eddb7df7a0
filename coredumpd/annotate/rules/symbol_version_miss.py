"""symbol-version-miss: a loaded object needs symbol@VERSION that the *mapped* copy lacks.

The glibc-upgrade incident (incidents/glibc-upgrade-symbol-version.txt): a
library was replaced on disk while the process ran; a later dlopen() loaded a
new object linked against the new library, but the loader resolves its
dependency to the copy already mapped (same soname), which lacks the version
or symbol.  Evidence, in order: the loader's message in the core's memory
(:mod:`coredumpd.annotate.loader_errors`); the version-needs of the requiring
object (from disk: a failed dlopen unmaps it); the version-definitions of the
mapped copy, recorded by the handler from /proc/PID/map_files while the
process was held (``facts.mapped_objects``); those of the file on disk now.
The rule fires only when the mapped copy lacks what the disk copy has (or
when the facts cannot say, with lower confidence).
"""

from __future__ import annotations

import os
from typing import Any

from coredumpd.annotate import changed as C
from coredumpd.annotate import evidence as E
from coredumpd.annotate.context import AnalysisContext, Annotation
from coredumpd.annotate.loader_errors import LoaderError, find_loader_errors
from coredumpd.elf.elffile import version_info
from coredumpd.errors import CoredumpdError
from coredumpd.image.types import Module

RULE_ID = "symbol-version-miss"
MAX_ERRORS = 2


def check(ctx: AnalysisContext) -> list[Annotation]:
    if ctx.core is None:
        return []
    found = []
    for error in _distinct(find_loader_errors(ctx.core))[:MAX_ERRORS]:
        annotation = _judge(ctx, error)
        if annotation is not None:
            found.append(annotation)
    return found


def _distinct(errors: tuple[LoaderError, ...]) -> list[LoaderError]:
    """One error per (symbol, version): the exception text and dlerror()'s copy are one."""
    best: dict[tuple[str | None, str], LoaderError] = {}
    for error in errors:
        key = (error.symbol, error.version)
        known = best.get(key)
        if known is None or _named(error) > _named(known):
            best[key] = error
    return list(best.values())


def _named(error: LoaderError) -> int:
    return (error.provider is not None) + (error.requirer is not None)


def _judge(ctx: AnalysisContext, error: LoaderError) -> Annotation | None:
    requirer_path = _host_path(ctx, error.requirer) if error.requirer else None
    requirer = _versions(requirer_path)
    module = _provider(ctx, error, requirer)
    if module is None:
        return None
    mapped = C.mapped_object(ctx, module.path)
    disk = _versions(_host_path(ctx, module.path))
    mapped_has = _provides(mapped, error) if "verdefs" in mapped else None
    disk_has = _provides(disk, error) if disk else None
    if mapped_has or disk_has is False:
        return None  # the mapped copy has it, or neither copy does: not a version mismatch
    want = f"{error.symbol}@{error.version}" if error.symbol else f"version {error.version}"
    lines = [f"loader error in memory at {error.address:#x}: \"{error.text}\""]
    if error.requirer:
        lines.append(_needs_line(error, requirer))
    lines.append(_copy_line("mapped copy", module.path, mapped, error, mapped_has))
    lines.append(_copy_line("copy on disk now", module.path, disk, error, disk_has))
    lines.extend(C.stat_lines(ctx, module))
    certain = mapped_has is False and disk_has is True
    return Annotation(
        RULE_ID,
        f"{os.path.basename(error.requirer or '?')} needs {want}, which the mapped "
        f"{module.name} lacks (the file on disk has it)",
        "high" if certain else "medium",
        tuple(lines),
        f"{module.path} was updated on disk while the process kept the old copy mapped; "
        "loading anything linked against the new version (dlopen, a graceful reload) fails. "
        "Restart the process after upgrading libraries instead of reloading it.",
    )


def _provider(ctx: AnalysisContext, error: LoaderError,
              requirer: dict[str, Any]) -> Module | None:
    """The mapped module the message, or the requirer's version-needs, names for the version."""
    names = [error.provider] if error.provider else []
    needs = requirer.get("verneeds")
    if isinstance(needs, dict):
        names += [file for file, versions in needs.items() if error.version in versions]
    for name in names:
        for module in ctx.space.modules:
            soname = C.mapped_object(ctx, module.path).get("soname")
            if name in (module.path, module.name, soname) or \
                    os.path.basename(name) == module.name:
                return module
    # Unnamed (and the requirer unreadable): a changed module whose disk copy has it.
    for module in C.changed_modules(ctx, in_place=False) + C.changed_modules(ctx, in_place=True):
        if _provides(_versions(_host_path(ctx, module.path)), error):
            return module
    return None


def _provides(info: dict[str, Any], error: LoaderError) -> bool:
    if error.version not in (info.get("verdefs") or []):
        return False
    if error.symbol is None:
        return True
    return error.version in ((info.get("defines") or {}).get(error.symbol) or [])


def _versions(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return version_info(path)
    except (CoredumpdError, OSError):
        return {}


def _host_path(ctx: AnalysisContext, path: str) -> str | None:
    """``path`` as the crashed process saw it, resolved through its root and cwd."""
    root = E.fact(ctx, "proc", "root")
    cwd = E.fact(ctx, "proc", "cwd")
    if not path.startswith("/"):
        if not isinstance(cwd, str):
            return None
        path = os.path.join(cwd, path)
    if isinstance(root, str) and root not in ("", "/"):
        path = root.rstrip("/") + path
    return path if os.path.exists(path) else None


def _needs_line(error: LoaderError, requirer: dict[str, Any]) -> str:
    needs = requirer.get("verneeds")
    if not isinstance(needs, dict):
        return f"{error.requirer} needs {error.version} (its version-needs could not be read)"
    listed = "; ".join(f"{file}: {', '.join(versions)}" for file, versions in needs.items())
    return f"{error.requirer} version-needs: {listed}"


def _copy_line(which: str, path: str, info: dict[str, Any], error: LoaderError,
               has: bool | None) -> str:
    if not info or "verdefs" not in info:
        reason = info.get("error") if info else None
        return f"{which} of {path}: versions unknown" + (f" ({reason})" if reason else "")
    verdefs = ", ".join(info.get("verdefs") or []) or "none"
    symbol = ""
    if error.symbol:
        versions = (info.get("defines") or {}).get(error.symbol)
        symbol = f"; {error.symbol}: " + (", ".join(f"{error.symbol}@{v}" for v in versions)
                                          if versions else "not defined")
    build_id = f", build-id {info['build_id']}" if info.get("build_id") else ""
    verdict = "has it" if has else "LACKS it"
    return f"{which} of {path}{build_id}: defines versions {verdefs}{symbol} — {verdict}"
