"""Our backtraces of real cores against gdb's, for every thread.

Each program is compiled here with the flags under test, crashed by the real
kernel into a raw core (one short core_pattern hold for all of them), and
unwound by :func:`coredumpd.unwind.unwinder.unwind`; the reference is
``gdb -batch -ex 'set backtrace past-main on' -ex 'thread apply all bt'``.

Two gdb conventions are accounted for, not papered over:

- ``<signal handler called>`` frames print no pc: any pc matches there;
- without CFI and debug information gdb may go astray after ``main`` and
  print ``0x0 in ?? ()``; the comparison ends there;
- gdb synthesizes *tail-call* frames from DWARF call-site information
  (``__pthread_kill_internal`` jumps to ``__pthread_kill_implementation``):
  such a frame has no return address on the stack, so no unwinder that reads
  the stack (eu-stack, libunwind) shows it.  A gdb frame is skipped only when
  the instruction before its pc is a ``jmp`` — the mark of a tail call.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import time

import pytest

from coredumpd.elf.core import Core
from coredumpd.image.space import build_address_space
from coredumpd.source import RawFileSource
from coredumpd.symbolize import disasm
from coredumpd.unwind.types import Caps, Trust
from coredumpd.unwind.unwinder import Unwinder
from tests.support.kernel import core_pattern, raw_core_pattern

pytestmark = pytest.mark.kernel

SOURCE = r"""
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
volatile int sink;
__attribute__((noinline)) void crash(int *p) { *p = sink + 1; }
__attribute__((noinline)) void level3(int *p) { crash(p); sink++; }
__attribute__((noinline)) void level2(int *p) { level3(p); sink++; }
__attribute__((noinline)) void level1(int *p) { level2(p); sink++; }
void handler(int s) { level1(NULL); sink = s; }
typedef void (*fn)(void);
__attribute__((noinline)) int inf(int n) { volatile char buf[64]; buf[0] = n; return inf(n + 1) + buf[0]; }
void *worker(void *arg) { if (arg) { sleep(1); level1(NULL); } pause(); return NULL; }
int main(int argc, char **argv) {
  const char *mode = argv[1];
  if (!strcmp(mode, "deep")) level1(NULL);
  if (!strcmp(mode, "sig")) { signal(SIGUSR1, handler); raise(SIGUSR1); }
  if (!strcmp(mode, "null")) { fn f = (fn)(long)(argc - 2); f(); }
  if (!strcmp(mode, "inf")) inf(0);
  if (!strcmp(mode, "abort")) abort();
  if (!strcmp(mode, "strlen")) sink = strlen((char *)(long)(argc - 2));
  if (!strcmp(mode, "mt")) {
    pthread_t t;
    for (int i = 0; i < 4; i++) pthread_create(&t, 0, worker, 0);
    pthread_create(&t, 0, worker, (void *)1);
    pause();
  }
  return 0;
}
"""

BUILDS = {
    "o2": ["-O2", "-fomit-frame-pointer"],
    "o0": ["-O0", "-fno-omit-frame-pointer"],
    # -g0: no .debug_frame either (with -g, gcc emits one when .eh_frame is off)
    "nounwind": ["-O2", "-fomit-frame-pointer", "-fno-asynchronous-unwind-tables",
                 "-fno-unwind-tables", "-g0"],
    "nounwind-fp": ["-O0", "-fno-omit-frame-pointer", "-fno-asynchronous-unwind-tables",
                    "-fno-unwind-tables", "-g0"],
    "debugframe": ["-O2", "-fomit-frame-pointer", "-fno-asynchronous-unwind-tables",
                   "-fno-unwind-tables"],
    "static": ["-O2", "-static"],
}
CASES = [
    ("o2", "deep"), ("o2", "sig"), ("o2", "null"), ("o2", "abort"), ("o2", "strlen"),
    ("o2", "mt"), ("o0", "deep"), ("o0", "sig"), ("o0", "mt"), ("nounwind", "deep"),
    ("nounwind", "sig"), ("nounwind-fp", "deep"), ("nounwind-fp", "mt"), ("static", "deep"),
    ("static", "sig"), ("debugframe", "deep"), ("debugframe", "sig"), ("o0", "inf"),
]


def _wait_for(path: pathlib.Path) -> None:
    for _ in range(200):  # the pipe handler may still be writing
        if path.exists():
            size = path.stat().st_size
            time.sleep(0.05)
            if size and size == path.stat().st_size:
                return
        time.sleep(0.05)
    raise AssertionError(f"no core at {path}")


@pytest.fixture(scope="module")
def cores(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[str, str]]:
    """(build, mode) -> (executable, core), all crashed within one core_pattern hold."""
    directory = tmp_path_factory.mktemp("unwind")
    source = directory / "prog.c"
    source.write_text(SOURCE)
    exes = {}
    for build, flags in BUILDS.items():
        exes[build] = str(directory / f"prog-{build}")
        subprocess.run(["gcc", "-g", *flags, "-pthread", "-o", exes[build], str(source)],
                       check=True)
    pids = {}
    with core_pattern(raw_core_pattern(str(directory)), pipe_limit=8):
        for build, mode in CASES:
            stack = "1024" if mode == "inf" else "8192"  # ~10,000 frames of inf()
            process = subprocess.Popen(
                ["/bin/sh", "-c", f'ulimit -c unlimited; ulimit -s {stack}; exec "$0" "$@"',
                 exes[build], mode])
            assert process.wait(timeout=60) < 0
            pids[build, mode] = process.pid  # exec keeps the shell's pid
    result = {}
    for key, pid in pids.items():
        path = directory / f"core.{pid}"
        _wait_for(path)
        result[key] = (exes[key[0]], str(path))
    return result


def gdb_backtraces(exe: str, core: str) -> dict[int, list[tuple[int | None, str]]]:
    """tid -> [(pc or None, function)] from gdb."""
    output = subprocess.run(
        ["gdb", "-nx", "-batch", "-ex", "set backtrace past-main on", "-ex",
         "thread apply all bt", exe, core], capture_output=True, text=True, check=True).stdout
    threads: dict[int, list[tuple[int | None, str]]] = {}
    current: list[tuple[int | None, str]] | None = None
    for line in output.splitlines():
        match = re.match(r"Thread \d+ \(.*LWP (\d+)\)", line)
        if match:
            current = threads.setdefault(int(match.group(1)), [])
            continue
        match = re.match(r"#\d+\s+(?:(0x[0-9a-f]+) in )?(\S+)", line)
        if match and current is not None:
            current.append((int(match.group(1), 16) if match.group(1) else None,
                            match.group(2)))
    return threads


def _is_tail_call_frame(space: object, pc: int) -> bool:
    before = disasm.instructions_before(space, pc, 1)  # type: ignore[arg-type]
    return bool(before) and before[-1].mnemonic.startswith("jmp")


def assert_matches_gdb(space: object, ours: list[int], reference: list[tuple[int | None, str]],
                       what: str) -> None:
    position = 0
    for index, (pc, function) in enumerate(reference):
        if index > 0 and pc == 0 and function == "??":
            # gdb's prologue analyser lost the trail (no CFI, no debug info): it
            # reads a garbage return address.  Ours must go on to _start instead.
            assert len(ours) > position, f"{what}: stopped where gdb went astray"
            return
        if pc is not None and position < len(ours) and ours[position] != pc \
                and _is_tail_call_frame(space, pc):
            continue  # gdb's synthesized tail-call frame
        assert position < len(ours), f"{what}: gdb frame #{index} {function} missing"
        if pc is not None or index == 0:
            assert pc is None or ours[position] == pc, \
                f"{what}: frame #{index}: gdb {pc:#x} {function}, ours {ours[position]:#x}"
        position += 1
    assert len(ours) == position, f"{what}: extra frames {[hex(pc) for pc in ours[position:]]}"


@pytest.mark.parametrize(("build", "mode"), [
    pytest.param(b, m, id=f"{b}-{m}") for b, m in CASES if m != "inf"])
def test_every_thread_matches_gdb(cores: dict[tuple[str, str], tuple[str, str]], build: str,
                                  mode: str) -> None:
    exe, path = cores[build, mode]
    core = Core.open(RawFileSource(path))
    space = build_address_space(core, exe=exe)
    reference = gdb_backtraces(exe, path)
    assert set(reference) == {thread.tid for thread in core.threads}
    unwinder = Unwinder(space)
    for thread in core.threads:
        result = unwinder.unwind(thread.registers)
        assert result.stop_reason is None, result.stop_reason
        ours = [frame.pc for frame in result.frames]
        assert_matches_gdb(space, ours, reference[thread.tid], f"{build}-{mode} {thread.tid}")
        assert result.frames[0].trust is Trust.CONTEXT


def test_signal_frame_is_crossed_with_an_exact_pc(
        cores: dict[tuple[str, str], tuple[str, str]]) -> None:
    exe, path = cores["o2", "sig"]
    core = Core.open(RawFileSource(path))
    result = Unwinder(build_address_space(core, exe=exe)).unwind(core.threads[0].registers)
    trampolines = [frame for frame in result.frames if frame.signal_frame]
    assert len(trampolines) == 1
    interrupted = result.frames[trampolines[0].index + 1]
    assert interrupted.trust is Trust.CONTEXT and interrupted.lookup_pc == interrupted.pc


def test_frames_say_how_they_were_found(
        cores: dict[tuple[str, str], tuple[str, str]]) -> None:
    for build, expected in (("nounwind", Trust.SCAN), ("nounwind-fp", Trust.FRAME_POINTER),
                            ("debugframe", Trust.CFI)):
        exe, path = cores[build, "deep"]
        core = Core.open(RawFileSource(path))
        result = Unwinder(build_address_space(core, exe=exe)).unwind(core.threads[0].registers)
        assert result.frames[1].trust is expected


def test_stack_overflow_is_one_counted_run(
        cores: dict[tuple[str, str], tuple[str, str]]) -> None:
    exe, path = cores["o0", "inf"]
    core = Core.open(RawFileSource(path))
    space = build_address_space(core, exe=exe)
    result = Unwinder(space, Caps()).unwind(core.threads[0].registers)
    reference = gdb_backtraces(exe, path)[core.threads[0].tid]
    expanded = [frame.pc for frame in result.frames for _ in range(frame.repeat)]
    assert expanded == [pc if pc is not None else expanded[0] for pc, _ in reference]
    assert len(result.frames) < 20 < len(reference)
    assert result.stop_reason is None
