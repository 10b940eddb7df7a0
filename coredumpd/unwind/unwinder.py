"""The x86-64 unwinder: CFI first, then frame pointer, then stack scan.

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
  pointer: the caller's return address is at ``[rsp]``;
- frame pointer: ``[rbp]`` is the caller's rbp and ``[rbp+8]`` the return
  address, accepted only when rbp is aligned, above sp, in the stack mapping,
  and the return address follows a call in executable memory — unless the
  first return address above sp came from a direct call into the function pc
  is in (a leaf that set up no frame: the frame pointer would skip a frame);
- stack scan: the first word above sp that is the address right after a call
  instruction in an executable mapping (:func:`coredumpd.symbolize.disasm.call_before`).

Bounds (:class:`~coredumpd.unwind.types.Caps`): emitted frames, steps, bytes
read, expression steps; a (sp, pc) pair seen twice stops a cycle; runs of
identical recursive frames collapse into one frame with a ``repeat`` count,
runs of mutual recursion (A->B->A->B, up to ``Caps.max_cycle`` functions)
into one instance of the cycle whose frames carry ``cycle`` and ``repeat``,
and beyond the frame cap the bottom of the stack is still kept.
"""

from __future__ import annotations

import dataclasses
import struct
import weakref
from collections.abc import Callable

from coredumpd.elf import layouts as L
from coredumpd.elf.elffile import ElfFile
from coredumpd.errors import CoredumpdError, FormatError, LimitExceeded, MemoryReadError
from coredumpd.image.types import AddressSpace, Module
from coredumpd.unwind import cfi
from coredumpd.unwind.dwarf_expr import MASK, evaluate
from coredumpd.unwind.types import Caps, Frame, Trust

RIP, RSP, RBP = L.DWARF_RA, L.DWARF_SP, L.DWARF_FP
PAGE = 4096
WORD = struct.Struct("<Q")
STEPS_PER_FRAME = 2048  # raw unwind steps allowed per emitted frame (collapsed recursion)
BOTTOM_FRAMES = 16  # frames kept from the bottom of the stack when the frame cap is hit
MAX_CFI_SECTION = 64 << 20  # an .eh_frame/.debug_frame indexed whole is at most this big
CACHED_SPAN = 16  # reads spanning up to this many pages go through the page cache
MAX_SCANNED_RUN = 32  # consecutive frames found by stack scanning before giving up (garbage)

Registers = dict[int, int]  # DWARF register number -> value


@dataclasses.dataclass
class UnwindResult:
    frames: list[Frame]
    stop_reason: str | None  # why unwinding stopped before the end of the stack; None: normal
    problems: list[str] = dataclasses.field(default_factory=list)  # recovered-from errors


class CachedMemory:
    """Page-cached reads through an AddressSpace, counting bytes against a budget."""

    def __init__(self, space: AddressSpace, budget: int) -> None:
        self.space = space
        self.budget = budget
        self.bytes_read = 0
        self.pages: dict[int, bytes | None] = {}

    def _page(self, number: int) -> bytes | None:
        if number in self.pages:
            return self.pages[number]
        self._charge(PAGE)
        try:
            data: bytes | None = self.space.read(number * PAGE, PAGE)
        except CoredumpdError:
            data = None  # partly unreadable page: callers fall back to exact reads
        self.pages[number] = data
        return data

    def _charge(self, size: int) -> None:
        self.bytes_read += size
        if self.bytes_read > self.budget:
            raise LimitExceeded(f"unwinding read more than {self.budget} bytes")

    def read(self, address: int, size: int) -> bytes:
        if address < 0 or size < 0 or address + size > MASK:
            raise MemoryReadError(address & MASK, size, "outside the address space")
        first, last = address // PAGE, (address + size - 1) // PAGE
        if first == last:
            page = self.pages[first] if first in self.pages else self._page(first)
            if page is not None:
                offset = address - first * PAGE
                return page[offset:offset + size]
        elif last - first < CACHED_SPAN:
            pages = [self._page(number) for number in range(first, last + 1)]
            if all(page is not None for page in pages):
                joined = b"".join(pages)  # type: ignore[arg-type]
                offset = address - first * PAGE
                return joined[offset:offset + size]
        self._charge(size)
        return self.space.read(address, size)

    def word(self, address: int) -> int:
        return int(WORD.unpack(self.read(address, 8))[0])


