"""The interface each architecture module implements (see :mod:`coredumpd.arch`).

Apart from the package so that a machine module (:mod:`coredumpd.arch.x86_64`)
imports the interface, not the package that dispatches to it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from coredumpd.values import Frozen

Registers = dict[int, int]  # DWARF register number -> value
WordReader = Callable[[int], int]  # address -> the word there (raises MemoryReadError)
# One operand as capstone's detail mode gives it, reduced to plain values (so that it can
# be remembered, symbolize/decoded.py): (memory operand?, access (CS_AC_* bits), base
# register, index register, scale, displacement); a machine's plain_operand makes it.
PlainOperand = tuple[bool, int, str | None, str | None, int, int]
CS_AC_READ, CS_AC_WRITE = 1, 2  # capstone.h cs_ac_type


class FrameRecord(Frozen):
    """Where a frame-pointer chain keeps the caller's frame pointer and return address.

    Offsets are from the frame pointer; the caller's stack pointer is
    ``fp + caller_sp_offset``.
    """

    saved_fp_offset: int
    return_address_offset: int
    caller_sp_offset: int


class PltLayout(Frozen):
    """How lazy-binding PLT entries map to ``.rela.plt`` relocations."""

    jump_slot: int  # r_type of a PLT slot relocation (R_<ARCH>_JUMP_SLOT)
    entry_size: int  # bytes per PLT entry (and per .plt.sec stub)
    reserved_entries: int  # entries at the start of .plt that no relocation owns


class SignalFrame(Frozen):
    """The frame the kernel pushes to run a signal handler (``struct rt_sigframe``).

    A handler returns into the restorer (``trampoline_symbols``), whose code
    is ``sigreturn_code``; at that pc the stack pointer points at
    ``ucontext_offset`` bytes before the ``struct ucontext`` whose
    ``uc_mcontext`` holds the interrupted registers at ``register_offsets``
    (bytes from the start of ``uc_mcontext``, DWARF numbers as keys).
    """

    trampoline_symbols: tuple[str, ...]
    sigreturn_code: bytes
    ucontext_offset: int  # sp at the restorer's first byte -> struct ucontext
    mcontext_offset: int  # offsetof(struct ucontext, uc_mcontext)
    register_offsets: Mapping[int, int]

    def register_address(self, sp: int, number: int) -> int:
        """Where the interrupted value of DWARF register ``number`` was saved."""
        return sp + self.ucontext_offset + self.mcontext_offset + self.register_offsets[number]


class MemoryOperand(Frozen):
    """One memory operand of an instruction: its text, how it is accessed, its address.

    ``base``/``index`` are register names as the disassembler prints them;
    ``address`` is None when a register it uses is unknown.
    """

    text: str
    reads: bool
    writes: bool
    base: str | None
    index: str | None
    address: int | None

    @property
    def access(self) -> str:
        return "write" if self.writes and not self.reads else (
            "read-modify-write" if self.writes else "read")


class Arch(Protocol):
    """The facts of one machine that the rest of coredumpd reads."""

    name: str  # as uname -m prints it
    e_machine: int  # <elf.h> EM_*
    audit_arch: int  # include/uapi/linux/audit.h AUDIT_ARCH_* (seccomp's siginfo)
    syscall_header: str  # the kernel header defining __NR_* (linux-libc-dev; may be absent)
    word_size: int
    address_bits: int  # implemented virtual address bits (canonical form above them)

    prstatus: struct.Struct  # struct elf_prstatus
    prstatus_registers: tuple[str, ...]  # pr_reg in order (struct user_regs_struct)
    register_display_order: tuple[str, ...]  # pr_reg's names in the order a report lists them

    dwarf_registers: tuple[str, ...]  # DWARF register number -> name
    pc_column: int  # DWARF number of the pc (or of the return-address column)
    sp_column: int
    fp_column: int
    return_address_column: int
    pc_name: str
    sp_name: str
    fp_name: str

    frame_record: FrameRecord
    plt: PltLayout
    signal_frame: SignalFrame

    capstone_arch: str  # attribute names in the capstone module
    capstone_mode: str
    max_instruction_size: int
    call_lengths: tuple[int, ...]  # possible byte lengths of a call, longest first
    call_mnemonics: frozenset[str]
    abort_instruction: bytes | None  # what glibc's abort() executes last (ABORT_INSTRUCTION)
    trap_instructions: Mapping[bytes, str]  # deliberate-trap encodings -> mnemonic

    def may_end_with_call(self, code: bytes, length: int) -> bool:
        """Quick byte test: may the last ``length`` bytes of ``code`` be a call?"""
        ...

    def caller_of_bad_call(self, registers: Registers, read_word: WordReader) -> \
            Registers | None:
        """The caller's registers right after a call to a bad address (pc 0, NX memory)."""
        ...

    def plain_operand(self, insn: Any, operand: Any) -> PlainOperand:
        """One operand of a capstone instruction decoded in detail mode, as plain values."""
        ...

    def memory_operand(self, operand: PlainOperand, text: str, registers: Mapping[str, int],
                       next_pc: int) -> MemoryOperand:
        """A memory operand (``operand[0]`` true) with the address it computes from
        ``pr_reg``-named ``registers``; ``next_pc`` is the address after the instruction."""
        ...

    def register_value(self, registers: Mapping[str, int], name: str) -> int | None:
        """The value of register ``name`` as an instruction names it (a narrower view of a
        ``pr_reg`` register included), from ``pr_reg``-named ``registers``."""
        ...

    def touches_memory_implicitly(self, mnemonic: str) -> bool:
        """Does an instruction with this mnemonic access memory through no operand
        (the stack, string instructions)?"""
        ...
