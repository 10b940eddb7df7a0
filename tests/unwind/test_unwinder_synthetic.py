"""The unwinder on address spaces built in code: hostile and extreme stacks.

Real cores cannot give a 100,000-deep frame-pointer chain on demand, a
self-referencing frame or a stack of garbage; these are built here as bytes
(the way STYLE.md asks malformed cores to be built in code).  The code
mapping holds real x86-64 call instructions, so the call-before check runs
on real bytes through capstone.
"""

from __future__ import annotations

import random
import struct

from coredumpd.arch import x86_64
from coredumpd.errors import MemoryReadError
from coredumpd.image.types import Mapping, Module
from coredumpd.unwind.types import Caps, Trust
from coredumpd.unwind.unwinder import Unwinder

CODE = 0x400000
STACK = 0x7FFF0000
STACK_SIZE = 0x100000


class SyntheticSpace:
    """An AddressSpace over byte arrays: one r-x code mapping and one rw- stack."""

    arch = x86_64.ARCH

    def __init__(self, code: bytes, stack: bytearray) -> None:
        self.code = code
        self.stack = stack
        self._mappings = [Mapping(CODE, CODE + 0x10000, "r-xp", path="/synthetic"),
                          Mapping(STACK, STACK + len(stack), "rw-p", path="[stack]")]
        self._modules = [Module("/synthetic", CODE, CODE + 0x10000, 0)]  # no CFI: fp/scan

    @property
    def modules(self) -> list[Module]:
        return self._modules

    @property
    def mappings(self) -> list[Mapping]:
        return self._mappings

    def read(self, address: int, size: int) -> bytes:
        for base, data in ((CODE, self.code), (STACK, self.stack)):
            if base <= address and address + size <= base + len(data):
                return bytes(data[address - base:address - base + size])
        raise MemoryReadError(address, size, "not mapped")

    def mapping_at(self, address: int) -> Mapping | None:
        return next((m for m in self._mappings if address in m), None)

    def module_at(self, address: int) -> Module | None:
        return next((m for m in self._modules if address in m), None)


def unwind_with(space, registers, caps):
    with Unwinder(space, caps) as unwinder:
        return unwinder.unwind(registers)


def code_with_calls() -> tuple[bytes, list[int]]:
    """Code bytes holding call instructions; returns (code, return addresses after them)."""
    code = bytearray(b"\x90" * 0x10000)
    returns = []
    for index in range(64):
        at = 0x100 + index * 0x40
        code[at:at + 5] = b"\xe8" + struct.pack("<i", 0x10)  # call rel32
        returns.append(CODE + at + 5)
    code[0x2000:0x2002] = b"\xff\xd0"  # call rax
    returns.append(CODE + 0x2002)
    return bytes(code), returns


def fp_chain(returns: list[int], depth_of: list[int]) -> tuple[bytearray, int]:
    """A frame-pointer chain: frame i saves rbp of frame i+1 and returns to returns[i]."""
    stack = bytearray(STACK_SIZE)
    rbp = STACK + 0x100
    first = rbp
    for index, which in enumerate(depth_of):
        next_rbp = rbp + 32 if index + 1 < len(depth_of) else 0
        struct.pack_into("<QQ", stack, rbp - STACK, next_rbp, returns[which])
        rbp += 32
    return stack, first


def test_deep_recursion_collapses_and_keeps_the_bottom() -> None:
    code, returns = code_with_calls()
    depth = 30_000
    stack, rbp = fp_chain(returns, [0] * depth + [1, 2])
    space = SyntheticSpace(code, stack)
    result = unwind_with(space, {"rip": CODE + 0x50, "rsp": rbp - 16, "rbp": rbp}, Caps())
    pcs = [frame.pc for frame in result.frames]
    assert pcs[-2:] == [returns[1], returns[2]]  # "main" and "_start" are still there
    assert sum(frame.repeat for frame in result.frames if frame.pc == returns[0]) == depth
    assert len(result.frames) == 1 + Caps().collapse_after + 2
    assert all(frame.trust is Trust.FRAME_POINTER for frame in result.frames[1:])
    assert [frame.index for frame in result.frames] == list(range(len(result.frames)))