ElfOpener = Callable[[Module], ElfFile | None]


class ModuleCfi:
    """The CFI state of one module, kept across threads: table, CIEs, FDEs, rows.

    ``.eh_frame_hdr`` first; then, opened once and only when needed, a sorted
    index of the whole ``.eh_frame`` when there is no hdr (static
    executables), and of ``.debug_frame`` from the debug file or the module.
    """

    def __init__(self, module: Module, open_elf: ElfOpener | None = None) -> None:
        self.module = module
        self.open_elf = open_elf
        self.hdr: cfi.EhFrameHdr | None = None
        self.broken: str | None = None
        self.cies: dict[int, cfi.Cie] = {}
        self.fdes: dict[int, cfi.Fde] = {}
        self.initial_rows: dict[cfi.Cie, cfi.RuleRow] = {}
        self.rows: dict[int, tuple[cfi.Fde, cfi.RuleRow] | None] = {}
        self.sections: list[cfi.SectionIndex] | None = None
        self.problems: list[str] = []

    def row_for(self, read: Callable[[int, int], bytes], pc: int) -> \
            tuple[cfi.Fde, cfi.RuleRow] | None:
        """The FDE covering ``pc`` and its rule row, or None when the module has none."""
        if pc in self.rows:
            return self.rows[pc]
        fde = self._fde_for(read, pc)
        if fde is None:
            fde = self._fde_from_sections(pc)
        result = None
        if fde is not None:
            initial = self.initial_rows.get(fde.cie)
            if initial is None:
                initial = self.initial_rows[fde.cie] = cfi.initial_row(fde.cie)
            result = (fde, cfi.rules_at(fde, pc, initial))
        self.rows[pc] = result
        return result

    def _fde_for(self, read: Callable[[int, int], bytes], pc: int) -> cfi.Fde | None:
        if self.broken or self.module.eh_frame_hdr is None:
            return None
        if self.hdr is None:
            try:
                self.hdr = cfi.EhFrameHdr(read, self.module.eh_frame_hdr)
            except (FormatError, MemoryReadError) as err:
                self.broken = f".eh_frame_hdr of {self.module.path}: {err}"
                return None
        address = self.hdr.lookup(pc)
        if address is None:
            return None
        fde = self.fdes.get(address)
        if fde is None:
            fde = self.fdes[address] = cfi.parse_fde(read, address, self.cies)
        return fde if pc in fde else None  # a table that lies, or a gap between FDEs

    def _fde_from_sections(self, pc: int) -> cfi.Fde | None:
        if self.sections is None:
            self.sections = self._load_sections()
        for index in self.sections:
            fde = index.find(pc)
            if fde is not None:
                return fde
        return None

    def _load_sections(self) -> list[cfi.SectionIndex]:
        found: list[cfi.SectionIndex] = []
        image = self.open_elf(self.module) if self.open_elf else None
        if image is not None and self.module.eh_frame_hdr is None:
            self._add_section(found, image, ".eh_frame", True)
        debug = _open_debug_file(self.module.debug_path)
        for elf in (debug, image):
            if elf is not None and self._add_section(found, elf, ".debug_frame", False):
                break
        if debug is not None:
            debug.close()
        return found

    def _add_section(self, found: list[cfi.SectionIndex], elf: ElfFile, name: str,
                     eh_frame: bool) -> bool:
        try:
            section = elf.section(name)
            if section is None or section.sh_size > MAX_CFI_SECTION:
                return False
            data = elf.section_data(section)
            base = self.module.load_bias + section.sh_addr if eh_frame else 0
            found.append(cfi.SectionIndex(data, base, eh_frame,
                                          0 if eh_frame else self.module.load_bias))
            return True
        except CoredumpdError as err:
            self.problems.append(f"{name} of {self.module.path}: {err}")
            return False


def _open_debug_file(path: str | None) -> ElfFile | None:
    if path is None:
        return None
    try:
        return ElfFile.open(path)
    except CoredumpdError:
        return None


_CFI_CACHES: weakref.WeakKeyDictionary[object, dict[int, ModuleCfi]] = \
    weakref.WeakKeyDictionary()


def forget_space(space: AddressSpace) -> None:
    """Drop the CFI cache of ``space``.  Call when done with it: a cache's ModuleCfi
    holds ``space.open_elf``, so the weak key alone would never die."""
    try:
        _CFI_CACHES.pop(space, None)
    except TypeError:
        pass


