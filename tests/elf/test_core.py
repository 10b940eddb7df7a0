"""coredumpd.elf.core against real cores (cross-checked with gdb and eu-readelf)
and against hostile cores built with tests.support.elfwriter."""

from __future__ import annotations

import os
import re
import subprocess

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from coredumpd.elf import layouts as L
from coredumpd.elf.core import Core
from coredumpd.errors import FormatError, MemoryReadError
from coredumpd.source import BytesSource, RawFileSource
from tests.support import elfwriter as W

# ------------------------------------------------------------ synthetic cores


def test_simple_core_parses_everything():
    core = Core.open(BytesSource(W.simple_core()), expected_tid=100)
    assert core.problems == []
    assert not core.truncated
    assert [t.tid for t in core.threads] == [100, 101]
    assert core.threads[0].registers["rip"] == 0x401000
    assert core.threads[1].registers["rip"] == 0x401001
    assert all(t.fpregs == bytes(512) for t in core.threads)
    assert core.siginfo.si_signo == 11 and core.siginfo.si_code == 1
    assert core.siginfo.si_addr == 0x10
    assert core.auxv[L.AT.PAGESZ] == 4096
    assert [(f.start, f.end, f.path) for f in core.files] == [(0x400000, 0x402000, "/bin/prog")]
    assert core.prpsinfo.pr_fname == "prog"
    assert core.read_memory(0x7FFF0000 + 10, 4) == b"\x11" * 4


def test_expected_tid_mismatch_is_a_problem():
    core = Core.open(BytesSource(W.simple_core()), expected_tid=101)
    assert core.threads[0].tid == 100
    assert any("first thread is 100" in p and "another thread" in p for p in core.problems)


def test_not_a_core_raises_format_error():
    with pytest.raises(FormatError):
        Core.open(BytesSource(b"\x7fELF" + bytes(10)))
    with pytest.raises(FormatError):
        Core.open(BytesSource(b"MZ" + bytes(100)))


def test_read_memory_not_dumped_and_unmapped():
    core = Core.open(BytesSource(W.simple_core()))
    assert core.read_memory(0x400000, 4) == b"\x7fELF"
    with pytest.raises(MemoryReadError, match="not dumped"):
        core.read_memory(0x400000 + 4094, 4)  # second page: memsz > filesz
    assert core.read_memory(0x400000 + 4094, 4, zero_fill=True) == bytes(4)
    assert core.read_memory_partial(0x400000 + 4094, 4) == bytes(2)
    with pytest.raises(MemoryReadError, match="not mapped"):
        core.read_memory(0x10, 1)
    assert core.read_memory(0x400000, 0) == b""


def test_read_spans_adjacent_segments():
    loads = [W.Load(0x10000, b"A" * 4096), W.Load(0x11000, b"B" * 4096)]
    core = Core.open(BytesSource(W.core([W.note("CORE", L.NT.PRSTATUS, W.prstatus(1))], loads)))
    assert core.read_memory(0x10FFE, 4) == b"AABB"
    with pytest.raises(MemoryReadError):
        core.read_memory(0x11FFE, 4)


def test_pn_xnum_reads_count_from_section_header_0():
    loads = [W.Load(0x10000 + i * 0x1000, bytes([i]) * 16) for i in range(3)]
    data = W.core([W.note("CORE", L.NT.PRSTATUS, W.prstatus(7))], loads, pn_xnum=True,
                  extra_phdrs=L.PN_XNUM)
    core = Core.open(BytesSource(data))
    assert core.ehdr.e_phnum == 1 + 3 + L.PN_XNUM
    assert len(core.segments) == 3
    assert core.read_memory(0x12000, 2) == b"\x02\x02"
    assert core.problems == []


