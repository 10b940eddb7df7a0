"""coredumpd.image.space on a real core, cross-checked with eu-unstrip and gdb, and
its file-trust rules (replaced, deleted, modified, other root) with facts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from coredumpd.clock import start_time_slack_ns
from coredumpd.elf import layouts as L
from coredumpd.elf.core import Core
from coredumpd.elf.elffile import ElfFile
from coredumpd.errors import MemoryReadError
from coredumpd.image.space import build_address_space
from coredumpd.image.types import Module
from coredumpd.source import BytesSource, RawFileSource
from tests.elf.realcore import RealCore, compile_c, crash
from tests.support import elfwriter as W

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> RealCore:
    directory = tmp_path_factory.mktemp("spacecore")
    return crash(compile_c("crashmt.c", directory / "crashmt", "-O2"), directory, "2")


@pytest.fixture()
def core(real):
    source = RawFileSource(str(real.core))
    yield Core.open(source)
    source.close()


def eu_unstrip(core_path):
    """{path-or-name: (start, build-id)} from ``eu-unstrip -n --core``."""
    output = subprocess.run(["eu-unstrip", "-n", f"--core={core_path}"], capture_output=True,
                            text=True, check=True).stdout
    modules = {}
    for line in output.splitlines():
        start, build_id, file, _debug, name = re.match(
            r"0x([0-9a-f]+)\+0x[0-9a-f]+ ([0-9a-f]+)@\S+ (\S+) (\S+) (\S+)", line).groups()
        path = file if file.startswith("/") else name
        modules[os.path.realpath(path) if path.startswith("/") else path] = (int(start, 16),
                                                                             build_id)
    return modules


def test_modules_match_eu_unstrip(real, core):
    space = build_address_space(core)
    reference = eu_unstrip(real.core)
    ours = {}
    for module in space.modules:
        key = "linux-vdso.so.1" if module.is_vdso else os.path.realpath(module.path)
        ours[key] = (module.start, module.build_id.hex())
    assert ours == reference
    main = next(m for m in space.modules if m.is_main)
    assert main.path == str(real.exe)
    assert main.host_path == str(real.exe) and main.problems == []
    assert main.load_bias == main.start  # PIE linked at 0
    assert all(m.host_path for m in space.modules if not m.is_vdso)


def test_eh_frame_hdr_and_load_bias_from_the_file(real, core):
    space = build_address_space(core)
    for module in space.modules:
        elf = space.open_elf(module)
        section = elf.section(".eh_frame_hdr")
        assert module.eh_frame_hdr == module.load_bias + section.sh_addr, module.path
        assert space.read(module.eh_frame_hdr, 1) == b"\x01"  # version 1
    space.close()


def test_text_not_in_core_is_read_from_the_file(real, core):
    space = build_address_space(core)
    rip = core.threads[0].registers["rip"]
    with pytest.raises(MemoryReadError):
        core.read_memory(rip, 16)  # clean .text is not dumped
    gdb = subprocess.run(["gdb", "-nx", "-batch", "-ex", "x/16xb $pc", str(real.exe),
                          str(real.core)], capture_output=True, text=True, check=True).stdout
    dump = " ".join(line.split(":", 1)[1] for line in gdb.splitlines() if line.startswith("0x"))
    expected = bytes(int(byte, 16) for byte in re.findall(r"0x([0-9a-f]{2})\b", dump))
    assert space.read(rip, 16) == expected
    assert space.module_at(rip).is_main
    before = space.bytes_read
    stack = core.threads[0].registers["rsp"]
    assert len(space.read(stack, 64)) == 64
    assert space.bytes_read == before + 64
    with pytest.raises(MemoryReadError):
        space.read(0x10, 8)


def test_replaced_file_is_not_trusted(real, core, tmp_path):
    """The root holds a different ELF at the executable's path: build-ids differ."""
    fake = tmp_path / str(real.exe).lstrip("/")
    fake.parent.mkdir(parents=True)
    shutil.copy("/bin/true", fake)
    space = build_address_space(core, root=str(tmp_path))
    main = next(m for m in space.modules if m.is_main)
    assert main.host_path is None and main.replaced
    assert main.file_build_id == ElfFile.open("/bin/true").build_id
    assert any("build-id" in p for p in main.problems)
    rip = core.threads[0].registers["rip"]
    with pytest.raises(MemoryReadError):
        space.read(rip, 4)
    libc = next(m for m in space.modules if "libc.so" in m.path)
    assert libc.host_path is None and any("not on this machine" in p for p in libc.problems)


