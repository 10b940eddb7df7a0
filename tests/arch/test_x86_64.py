"""coredumpd.arch.x86_64 against the system's own headers and a real kernel-made core.

The oracle for the layouts is the C compiler: a program built here prints
``offsetof``/``sizeof`` from glibc's <sys/user.h>, <sys/procfs.h> and
<sys/ucontext.h> (which mirror the kernel's user_64.h, elfcore.h and
sigcontext.h).  The signal frame layout is then checked on the sighandler
fixture: the registers it reads from the ucontext the kernel pushed must be
the ones glibc's CFI for ``__restore_rt`` recovers, and the unwinder must
cross that frame by the layout alone when libc's CFI is hidden.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from coredumpd.arch import Arch, dwarf_named, dwarf_numbered, for_machine, for_registers, x86_64
from coredumpd.elf import layouts as L
from coredumpd.elf.core import Core
from coredumpd.errors import FormatError
from coredumpd.image.space import build_address_space
from coredumpd.store.lz4seek import open_core_source
from coredumpd.unwind.module_cfi import CfiCache
from coredumpd.unwind.steps import StepFinder
from coredumpd.unwind.types import Caps, Trust
from coredumpd.unwind.unwinder import Unwinder
from tests.support.crash import compile_c
from tests.support.fixtures import load_fixture

ARCH = x86_64.ARCH

GREGS = ("R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15", "RDI", "RSI", "RBP", "RBX",
         "RDX", "RAX", "RCX", "RSP", "RIP")

LAYOUT_PROGRAM = r"""
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <sys/procfs.h>
#include <sys/ucontext.h>
#include <sys/user.h>

