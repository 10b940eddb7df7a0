"""Core.open on every fixture core, against eu-readelf -n and gdb's ``info threads``.

The references (fixtures/cores/NAME/notes.json) were parsed by make_cores.py
from ``eu-readelf -n CORE`` (elfutils 0.188) and ``gdb -batch -ex 'info threads'``
when the core was made.  The core is read through its seekable lz4 store.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from coredumpd.arch import x86_64
from coredumpd.elf import layouts as L
from coredumpd.elf.core import Core
from tests.support.fixtures import Fixture, fixture_names, load_fixture

# eu-readelf spells three pr_reg names its own way (elfutils backends/x86_64_corenote.c).
READELF_REGISTER_NAMES = {"rflags": "eflags", "fs.base": "fs_base", "gs.base": "gs_base"}
FAULT_SIGNALS = {4, 5, 7, 8, 11}


def open_core(fixture: Fixture) -> Core:
    from coredumpd.store.lz4seek import open_core_source

    return Core.open(open_core_source(str(fixture.core_path)))


@pytest.fixture(params=fixture_names())
def fixture_and_core(request: pytest.FixtureRequest) -> Any:
    fixture = load_fixture(request.param, check_libraries=False)  # notes do not depend on libc
    core = open_core(fixture)
    yield fixture, core
    core.source.close()


def test_store_gives_back_the_exact_core(fixture_and_core: Any) -> None:
    fixture, core = fixture_and_core
    assert core.source.size == fixture.manifest["core_size"]
    digest = hashlib.sha256()
    for offset in range(0, core.source.size, 1 << 20):
        digest.update(core.source.pread(offset, 1 << 20))
    assert digest.hexdigest() == fixture.manifest["core_sha256"]


def test_parses_without_problems(fixture_and_core: Any) -> None:
    _, core = fixture_and_core
    assert core.problems == []
    assert not core.truncated


def test_threads_in_note_order_crashing_first(fixture_and_core: Any) -> None:
    fixture, core = fixture_and_core
    assert [t.tid for t in core.threads] == [t["tid"] for t in fixture.notes["threads"]]
    gdb_threads = fixture.notes["gdb_threads"]
    assert sorted(t.tid for t in core.threads) == sorted(t["tid"] for t in gdb_threads)
    current = [t["tid"] for t in gdb_threads if t["current"]]
    assert core.crashing_thread is not None and [core.crashing_thread.tid] == current
    assert len(core.threads) == fixture.manifest["threads"]


def test_registers_match_eu_readelf(fixture_and_core: Any) -> None:
    fixture, core = fixture_and_core
    for ours, theirs in zip(core.threads, fixture.notes["threads"], strict=True):
        expected = {READELF_REGISTER_NAMES.get(k, k): v for k, v in theirs["registers"].items()}
        assert set(expected) == set(x86_64.PRSTATUS_REGISTERS)
        assert ours.registers == expected, ours.tid
        assert ours.prstatus.pr_cursig == theirs["cursig"]
        assert ours.prstatus.si_signo == theirs["si_signo"]


def test_siginfo_matches_eu_readelf(fixture_and_core: Any) -> None:
    fixture, core = fixture_and_core
    theirs = fixture.notes["siginfo"]
    assert core.siginfo is not None
    assert (core.siginfo.si_signo, core.siginfo.si_errno, core.siginfo.si_code) == (
        theirs["si_signo"], theirs["si_errno"], theirs["si_code"])
    assert core.siginfo.si_signo == fixture.manifest["signal"]
    if theirs["si_signo"] in FAULT_SIGNALS and theirs["si_code"] > 0:
        assert core.siginfo.si_addr == theirs["si_addr"]


def test_abort_siginfo_was_sent_by_the_process_itself() -> None:
    """abort() -> raise -> tgkill: si_code SI_TKILL, si_pid the process (man 2 tgkill)."""
    fixture = load_fixture("abort", check_libraries=False)
    core = open_core(fixture)
    assert core.siginfo is not None
    assert core.siginfo.si_code == -6  # SI_TKILL
    assert core.siginfo.si_pid == fixture.notes["prpsinfo"]["pid"]
    assert core.siginfo.si_uid == 0


def auxv_type(name: str) -> int:
    """eu-readelf prints known AT_ names without the prefix, unknown ones as numbers."""
    return int(name) if name.isdigit() else int(L.AT[name])


def test_auxv_matches_eu_readelf(fixture_and_core: Any) -> None:
    fixture, core = fixture_and_core
    assert core.auxv == {auxv_type(name): value for name, value in fixture.notes["auxv"]}


def test_nt_file_matches_eu_readelf(fixture_and_core: Any) -> None:
    fixture, core = fixture_and_core
    ours = [(f.start, f.end, f.file_offset, f.path) for f in core.files]
    theirs = [(f["start"], f["end"], f["file_offset"], f["path"]) for f in fixture.notes["files"]]
    assert ours == theirs
    assert fixture.manifest["run_path"] in {f.path for f in core.files}


def test_prpsinfo_matches_eu_readelf(fixture_and_core: Any) -> None:
    fixture, core = fixture_and_core
    theirs = fixture.notes["prpsinfo"]
    assert core.prpsinfo is not None
    assert (core.prpsinfo.pr_pid, core.prpsinfo.pr_ppid, core.prpsinfo.pr_uid,
            core.prpsinfo.pr_gid) == (theirs["pid"], theirs["ppid"], theirs["uid"], theirs["gid"])
    assert core.prpsinfo.pr_fname == theirs["fname"]
    assert core.prpsinfo.pr_psargs.rstrip() == theirs["psargs"]


def test_every_thread_stack_is_readable(fixture_and_core: Any) -> None:
    """Each thread's rsp lies in a dumped, writable segment (stacks are anonymous memory
    and coredump_filter 0x33 dumps it), and the word at rsp can be read -- except for
    the stack overflow, whose faulting push left rsp in the guard gap just below the
    lowest stack page."""
    fixture, core = fixture_and_core
    for thread in core.threads:
        rsp = thread.registers["rsp"]
        segment = core.segment_at(rsp)
        if fixture.name == "recursion":
            assert segment is None
            above = core.segment_at((rsp | 0xFFF) + 1)
            assert above is not None and above.vaddr == (rsp | 0xFFF) + 1
            assert above.flags & L.PF.W
            continue
        assert segment is not None and segment.filesz > 0, thread.tid
        assert segment.flags & L.PF.W
        assert len(core.read_memory(rsp, 8)) == 8
