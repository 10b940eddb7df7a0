"""How one frame's caller is found: CFI, a signal frame, a bad call, frame pointer, scan.

One :class:`StepFinder` per thread: it holds that thread's read budget and
answers; the CFI of each module comes from the :class:`CfiCache` shared by
all threads.  Every machine fact (which register is the pc, where the frame
record keeps the return address, the signal frame) comes from the space's
:class:`~coredumpd.arch.Arch`.
"""

from __future__ import annotations

from collections.abc import Callable

from coredumpd.arch import Registers
from coredumpd.errors import FormatError, LimitExceeded, MemoryReadError
from coredumpd.image.types import AddressSpace
from coredumpd.unwind.cfa_program import RegisterRule, Rule, RuleRow
from coredumpd.unwind.dwarf_expr import MASK, evaluate
from coredumpd.unwind.memory import PAGE, CachedMemory
from coredumpd.unwind.module_cfi import CfiCache, ModuleCfi
from coredumpd.unwind.types import Caps, Trust
from coredumpd.values import Value


class Step(Value):
    """The caller's registers and how they were found."""

    registers: Registers
    trust: Trust
    cfa: int | None = None
    signal_frame: bool = False  # the callee was a signal trampoline: caller pc is exact
    end: bool = False  # CFI says the return address is undefined: outermost frame