def test_frame_cap_keeps_top_and_bottom() -> None:
    code, returns = code_with_calls()
    order = [index % 60 for index in range(500)]  # no identical neighbours: nothing folds
    stack, rbp = fp_chain(returns, order)
    caps = Caps(max_frames=40)
    result = unwind_with(SyntheticSpace(code, stack), {"rip": CODE + 0x50, "rsp": rbp - 16,
                                                  "rbp": rbp}, caps)
    assert len(result.frames) == 40
    assert result.frames[1].pc == returns[order[0]]
    assert result.frames[-1].pc == returns[order[-1]]
    assert result.stop_reason is not None and "omitted" in result.stop_reason


def test_self_referencing_frame_pointer_stops() -> None:
    code, returns = code_with_calls()
    stack = bytearray(STACK_SIZE)
    rbp = STACK + 0x800
    struct.pack_into("<QQ", stack, rbp - STACK, rbp, returns[3])  # [rbp] = rbp: a loop
    result = unwind_with(SyntheticSpace(code, stack), {"rip": CODE + 0x50, "rsp": rbp - 8,
                                                  "rbp": rbp}, Caps())
    assert len(result.frames) < 10
    assert result.frames[1].pc == returns[3]


def test_null_call_recovers_the_caller_from_rsp() -> None:
    code, returns = code_with_calls()
    stack = bytearray(STACK_SIZE)
    sp = STACK + 0x400
    struct.pack_into("<Q", stack, sp - STACK, returns[-1])  # pushed by "call rax" with rax=0
    result = unwind_with(SyntheticSpace(code, stack), {"rip": 0, "rsp": sp, "rbp": 0}, Caps())
    assert [frame.pc for frame in result.frames[:2]] == [0, returns[-1]]
    assert result.frames[0].trust is Trust.CONTEXT


def test_scan_accepts_only_addresses_after_calls() -> None:
    code, returns = code_with_calls()
    stack = bytearray(STACK_SIZE)
    sp = STACK + 0x400
    # Words that point into code but not after a call come first; the scan must skip them.
    struct.pack_into("<QQQ", stack, sp - STACK, CODE + 0x10, CODE + 0x107, returns[5])
    result = unwind_with(SyntheticSpace(code, stack), {"rip": CODE + 0x50, "rsp": sp, "rbp": 1},
                    Caps())
    assert result.frames[1].pc == returns[5]
    assert result.frames[1].trust is Trust.SCAN
    assert result.frames[1].sp == sp + 24


def test_garbage_stacks_terminate() -> None:
    code, returns = code_with_calls()
    rng = random.Random(1234)
    for _ in range(8):
        words = [rng.choice([rng.getrandbits(64), rng.choice(returns), STACK + rng.randrange(
            0, STACK_SIZE, 8), 0]) for _ in range(STACK_SIZE // 8)]
        stack = bytearray(struct.pack(f"<{len(words)}Q", *words))
        registers = {"rip": rng.choice([0, CODE + 0x50, rng.getrandbits(64)]),
                     "rsp": STACK + rng.randrange(0, STACK_SIZE, 8),
                     "rbp": rng.choice([STACK + rng.randrange(0, STACK_SIZE, 8),
                                        rng.getrandbits(64)])}
        result = unwind_with(SyntheticSpace(code, stack), registers, Caps(max_frames=64))
        assert 1 <= len(result.frames) <= 64
        assert sum(frame.repeat for frame in result.frames) < 64 * 2048


def test_wild_pc_without_a_return_address_says_why() -> None:
    code, _ = code_with_calls()
    stack = bytearray(STACK_SIZE)
    sp = STACK + 0x400
    struct.pack_into("<Q", stack, sp - STACK, 0x4141414141414141)
    result = unwind_with(SyntheticSpace(code, stack), {"rip": 0x4141414141414141, "rsp": sp,
                                                  "rbp": 0}, Caps())
    assert [frame.pc for frame in result.frames] == [0x4141414141414141]
    assert result.stop_reason is not None and "not in executable memory" in result.stop_reason