def test_same_file_under_another_root_is_trusted(real, core, tmp_path):
    copy = tmp_path / str(real.exe).lstrip("/")
    copy.parent.mkdir(parents=True)
    shutil.copy(real.exe, copy)
    facts = {"proc": {"root": str(tmp_path)}}
    space = build_address_space(core, facts)
    main = next(m for m in space.modules if m.is_main)
    assert main.host_path == str(copy)


def test_facts_maps_and_file_changes(real, core):
    maps = [{"start": m.start, "end": m.end, "perms": m.perms, "offset": m.file_offset,
             "dev": "fe:01", "inode": 7, "path": m.path, "deleted": m.path == str(real.exe)}
            for m in build_address_space(core).mappings]
    libc_path = next(m["path"] for m in maps if m["path"] and "libc.so" in m["path"])
    stat = {"dev": 1, "inode": 2, "size": 3, "mtime_ns": 30_000_000, "ctime_ns": 0}
    facts = {"proc": {"maps": maps, "start_time_us": 5_000,
                      "files": {str(real.exe): {"now": {"error": "ENOENT"}, "mapped": stat},
                                libc_path: {"now": dict(stat, inode=9), "mapped": stat}}}}
    space = build_address_space(core, facts)
    main = next(m for m in space.modules if m.is_main)
    libc = next(m for m in space.modules if m.path == libc_path)
    assert main.deleted and main.modified_in_place  # mtime 30 ms > start 5 ms + 2 ticks
    assert libc.replaced and not libc.deleted
    assert all(m.inode == 7 for m in space.mappings if m.path and m.path.startswith("/"))
    # Within two clock ticks of the start (coredumpd.clock), a write is not "after".
    stat["mtime_ns"] = 5_000_000 + start_time_slack_ns()
    main = next(m for m in build_address_space(core, facts).modules if m.is_main)
    assert main.deleted and not main.modified_in_place


def test_synthetic_core_without_files_still_builds():
    core = Core.open(BytesSource(W.simple_core()))
    space = build_address_space(core)
    module = space.modules[0]
    assert module.path == "/bin/prog" and module.host_path is None
    assert space.read(0x400000, 4) == b"\x7fELF"
    assert space.mapping_at(0x400000).perms == "r-xp"
    assert space.module_at(0x400010) is module
    assert core.auxv[L.AT.PAGESZ] == space.page_size


def test_paths_resolve_inside_the_process_root(tmp_path):
    from coredumpd.image.space import resolve_in_root
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("/usr/lib")  # absolute: must stay inside the root
    (tmp_path / "usr" / "lib" / "escape").symlink_to("../../../../../etc")
    assert resolve_in_root("/lib/libc.so.6", str(tmp_path)) == str(
        tmp_path / "usr" / "lib" / "libc.so.6")
    assert resolve_in_root("/../../etc/passwd", str(tmp_path)) == str(tmp_path / "etc" / "passwd")
    assert resolve_in_root("/lib/escape/shadow", str(tmp_path)) == str(
        tmp_path / "etc" / "shadow")
    (tmp_path / "loop").symlink_to("loop")
    assert resolve_in_root("/loop/x", str(tmp_path)).startswith(str(tmp_path))
    assert resolve_in_root("/usr/lib/x", "/") == "/usr/lib/x"


