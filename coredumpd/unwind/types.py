"""Unwound frames, how each was found, and the bounds on unwinding work."""

from __future__ import annotations

import enum

from coredumpd.values import Frozen, Value


class Trust(str, enum.Enum):
    """How a frame was found (CONTRACT.md ``trust``)."""

    CONTEXT = "context"  # registers from the core (frame 0) or a signal frame
    CFI = "cfi"
    FRAME_POINTER = "frame-pointer"
    SCAN = "scan"


class Frame(Value):
    """One unwound frame.  ``pc`` is the real return address (or exact pc).

    ``lookup_pc`` is what symbolization uses: ``pc`` for frame 0 and for the
    frame interrupted by a signal, ``pc - 1`` otherwise.
    """

    index: int
    pc: int
    sp: int
    cfa: int | None
    trust: Trust
    signal_frame: bool = False  # this frame is a signal trampoline (__restore_rt)
    registers: dict[str, int] = {}  # noqa: RUF012 - one per instance (values.py)
    repeat: int = 1  # >1: a collapsed run of identical recursive frames
    # >1: this frame is one of a run of ``cycle`` frames (mutual recursion, A->B->A->B)
    # that repeated ``repeat`` times as a whole
    cycle: int = 1

    @property
    def exact(self) -> bool:
        return self.trust is Trust.CONTEXT

    @property
    def lookup_pc(self) -> int:
        return self.pc if self.exact else self.pc - 1


class Caps(Frozen):
    """Bounds on unwinding work (hostile or cyclic stacks)."""

    max_frames: int = 256
    max_threads: int = 1024
    max_expression_steps: int = 10_000
    max_bytes_read: int = 64 << 20
    scan_words: int = 1024
    collapse_after: int = 8  # identical recursive frames beyond this become one counted run
    max_cycle: int = 4  # mutual recursion through up to this many functions folds too
