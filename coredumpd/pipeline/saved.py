"""The file of saved values that ``coredumpd install`` writes and ``uninstall`` reads.

One JSON object (:data:`coredumpd.paths.SAVED_SYSCTL_PATH` by default, in the
store): ``core_pattern`` and ``core_pipe_limit`` as they were before the
install, and ``supervisor`` — the ``coredumpd serve --supervise`` that
``install --socket`` started (:mod:`coredumpd.pipeline.daemon`).  install and
the daemon both rewrite it, so it is read and written here only, and always
replaced whole (temporary file, fsync, rename): a crash or a power cut leaves
the old values or the new ones, never half of them.
"""

from __future__ import annotations

import json
import os
from typing import Any

from coredumpd.paths import make_directory

SAVED_SYSCTLS = ("core_pattern", "core_pipe_limit")


def load(saved_path: str) -> dict[str, Any]:
    """The saved values; {} when the file is missing or is not a JSON object."""
    try:
        with open(saved_path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def previous_sysctls(saved_path: str) -> dict[str, str]:
    """The values found before the install, for ``uninstall``: FileNotFoundError when
    there is no file, ValueError when it does not hold both (uninstall reports it)."""
    with open(saved_path, encoding="utf-8") as handle:
        value = json.load(handle)
    if not isinstance(value, dict) or not all(
            isinstance(value.get(name), str) for name in SAVED_SYSCTLS):
        raise ValueError(f"{saved_path} does not hold {' and '.join(SAVED_SYSCTLS)}")
    return {name: value[name] for name in SAVED_SYSCTLS}


def write(saved_path: str, values: dict[str, Any]) -> None:
    """Replace the file with ``values`` atomically; its directory is created as the
    store's (install runs before the first crash made the store)."""
    make_directory(os.path.dirname(saved_path) or ".")
    temp = f"{saved_path}.tmp{os.getpid()}"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(values, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, saved_path)
