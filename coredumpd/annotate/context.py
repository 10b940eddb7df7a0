"""What every root-cause rule reads, and what it returns.

The analysis layer (:mod:`coredumpd.analysis`) builds an
:class:`AnalysisContext` from the core, the facts recorded at dump time and the
unwound threads; rules never open files or parse bytes themselves — the
model did the checking (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from coredumpd.image.types import AddressSpace, Module
from coredumpd.model import Annotation
from coredumpd.symbolize.types import Symbol
from coredumpd.unwind.types import Frame
from coredumpd.values import Value

__all__ = ["AnalysisContext", "Annotation", "Symbolizer", "ThreadTrace"]

if TYPE_CHECKING:
    from coredumpd.elf.core import Core
    from coredumpd.elf.notes import SigInfo


class Symbolizer(Protocol):
    def symbolize(self, module: Module | None, lookup_pc: int) -> Symbol: ...

    def address_of(self, name: str, module: Module | None = None) -> int | None:
        """Runtime address of symbol ``name`` (in ``module``, or in any module)."""
        ...


class ThreadTrace(Value):
    """One thread, unwound and symbolized.  ``symbols``/``modules`` parallel ``frames``."""

    tid: int
    name: str | None
    crashed: bool
    registers: dict[str, int]
    frames: list[Frame]
    symbols: list[Symbol]
    modules: list[Module | None]
    stop_reason: str | None = None  # why unwinding stopped early, if it did


class AnalysisContext(Value):
    core: Core
    facts: dict[str, Any]  # docs/ARCHITECTURE.md "Facts"; {} for a bare core
    space: AddressSpace
    symbolizer: Symbolizer
    threads: list[ThreadTrace]
    siginfo: SigInfo | None

    @property
    def crashed(self) -> ThreadTrace | None:
        return next((thread for thread in self.threads if thread.crashed), None)
