"""capstone's answers, kept across analyses so that a warm one never imports capstone.

Importing capstone's Python binding costs 20–35 ms on this project's VM (it
pulls in ``importlib.resources``, ``inspect``, ``sysconfig`` and a module per
architecture), more than the whole rest of a small core's analysis.  What the
analysis asks of it is a pure function of the architecture, the address and
the bytes: the instructions :mod:`coredumpd.symbolize.disasm` shows around the
crash pc, and the operands :mod:`coredumpd.annotate.insn` gives the rules.  So
each answer is remembered under exactly those inputs (the bytes themselves, not
a hash) and kept in the store's module cache (:mod:`coredumpd.store.modcache`)
as one entry: a key that is no build-id, :data:`ENTRY_KEY`.

An answer is right by construction for the bytes it is filed under; what could
change it is another capstone, so the entry names the files of the capstone it
came from (their identity, as the module cache's entries do) and is a miss
under any other.  Bounded: at most :data:`MAX_ANSWERS`, the oldest dropped first.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from coredumpd.store.modcache import FileIdentity, ModuleCache, file_identity

ENTRY_KEY = b"capstone answers"  # not a build-id: no ELF note is this long and ASCII
FORMAT = 1
MAX_ANSWERS = 4096  # a crash adds a few: a back-offset search ~70, a stack scan more

Key = tuple[Any, ...]  # (what, capstone arch, capstone mode, address, bytes, ...)


class DecodeMemo:
    """Answers by their inputs; ``changed`` when the cache does not hold them all yet."""

    def __init__(self) -> None:
        self.answers: dict[Key, Any] = {}
        self.changed = False

    def get(self, key: Key) -> Any:
        return self.answers.get(key)

    def put(self, key: Key, answer: Any) -> None:
        self.answers[key] = answer
        self.changed = True
        while len(self.answers) > MAX_ANSWERS:  # insertion order: the oldest first
            del self.answers[next(iter(self.answers))]


MEMO = DecodeMemo()  # one per process, like capstone's engines


def capstone_identity() -> list[FileIdentity | None] | None:
    """The identity of the capstone binding's files (found without importing it)."""
    try:
        spec = importlib.util.find_spec("capstone")
    except (ImportError, ValueError, OSError):  # a sandbox may not see sys.path
        return None
    if spec is None or spec.origin is None:
        return None
    package = os.path.dirname(spec.origin)
    return [file_identity(spec.origin),
            file_identity(os.path.join(package, "lib", "libcapstone.so"))]


def load(cache: ModuleCache | None) -> None:
    """Add the answers the cache holds (made with this capstone) to :data:`MEMO`."""
    if cache is None:
        return
    entry = cache.load(ENTRY_KEY)
    if entry is None or entry.get("format") != FORMAT or not isinstance(
            entry.get("answers"), dict):
        return
    identity = capstone_identity()
    if identity is None or entry.get("capstone") != identity:
        return
    for key, answer in entry["answers"].items():
        MEMO.answers.setdefault(key, answer)


def keep(cache: ModuleCache | None) -> None:
    """Write :data:`MEMO` to the cache when it holds answers the cache does not."""
    if cache is None or not MEMO.changed or not cache.writable:
        return
    identity = capstone_identity()
    if identity is None:
        return
    if cache.store(ENTRY_KEY, {"format": FORMAT, "capstone": identity,
                               "answers": MEMO.answers}):
        MEMO.changed = False