class StepFinder:
    """The strategies for one thread's frames, with that thread's budgets."""

    def __init__(self, space: AddressSpace, caps: Caps, cache: CfiCache) -> None:
        self.space = space
        self.arch = space.arch
        self.caps = caps
        self.memory = CachedMemory(space, caps.max_bytes_read)
        self.cache = cache
        self.open_elf = getattr(space, "open_elf", None)
        self.pc, self.sp, self.fp = self.arch.pc_column, self.arch.sp_column, self.arch.fp_column
        self.word = self.arch.word_size
        self.problems: list[str] = []
        self.returns: dict[int, bool] = {}  # plausible_return() answers
        self.scan_budget = caps.scan_words * caps.max_frames  # words all scans may examine

    # -- what an address is ------------------------------------------------------------

    def executable(self, address: int) -> bool:
        mapping = self.space.mapping_at(address)
        return mapping is not None and mapping.executable

    def plausible_return(self, address: int) -> bool:
        """A return address: right after a call, or a signal trampoline's entry.

        A signal handler returns to the restorer (SA_RESTORER, ``__restore_rt``
        on x86-64), which no call precedes; its CFI has the 'S' augmentation
        (glibc's sysdeps/unix/sysv/linux/x86_64/libc_sigaction.c).
        """
        known = self.returns.get(address)
        if known is None:
            from coredumpd.symbolize import disasm  # capstone: ~30 ms to import, rarely needed
            known = self.returns[address] = self.executable(address) and (
                disasm.call_before(self.space, address) is not None
                or self.signal_trampoline(address))
        return known

    def signal_trampoline(self, address: int) -> bool:
        """``address`` is a signal restorer's entry: its CFI says so ('S'), or its code."""
        state = self.module_cfi(address - 1)
        if state is not None:
            try:
                found = state.row_for(self.memory.read, address - 1)
            except (FormatError, MemoryReadError):
                found = None
            if found is not None:
                return found[0].cie.signal_frame
        return self.sigreturn_code_at(address)

    def sigreturn_code_at(self, address: int) -> bool:
        code = self.arch.signal_frame.sigreturn_code
        try:
            return self.memory.read(address, len(code)) == code
        except MemoryReadError:
            return False

    def module_cfi(self, pc: int) -> ModuleCfi | None:
        module = self.space.module_at(pc)
        return self.cache.for_module(module, self.open_elf) if module is not None else None

    def call_target(self, return_address: int) -> int | None:
        """Where the direct call before ``return_address`` went (None: indirect or no call)."""
        from coredumpd.symbolize import disasm
        call = disasm.call_before(self.space, return_address)
        return call.direct_target if call is not None else None

    # -- CFI ---------------------------------------------------------------------------

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
        if ra_rule is None or ra_rule.rule is Rule.UNDEFINED or ra not in caller:
            return Step(caller, Trust.CFI, cfa, fde.cie.signal_frame, end=True)
        caller[self.pc] = caller[ra]
        return Step(caller, Trust.CFI, cfa, fde.cie.signal_frame)

    def register_reader(self, registers: Registers) -> Callable[[int], int]:
        def read_register(number: int) -> int:
            if number not in registers:
                raise FormatError(f"CFI uses DWARF register {number}, which is not known")
            return registers[number]
        return read_register

    def cfa(self, row: RuleRow, registers: Registers) -> int:
        if row.cfa_expression is not None:
            return evaluate(row.cfa_expression, self.register_reader(registers),
                            self.memory.read, max_steps=self.caps.max_expression_steps)
        return (self.register_reader(registers)(row.cfa_register) + row.cfa_offset) & MASK

    def apply(self, row: RuleRow, registers: Registers, cfa: int) -> Registers:
        """The caller's registers (DWARF 5, 6.4.1); unmentioned registers keep their value."""
        caller = dict(registers)
        caller[self.sp] = cfa  # the CFA is the caller's sp (x86-64 psABI 3.6.2, AAPCS64)
        for number, rule in row.registers.items():
            if rule.rule is Rule.SAME_VALUE:
                continue
            value = self.recover(rule, registers, cfa)
            if value is None:
                caller.pop(number, None)
            else:
                caller[number] = value
        return caller

    def recover(self, rule: RegisterRule, registers: Registers, cfa: int) -> int | None:
        kind = rule.rule
        if kind is Rule.OFFSET:
            return self.memory.word((cfa + rule.value) & MASK)
        if kind is Rule.VAL_OFFSET:
            return (cfa + rule.value) & MASK
        if kind is Rule.REGISTER:
            return registers.get(rule.value)
        if kind is Rule.UNDEFINED:
            return None
        value = evaluate(rule.expression, self.register_reader(registers), self.memory.read,
                         (cfa,), self.caps.max_expression_steps)
        return value if kind is Rule.VAL_EXPRESSION else self.memory.word(value)

    # -- without CFI -------------------------------------------------------------------

    def step_signal_frame(self, registers: Registers, pc: int) -> Step | None:
        """A signal restorer without CFI, known by its code: the interrupted
        registers are in the ``ucontext`` the kernel left at sp (gdb's
        amd64_linux_sigtramp_p and sigcontext_addr do the same)."""
        frame = self.arch.signal_frame
        sp = registers.get(self.sp)
        if sp is None or not self.sigreturn_code_at(pc):
            return None
        caller = dict(registers)
        for number in frame.register_offsets:
            caller[number] = self.memory.word(frame.register_address(sp, number))
        return Step(caller, Trust.CONTEXT, caller[self.sp], signal_frame=True)

    def step_bad_pc(self, registers: Registers) -> Step | None:
        """pc 0 or non-executable: a call through a bad pointer (on x86-64 the
        return address is at [rsp])."""
        caller = self.arch.caller_of_bad_call(registers, self.memory.word)
        if caller is None or not self.executable(caller[self.pc]):
            return None
        return Step(caller, Trust.SCAN, caller[self.sp])

    def step_frame_pointer(self, registers: Registers) -> Step | None:
        record = self.arch.frame_record
        fp, sp = registers.get(self.fp), registers.get(self.sp)
        if fp is None or sp is None or fp % self.word or fp < sp:
            return None
        stack = self.space.mapping_at(sp)
        caller_sp = fp + record.caller_sp_offset
        if stack is None or caller_sp > stack.end or not stack.writable:
            return None
        saved_fp = self.memory.word(fp + record.saved_fp_offset)
        return_address = self.memory.word(fp + record.return_address_offset)
        if not self.plausible_return(return_address):
            return None
        caller = dict(registers)
        caller[self.pc], caller[self.sp], caller[self.fp] = return_address, caller_sp, saved_fp
        return Step(caller, Trust.FRAME_POINTER, caller_sp)

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
        sp = self.sp
        limit = (by_fp.registers[sp] - registers[sp]) // self.word if by_fp else \
            self.caps.scan_words
        scanned = self.step_scan(registers, first, limit)
        if by_fp is None or scanned is None:
            return by_fp or scanned
        if by_fp.registers[sp] == scanned.registers[sp]:
            return by_fp
        if self.signal_trampoline(scanned.registers[self.pc]):
            return scanned
        scan_target = self.call_target(scanned.registers[self.pc])
        fp_target = self.call_target(by_fp.registers[self.pc])
        if scan_target is None or fp_target is None or scan_target > lookup_pc:
            return by_fp
        return scanned if fp_target > lookup_pc or fp_target < scan_target else by_fp

    def step_scan(self, registers: Registers, first: bool, limit: int | None = None) -> \
            Step | None:
        """The first word of at most ``limit`` above sp that is a plausible return address."""
        sp = registers.get(self.sp)
        if sp is None or sp % self.word:
            return None
        stack = self.space.mapping_at(sp)
        if stack is None:
            return None
        count = min(self.caps.scan_words, (stack.end - sp) // self.word,
                    self.caps.scan_words if limit is None else limit)
        self.scan_budget -= count
        if self.scan_budget < 0:
            raise LimitExceeded("stack scanning examined more than "
                                f"{self.caps.scan_words * self.caps.max_frames} words")
        words = self.memory.words(sp, count) if count else ()
        for position, candidate in enumerate(words):
            if candidate == registers.get(self.pc) and not first:
                continue
            if candidate > PAGE and self.plausible_return(candidate):
                caller = dict(registers)
                caller[self.pc] = candidate
                caller[self.sp] = sp + self.word * (position + 1)
                return Step(caller, Trust.SCAN, caller[self.sp])
        return None
