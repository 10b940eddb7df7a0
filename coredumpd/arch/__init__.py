"""What depends on the machine: the interface each architecture module implements.

Everything else in coredumpd is written against :class:`Arch`; the facts of
one machine (register names and their order in ``pr_reg``, DWARF register
numbers, the frame record, PLT relocations, the signal frame, the capstone
mode, call instructions) live in one module per machine, as drgn keeps them
in ``arch_x86_64.c``.  :mod:`coredumpd.arch.x86_64` is the only one today; an
aarch64 module implements the same attributes and :func:`for_machine` learns
its ``e_machine``.

This package sits at the bottom of the tree (above ``errors`` only): the ELF
layer, the process image, the unwinder and the rules all read it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from coredumpd.arch.interface import (
    Arch,
    FrameRecord,
    MemoryOperand,
    PlainOperand,
    PltLayout,
    Registers,
    SignalFrame,
    WordReader,
)
from coredumpd.errors import FormatError

__all__ = ["Arch", "FrameRecord", "MemoryOperand", "PlainOperand", "PltLayout", "Registers", "SignalFrame",
           "WordReader", "dwarf_named", "dwarf_numbered", "for_machine", "for_registers"]


def machines() -> tuple[Arch, ...]:
    """Every architecture coredumpd has a module for."""
    from coredumpd.arch import x86_64

    return (x86_64.ARCH,)


def for_machine(e_machine: int) -> Arch:
    """The architecture of a core or ELF file with this ``e_machine``."""
    for arch in machines():
        if arch.e_machine == e_machine:
            return arch
    raise FormatError(f"no architecture module for e_machine {e_machine}")


def for_registers(names: Collection[str]) -> Arch | None:
    """The architecture whose ``pr_reg`` names any of ``names``, or None.

    For a thread of a stored analysis, which keeps its registers by name and
    records no ``e_machine``: the names are the machine's own (``rip``, ``pc``).
    """
    return next((arch for arch in machines()
                 if any(name in arch.prstatus_registers for name in names)), None)


def dwarf_numbered(arch: Arch, registers: Mapping[str, int]) -> Registers:
    """``pr_reg``-named registers as DWARF numbers (the ones DWARF numbers)."""
    return {number: registers[name] for number, name in enumerate(arch.dwarf_registers)
            if name in registers}


def dwarf_named(arch: Arch, registers: Registers) -> dict[str, int]:
    """DWARF-numbered registers by name (numbers the architecture does not name are dropped)."""
    names = arch.dwarf_registers
    count = len(names)  # once, not per register: this runs for every frame kept
    return {names[number]: value for number, value in registers.items() if 0 <= number < count}