def test_truncated_anywhere_never_raises_and_keeps_prefix():
    data = W.simple_core()
    full = Core.open(BytesSource(data))
    for cut in range(64, len(data), 97):
        core = Core.open(BytesSource(data[:cut]))
        assert core.truncated, cut
        assert core.problems, cut
        assert len(core.threads) <= len(full.threads)
        for thread, reference in zip(core.threads, full.threads):
            assert thread.registers == reference.registers


def test_truncated_segment_is_not_zero_filled():
    data = W.simple_core()
    core = Core.open(BytesSource(data[:-100]))
    assert core.truncated
    with pytest.raises(MemoryReadError, match="truncated"):
        core.read_memory(0x7FFF0000 + 4096 - 50, 8, zero_fill=True)


def test_absurd_note_size_is_a_problem_and_keeps_earlier_notes():
    notes = [W.note("CORE", L.NT.PRSTATUS, W.prstatus(5)),
             W.note("CORE", L.NT.FILE, b"x" * 8, descsz=0xFFFFFFF0)]
    core = Core.open(BytesSource(W.core(notes, [])))
    assert [t.tid for t in core.threads] == [5]
    assert any("notes stop" in p for p in core.problems)


def test_lying_nt_file_count_and_short_prstatus():
    notes = [W.note("CORE", L.NT.PRSTATUS, W.prstatus(5)[:100]),
             W.note("CORE", L.NT.PRSTATUS, W.prstatus(6)),
             W.note("CORE", L.NT.FILE, W.file_note([(1, 2, 0, "/a")], count=1 << 40)),
             W.note("CORE", L.NT.SIGINFO, b"short")]
    core = Core.open(BytesSource(W.core(notes, [])))
    assert [t.tid for t in core.threads] == [6]
    assert core.files == [] and core.siginfo is None
    assert len(core.problems) == 3


def test_absurd_phnum_is_capped():
    data = bytearray(W.simple_core())
    fields = list(L.EHDR.unpack_from(data))
    fields[6] = len(data) - 64  # e_shoff: the last 64 bytes
    fields[10:] = [L.PN_XNUM, 64, 1, 0]
    L.EHDR.pack_into(data, 0, *fields)
    data[-64:] = L.SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0xFFFFFFFF, 0, 0)
    core = Core.open(BytesSource(bytes(data)))
    assert core.truncated
    assert any("reading only" in p for p in core.problems)


def test_overlapping_segments_are_dropped():
    loads = [W.Load(0x10000, b"A" * 8192), W.Load(0x11000, b"B" * 16)]
    core = Core.open(BytesSource(W.core([], loads)))
    assert len(core.segments) == 1
    assert any("overlaps" in p for p in core.problems)
    assert any("no NT_PRSTATUS" in p for p in core.problems)


# ------------------------------------------------------------ a real core

GDB_THREAD = re.compile(r"^Thread \d+ \(Thread 0x[0-9a-f]+ \(LWP (\d+)\)\):$")
GDB_REGISTER = re.compile(r"^(\w+)\s+(0x[0-9a-f]+)\s")


def gdb_registers(exe, core_path):
    """{tid: {register: value}} from ``gdb -batch -ex 'thread apply all info registers'``."""
    output = subprocess.run(
        ["gdb", "-nx", "-batch", "-ex", "thread apply all info registers", str(exe),
         str(core_path)], capture_output=True, text=True, check=True).stdout
    threads: dict[int, dict[str, int]] = {}
    current = None
    for line in output.splitlines():
        if match := GDB_THREAD.match(line):
            current = threads.setdefault(int(match.group(1)), {})
        elif current is not None and (match := GDB_REGISTER.match(line)):
            current[match.group(1)] = int(match.group(2), 16)
    return threads


