"""What users of C++, Rust, perl and bash crash with (issue 11), through the real kernel.

Each program is built with this machine's g++ or rustc (or is the machine's
perl or bash), crashed under the coredumpd handler, and the annotation is
checked: the right id with its evidence, no wrong one, and the frames it
names as gdb names them (gdb 13 on the same core).
"""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from tests.annotate.crashing import Crash, crash
from tests.support.fixtures import parse_gdb_backtrace

pytestmark = pytest.mark.kernel


def gdb_functions(result: Crash, exe: str, tmp_path: pathlib.Path) -> list[str]:
    """gdb's function name for each frame of the crashed thread (``bt`` on the stored core,
    decompressed)."""
    from coredumpd.store.lz4seek import open_core_source

    raw = tmp_path / "core.raw"
    source = open_core_source(str(result.core_path))
    try:
        with open(raw, "wb") as handle:
            handle.writelines(source.pread(offset, 1 << 20) for offset in range(0, source.size, 1 << 20))
    finally:
        source.close()
    text = subprocess.run(["gdb", "-batch", "-nx", "-ex", "set pagination off", "-ex", "bt",
                           exe, str(raw)], capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "DEBUGINFOD_URLS": ""}).stdout
    lines = text.splitlines()
    last_start = max(i for i, line in enumerate(lines) if line.startswith("#0 "))  # gdb
    # prints frame #0 once on loading the core, then the backtrace: parse the backtrace
    threads = parse_gdb_backtrace("\n".join(["Thread 1 (LWP 1):", *lines[last_start:]]))
    assert threads and threads[0].frames, text
    return [frame.function for frame in threads[0].frames]


def crashed_symbols(result: Crash) -> list[str | None]:
    thread = next(t for t in result.analysis["threads"] if t["crashed"])
    return [frame.get("symbol") for frame in thread["frames"]]


# ------------------------------------------------------------------ signal-sent, self


@pytest.mark.parametrize(("how", "signal", "call"), [
    ("raise", "SIGSEGV", "raise"), ("tgkill", "SIGBUS", "syscall"), ("kill", "SIGQUIT", "kill")])
def test_signal_sent_by_the_program_itself(program, tmp_path, how, signal, call):
    result = crash([program("selfkill"), how], tmp_path)
    assert result.ids == ["signal-sent"]
    title = result.annotation("signal-sent")["title"]
    assert title == f"{signal} was sent by the process itself: {call}() called from shoot_self"
    evidence = result.evidence("signal-sent")
    assert "the process's own pid" in evidence
    assert "shoot_self+0x" in evidence and "selfkill.c:" in evidence


def test_perl_killing_itself(tmp_path):
    result = crash(["/usr/bin/perl", "-e", 'kill "SEGV", $$'], tmp_path)
    assert result.ids == ["signal-sent"]
    annotation = result.annotation("signal-sent")
    assert "SI_USER" in result.evidence("signal-sent")
    gdb = gdb_functions(result, "/usr/bin/perl", tmp_path)
    ours = crashed_symbols(result)
    assert ours[0] == "kill" and gdb[0] == "__GI_kill"  # gdb: libc's DWARF name
    assert ours[1] == gdb[1] == "Perl_apply"  # the function that sent it, named as gdb does
    assert annotation["title"] == "SIGSEGV was sent by the process itself: kill() called " \
        "from Perl_apply"


def test_bash_killing_itself_is_no_abort(tmp_path):
    """SIGABRT that bash sent itself: not an abort (no abort() on the stack)."""
    result = crash(["/bin/bash", "-c", "kill -ABRT $$"], tmp_path)
    assert result.ids == ["signal-sent"]
    assert "SIGABRT was sent by the process itself: kill() called from kill_builtin" == \
        result.annotation("signal-sent")["title"]
    gdb = gdb_functions(result, "/bin/bash", tmp_path)
    assert crashed_symbols(result)[1] == gdb[1] == "kill_builtin"
