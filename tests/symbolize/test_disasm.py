"""Disassembly helpers against binutils' ``objdump -d`` on the real libc."""

from __future__ import annotations

import itertools
import re
import subprocess

import pytest

from coredumpd.symbolize import disasm
from tests.unwind.test_cfi import BIAS, LIBC, ElfFileMemory

SAMPLE_FUNCTIONS = 40


@pytest.fixture(scope="module")
def libc() -> ElfFileMemory:
    return ElfFileMemory(LIBC)


@pytest.fixture(scope="module")
def objdump_text() -> list[tuple[int, str]]:
    """(address, mnemonic) of the first instructions of libc's .text, from objdump."""
    output = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-j", ".text", LIBC],
                            capture_output=True, text=True, check=True).stdout
    instructions = []
    for line in output.splitlines():
        match = re.match(r"\s+([0-9a-f]+):\s+(?:(?:notrack|bnd|rep[a-z]*|lock|data16|cs|ds)"
                         r"\s+)*([a-z][a-z0-9.]*)", line)
        if match:
            instructions.append((int(match.group(1), 16), match.group(2)))
        if len(instructions) > 60_000:
            break
    return instructions


def test_decode_matches_objdump(libc: ElfFileMemory,
                                objdump_text: list[tuple[int, str]]) -> None:
    start = objdump_text[1000][0]
    ours = disasm.decode(libc, start + BIAS, 200)  # type: ignore[arg-type]
    reference = [address for address, _ in objdump_text[1000:1200]]
    assert [insn.address - BIAS for insn in ours] == reference


def test_call_before_on_every_return_address(libc: ElfFileMemory,
                                             objdump_text: list[tuple[int, str]]) -> None:
    """After each call: found; after each non-call instruction: None (with rare exceptions)."""
    calls = after_other = false_positives = 0
    for (address, mnemonic), (next_address, _) in itertools.pairwise(objdump_text):
        found = disasm.call_before(libc, next_address + BIAS)  # type: ignore[arg-type]
        if mnemonic == "call":
            assert found is not None and found.address == address + BIAS, hex(address)
            calls += 1
        else:
            after_other += 1
            false_positives += found is not None
    assert calls > 1000
    # Bytes of other instructions can decode as a call ending at the same place
    # (x86 is ambiguous); that must stay rare for the stack scan to be useful.
    assert false_positives < after_other * 0.01  # measured: 220 of 57,575


def test_around_ends_exactly_on_pc(libc: ElfFileMemory,
                                   objdump_text: list[tuple[int, str]]) -> None:
    """Without a function start the bytes before pc are ambiguous: mostly right, always on pc."""
    addresses = [address for address, _ in objdump_text]
    samples = agreed = 0
    for index in range(50, 50 + SAMPLE_FUNCTIONS * 97, 97):
        pc = addresses[index]
        ours = disasm.around(libc, pc + BIAS, 4, 3)  # type: ignore[arg-type]
        current = [insn.address - BIAS for insn in ours]
        position = current.index(pc)
        assert position == 4
        assert current[position:position + 4] == addresses[index:index + 4]
        samples += 1
        agreed += current[:position] == addresses[index - position:index]
    assert agreed >= samples * 0.98, (agreed, samples)  # measured: 515 of 515


def test_around_uses_the_function_start(libc: ElfFileMemory,
                                        objdump_text: list[tuple[int, str]]) -> None:
    start, pc = objdump_text[2000][0], objdump_text[2010][0]
    ours = disasm.around(libc, pc + BIAS, 8, 0, function_start=start + BIAS)  # type: ignore[arg-type]
    assert [insn.address - BIAS for insn in ours] == [a for a, _ in objdump_text[2002:2011]]


def test_unreadable_memory_gives_nothing(libc: ElfFileMemory) -> None:
    assert disasm.decode(libc, 0x10, 5) == []  # type: ignore[arg-type]
    assert disasm.call_before(libc, 0x10) is None  # type: ignore[arg-type]
    assert disasm.around(libc, 0x10) == []  # type: ignore[arg-type]
