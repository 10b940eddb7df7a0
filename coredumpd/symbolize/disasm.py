"""Disassembly of the crashed process's code, with capstone in the space's architecture.

Three uses: the instructions around the crash pc for the report, and
:func:`call_before` for the unwinder's stack scan (a word on the stack is a
plausible return address only if the bytes just before it are a ``call``,
the check Breakpad's ``StackwalkerAMD64`` and LLDB make; which byte lengths and
encodings a call can have is the architecture's, :mod:`coredumpd.arch`).

x86 instructions have variable length, so "the instructions before pc" are
ambiguous: :func:`around` decodes from the function start when the
symbolizer knows it, otherwise it tries back-offsets until a decoding lands
exactly on pc.

capstone is imported on the first decoding that :mod:`coredumpd.symbolize.decoded`
does not remember: a warm analysis does not import it at all.
"""

from __future__ import annotations

import functools
from typing import Any

from coredumpd.arch import Arch
from coredumpd.errors import CoredumpdError, MemoryReadError
from coredumpd.image.types import AddressSpace
from coredumpd.symbolize.decoded import MEMO
from coredumpd.values import Frozen

MAX_BACK_OFFSET = 64  # how far before pc to look for a decoding that lands on pc
MAX_FUNCTION_PREFIX = 4096  # decode from the symbol start only when it is this close


class Instruction(Frozen):
    address: int
    size: int
    mnemonic: str
    op_str: str
    raw: bytes

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()

    @property
    def direct_target(self) -> int | None:
        """The target of a direct ``call``/``jmp rel`` (capstone prints it as hex), else None."""
        if self.op_str.startswith("0x"):
            try:
                return int(self.op_str, 16)
            except ValueError:
                return None
        return None


@functools.cache
def engine(capstone_arch: str, capstone_mode: str, detail: bool = False) -> Any:
    """One capstone engine per architecture and mode (``Arch.capstone_arch``/``_mode``)."""
    import capstone  # type: ignore[import-untyped]  # 20-35 ms: only when needed

    cs = capstone.Cs(getattr(capstone, capstone_arch), getattr(capstone, capstone_mode))
    cs.detail = detail
    return cs


def _decode_bytes(arch: Arch, code: bytes, address: int, count: int) -> list[Instruction]:
    key = ("lite", arch.capstone_arch, arch.capstone_mode, address, code, count)
    decoded = MEMO.get(key)
    if decoded is None:
        cs = engine(arch.capstone_arch, arch.capstone_mode)
        decoded = tuple(cs.disasm_lite(code, address, count))
        MEMO.put(key, decoded)
    result = []
    for start, size, mnemonic, op_str in decoded:
        offset = start - address
        result.append(Instruction(start, size, mnemonic, op_str, code[offset:offset + size]))
    return result


def _read_available(space: AddressSpace, address: int, size: int) -> bytes:
    """Up to ``size`` bytes at ``address``, fewer when the end is unreadable."""
    while size > 0:
        try:
            return space.read(address, size)
        except MemoryReadError:
            size = size // 2 if size > 16 else size - 1
    return b""


def decode(space: AddressSpace, address: int, count: int) -> list[Instruction]:
    """Decode up to ``count`` instructions at ``address`` (fewer at unreadable or bad bytes)."""
    code = _read_available(space, address, count * space.arch.max_instruction_size)
    return _decode_bytes(space.arch, code, address, count)


def call_before(space: AddressSpace, return_address: int) -> Instruction | None:
    """The call instruction that ends exactly at ``return_address``, if there is one."""
    arch = space.arch
    start = max(return_address - max(arch.call_lengths), 0)
    try:
        code = space.read(start, return_address - start)
    except (MemoryReadError, CoredumpdError):
        return None
    for length in arch.call_lengths:
        if not arch.may_end_with_call(code, length):
            continue
        decoded = _decode_bytes(arch, code[-length:], return_address - length, 1)
        if decoded and decoded[0].mnemonic in arch.call_mnemonics and decoded[0].size == length:
            return decoded[0]
    return None


def _lands_on(space: AddressSpace, start: int, pc: int) -> list[Instruction] | None:
    code = _read_available(space, start, pc - start + space.arch.max_instruction_size)
    instructions = _decode_bytes(space.arch, code, start, 0)
    ending = [insn for insn in instructions if insn.address < pc]
    if ending and ending[-1].address + ending[-1].size == pc:
        return ending
    return None


def instructions_before(space: AddressSpace, pc: int, count: int,
                        function_start: int | None = None) -> list[Instruction]:
    """Up to ``count`` instructions that end exactly at ``pc`` (none when ambiguous)."""
    if function_start is not None and 0 <= pc - function_start <= MAX_FUNCTION_PREFIX:
        if function_start == pc:
            return []
        found = _lands_on(space, function_start, pc)
        if found:
            return found[-count:]
    # Start far back: x86 decodings resynchronise after a few instructions, so a
    # decoding that began well before pc is the most likely to be the real one.
    for back in range(min(MAX_BACK_OFFSET, pc), 0, -1):
        found = _lands_on(space, pc - back, pc)
        if found and len(found) >= count:
            return found[-count:]
    return []


def around(space: AddressSpace, pc: int, before: int = 8, after: int = 8,
           function_start: int | None = None) -> list[Instruction]:
    """Instructions around ``pc``: ``before`` ending at pc, then pc's and ``after`` more."""
    prefix = instructions_before(space, pc, before, function_start)
    return prefix + decode(space, pc, after + 1)
