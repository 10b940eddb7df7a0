"""Every x86-64 fact coredumpd uses, in one place (the :class:`~coredumpd.arch.Arch` of EM_X86_64).

Sources, so each line reads beside them: the kernel's
``arch/x86/include/asm/user_64.h`` (``struct user_regs_struct``, the order of
``pr_reg``), ``include/uapi/linux/elfcore.h`` and ``arch/x86/include/asm/elf.h``
(``struct elf_prstatus``), ``arch/x86/include/asm/sigframe.h`` and
``arch/x86/include/uapi/asm/sigcontext.h`` (``struct rt_sigframe``,
``struct sigcontext``), glibc's ``sysdeps/unix/sysv/linux/x86_64/sys/ucontext.h``
and ``libc_sigaction.c`` (``__restore_rt``), the System V x86-64 psABI
(DWARF register numbers, figure 3.36; ``R_X86_64_*``; the PLT) and the Intel
SDM vol. 1 (effective addresses, 3.7.5) and vol. 2 (``CALL`` encodings).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from coredumpd.arch.interface import (
    CS_AC_READ,
    CS_AC_WRITE,
    FrameRecord,
    MemoryOperand,
    PlainOperand,
    PltLayout,
    Registers,
    SignalFrame,
    WordReader,
)

# struct elf_prstatus: pr_info {si_signo si_code si_errno}, pr_cursig, pad,
# pr_sigpend, pr_sighold, pr_pid pr_ppid pr_pgrp pr_sid, pr_utime pr_stime
# pr_cutime pr_cstime (struct timeval: tv_sec tv_usec), pr_reg[27], pr_fpvalid.
PRSTATUS = struct.Struct("<iiih2xQQiiii8q27Qi4x")
assert PRSTATUS.size == 336
PRSTATUS_REG_OFFSET = 112  # offsetof(struct elf_prstatus, pr_reg)
# pr_reg in order: struct user_regs_struct (arch/x86/include/asm/user_64.h).
PRSTATUS_REGISTERS = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
    "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
    "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
)
assert len(PRSTATUS_REGISTERS) == 27
# How a report lists them: pc, sp, fp, the general registers as gdb's ``info
# registers`` does, flags, segments, then orig_rax (the syscall being made).
REGISTER_DISPLAY_ORDER = (
    "rip", "rsp", "rbp", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9",
    "r10", "r11", "r12", "r13", "r14", "r15", "eflags", "cs", "ss", "ds", "es",
    "fs", "gs", "fs_base", "gs_base", "orig_rax",
)
assert sorted(REGISTER_DISPLAY_ORDER) == sorted(PRSTATUS_REGISTERS)

# DWARF register numbers (psABI figure 3.36); 16 is the return-address column.
DWARF_REGISTERS = (
    "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip",
)
RBP, RSP, RIP = 6, 7, 16
assert (DWARF_REGISTERS[RBP], DWARF_REGISTERS[RSP], DWARF_REGISTERS[RIP]) == ("rbp", "rsp", "rip")

# struct sigcontext (64-bit) = glibc's gregs: r8..r15, rdi, rsi, rbp, rbx, rdx,
# rax, rcx, rsp, rip, eflags... (REG_R8 = 0 ... REG_RIP = 16 in sys/ucontext.h).
SIGCONTEXT_REGISTERS = (
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rdi", "rsi", "rbp", "rbx", "rdx", "rax", "rcx", "rsp", "rip",
)
# struct ucontext: uc_flags (8), uc_link (8), uc_stack (stack_t: ss_sp 8,
# ss_flags 4 + 4 padding, ss_size 8), then uc_mcontext.
UC_MCONTEXT_OFFSET = 40
# glibc's __restore_rt: mov $__NR_rt_sigreturn (15), %rax; syscall.
SIGRETURN_CODE = bytes.fromhex("48c7c00f000000" "0f05")

# Near calls (SDM vol. 2, CALL): e8 rel32 (5 bytes), ff /2 with every
# ModRM/SIB/displacement form (2-7 bytes), optionally after a REX prefix (+1),
# and a notrack (3e) prefix in front of indirect calls under CET (+1).
CALL_LENGTHS = (5, 9, 8, 7, 6, 4, 3, 2)  # longest first: keep prefixes (REX, notrack)
CALL_REL32 = 0xE8
CALL_INDIRECT = 0xFF  # group 5; /2 is CALL
MAX_PREFIXES = 2  # REX and notrack before an indirect call's ff

# Memory accessed through no operand: the stack (push, pop, call, ret, enter,
# leave, pushf, popf) and the string instructions, with or without a rep prefix.
STACK_MNEMONICS = frozenset({"push", "pop", "call", "ret", "enter", "leave", "pushf",
                             "popf", "pushfq", "popfq"})
STRING_MNEMONIC_PREFIXES = ("rep", "movs", "stos", "lods", "scas", "cmps")


class X86_64:
    """The x86-64 (AMD64) machine under Linux, LP64."""

    name: str = "x86_64"
    e_machine: int = 62  # EM_X86_64
    audit_arch: int = 0xC000003E  # AUDIT_ARCH_X86_64
    syscall_header: str = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
    word_size: int = 8
    address_bits: int = 48  # 4-level paging: bits 63..47 equal (SDM vol. 1, 3.3.7.1)

    prstatus: struct.Struct = PRSTATUS
    prstatus_registers: tuple[str, ...] = PRSTATUS_REGISTERS
    register_display_order: tuple[str, ...] = REGISTER_DISPLAY_ORDER

    dwarf_registers: tuple[str, ...] = DWARF_REGISTERS
    pc_column: int = RIP
    sp_column: int = RSP
    fp_column: int = RBP
    return_address_column: int = RIP
    pc_name: str = "rip"
    sp_name: str = "rsp"
    fp_name: str = "rbp"

    # push %rbp; mov %rsp,%rbp: [rbp] is the caller's rbp, [rbp+8] the return address.
    frame_record: FrameRecord = FrameRecord(saved_fp_offset=0, return_address_offset=8, caller_sp_offset=16)
    # psABI: R_X86_64_JUMP_SLOT is 7; 16-byte PLT entries, .plt entry 0 is the resolver stub.
    plt: PltLayout = PltLayout(jump_slot=7, entry_size=16, reserved_entries=1)
    # A handler's ret pops pretcode: sp then points at rt_sigframe.uc.
    signal_frame: SignalFrame = SignalFrame(
        trampoline_symbols=("__restore_rt",),
        sigreturn_code=SIGRETURN_CODE,
        ucontext_offset=0,
        mcontext_offset=UC_MCONTEXT_OFFSET,
        register_offsets=MappingProxyType({DWARF_REGISTERS.index(name): 8 * index
                                           for index, name in enumerate(SIGCONTEXT_REGISTERS)}),
    )

    capstone_arch: str = "CS_ARCH_X86"
    capstone_mode: str = "CS_MODE_64"
    max_instruction_size: int = 15  # SDM vol. 2, 2.3.11
    call_lengths: tuple[int, ...] = CALL_LENGTHS
    call_mnemonics: frozenset[str] = frozenset({"call"})
    abort_instruction: bytes | None = b"\xf4"  # hlt (glibc sysdeps/x86/abort-instr.h)
    # ud2 (0f 0b), ud1 (0f b9), ud0 (0f ff): SDM vol. 2, UD.
    trap_instructions: Mapping[bytes, str] = MappingProxyType(
        {b"\x0f\x0b": "ud2", b"\x0f\xb9": "ud1/ud0", b"\x0f\xff": "ud1/ud0"})

    def may_end_with_call(self, code: bytes, length: int) -> bool:
        """``e8`` starts a direct call; an indirect call's ``ff`` opcode comes after at
        most two prefixes (REX, notrack)."""
        if length > len(code):
            return False
        if length == 5 and code[-5] == CALL_REL32:
            return True
        return CALL_INDIRECT in code[-length:len(code) - length + MAX_PREFIXES + 1]

    def caller_of_bad_call(self, registers: Registers, read_word: WordReader) -> \
            Registers | None:
        """``call`` pushed the return address: it is at [rsp], and the caller's rsp is above it."""
        sp = registers.get(RSP)
        if sp is None:
            return None
        caller = dict(registers)
        caller[RIP], caller[RSP] = read_word(sp), sp + self.word_size
        return caller

    def plain_operand(self, insn: Any, operand: Any) -> PlainOperand:
        """capstone's x86 operand: an ``X86_OP_MEM`` one with its base, index, scale and
        displacement (register names as capstone prints them)."""
        # Imported here: whoever decoded ``insn`` loaded capstone already, and the
        # modules that import this one (the core model) need not pay for it.
        from capstone import x86  # type: ignore[import-untyped]

        if operand.type != x86.X86_OP_MEM:
            return (False, operand.access, None, None, 0, 0)
        mem = operand.mem
        return (True, operand.access, insn.reg_name(mem.base) if mem.base else None,
                insn.reg_name(mem.index) if mem.index else None, mem.scale, mem.disp)

    def memory_operand(self, operand: PlainOperand, text: str, registers: Mapping[str, int],
                       next_pc: int) -> MemoryOperand:
        """The address is ``base + index * scale + disp`` (SDM vol. 1, 3.7.5), with ``rip``
        meaning the next instruction, wrapped to 64 bits as the processor does."""
        _memory, access, base, index, index_scale, disp = operand
        address: int | None = disp
        for name, scale in ((base, 1), (index, index_scale)):
            if name is None or address is None:
                continue
            value = next_pc if name == self.pc_name else self.register_value(registers, name)
            address = None if value is None else address + value * scale
        if address is not None:
            address &= (1 << 64) - 1
        return MemoryOperand(text, bool(access & CS_AC_READ), bool(access & CS_AC_WRITE),
                             base, index, address)

    def register_value(self, registers: Mapping[str, int], name: str) -> int | None:
        """A 64-bit register (``rax``) or its low 32 bits (``eax``, ``r8d``)."""
        if name in registers:
            return registers[name]
        if name.startswith("e") and "r" + name[1:] in registers:
            return registers["r" + name[1:]] & 0xFFFFFFFF
        if name.startswith("r") and name.endswith("d") and name[:-1] in registers:
            return registers[name[:-1]] & 0xFFFFFFFF
        return None

    def touches_memory_implicitly(self, mnemonic: str) -> bool:
        return mnemonic.split()[0] in STACK_MNEMONICS or \
            mnemonic.startswith(STRING_MNEMONIC_PREFIXES)


ARCH = X86_64()
