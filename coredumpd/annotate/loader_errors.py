"""Find the dynamic loader's symbol-version errors in the crashed process's memory.

glibc's loader formats these (elf/dl-lookup.c, elf/dl-version.c) and dlerror()
keeps "OBJECT: MESSAGE" in a malloc()ed buffer; the message survives in the
heap until the process dies:

- ``undefined symbol: S, version V`` (dl-lookup.c ``_dl_lookup_symbol_x``),
- ``symbol S version V not defined in file F with link time reference``
  (dl-lookup.c, when the object the version names lacks the symbol),
- ``version `V' not found (required by F)`` (dl-version.c ``match_symbol``).

Only written memory is in the core, so the scan covers dumped writable
segments, bounded by ``MAX_SCAN`` bytes.
"""

from __future__ import annotations

import functools
import re

from coredumpd.elf.core import PF_W, Core
from coredumpd.patterns import Pattern
from coredumpd.values import Frozen

MAX_SCAN = 256 << 20
CHUNK = 1 << 20
OVERLAP = 1024
MAX_CONTEXT = 1024
MAX_FOUND = 8
BLOCK = 16 << 10  # all-zero blocks (untouched stack and heap pages) are not searched
ZERO_BLOCK = bytes(BLOCK)

_NAME = rb"[A-Za-z0-9_.$@+-]{1,256}"
_PATH = rb"[^\x00\s()]{1,1024}"
PREFILTER = b"version "
# compiled when a block holds PREFILTER: most cores have no such block
PATTERNS = (
    ("undefined", Pattern(rb"undefined symbol: (?P<symbol>" + _NAME + rb"), version "
                          rb"(?P<version>" + _NAME + rb")")),
    ("not-defined", Pattern(rb"symbol (?P<symbol>" + _NAME + rb") version (?P<version>"
                            + _NAME + rb") not defined in file (?P<provider>" + _PATH
                            + rb") with link time reference")),
    ("version-not-found", Pattern(rb"version `(?P<version>" + _NAME + rb")' not found "
                                  rb"\(required by (?P<requirer>" + _PATH + rb")\)")),
)


class LoaderError(Frozen):
    """One loader message found in memory; names are those the message gives."""

    kind: str
    address: int
    text: str  # the whole NUL-delimited string around the match
    version: str
    symbol: str | None
    provider: str | None  # the object that lacks the version/symbol, when named
    requirer: str | None  # the object that needs it, when named


@functools.lru_cache(maxsize=2)  # two rules ask about the same core
def find_loader_errors(core: Core) -> tuple[LoaderError, ...]:
    """Distinct loader version errors in the dumped writable memory of ``core``."""
    return tuple(_find(core))


def _find(core: Core) -> list[LoaderError]:
    found: dict[str, LoaderError] = {}
    budget = MAX_SCAN
    for segment in core.segments:
        if not segment.flags & PF_W or segment.filesz == 0 or budget <= 0:
            continue
        size = min(segment.filesz, budget)
        budget -= size
        for error in _scan(core, segment.vaddr, size):
            found.setdefault(error.text, error)
            if len(found) >= MAX_FOUND:
                return list(found.values())
    return list(found.values())


def _scan(core: Core, start: int, size: int) -> list[LoaderError]:
    errors = []
    position = 0
    while position < size:
        data = core.read_memory_partial(start + position, min(CHUNK + OVERLAP, size - position))
        if not data:
            break
        if not _may_hold_a_message(data):
            position += CHUNK
            continue
        for kind, pattern in PATTERNS:
            for match in pattern.finditer(data):
                if match.start() < CHUNK or position + CHUNK >= size:
                    errors.append(_error(kind, match, data, start + position))
        position += CHUNK
    return errors


def _may_hold_a_message(data: bytes) -> bool:
    """Whether ``data`` holds :data:`PREFILTER`, which every message has.  Comparing a
    block with zeros (memcmp) is ~10 times faster than searching it, and most dumped
    bytes of a threaded process are zero (200 threads' stacks: 93% of 55 MB), so
    only the blocks that are not all zero are searched."""
    reach = len(PREFILTER) - 1  # a match may start near a block's end
    for start in range(0, len(data), BLOCK):
        if data.startswith(ZERO_BLOCK, start):
            continue  # no match starts here: PREFILTER has no zero byte
        if data.find(PREFILTER, start, start + BLOCK + reach) >= 0:
            return True
    return False


def _error(kind: str, match: re.Match[bytes], data: bytes, base: int) -> LoaderError:
    floor = max(0, match.start() - MAX_CONTEXT)
    nul = data.rfind(b"\0", floor, match.start())
    begin = nul + 1 if nul >= 0 else floor
    end = data.find(b"\0", match.end(), match.end() + MAX_CONTEXT)
    end = end if end >= 0 else min(len(data), match.end() + MAX_CONTEXT)
    text = _decode(data[begin:end])
    groups = {key: _decode(value) for key, value in match.groupdict().items() if value}
    # dlerror()'s "OBJECT: MESSAGE", or the exception's "MESSAGE\0OBJECT\0"
    # (elf/dl-exception.c _dl_exception_create_format puts objname after the message).
    # The object is the last "X: " before the message ("reload failed: OBJ: MESSAGE").
    prefix = _decode(data[begin:match.start()]).rstrip(": ").rsplit(": ", 1)[-1] or None
    following = _following(data, end)
    objname = prefix or following
    if kind == "version-not-found":
        provider, requirer = objname, groups.get("requirer")
    else:
        provider, requirer = groups.get("provider"), objname
    return LoaderError(kind, base + begin, text.strip(), groups["version"],
                       groups.get("symbol"), provider, requirer)


def _following(data: bytes, end: int) -> str | None:
    """The NUL-terminated string right after ``end`` if it looks like an object name."""
    stop = data.find(b"\0", end + 1, end + 1 + MAX_CONTEXT)
    if stop <= end + 1:
        return None
    candidate = _decode(data[end + 1:stop])
    return candidate if re.fullmatch(r"[^\s]*\.so[^\s]*|/[^\s]+", candidate) else None


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")