def _cfi_cache(space: AddressSpace) -> dict[int, ModuleCfi]:
    """Per-space CFI caches, shared by the threads of one core."""
    try:
        return _CFI_CACHES.setdefault(space, {})
    except TypeError:  # not weak-referenceable: no sharing across calls
        return {}


@dataclasses.dataclass
class Step:
    """The caller's registers and how they were found."""

    registers: Registers
    trust: Trust
    cfa: int | None = None
    signal_frame: bool = False  # the callee was a signal trampoline: caller pc is exact
    end: bool = False  # CFI says the return address is undefined: outermost frame


class _Unwinder:
    """One thread's unwind."""

    def __init__(self, space: AddressSpace, caps: Caps) -> None:
        self.space = space
        self.caps = caps
        self.memory = CachedMemory(space, caps.max_bytes_read)
        self.cfi = _cfi_cache(space)
        self.problems: list[str] = []
        self.returns: dict[int, bool] = {}  # plausible_return() answers
        self.scan_budget = caps.scan_words * caps.max_frames  # words all scans may examine

    # -- helpers -----------------------------------------------------------------------

    def executable(self, address: int) -> bool:
        mapping = self.space.mapping_at(address)
        return mapping is not None and mapping.executable

    def plausible_return(self, address: int) -> bool:
        """A return address: right after a call, or a signal trampoline's entry.

        A signal handler returns to ``__restore_rt`` (SA_RESTORER), which no call
        precedes; its CFI has the 'S' augmentation (glibc's
        sysdeps/unix/sysv/linux/x86_64/libc_sigaction.c).
        """
        known = self.returns.get(address)
        if known is None:
            from coredumpd.symbolize import disasm  # capstone: ~30 ms to import, rarely needed
            known = self.returns[address] = self.executable(address) and (
                disasm.call_before(self.space, address) is not None
                or self.signal_trampoline(address))
        return known

    def signal_trampoline(self, address: int) -> bool:
        state = self.module_cfi(address - 1)
        if state is None:
            return False
        try:
            found = state.row_for(self.memory.read, address - 1)
        except (FormatError, MemoryReadError):
            return False
        return found is not None and found[0].cie.signal_frame

    def module_cfi(self, pc: int) -> ModuleCfi | None:
        module = self.space.module_at(pc)
        if module is None:
            return None
        key = id(module)
        state = self.cfi.get(key)
        if state is None or state.module is not module:
            state = self.cfi[key] = ModuleCfi(module, getattr(self.space, "open_elf", None))
        return state

    # -- strategies --------------------------------------------------------------------

    def step_cfi(self, registers: Registers, lookup_pc: int) -> Step | None:
        state = self.module_cfi(lookup_pc)
        if state is None:
            return None
        found = state.row_for(self.memory.read, lookup_pc)
        if found is None:
            return None
        fde, row = found
        cfa = self.cfa(row, registers)
        caller = self.apply(row, registers, cfa)
        ra = fde.cie.ra_register
        ra_rule = row.registers.get(ra)
        if ra_rule is None or ra_rule.rule is cfi.Rule.UNDEFINED or ra not in caller:
            return Step(caller, Trust.CFI, cfa, fde.cie.signal_frame, end=True)
        caller[RIP] = caller[ra]
        return Step(caller, Trust.CFI, cfa, fde.cie.signal_frame)

    def register_reader(self, registers: Registers) -> Callable[[int], int]:
        def read_register(number: int) -> int:
            if number not in registers:
                raise FormatError(f"CFI uses DWARF register {number}, which is not known")
            return registers[number]
        return read_register

    def cfa(self, row: cfi.RuleRow, registers: Registers) -> int:
        if row.cfa_expression is not None:
            return evaluate(row.cfa_expression, self.register_reader(registers),
                            self.memory.read, max_steps=self.caps.max_expression_steps)
        return (self.register_reader(registers)(row.cfa_register) + row.cfa_offset) & MASK

    def apply(self, row: cfi.RuleRow, registers: Registers, cfa: int) -> Registers:
        """The caller's registers (DWARF 5, 6.4.1); unmentioned registers keep their value."""
        caller = dict(registers)
        caller[RSP] = cfa  # x86-64: the CFA is the caller's sp (psABI 3.6.2)
        for number, rule in row.registers.items():
            if rule.rule is cfi.Rule.SAME_VALUE:
                continue
            value = self.recover(rule, registers, cfa)
            if value is None:
                caller.pop(number, None)
            else:
                caller[number] = value
        return caller

    def recover(self, rule: cfi.RegisterRule, registers: Registers, cfa: int) -> int | None:
        kind = rule.rule
        if kind is cfi.Rule.OFFSET:
            return self.memory.word((cfa + rule.value) & MASK)
        if kind is cfi.Rule.VAL_OFFSET:
            return (cfa + rule.value) & MASK
        if kind is cfi.Rule.REGISTER:
            return registers.get(rule.value)
        if kind is cfi.Rule.UNDEFINED:
            return None
        value = evaluate(rule.expression, self.register_reader(registers), self.memory.read,
                         (cfa,), self.caps.max_expression_steps)
        return value if kind is cfi.Rule.VAL_EXPRESSION else self.memory.word(value)

    def step_bad_pc(self, registers: Registers) -> Step | None:
        """pc 0 or non-executable: a call through a bad pointer left the return at [rsp]."""
        sp = registers.get(RSP)
        if sp is None:
            return None
        return_address = self.memory.word(sp)
        if not self.executable(return_address):
            return None
        caller = dict(registers)
        caller[RIP], caller[RSP] = return_address, sp + 8
        return Step(caller, Trust.SCAN, sp + 8)

    def step_frame_pointer(self, registers: Registers) -> Step | None:
        rbp, sp = registers.get(RBP), registers.get(RSP)
        if rbp is None or sp is None or rbp % 8 or rbp < sp:
            return None
        stack = self.space.mapping_at(sp)
        if stack is None or rbp + 16 > stack.end or not stack.writable:
            return None
        saved_rbp, return_address = self.memory.word(rbp), self.memory.word(rbp + 8)
        if not self.plausible_return(return_address):
            return None
        caller = dict(registers)
        caller[RIP], caller[RSP], caller[RBP] = return_address, rbp + 16, saved_rbp
        return Step(caller, Trust.FRAME_POINTER, rbp + 16)

    def call_target(self, return_address: int) -> int | None:
        """Where the direct call before ``return_address`` went (None: indirect or no call)."""
        from coredumpd.symbolize import disasm
        call = disasm.call_before(self.space, return_address)
        return call.direct_target if call is not None else None

    def step_without_cfi(self, registers: Registers, lookup_pc: int, first: bool) -> \
            Step | None:
        """Frame pointer, unless it skips a frame (a leaf that set up no frame).

        The frame pointer's return address and the first return address above
        sp are compared: when both follow direct calls, the call whose target
        (a function start) is nearer below pc entered the function pc is in —
        what gdb learns from the symbol table and its prologue analyser
        (amd64-tdep.c).  A signal trampoline above sp always wins.
        """
        by_fp = self.step_frame_pointer(registers)
        limit = (by_fp.registers[RSP] - registers[RSP]) // 8 if by_fp else self.caps.scan_words
        scanned = self.step_scan(registers, first, limit)
        if by_fp is None or scanned is None:
            return by_fp or scanned
        if by_fp.registers[RSP] == scanned.registers[RSP]:
            return by_fp
        if self.signal_trampoline(scanned.registers[RIP]):
            return scanned
        scan_target = self.call_target(scanned.registers[RIP])
        fp_target = self.call_target(by_fp.registers[RIP])
        if scan_target is None or fp_target is None or scan_target > lookup_pc:
            return by_fp
        return scanned if fp_target > lookup_pc or fp_target < scan_target else by_fp

    def step_scan(self, registers: Registers, first: bool, limit: int | None = None) -> \
            Step | None:
        """The first word of at most ``limit`` above sp that is a plausible return address."""
        sp = registers.get(RSP)
        if sp is None or sp % 8:
            return None
        stack = self.space.mapping_at(sp)
        if stack is None:
            return None
        count = min(self.caps.scan_words, (stack.end - sp) // 8,
                    self.caps.scan_words if limit is None else limit)
        self.scan_budget -= count
        if self.scan_budget < 0:
            raise LimitExceeded("stack scanning examined more than "
                                f"{self.caps.scan_words * self.caps.max_frames} words")
        words = struct.unpack(f"<{count}Q", self.memory.read(sp, count * 8)) if count else ()
        for position, candidate in enumerate(words):
            if candidate == registers.get(RIP) and not first:
                continue
            if candidate > PAGE and self.plausible_return(candidate):
                caller = dict(registers)
                caller[RIP], caller[RSP] = candidate, sp + 8 * position + 8
                return Step(caller, Trust.SCAN, caller[RSP])
        return None

    # -- the walk ----------------------------------------------------------------------

    def next_step(self, frame: Frame, registers: Registers) -> tuple[Step | None, str | None]:
        """The caller of ``frame``: (step, None), (None, None) at the end, (None, why)."""
        pc = frame.pc
        try:
            if not self.executable(pc):
                if not frame.exact:  # a corrupt stack: show the bad frame, go no further
                    return None, f"return address {pc:#x} is not in executable memory"
                step = self.step_bad_pc(registers)
                return step, None if step else \
                    f"pc {pc:#x} is not in executable memory and [rsp] is no return address"
            step = self.step_cfi(registers, frame.lookup_pc)
            if step is not None:
                return step, None
        except (FormatError, MemoryReadError) as err:
            self.problems.append(f"CFI at {pc:#x}: {err}")
        try:
            step = self.step_without_cfi(registers, frame.lookup_pc, frame.index == 0)
        except MemoryReadError:
            step = None
        if step is not None:
            return step, None
        if frame.trust is Trust.FRAME_POINTER and registers.get(RBP) == 0:
            return None, None  # the end of a frame-pointer chain (_start clears rbp)
        return None, "no CFI, frame pointer or return address found"

    def sane(self, frame: Frame, step: Step) -> str | None:
        """Why the caller ``step`` found is not acceptable, or None."""
        caller_sp = step.registers.get(RSP)
        if caller_sp is None:
            return "the caller's stack pointer is unknown"
        if not frame.signal_frame and not step.signal_frame and caller_sp < frame.sp:
            return f"the caller's sp {caller_sp:#x} is below the callee's {frame.sp:#x}"
        return None

    def run(self, registers: Registers) -> UnwindResult:
        frames = _Frames(self.caps)
        seen: set[tuple[int, int]] = set()
        current = Frame(0, registers.get(RIP, 0), registers.get(RSP, 0), None, Trust.CONTEXT)
        stop: str | None = None
        scanned_run = 0
        for _ in range(self.caps.max_frames * STEPS_PER_FRAME):
            if frames.add(current):  # name registers only of the frames kept
                current.registers = _named(registers)
            scanned_run = scanned_run + 1 if current.trust is Trust.SCAN else 0
            if scanned_run > MAX_SCANNED_RUN:
                stop = f"more than {MAX_SCANNED_RUN} frames in a row found only by stack scanning"
                break
            if (current.sp, current.pc) in seen:
                stop = "cycle: the same frame twice"
                break
            seen.add((current.sp, current.pc))
            try:
                step, stop = self.next_step(current, registers)
            except LimitExceeded as err:
                step, stop = None, str(err)
            if step is None:
                break
            current.cfa, current.signal_frame = step.cfa, step.signal_frame
            stop = None if step.end else self.sane(current, step)
            if step.end or stop:
                break
            registers = step.registers
            trust = Trust.CONTEXT if step.signal_frame else step.trust
            current = Frame(0, registers.get(RIP, 0), registers.get(RSP, 0), None, trust)
            if current.pc == 0 and not step.signal_frame:
                break  # a zero return address ends the stack
        else:
            stop = f"more than {self.caps.max_frames * STEPS_PER_FRAME} unwind steps"
        reasons = [reason for reason in (frames.elided_reason(), stop) if reason]
        return UnwindResult(frames.result(), "; ".join(reasons) or None, self.problems)


