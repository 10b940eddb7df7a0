"""The unwinder: CFI first, then frame pointer, then stack scan.

The order and the checks follow what gdb, libunwind and Breakpad's
``StackwalkerAMD64`` do:

- frame 0 comes from the thread's registers and its pc is exact; every other
  pc is a return address, looked up and symbolized as ``pc - 1`` — except the
  frame interrupted by a signal, whose pc the kernel saved exactly (the
  ``S`` augmentation marks the trampoline, ``__restore_rt``; libgcc's
  ``uw_frame_state_for`` and gdb's ``get_frame_address_in_block`` do the same);
- CFI from ``.eh_frame_hdr`` (:mod:`coredumpd.unwind.cfi`); without a hdr
  (static executables) from the whole ``.eh_frame``, then ``.debug_frame``
  from the separate debug file or the module itself;
- a pc of 0 or in non-executable memory at frame 0 is a call through a bad
  pointer: the caller's return address is at ``[rsp]`` (x86-64);
- a signal restorer without CFI is known by its code; the interrupted
  registers are read from the ``ucontext`` on the stack (the layout is the
  architecture's, :mod:`coredumpd.arch`);
- frame pointer: ``[rbp]`` is the caller's rbp and ``[rbp+8]`` the return
  address, accepted only when rbp is aligned, above sp, in the stack mapping,
  and the return address follows a call in executable memory — unless the
  first return address above sp came from a direct call into the function pc
  is in (a leaf that set up no frame: the frame pointer would skip a frame);
- stack scan: the first word above sp that is the address right after a call
  instruction in an executable mapping (:func:`coredumpd.symbolize.disasm.call_before`).

Register numbers, the frame record and the signal frame come from the
space's :class:`~coredumpd.arch.Arch`; the strategies are in
:mod:`coredumpd.unwind.steps`, the folding of recursion in
:mod:`coredumpd.unwind.frames`.  One :class:`Unwinder` per address space owns
the CFI cache its threads share.

Bounds (:class:`~coredumpd.unwind.types.Caps`): emitted frames, steps, bytes
read, expression steps; a (sp, pc) pair seen twice stops a cycle; runs of
identical recursive frames collapse into one frame with a ``repeat`` count,
runs of mutual recursion (A->B->A->B, up to ``Caps.max_cycle`` functions)
into one instance of the cycle whose frames carry ``cycle`` and ``repeat``,
and beyond the frame cap the bottom of the stack is still kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Self

from coredumpd.arch import Registers, dwarf_named, dwarf_numbered
from coredumpd.errors import FormatError, LimitExceeded, MemoryReadError
from coredumpd.image.types import AddressSpace
from coredumpd.unwind.frames import FrameList
from coredumpd.unwind.module_cfi import CfiCache
from coredumpd.unwind.steps import Step, StepFinder
from coredumpd.unwind.types import Caps, Frame, Trust
from coredumpd.values import Value

STEPS_PER_FRAME = 2048  # raw unwind steps allowed per emitted frame (collapsed recursion)
MAX_SCANNED_RUN = 32  # consecutive frames found by stack scanning before giving up (garbage)


class UnwindResult(Value):
    frames: list[Frame]
    stop_reason: str | None  # why unwinding stopped before the end of the stack; None: normal
    problems: list[str] = []  # recovered-from errors  # noqa: RUF012 - one per instance (values.py)


class Unwinder:
    """Unwinds the threads of one address space, sharing one CFI cache between them.

    The cache is the Unwinder's own unless one is passed in (a longer-lived
    cache shared across crashes); :meth:`close` (or leaving a ``with`` block)
    drops an own cache, whose modules hold the space's file opener.
    """

    def __init__(self, space: AddressSpace, caps: Caps | None = None,
                 cache: CfiCache | None = None) -> None:
        self.space = space
        self.caps = caps or Caps()
        self.owns_cache = cache is None
        self.cache = cache if cache is not None else CfiCache(space.arch.sp_column)

    def unwind(self, registers: Mapping[str, int]) -> UnwindResult:
        """Unwind one thread from its registers (names as in ``pr_reg``: rip, rsp, rbp...).

        Never raises on hostile memory: why unwinding stopped early is in
        ``stop_reason``; CFI errors that a fallback got past are in ``problems``.
        """
        finder = StepFinder(self.space, self.caps, self.cache)
        return _walk(finder, dwarf_numbered(self.space.arch, registers))

    def close(self) -> None:
        if self.owns_cache:
            self.cache.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def next_step(finder: StepFinder, frame: Frame, registers: Registers) -> \
        tuple[Step | None, str | None]:
    """The caller of ``frame``: (step, None), (None, None) at the end, (None, why)."""
    pc = frame.pc
    try:
        if not finder.executable(pc):
            if not frame.exact:  # a corrupt stack: show the bad frame, go no further
                return None, f"return address {pc:#x} is not in executable memory"
            step = finder.step_bad_pc(registers)
            return step, None if step else (f"pc {pc:#x} is not in executable memory and "
                                            f"[{finder.arch.sp_name}] is no return address")
        step = finder.step_cfi(registers, frame.lookup_pc)
        if step is not None:
            return step, None
    except (FormatError, MemoryReadError) as err:
        finder.problems.append(f"CFI at {pc:#x}: {err}")
    step = _without_cfi(finder, frame, registers)
    if step is not None:
        return step, None
    if frame.trust is Trust.FRAME_POINTER and registers.get(finder.fp) == 0:
        return None, None  # the end of a frame-pointer chain (_start clears the frame pointer)
    return None, "no CFI, frame pointer or return address found"


def _without_cfi(finder: StepFinder, frame: Frame, registers: Registers) -> Step | None:
    """A signal frame known by its code, else frame pointer or scan; None when unreadable."""
    try:
        step = finder.step_signal_frame(registers, frame.pc)
    except MemoryReadError:
        step = None
    if step is not None:
        return step
    try:
        return finder.step_without_cfi(registers, frame.lookup_pc, frame.index == 0)
    except MemoryReadError:
        return None


def sane(finder: StepFinder, frame: Frame, step: Step) -> str | None:
    """Why the caller ``step`` found is not acceptable, or None."""
    caller_sp = step.registers.get(finder.sp)
    if caller_sp is None:
        return "the caller's stack pointer is unknown"
    if not frame.signal_frame and not step.signal_frame and caller_sp < frame.sp:
        return f"the caller's sp {caller_sp:#x} is below the callee's {frame.sp:#x}"
    return None


def _walk(finder: StepFinder, registers: Registers) -> UnwindResult:
    caps, pc, sp = finder.caps, finder.pc, finder.sp
    frames = FrameList(caps)
    seen: set[tuple[int, int]] = set()
    current = Frame(0, registers.get(pc, 0), registers.get(sp, 0), None, Trust.CONTEXT)
    stop: str | None = None
    scanned_run = 0
    for _ in range(caps.max_frames * STEPS_PER_FRAME):
        if frames.add(current):  # name registers only of the frames kept
            current.registers = dwarf_named(finder.arch, registers)
        scanned_run = scanned_run + 1 if current.trust is Trust.SCAN else 0
        if scanned_run > MAX_SCANNED_RUN:
            stop = f"more than {MAX_SCANNED_RUN} frames in a row found only by stack scanning"
            break
        if (current.sp, current.pc) in seen:
            stop = "cycle: the same frame twice"
            break
        seen.add((current.sp, current.pc))
        try:
            step, stop = next_step(finder, current, registers)
        except LimitExceeded as err:
            step, stop = None, str(err)
        if step is None:
            break
        current.cfa, current.signal_frame = step.cfa, step.signal_frame
        stop = None if step.end else sane(finder, current, step)
        if step.end or stop:
            break
        registers = step.registers
        trust = Trust.CONTEXT if step.signal_frame else step.trust
        current = Frame(0, registers.get(pc, 0), registers.get(sp, 0), None, trust)
        if current.pc == 0 and not step.signal_frame:
            break  # a zero return address ends the stack
    else:
        stop = f"more than {caps.max_frames * STEPS_PER_FRAME} unwind steps"
    reasons = [reason for reason in (frames.elided_reason(), stop) if reason]
    return UnwindResult(frames.result(), "; ".join(reasons) or None, finder.problems)
