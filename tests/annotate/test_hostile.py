"""Rules on cores built in code: the loader-message scanner, and hostile/empty models.

Cores come from tests/support/elfwriter.py; no rule may raise on them (a
raise would show up as "rule … failed" in the analysis problems).
"""

from __future__ import annotations

import pytest

from coredumpd.annotate.loader_errors import BLOCK, CHUNK, PREFILTER, find_loader_errors
from coredumpd.elf import layouts as L
from coredumpd.elf.core import Core
from coredumpd.source import BytesSource
from tests.support import elfwriter as W
from tests.support.analysis import analyze_json

HEAP = 0x5555_0000_0000
GLIBC_INCIDENT = (b"/usr/lib64/libresolv.so.2: symbol __h_errno version GLIBC_PRIVATE not "
                  b"defined in file libc.so.6 with link time reference")


def _core_with(heap: bytes, flags: int = int(L.PF.R | L.PF.W), registers=None,
               siginfo=(11, 1, 0x10)) -> bytes:
    notes = [W.note("CORE", L.NT.PRSTATUS, W.prstatus(100, registers or {})),
             W.note("CORE", L.NT.PRPSINFO, W.prpsinfo(100)),
             W.note("CORE", L.NT.SIGINFO, W.siginfo(*siginfo))]
    return W.core(notes, [W.Load(HEAP, heap, flags=flags)])


def _errors(heap: bytes, **kwargs):
    return find_loader_errors(Core.open(BytesSource(_core_with(heap, **kwargs))))


def test_glibc_incident_message_form():
    (error,) = _errors(b"\0" * 100 + GLIBC_INCIDENT + b"\0" + b"\0" * 100)
    assert (error.kind, error.symbol, error.version) == ("not-defined", "__h_errno",
                                                         "GLIBC_PRIVATE")
    assert error.provider == "libc.so.6"
    assert error.requirer == "/usr/lib64/libresolv.so.2"
    assert error.address == HEAP + 100


def test_exception_layout_names_the_object_after_the_message():
    # elf/dl-exception.c: "MESSAGE\0OBJNAME\0" in one buffer
    (error,) = _errors(b"\0version `FOO_2' not found (required by /opt/p.so)\0/opt/libfoo.so.1\0")
    assert (error.provider, error.requirer) == ("/opt/libfoo.so.1", "/opt/p.so")


def test_message_across_a_chunk_boundary_is_found_once():
    text = b"/x/p.so: undefined symbol: bar, version FOO_PRIVATE"
    heap = b"\0" * (CHUNK - 20) + text + b"\0" * 100
    (error,) = _errors(heap)
    assert (error.symbol, error.version, error.requirer) == ("bar", "FOO_PRIVATE", "/x/p.so")


@pytest.mark.parametrize("cut", range(len(PREFILTER) + 1))
def test_a_message_after_zero_blocks_and_across_a_block_boundary_is_found(cut: int) -> None:
    # all-zero blocks are skipped: the block holding the message's first bytes is not
    text = b"/x/p.so: undefined symbol: bar, version FOO_PRIVATE"
    start = text.index(PREFILTER)
    heap = b"\0" * (3 * BLOCK - start - cut) + text + b"\0" * (2 * BLOCK)
    (error,) = _errors(heap)
    assert (error.symbol, error.version, error.requirer) == ("bar", "FOO_PRIVATE", "/x/p.so")


def test_read_only_memory_is_not_scanned_and_unterminated_text_is_bounded():
    assert not _errors(b"\0" + GLIBC_INCIDENT + b"\0", flags=int(L.PF.R))
    (error,) = _errors(b"A" * 5000 + GLIBC_INCIDENT + b"B" * 5000)
    assert len(error.text) < 3 * 1024


@pytest.mark.parametrize("registers", [
    {},                                                   # everything zero
    {"rip": HEAP + 8, "rsp": HEAP + 0x800},               # pc in data, stack in heap
    {"rip": 0xFFFF_FFFF_FFFF_FFF0, "rsp": 0xFFFF_FFFF_FFFF_FFF8},
])
@pytest.mark.parametrize("siginfo", [(11, 1, 0x10), (11, 128, 0), (8, 1, 0), (4, 2, 0),
                                     (7, 2, HEAP), (6, -6, 0), (11, 0, 0)])
def test_no_rule_raises_on_a_hostile_core(registers, siginfo):
    heap = bytes(range(256)) * 16 + GLIBC_INCIDENT
    result = analyze_json(BytesSource(_core_with(heap, registers=registers, siginfo=siginfo)))
    failed = [problem for problem in result["problems"] if problem.startswith("rule ")]
    assert failed == []
    assert result["signature"] and len(result["signature"]) == 40
