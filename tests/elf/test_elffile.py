"""coredumpd.elf.elffile against readelf on real files, and on cut or corrupted ones."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from coredumpd.elf import layouts as L
from coredumpd.elf.elffile import ElfFile, version_info
from coredumpd.errors import FormatError
from coredumpd.symbolize.lines import DwarfLines

LIBC = os.path.realpath("/usr/lib/x86_64-linux-gnu/libc.so.6")


def readelf(*args):
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True,
                          check=True).stdout


def test_headers_sections_and_build_id_match_readelf():
    with ElfFile.open(LIBC) as elf:
        sections = re.findall(r"^\s+\[\s*\d+\] (\S+)\s+(\S+)\s+([0-9a-f]+) ([0-9a-f]+) "
                              r"([0-9a-f]+)", readelf("-S", LIBC), re.MULTILINE)
        assert [(s.name, s.sh_addr, s.sh_offset, s.sh_size) for s in elf.sections[1:]] == [
            (name, int(addr, 16), int(off, 16), int(size, 16))
            for name, _type, addr, off, size in sections]
        build_id = re.search(r"Build ID: ([0-9a-f]+)", readelf("-n", LIBC)).group(1)
        assert elf.build_id.hex() == build_id
        loads = re.findall(r"^\s+LOAD\s+0x([0-9a-f]+) 0x([0-9a-f]+)", readelf("-l", LIBC),
                           re.MULTILINE)
        assert [(p.p_offset, p.p_vaddr) for p in elf.program_headers
                if p.p_type == L.PT.LOAD] == [(int(o, 16), int(v, 16)) for o, v in loads]
        assert elf.soname == "libc.so.6"
        name, _crc = elf.debuglink
        assert name == build_id[2:] + ".debug"  # Debian's debuglink names the build-id file


def test_version_info_matches_readelf():
    info = version_info(LIBC)
    text = readelf("-V", LIBC)
    definitions = re.findall(r"Flags: none\s+Index: \d+\s+Cnt: \d+\s+Name: (\S+)", text)
    assert info["verdefs"] == definitions
    needs = re.findall(r"Name: (\S+)\s+Flags: \S+\s+Version: \d+", text)
    assert sorted(v for vs in info["verneeds"].values() for v in vs) == sorted(needs)
    assert list(info["verneeds"]) == ["ld-linux-x86-64.so.2"]
    assert sorted(info["defines"]["memcpy"]) == ["GLIBC_2.14", "GLIBC_2.2.5"]
    assert sorted(info["defines"]["realpath"]) == ["GLIBC_2.2.5", "GLIBC_2.3"]
    symbols = re.findall(r"^\s+\d+: [0-9a-f]+\s+\d+ \S+\s+\S+\s+\S+\s+(\d+) (\S+?)@@?(\S+)",
                         readelf("--dyn-syms", LIBC), re.MULTILINE)
    defined = {}
    for ndx, name, version in symbols:
        if ndx != "UND" and not name.startswith("GLIBC_"):
            defined.setdefault(name, []).append(version)
    assert {k: sorted(v) for k, v in info["defines"].items()} == {
        k: sorted(v) for k, v in defined.items()}
    assert info["build_id"] == ElfFile.open(LIBC).build_id.hex()


def test_version_info_from_an_fd_is_the_same():
    fd = os.open(LIBC, os.O_RDONLY)
    try:
        assert version_info(fd) == version_info(LIBC)
    finally:
        os.close(fd)


def test_version_info_imports_only_the_standard_library():
    code = ("import sys; from coredumpd.elf.elffile import version_info; "
            f"version_info({LIBC!r}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'elftools', 'lief', 'capstone', 'lz4', 'systemd'}))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert output.strip() == "[]"


@pytest.mark.parametrize("cut", [10, 64, 100, 1000, 5000, 20000, 200000])
def test_cut_files_raise_format_error_only(tmp_path, cut):
    """Whatever is cut, only FormatError comes out, and what is present is read."""
    path = tmp_path / "cut.so"
    path.write_bytes(pathlib.Path(LIBC).read_bytes()[:cut])
    if cut < 64:
        with pytest.raises(FormatError):
            ElfFile.open(str(path))
        return
    with ElfFile.open(str(path)) as elf:
        if cut >= 1000:  # the program headers are in the first 1000 bytes
            assert len(elf.program_headers) > 5
            assert elf.build_id is not None  # notes follow the program headers
        with pytest.raises(FormatError):
            elf.section(".text")  # the section headers are at the end of the file
    with pytest.raises(FormatError):
        version_info(str(path))


def test_lying_section_header_count_is_refused(tmp_path):
    data = bytearray(pathlib.Path("/bin/true").read_bytes())
    fields = list(L.EHDR.unpack_from(data))
    fields[12] = 60000  # e_shnum
    L.EHDR.pack_into(data, 0, *fields)
    path = tmp_path / "lying"
    path.write_bytes(bytes(data))
    with ElfFile.open(str(path)) as elf, pytest.raises(FormatError):
        elf.section(".text")


def test_compressed_debug_sections_give_the_same_lines(tmp_path):
    source = tmp_path / "p.c"
    functions = "".join(f"int f{i}(int x)\n{{\n  return x * {i};\n}}\n" for i in range(300))
    source.write_text(functions + "int main(void)\n{\n  return f7(2);\n}\n")
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    subprocess.run(["gcc", "-g", "-O0", "-o", str(plain), str(source)], check=True)
    subprocess.run(["gcc", "-g", "-O0", "-gz=zlib", "-o", str(packed), str(source)], check=True)
    assert "C" in re.search(r"\.debug_line\s.*", readelf("-S", str(packed))).group(0)
    with ElfFile.open(str(plain)) as elf:
        symbols = {s.name: s.value for s in elf.symbols()}
    for address in (symbols["f7"] + 4, symbols["f250"] + 9, symbols["main"] + 4):
        rows = [DwarfLines(str(path)).lookup(address) for path in (plain, packed)]
        assert rows[0] is not None and rows[0] == rows[1]