def test_a_fifo_named_by_the_core_is_not_opened(tmp_path):
    """NT_FILE names a FIFO on this machine: no blocking open, a problem instead."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    notes = [W.note("CORE", L.NT.PRSTATUS, W.prstatus(1)),
             W.note("CORE", L.NT.FILE, W.file_note([(0x400000, 0x401000, 0, str(fifo))]))]
    core = Core.open(BytesSource(W.core(notes, [W.Load(0x400000, b"\x7fELF" + bytes(60))])))
    space = build_address_space(core)
    module = space.modules[0]
    assert module.host_path is None
    assert any("not a regular file" in p for p in module.problems)


def test_vdso_symbols_come_from_the_core(real, core):
    """The vDSO is not a file: its symbols are read from its image in the core (gdb agrees:
    ``info symbol __vdso_clock_gettime`` says clock_gettime)."""
    from coredumpd.symbolize.symbols import Symbolizer
    space = build_address_space(core)
    vdso = next(m for m in space.modules if m.is_vdso)
    symbolizer = Symbolizer(space)
    address = symbolizer.address_of("__vdso_clock_gettime", vdso)
    assert address is not None and space.module_at(address) is vdso
    gdb = subprocess.run(["gdb", "-nx", "-batch", "-ex", f"info symbol {address + 5:#x}",
                          str(real.exe), str(real.core)], capture_output=True, text=True,
                         check=True).stdout
    symbol = symbolizer.symbolize(vdso, address + 5)
    assert f"{symbol.name} + {symbol.offset} in section .text of system-supplied DSO" in gdb


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2, 1 << 65) | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.sampled_from(["proc", "maps", "files", "now", "mapped",
                                                       "start", "end", "path", "root", "exe",
                                                       "error", "inode", "mtime_ns",
                                                       "mapped_objects", "reason",
                                                       "/bin/prog"]), children, max_size=5),
                    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_malformed_facts_never_break_the_address_space(facts):
    core = Core.open(BytesSource(W.simple_core()))
    space = build_address_space(core, facts if isinstance(facts, dict) else {"proc": facts})
    assert all(isinstance(m.path, str) for m in space.modules)


def test_untrusted_module_still_symbolized_from_its_debug_file(real, core, tmp_path):
    """libc is not under the (empty) root, but its debug file is found by the build-id
    in the core: names and lines still come out."""
    from coredumpd.symbolize.symbols import Symbolizer
    space = build_address_space(core, root=str(tmp_path))
    symbolizer = Symbolizer(space)
    idle = next(t for t in core.threads[1:] if "libc.so" in (
        space.module_at(t.registers["rip"]) or Module("", 0, 0, 0)).path)
    libc = space.module_at(idle.registers["rip"])
    assert libc.host_path is None
    symbol = symbolizer.symbolize(libc, idle.registers["rip"])
    assert symbol.name == "pause" and symbol.file.endswith("pause.c") and symbol.line
    assert libc.debug_path is not None


def test_data_files_are_not_modules_and_a_path_mapped_twice_is_two(tmp_path):
    data_file = tmp_path / "locale-archive"
    data_file.write_bytes(b"not an ELF file" * 100)
    lib = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    files = [(0x10000, 0x11000, 0, str(data_file)),
             (0x20000, 0x21000, 0, lib), (0x21000, 0x22000, 0x1000, lib),
             (0x30000, 0x31000, 0, lib)]
    notes = [W.note("CORE", L.NT.PRSTATUS, W.prstatus(1)),
             W.note("CORE", L.NT.FILE, W.file_note(files))]
    loads = [W.Load(start, b"", memsz=end - start) for start, end, _o, _p in files]
    space = build_address_space(Core.open(BytesSource(W.core(notes, loads))))
    assert [(m.path, m.start, m.end) for m in space.modules] == [
        (lib, 0x20000, 0x22000), (lib, 0x30000, 0x31000)]
    assert space.module_at(0x10010) is None and space.module_at(0x30010).start == 0x30000