class _Frames:
    """The emitted frames: recursion folded into counted runs, the middle dropped past the cap.

    Past ``max_frames`` the oldest frames of the bottom part are dropped, so the
    first frames (the crash) and the last ones (main, _start) both stay.
    """

    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self.frames: list[Frame] = []
        self.elided = 0
        self.keep_head = max(caps.max_frames - BOTTOM_FRAMES, 1)
        self.cycle: _Cycle | None = None

    def add(self, frame: Frame) -> bool:
        """Keep ``frame`` or fold it into a run; True when it was kept as a frame
        (or may be: it is part of a cycle instance not yet complete)."""
        if self.cycle is not None:
            if self.cycle.takes(frame):
                return bool(self.cycle.pending)
            self._end_cycle()
        kept = _append(self.frames, frame, self.caps.collapse_after)
        if kept:
            self._cap()
            self.cycle = _Cycle.starting(self.frames, self.caps)
        return kept

    def _end_cycle(self) -> None:
        """The cycle stops folding; an instance cut short keeps its frames as frames."""
        assert self.cycle is not None
        for unfolded in self.cycle.pending:
            self.frames.append(unfolded)
            self._cap()
        self.cycle = None

    def _cap(self) -> None:
        """Past ``max_frames``, drop the oldest frame of the bottom part."""
        if len(self.frames) > self.caps.max_frames:
            dropped = self.frames.pop(self.keep_head)
            self.elided += dropped.repeat

    def elided_reason(self) -> str | None:
        if not self.elided:
            return None
        return (f"{self.elided} frames omitted after frame {self.keep_head - 1} "
                f"(cap of {self.caps.max_frames} frames)")

    def result(self) -> list[Frame]:
        if self.cycle is not None:
            self._end_cycle()
        for index, frame in enumerate(self.frames):
            frame.index = index
        return self.frames


