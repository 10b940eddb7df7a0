"""The DWARF expression evaluator: the expressions glibc and binutils emit, and hostile ones."""

from __future__ import annotations

import struct

import pytest

from coredumpd.errors import FormatError, LimitExceeded, MemoryReadError
from coredumpd.unwind.dwarf_expr import evaluate, read_sleb128, read_uleb128

RSP, RIP = 7, 16
# binutils' CFA expression for .plt entries (elf_x86_64_eh_frame_plt):
# DW_OP_breg7 (rsp) 8; DW_OP_breg16 (rip) 0; DW_OP_lit15; DW_OP_and;
# DW_OP_lit11 (lit10 in older binutils); DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus
PLT_CFA = bytes([0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A, 0x3B, 0x2A, 0x33, 0x24, 0x22])


def registers(values: dict[int, int]):  # type: ignore[no-untyped-def]
    def read(number: int) -> int:
        if number not in values:
            raise FormatError(f"register {number} unknown")
        return values[number]
    return read


def no_memory(address: int, size: int) -> bytes:
    raise MemoryReadError(address, size)


@pytest.mark.parametrize(("offset_in_entry", "expected_extra"), [(0, 0), (6, 0), (11, 8),
                                                                  (15, 8)])
def test_plt_cfa_expression(offset_in_entry: int, expected_extra: int) -> None:
    """Before the entry's push the CFA is rsp+8, after it rsp+16."""
    rip = 0x401020 + offset_in_entry
    value = evaluate(PLT_CFA, registers({RSP: 0x7FFF1000, RIP: rip}), no_memory)
    assert value == 0x7FFF1000 + 8 + expected_extra


def test_restore_rt_style_deref() -> None:
    """__restore_rt: DW_OP_breg7 (rsp) 160; DW_OP_deref — the saved rsp in the ucontext."""
    memory = {0x7FFF1000 + 160: struct.pack("<Q", 0x7FFF2000)}
    value = evaluate(bytes([0x77, 0xA0, 0x01, 0x06]), registers({RSP: 0x7FFF1000}),
                     lambda address, size: memory[address][:size])
    assert value == 0x7FFF2000


def test_cfa_is_pushed_for_register_rules() -> None:
    # DW_CFA_expression's block starts with the CFA on the stack: CFA - 16.
    assert evaluate(bytes([0x40, 0x1C]), registers({}), no_memory, (0x1000,)) == 0x1000 - 16


def test_arithmetic_is_modulo_2_64_and_signed_where_dwarf_says() -> None:
    consts_minus_one = bytes([0x11, 0x7F])  # DW_OP_consts -1
    assert evaluate(consts_minus_one, registers({}), no_memory) == (1 << 64) - 1
    # -1 >= 0 is false for the signed comparison of DWARF 5, 2.5.1.4.
    assert evaluate(consts_minus_one + bytes([0x30, 0x2A]), registers({}), no_memory) == 0
    # -7 / 2 = -3 (signed, truncating); -7 shra 1 = -4
    minus_seven = bytes([0x11, 0x79])
    assert evaluate(minus_seven + bytes([0x32, 0x1B]), registers({}), no_memory) == \
        (-3) & ((1 << 64) - 1)
    assert evaluate(minus_seven + bytes([0x31, 0x26]), registers({}), no_memory) == \
        (-4) & ((1 << 64) - 1)
    # 5 dup plus (10); 3 over mul (10 30); swap minus (20); 4 6 7 rot (20 7 4 6);
    # drop drop (20 7); pick 0 (20 7 7); neg neg -> 7
    program = bytes([0x35, 0x12, 0x22, 0x33, 0x14, 0x1E, 0x16, 0x1C,
                     0x34, 0x36, 0x37, 0x17, 0x13, 0x13, 0x15, 0x00, 0x1F, 0x1F])
    assert evaluate(program, registers({}), no_memory) == 7
    # 12 xor 10 (6); or 1 (7); mod 4 (3); shr 1 (1); not -> ~1
    program = bytes([0x3C, 0x3A, 0x27, 0x31, 0x21, 0x34, 0x1D, 0x31, 0x25, 0x20])
    assert evaluate(program, registers({}), no_memory) == (1 << 64) - 2


def test_branches() -> None:
    # lit1; bra +1; lit7 (skipped); lit9 -> 9.  lit0; bra +1; lit7; -> 7
    assert evaluate(bytes([0x31, 0x28, 0x01, 0x00, 0x37, 0x39]), registers({}), no_memory) == 9
    assert evaluate(bytes([0x30, 0x28, 0x01, 0x00, 0x37]), registers({}), no_memory) == 7
    with pytest.raises(FormatError):
        evaluate(bytes([0x2F, 0x00, 0x10]), registers({}), no_memory)  # skip out of the block


def test_step_cap_stops_an_infinite_loop() -> None:
    loop = bytes([0x2F, 0xFD, 0xFF])  # DW_OP_skip -3: itself, forever
    with pytest.raises(LimitExceeded):
        evaluate(loop, registers({}), no_memory, max_steps=1000)


@pytest.mark.parametrize("expression", [
    b"",                         # empty stack at the end
    bytes([0x22]),               # plus on an empty stack
    bytes([0x0C, 0x01]),         # const4u truncated
    bytes([0x10, 0x80]),         # LEB128 truncated
    bytes([0x94, 0x09]),         # deref_size 9
    bytes([0x31, 0x30, 0x1B]),   # divide by zero
    bytes([0xE0]),               # DW_OP_lo_user: unsupported
    bytes([0x15, 0x05]),         # pick below the stack
    bytes([0x7F, 0x00]),         # breg15 of an unknown register
])
def test_hostile_expressions_raise_format_errors(expression: bytes) -> None:
    with pytest.raises(FormatError):
        evaluate(expression, registers({RSP: 0}), no_memory)


def test_leb128() -> None:
    assert read_uleb128(bytes([0xE5, 0x8E, 0x26]), 0) == (624485, 3)
    assert read_sleb128(bytes([0xC0, 0xBB, 0x78]), 0) == (-123456, 3)
    with pytest.raises(FormatError):
        read_uleb128(bytes([0x80] * 11), 0)
