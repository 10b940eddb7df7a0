"""Modules whose file changed after the process mapped it: deleted, replaced.

Real cores: the program runs, the test deletes or replaces its executable,
then lets it crash; the kernel's NT_FILE then says " (deleted)".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from coredumpd.elf.core import Core
from coredumpd.elf.elffile import ElfFile
from coredumpd.image.space import build_address_space
from coredumpd.source import RawFileSource
from tests.elf.realcore import DATA
from tests.support.kernel import core_pattern, raw_core_pattern

pytestmark = pytest.mark.kernel


def build(output, variant):
    subprocess.run(["gcc", "-g", "-O0", f"-DVARIANT={variant}", "-o", str(output),
                    str(DATA / "waitcrash.c")], check=True)
    return output


def wait_for_exec(pid, path):
    """Until /proc/PID/exe is ``path`` (the shell has exec'd the program)."""
    for _ in range(2000):
        try:
            if os.readlink(f"/proc/{pid}/exe") == path:
                return
        except OSError:
            pass
        time.sleep(0.005)
    raise AssertionError(f"{path} never ran")


def crash_after(exe, directory, change):
    """Start ``exe``, call ``change()``, let it crash; the opened core."""
    with core_pattern(raw_core_pattern(str(directory)), pipe_limit=8):
        process = subprocess.Popen(["/bin/sh", "-c", 'ulimit -c unlimited && exec "$0"',
                                    str(exe)], stdin=subprocess.PIPE)
        wait_for_exec(process.pid, str(exe))
        change()
        process.stdin.close()
        process.wait(timeout=60)
    assert process.returncode < 0
    return Core.open(RawFileSource(str(directory / f"core.{process.pid}")))


def test_deleted_executable(tmp_path):
    exe = build(tmp_path / "victim", 1)
    keep = tmp_path / "kept-copy"
    shutil.copy(exe, keep)
    core = crash_after(exe, tmp_path, lambda: os.unlink(exe))
    assert any(f.path == f"{exe} (deleted)" for f in core.files)
    space = build_address_space(core)
    main = next(m for m in space.modules if m.is_main)
    assert main.path == str(exe) and main.deleted and main.host_path is None
    assert main.build_id == ElfFile.open(str(keep)).build_id  # from the dumped header page
    assert any("not on this machine" in p for p in main.problems)
    # the user still has a copy: corectl analyze --exe
    space = build_address_space(core, exe=str(keep))
    main = next(m for m in space.modules if m.is_main)
    assert main.host_path == str(keep) and main.deleted
    rip = core.threads[0].registers["rip"]
    assert len(space.read(rip, 8)) == 8


def test_replaced_executable(tmp_path):
    exe = build(tmp_path / "victim", 1)
    other = build(tmp_path / "other", 2)
    core = crash_after(exe, tmp_path, lambda: os.rename(other, exe))
    space = build_address_space(core)
    main = next(m for m in space.modules if m.is_main)
    assert main.replaced and not main.host_path
    assert main.file_build_id == ElfFile.open(str(exe)).build_id != main.build_id
    assert main.eh_frame_hdr is not None  # from the dumped header page, not the new file


def test_core_without_elf_header_pages(tmp_path):
    """coredump_filter without bit 4 (core(5)): no ELF header page in the core, so no
    build-id to check; the files are used, flagged unverified, with their own headers."""
    exe = build(tmp_path / "victim", 1)
    with core_pattern(raw_core_pattern(str(tmp_path)), pipe_limit=8):
        script = 'ulimit -c unlimited && echo 0x23 > /proc/self/coredump_filter && exec "$0"'
        process = subprocess.Popen(["/bin/sh", "-c", script, str(exe)],
                                   stdin=subprocess.DEVNULL)
        process.wait(timeout=60)
    assert process.returncode < 0
    core = Core.open(RawFileSource(str(tmp_path / f"core.{process.pid}")))
    space = build_address_space(core)
    main = next(m for m in space.modules if m.is_main)
    assert main.build_id is None and main.host_path == str(exe)
    assert any("unverified" in p for p in main.problems)
    with ElfFile.open(str(exe)) as elf:
        assert main.eh_frame_hdr == main.load_bias + elf.section(".eh_frame_hdr").sh_addr