@pytest.mark.kernel
def test_real_core_threads_and_registers_match_gdb(mt_core):
    with RawFileSource(str(mt_core.core)) as source:
        core = Core.open(source)
        assert core.problems == [] and not core.truncated
        reference = gdb_registers(mt_core.exe, mt_core.core)
        assert sorted(t.tid for t in core.threads) == sorted(reference)
        assert len(core.threads) == 5
        for thread in core.threads:
            theirs = reference[thread.tid]
            for name in ("rip", "rsp", "rbp", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8",
                         "r9", "r12", "r15", "cs", "ss"):
                assert thread.registers[name] == theirs[name], (thread.tid, name)
            assert thread.registers["eflags"] == theirs["eflags"]
            assert thread.fpregs is not None and len(thread.fpregs) == 512
        crashing = core.threads[0]
        assert crashing.tid != mt_core.pid  # the crash is in a non-main thread
        assert core.prpsinfo.pr_pid == mt_core.pid


@pytest.mark.kernel
def test_real_core_siginfo_auxv_and_files_match_eu_readelf(mt_core):
    notes = subprocess.run(["eu-readelf", "-n", str(mt_core.core)], capture_output=True,
                           text=True, check=True).stdout
    with RawFileSource(str(mt_core.core)) as source:
        core = Core.open(source)
        assert core.siginfo.si_signo == 11 and core.siginfo.si_code == 1  # SEGV_MAPERR
        assert core.siginfo.si_addr == 0x10
        assert "fault address: 0x10\n" in notes
        entries = re.findall(r"^\s+([0-9a-f]+)-([0-9a-f]+) ([0-9a-f]+) \d+\s+(\S+)$", notes,
                             re.MULTILINE)
        assert [(f.start, f.end, f.file_offset, f.path) for f in core.files] == [
            (int(s, 16), int(e, 16), int(o, 16), p) for s, e, o, p in entries]
        assert any(f.path == str(mt_core.exe) for f in core.files)
        sysinfo = int(re.search(r"SYSINFO_EHDR: (0x[0-9a-f]+)", notes).group(1), 16)
        assert core.auxv[L.AT.SYSINFO_EHDR] == sysinfo
        assert core.read_memory(sysinfo, 4) == b"\x7fELF"  # the vDSO is dumped whole
        stack = core.threads[0].registers["rsp"]
        assert len(core.read_memory(stack, 256)) == 256


# ------------------------------------------------------------ fuzzed cores

SIMPLE = W.simple_core()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8),
       st.integers(0, len(SIMPLE)))
def test_corrupted_cores_never_raise_past_the_header(changes, cut):
    """Bytes changed in the headers and notes, tail cut: a Core or a FormatError from
    the ELF header, and reads raise only MemoryReadError."""
    data = bytearray(SIMPLE)
    for position, value in changes:
        data[position] = value
    try:
        core = Core.open(BytesSource(bytes(data[:max(cut, 1)])))
    except FormatError:
        assert any(position < 64 for position, _ in changes) or cut < 64
        return
    for address in [0x400000, 0x7FFF0000, *(s.vaddr for s in core.segments)]:
        try:
            core.read_memory(address, 64)
        except MemoryReadError:
            pass


def test_stored_lz4_core_cut_by_the_store_is_flagged(tmp_path):
    """A core the store truncated (ExternalSizeMax): read through the lz4 reader, what
    was kept is readable, the rest is flagged and never zero-filled."""
    from coredumpd.store.lz4seek import SeekableLz4Reader, SeekableLz4Writer
    data = W.simple_core()
    path = tmp_path / "core.lz4"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    writer = SeekableLz4Writer(fd, block_size=4096)
    writer.write(data[:len(data) - 2048])
    writer.finish(truncated="ExternalSizeMax=1")
    os.close(fd)
    reader = SeekableLz4Reader(str(path))
    core = Core.open(reader, expected_tid=100)
    assert core.truncated
    assert any("ExternalSizeMax=1" in p for p in core.problems)
    assert [t.tid for t in core.threads] == [100, 101]
    assert core.read_memory(0x7FFF0000, 16) == b"\x11" * 16
    with pytest.raises(MemoryReadError, match="truncated"):
        core.read_memory(0x7FFF0000 + 4000, 16)
    reader.close()