class _Cycle:
    """Mutual recursion being folded: the last ``len(template)`` kept frames are one
    instance of the cycle; each further complete instance adds 1 to their ``repeat``."""

    def __init__(self, template: list[Frame]) -> None:
        self.template = template
        self.pending: list[Frame] = []  # frames of the instance now being matched

    @staticmethod
    def starting(frames: list[Frame], caps: Caps) -> _Cycle | None:
        """A cycle of 2..max_cycle frames that the last frames repeat (at least
        ``collapse_after`` frames and two instances, none of them folded yet)."""
        for period in range(2, caps.max_cycle + 1):
            span = max(caps.collapse_after, 2 * period)
            if len(frames) < span:
                break
            tail = frames[-span:]
            if any(frame.repeat > 1 or frame.cycle > 1 for frame in tail):
                return None
            template = tail[-period:]
            if len({frame.pc for frame in template}) < period:
                continue  # a shorter cycle repeats inside it
            if all(tail[i].pc == tail[i + period].pc and tail[i].trust is tail[i + period].trust
                   for i in range(span - period)):
                return _Cycle(template)
        return None

    def takes(self, frame: Frame) -> bool:
        """Fold ``frame`` when it continues the cycle (True)."""
        expected = self.template[len(self.pending)]
        if frame.pc != expected.pc or frame.trust is not expected.trust:
            return False
        self.pending.append(frame)
        if len(self.pending) == len(self.template):
            for member in self.template:
                member.repeat += 1
                member.cycle = len(self.template)
            self.pending = []
        return True


