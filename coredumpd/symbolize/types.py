"""What the symbolizer says about an address (shared with the rules and the report)."""

from __future__ import annotations

from coredumpd.values import Frozen


class InlinedCall(Frozen):
    """One inlined call holding the address: the function inlined and where it was called
    (:mod:`coredumpd.symbolize.dwarfinline` reads them)."""

    name: str | None  # linkage name (mangled) when the DWARF has one, else DW_AT_name
    call_file: str | None
    call_line: int | None


class Symbol(Frozen):
    """What the symbolizer knows about an address."""

    name: str | None  # plain name: "abort", not "__GI_abort" or "abort@@GLIBC_2.2.5"
    offset: int = 0  # address - symbol start
    raw_name: str | None = None  # as in the symbol table (mangled, versioned)
    file: str | None = None
    line: int | None = None
    # the calls inlined at the address, outermost first (DW_TAG_inlined_subroutine):
    # file:line above is the innermost one's; each call's call_file:call_line is
    # where the function around it called it
    inlined: tuple[InlinedCall, ...] = ()