#define REG(name) printf("user_regs %s %zu\n", #name, offsetof(struct user_regs_struct, name));
#define GREG(name) printf("greg %s %zu\n", #name, \
    offsetof(ucontext_t, uc_mcontext.gregs[REG_##name]) - offsetof(ucontext_t, uc_mcontext));

int main(void) {
    @REGS@
    printf("sizeof_user_regs %zu\n", sizeof(struct user_regs_struct));
    printf("sizeof_prstatus %zu\n", sizeof(struct elf_prstatus));
    printf("pr_reg %zu\n", offsetof(struct elf_prstatus, pr_reg));
    printf("uc_mcontext %zu\n", offsetof(ucontext_t, uc_mcontext));
    @GREGS@
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    source = LAYOUT_PROGRAM.replace(
        "@REGS@", "\n    ".join(f"REG({name})" for name in ARCH.prstatus_registers)).replace(
        "@GREGS@", "\n    ".join(f"GREG({name})" for name in GREGS))
    exe = compile_c(source, tmp_path_factory.mktemp("layouts"), flags=["-O0"], name="layouts")
    output = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
    found: dict[str, Any] = {"user_regs": {}, "greg": {}}
    for line in output.splitlines():
        words = line.split()
        if len(words) == 3:
            found[words[0]][words[1]] = int(words[2])
        else:
            found[words[0]] = int(words[1])
    return found


def test_x86_64_implements_every_member_of_the_interface() -> None:
    members = set(Arch.__annotations__) | {
        name for name in vars(Arch) if callable(vars(Arch)[name]) and not name.startswith("_")}
    missing = {name for name in members if not hasattr(ARCH, name)}
    assert not missing
    assert for_machine(L.EM_X86_64) is ARCH
    with pytest.raises(FormatError):
        for_machine(183)  # EM_AARCH64: no module yet


def test_prstatus_register_order_is_struct_user_regs_struct(c_layouts: dict[str, Any]) -> None:
    offsets = c_layouts["user_regs"]
    assert [offsets[name] // 8 for name in ARCH.prstatus_registers] == \
        list(range(len(ARCH.prstatus_registers)))
    assert c_layouts["sizeof_user_regs"] == 8 * len(ARCH.prstatus_registers)


def test_prstatus_layout_is_struct_elf_prstatus(c_layouts: dict[str, Any]) -> None:
    assert ARCH.prstatus.size == c_layouts["sizeof_prstatus"]
    assert x86_64.PRSTATUS_REG_OFFSET == c_layouts["pr_reg"]


def test_signal_frame_layout_is_ucontext(c_layouts: dict[str, Any]) -> None:
    frame = ARCH.signal_frame
    assert frame.mcontext_offset == c_layouts["uc_mcontext"]
    expected = {ARCH.dwarf_registers.index(name.lower()): offset
                for name, offset in c_layouts["greg"].items()}
    assert dict(frame.register_offsets) == expected


def test_dwarf_register_names_round_trip() -> None:
    registers = {name: index for index, name in enumerate(ARCH.prstatus_registers)}
    numbered = dwarf_numbered(ARCH, registers)
    assert set(numbered) == set(range(17))
    assert numbered[ARCH.pc_column] == registers[ARCH.pc_name]
    assert numbered[ARCH.sp_column] == registers[ARCH.sp_name]
    assert numbered[ARCH.fp_column] == registers[ARCH.fp_name]
    assert dwarf_named(ARCH, numbered) == {name: registers[name] for name in ARCH.dwarf_registers}


def test_call_recognition_matches_capstone() -> None:
    """Every byte string the quick test rejects is no call to capstone either."""
    import capstone

    engine = capstone.Cs(getattr(capstone, ARCH.capstone_arch),
                         getattr(capstone, ARCH.capstone_mode))
    samples = [bytes.fromhex(text) for text in (
        "e800000000", "ffd0", "41ffd2", "ff1425e8030000", "3effd0", "ff5008", "ff9424c8000000",
        "4883c408", "90909090c3", "0f0b", "488b0424", "c3")]
    for code in samples:
        insn = next(engine.disasm(code, 0x1000), None)
        is_call = insn is not None and insn.mnemonic in ARCH.call_mnemonics \
            and insn.size == len(code)
        if is_call:
            assert ARCH.may_end_with_call(code, len(code)), code.hex()
            assert len(code) in ARCH.call_lengths


def test_register_display_order_lists_every_pr_reg_register_once() -> None:
    order = ARCH.register_display_order
    assert sorted(order) == sorted(ARCH.prstatus_registers) and len(set(order)) == len(order)
    assert order[:3] == (ARCH.pc_name, ARCH.sp_name, ARCH.fp_name)


def test_registers_name_their_machine() -> None:
    assert for_registers(ARCH.prstatus_registers) is ARCH
    assert for_registers({"rsp": 1, "made_up": 2}) is ARCH
    assert for_registers({"pc": 1, "x29": 2}) is None  # aarch64's: no module yet
    assert for_registers(()) is None


def test_register_value_reads_32_bit_views() -> None:
    registers = {"rax": 0x1122334455667788, "r8": 0xFFFFFFFF00000001}
    assert ARCH.register_value(registers, "rax") == 0x1122334455667788
    assert ARCH.register_value(registers, "eax") == 0x55667788
    assert ARCH.register_value(registers, "r8d") == 1
    assert ARCH.register_value(registers, "ebx") is None
    assert ARCH.register_value(registers, "ax") is None  # 16-bit views are not read


def _decode(hex_code: str, address: int = 0x1000) -> Any:
    import capstone

    engine = capstone.Cs(getattr(capstone, ARCH.capstone_arch),
                         getattr(capstone, ARCH.capstone_mode))
    engine.detail = True
    insn = next(engine.disasm(bytes.fromhex(hex_code), address, 1))
    assert insn.size == len(hex_code) // 2
    return insn


def _memory(hex_code: str, registers: dict[str, int]) -> list[Any]:
    """The memory operands of one instruction, through plain_operand and memory_operand
    as annotate/insn.py takes them (capstone joins the operands' texts with ", ")."""
    insn = _decode(hex_code)
    plain = [ARCH.plain_operand(insn, operand) for operand in insn.operands]
    texts = insn.op_str.split(", ")
    return [ARCH.memory_operand(operand, texts[position], registers, insn.address + insn.size)
            for position, operand in enumerate(plain) if operand[0]]


def test_memory_operands_compute_base_index_scale_displacement() -> None:
    # mov rax, qword ptr [rbx + rcx*8 + 0x10]
    (operand,) = _memory("488b44cb10", {"rbx": 0x7000, "rcx": 3})
    assert (operand.base, operand.index, operand.address) == ("rbx", "rcx", 0x7000 + 24 + 0x10)
    assert operand.text == "qword ptr [rbx + rcx*8 + 0x10]"
    assert (operand.reads, operand.writes, operand.access) == (True, False, "read")


def test_memory_operands_say_how_they_are_accessed() -> None:
    registers = {"rax": 0x10, "rdi": 0x20}
    (written,) = _memory("8908", registers)  # mov dword ptr [rax], ecx
    assert (written.text, written.address, written.access) == ("dword ptr [rax]", 0x10, "write")
    (both,) = _memory("0107", registers)  # add dword ptr [rdi], eax
    assert (both.address, both.access) == (0x20, "read-modify-write")
    assert _memory("4889c3", registers) == []  # mov rbx, rax


def test_memory_operands_rip_relative_unknown_and_wrapping() -> None:
    # mov rax, qword ptr [rip + 0x10]: rip is the next instruction, 0x1000 + 7
    (relative,) = _memory("488b0510000000", {})
    assert relative.address == 0x1007 + 0x10
    (unknown,) = _memory("8b4208", {})  # mov eax, dword ptr [rdx + 8]
    assert unknown.base == "rdx" and unknown.address is None
    # mov eax, dword ptr [rdx - 8] with rdx = 0: wraps as the processor does
    (wrapped,) = _memory("8b42f8", {"rdx": 0})
    assert wrapped.address == (1 << 64) - 8


def test_memory_touched_through_no_operand() -> None:
    for code in ("50", "5d", "c3", "e800000000", "c9", "9c", "f3a4", "aa", "48a5"):
        assert ARCH.touches_memory_implicitly(_decode(code).mnemonic), code
    for code in ("4889c3", "488b0424", "0f0b"):
        assert not ARCH.touches_memory_implicitly(_decode(code).mnemonic), code


# -- the signal frame on a real core ---------------------------------------------------


@pytest.fixture(scope="module")
def sighandler() -> Any:
    fixture = load_fixture("sighandler")
    source = open_core_source(str(fixture.core_path))
    space = build_address_space(Core.open(source), exe=str(fixture.binary_path))
    yield fixture, space
    space.close()
    source.close()


def test_ucontext_registers_are_what_restore_rt_cfi_recovers(sighandler: Any) -> None:
    _fixture, space = sighandler
    core_registers = space.core.threads[0].registers
    result = Unwinder(space).unwind(core_registers)
    trampoline = next(frame for frame in result.frames if frame.signal_frame)
    assert trampoline.trust is Trust.CFI  # glibc's CFI crossed it
    registers = dwarf_numbered(ARCH, trampoline.registers)
    finder = StepFinder(space, Caps(), CfiCache(ARCH.sp_column))
    by_cfi = finder.step_cfi(registers, trampoline.lookup_pc)
    by_layout = finder.step_signal_frame(registers, trampoline.pc)
    assert by_cfi is not None and by_layout is not None
    assert {number: by_layout.registers[number] for number in ARCH.signal_frame.register_offsets} \
        == {number: by_cfi.registers[number] for number in ARCH.signal_frame.register_offsets}
    assert by_layout.signal_frame and by_cfi.signal_frame


class WithoutCfiFor:
    """The space, with one module's CFI out of reach (no .eh_frame_hdr, file or debug file)."""

    def __init__(self, space: Any, name: str) -> None:
        self.space = space
        self.hidden = next(module for module in space.modules if module.name == name)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.space, attribute)

    def module_at(self, address: int) -> Any:
        module = self.space.module_at(address)
        if module is self.hidden:
            return None
        return module

    def open_elf(self, module: Any) -> Any:
        return None if module is self.hidden else self.space.open_elf(module)


def test_signal_frame_is_crossed_by_its_layout_without_cfi(sighandler: Any) -> None:
    fixture, space = sighandler
    registers = space.core.threads[0].registers
    with Unwinder(space) as unwinder:
        reference = unwinder.unwind(registers)
    with Unwinder(WithoutCfiFor(space, "libc.so.6")) as unwinder:
        result = unwinder.unwind(registers)
    trampoline = next(frame for frame in result.frames if frame.signal_frame)
    interrupted = result.frames[trampoline.index + 1]
    assert interrupted.trust is Trust.CONTEXT and interrupted.exact
    # Up to main (the interrupted frame's caller): past it, libc's frames need libc's CFI.
    upto = trampoline.index + 3
    assert [frame.pc for frame in result.frames[:upto]] == \
        [frame.pc for frame in reference.frames[:upto]] == \
        [frame["pc"] for frame in fixture.expected[0]["frames"][:upto]]
    assert any(frame.signal_frame for frame in reference.frames)
