"""Regular expressions compiled when first used, not when their module is imported.

``re.compile`` at import costs every process that imports the module, whether or
not it ever uses the pattern: measured here, the ~27 patterns of the rules cost
each analysis ~5 ms (the signature's C++/Rust machinery pattern alone ~3 ms),
though most crashes are neither C++ exceptions, Rust panics, glibc abort
messages nor loader errors.  A :class:`Pattern` is declared as a compiled
pattern is (a module constant) and compiled on its first ``match``/``search``…

A process that forks analyses (the sandbox zygote, corectl's analysis worker)
calls :func:`compile_all` (through :func:`coredumpd.analysis.prepare`) once, so
that no child compiles one again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, AnyStr, Generic

_DECLARED: list[Pattern[Any]] = []


class Pattern(Generic[AnyStr]):
    """``re.compile(source, flags)``, done on the first use."""

    __slots__ = ("_compiled", "flags", "source")

    def __init__(self, source: AnyStr, flags: int = 0) -> None:
        self.source: AnyStr = source
        self.flags = flags
        self._compiled: re.Pattern[AnyStr] | None = None
        _DECLARED.append(self)

    @property
    def compiled(self) -> re.Pattern[AnyStr]:
        if self._compiled is None:
            self._compiled = re.compile(self.source, self.flags)
        return self._compiled

    def match(self, text: AnyStr) -> re.Match[AnyStr] | None:
        return self.compiled.match(text)

    def search(self, text: AnyStr) -> re.Match[AnyStr] | None:
        return self.compiled.search(text)

    def fullmatch(self, text: AnyStr) -> re.Match[AnyStr] | None:
        return self.compiled.fullmatch(text)

    def finditer(self, text: AnyStr) -> Iterator[re.Match[AnyStr]]:
        return self.compiled.finditer(text)

    def sub(self, replacement: AnyStr | Callable[[re.Match[AnyStr]], AnyStr],
            text: AnyStr) -> AnyStr:
        return self.compiled.sub(replacement, text)


def compile_all() -> int:
    """Compile every pattern declared so far (by the modules imported); how many were not
    compiled yet."""
    fresh = [pattern for pattern in _DECLARED if pattern._compiled is None]
    for pattern in fresh:
        pattern.compiled  # noqa: B018 - the property compiles it
    return len(fresh)