def _named(registers: Registers) -> dict[str, int]:
    return {L.DWARF_REGISTERS[number]: value for number, value in registers.items()
            if 0 <= number < len(L.DWARF_REGISTERS)}


def _extends_run(frames: list[Frame], frame: Frame) -> bool:
    return bool(frames) and frames[-1].pc == frame.pc and frames[-1].repeat > 1 \
        and frames[-1].cycle == 1


def _append(frames: list[Frame], frame: Frame, collapse_after: int) -> bool:
    """Append ``frame`` (True), or fold it into a counted run of identical frames (False)."""
    if _extends_run(frames, frame):
        frames[-1].repeat += 1
        return False
    run = 0
    for previous in reversed(frames):
        if previous.pc != frame.pc or previous.trust is not frame.trust or previous.cycle > 1:
            break
        run += 1
    if run >= collapse_after:
        frames[-1].repeat += 1
        return False
    frames.append(frame)
    return True


def unwind(space: AddressSpace, registers: dict[str, int], caps: Caps | None = None) -> \
        UnwindResult:
    """Unwind one thread from its registers (names as in ``pr_reg``: rip, rsp, rbp...).

    Never raises on hostile memory: why unwinding stopped early is in
    ``stop_reason``; CFI errors that a fallback got past are in ``problems``.
    """
    numbered = {number: registers[name] for number, name in enumerate(L.DWARF_REGISTERS)
                if name in registers}
    return _Unwinder(space, caps or Caps()).run(numbered)
