"""coredumpd.symbolize.symbols against gdb on real binaries: libc (with libc6-dbg), a
stripped program with .gnu_debuglink, MiniDebugInfo, PLT entries, C++ names."""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess

import capstone
import pytest

from coredumpd.elf.elffile import STT_FUNC, ElfFile
from coredumpd.image.debuginfo import build_id_path
from coredumpd.image.types import Mapping, Module
from coredumpd.symbolize.symbols import Symbolizer, demangle, plain_name

LIBC = os.path.realpath("/usr/lib/x86_64-linux-gnu/libc.so.6")
LIBSTDCXX = os.path.realpath("/usr/lib/x86_64-linux-gnu/libstdc++.so.6")


class FileSpace:
    """An address space holding one ELF file mapped at its link-time addresses (bias 0).

    Not a stand-in for the core: the symbolizer only needs the module list,
    and bias 0 lets gdb be run on the very same file for reference.
    """

    def __init__(self, path: str) -> None:
        with ElfFile.open(path) as elf:
            build_id = elf.build_id
        self.module = Module(path=path, start=0, end=1 << 40, load_bias=0, build_id=build_id,
                             file_build_id=build_id, host_path=path)
        self.modules = [self.module]
        self.mappings = [Mapping(0, 1 << 40, "r-xp", 0, path)]

    def read(self, address, size):
        raise NotImplementedError

    def mapping_at(self, address):
        return self.mappings[0]

    def module_at(self, address):
        return self.module


def gdb_lookup(path, addresses):
    """[(info symbol text, info line text)] for each address, from one gdb run."""
    commands = []
    for address in addresses:
        commands += ["-ex", "echo @@@\\n", "-ex", f"info symbol {address:#x}",
                     "-ex", f"info line *{address:#x}"]
    output = subprocess.run(["gdb", "-nx", "-batch", *commands, path], capture_output=True,
                            text=True, check=True).stdout
    return [chunk.strip().split("\n", 1) for chunk in output.split("@@@\n")[1:]]


INFO_SYMBOL = re.compile(r"^(\S+?)(?: \+ (\d+))? in section (\S+)")
INFO_LINE = re.compile(r'^Line (\d+) of "([^"]+)"')


def parse_gdb(symbol_text, line_text):
    match = INFO_SYMBOL.match(symbol_text)
    name, offset = (match.group(1), int(match.group(2) or 0)) if match else (None, 0)
    line_match = INFO_LINE.match(line_text)
    line = (os.path.normpath(line_match.group(2)), int(line_match.group(1))) if line_match else None
    return name, offset, line


def sample_addresses(path, count):
    """Addresses spread inside the file's functions (deterministic)."""
    with ElfFile.open(path) as elf:
        functions = sorted({(s.value, s.size) for s in elf.symbols(".dynsym")
                            if s.type == STT_FUNC and s.size > 8 and s.value})
    step = max(1, len(functions) // count)
    return [value + (size * (index % 7)) // 7
            for index, (value, size) in enumerate(functions[::step][:count])]


def aliases_at(path, address):
    """Every name (version dropped) of a symbol at ``address`` in the file or its debug file."""
    names = set()
    with ElfFile.open(path) as elf:
        paths = [path, build_id_path(elf.build_id)]
    for candidate in paths:
        if os.path.exists(candidate):
            with ElfFile.open(candidate) as elf:
                for table in (".symtab", ".dynsym"):
                    names |= {s.name.split("@")[0] for s in elf.symbols(table)
                              if s.value == address}
    return names


def test_libc_symbols_and_lines_match_gdb():
    symbolizer = Symbolizer(FileSpace(LIBC))
    module = symbolizer.space.module
    addresses = sample_addresses(LIBC, 120)
    reference = gdb_lookup(LIBC, addresses)
    lines_checked = 0
    for address, (symbol_text, line_text) in zip(addresses, reference):
        gdb_name, gdb_offset, gdb_line = parse_gdb(symbol_text, line_text)
        ours = symbolizer.symbolize(module, address)
        assert ours.offset == gdb_offset, (hex(address), ours, symbol_text)
        aliases = aliases_at(LIBC, address - ours.offset)
        assert ours.name in aliases and gdb_name.split("@")[0] in aliases, (hex(address), ours)
        assert not ours.name.startswith("__GI_")
        if gdb_line is not None:
            assert (ours.file, ours.line) == gdb_line, (hex(address), ours, line_text)
            lines_checked += 1
    assert lines_checked > 100  # libc6-dbg gives lines nearly everywhere
    assert module.debug_path == build_id_path(module.build_id)


def test_abort_hlt_is_abort_c_107():
    """FACTS.md: the pc of abort()'s final hlt is stdlib/abort.c:107 in Debian's glibc."""
    symbolizer = Symbolizer(FileSpace(LIBC))
    module = symbolizer.space.module
    start = symbolizer.address_of("abort")
    with ElfFile.open(LIBC) as elf:
        size = next(s.size for s in elf.symbols(".dynsym") if s.name == "abort")
        code = elf.read(elf.vaddr_to_offset(start), size)
    disassembler = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    hlt = next(i.address for i in disassembler.disasm(code, start) if i.mnemonic == "hlt")
    assert hlt - start == 368  # CONTRACT.md's example frame
    symbol = symbolizer.symbolize(module, hlt)
    assert (symbol.name, symbol.file, symbol.line) == ("abort", "stdlib/abort.c", 107)
    (symbol_text, line_text), = gdb_lookup(LIBC, [hlt])
    assert parse_gdb(symbol_text, line_text)[2] == ("stdlib/abort.c", 107)
    assert symbol.raw_name in ("abort", "abort@@GLIBC_2.2.5")


def test_plain_names_prefer_exported_aliases():
    symbolizer = Symbolizer(FileSpace(LIBC))
    module = symbolizer.space.module
    for name in ("read", "malloc", "pause", "raise", "memcpy"):
        address = symbolizer.address_of(name)
        assert address is not None, name
        assert symbolizer.symbolize(module, address).name == name
    assert symbolizer.address_of("__abort_msg") is not None  # data symbols too
    assert symbolizer.address_of("no_such_symbol_anywhere") is None
    assert plain_name("memcpy@@GLIBC_2.14") == "memcpy"


def test_cxx_names_are_demangled_like_gdb():
    assert demangle("_ZN3foo3barEv") == "foo::bar()"
    assert demangle("_Znotmangled") == "_Znotmangled"
    assert demangle("main") == "main"
    symbolizer = Symbolizer(FileSpace(LIBSTDCXX))
    module = symbolizer.space.module
    addresses = sample_addresses(LIBSTDCXX, 30)
    for address, (symbol_text, _line) in zip(addresses, gdb_lookup(LIBSTDCXX, addresses)):
        ours = symbolizer.symbolize(module, address)
        gdb_name = symbol_text.split(" in section ")[0]
        expected = gdb_name if ours.offset == 0 else f"{ours.name} + {ours.offset}"
        assert gdb_name == expected, (hex(address), ours, symbol_text)


PROGRAM = r"""
#include <stdio.h>
#include <string.h>
__attribute__((noinline)) static int helper(const char *text) { return puts(text) + (int)strlen(text); }
int visible(int x) { return helper(x ? "a" : "bc"); }
int main(int argc, char **argv) { (void)argv; return visible(argc); }
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    directory = tmp_path_factory.mktemp("symprog")
    source = directory / "prog.c"
    source.write_text(PROGRAM)
    exe = directory / "prog"
    subprocess.run(["gcc", "-g", "-O1", "-fcf-protection=full", "-o", str(exe), str(source)],
                   check=True)
    return exe


def reference_for(exe, names):
    """gdb's (name, offset, (file, line)) for the first bytes of ``names`` in ``exe``."""
    with ElfFile.open(str(exe)) as elf:
        values = {s.name: s.value for s in elf.symbols(".symtab")}
    addresses = [values[name] + 4 for name in names]
    return addresses, [parse_gdb(*pair) for pair in gdb_lookup(str(exe), addresses)]


def test_debuglink_file_gives_symbols_and_lines(program, tmp_path):
    exe = tmp_path / "prog"
    shutil.copy(program, exe)
    addresses, reference = reference_for(exe, ["helper", "visible", "main"])
    subprocess.run(["objcopy", "--only-keep-debug", str(exe), str(tmp_path / "prog.debug")],
                   check=True)
    subprocess.run(["strip", "--strip-all", str(exe)], check=True)
    subprocess.run(["objcopy", f"--add-gnu-debuglink={tmp_path / 'prog.debug'}", str(exe)],
                   check=True, cwd=tmp_path)
    symbolizer = Symbolizer(FileSpace(str(exe)))
    module = symbolizer.space.module
    for address, (name, offset, line) in zip(addresses, reference):
        ours = symbolizer.symbolize(module, address)
        assert (ours.name, ours.offset, (ours.file, ours.line)) == (name, offset, line)
    assert module.debug_path == str(tmp_path / "prog.debug")


def test_debuglink_with_wrong_crc_is_ignored(program, tmp_path):
    exe = tmp_path / "prog"
    shutil.copy(program, exe)
    addresses, _ = reference_for(exe, ["helper"])
    subprocess.run(["objcopy", "--only-keep-debug", str(exe), str(tmp_path / "prog.debug")],
                   check=True)
    subprocess.run(["strip", "--strip-all", str(exe)], check=True)
    subprocess.run(["objcopy", "--add-gnu-debuglink=prog.debug", str(exe)], check=True,
                   cwd=tmp_path)
    with open(tmp_path / "prog.debug", "ab") as handle:
        handle.write(b"changed")
    symbolizer = Symbolizer(FileSpace(str(exe)))
    assert symbolizer.symbolize(symbolizer.space.module, addresses[0]).name is None
    assert symbolizer.space.module.debug_path is None


def test_minidebuginfo_gives_local_function_names(program, tmp_path):
    """The recipe of gdb's manual, "MiniDebugInfo": a symtab-only ELF, xz'd, in .gnu_debugdata."""
    exe = tmp_path / "prog"
    shutil.copy(program, exe)
    addresses, reference = reference_for(exe, ["helper", "visible"])
    mini = tmp_path / "mini"
    subprocess.run(["objcopy", "--only-keep-debug", "--remove-section=.debug_*", str(exe),
                    str(mini)], check=True)
    subprocess.run(["xz", "-k", str(mini)], check=True)
    subprocess.run(["strip", "--strip-all", str(exe)], check=True)
    subprocess.run(["objcopy", f"--add-section=.gnu_debugdata={mini}.xz", str(exe)], check=True)
    symbolizer = Symbolizer(FileSpace(str(exe)))
    module = symbolizer.space.module
    for address, (name, offset, _line) in zip(addresses, reference):
        ours = symbolizer.symbolize(module, address)
        assert (ours.name, ours.offset, ours.file) == (name, offset, None)


def test_plt_entries_are_named_like_gdb(program):
    with ElfFile.open(str(program)) as elf:
        plt = elf.section(".plt.sec") or elf.section(".plt")
        addresses = list(range(plt.sh_addr, plt.sh_addr + plt.sh_size, 16))
    symbolizer = Symbolizer(FileSpace(str(program)))
    module = symbolizer.space.module
    reference = gdb_lookup(str(program), addresses)
    named = 0
    for address, (symbol_text, _line) in zip(addresses, reference):
        ours = symbolizer.symbolize(module, address)
        if "@plt" in symbol_text:
            assert ours.name == symbol_text.split(" in section")[0], (hex(address), ours)
            named += 1
    assert named >= 2  # puts@plt, strlen@plt (or __stack_chk_fail...)


def test_symbol_table_columns_agree_with_each_entry():
    """SymbolTable reads Elf64_Sym arrays as columns: every sized function of libc's
    .dynsym (read entry by entry here) is found at its own address, under one of the
    names defined there."""
    import struct

    from coredumpd.symbolize.symbols import SymbolTable

    with ElfFile.open(LIBC) as elf:
        data, strings = elf.raw_symbols(".dynsym")
    table = SymbolTable()
    table.add_table(data, strings)
    table.finish()
    names_at: dict[int, set[str]] = {}
    functions = []
    for st_name, info, _other, shndx, value, size in struct.iter_unpack("<IBBHQQ", data):
        name = strings[st_name:strings.index(b"\0", st_name)].decode()
        names_at.setdefault(value, set()).add(name)
        if info & 0xF == STT_FUNC and shndx and size:
            functions.append((value, size))
    assert len(functions) > 2000
    for value, size in functions:
        found = table.lookup(value)
        assert found is not None and found[0] == value and found[1] in names_at[value]
        assert table.lookup(value + size - 1)[0] >= value  # inside it, or in one nested in it


RUST_PROGRAM = r"""
fn lookup(v: &[u32], key: Option<u32>) -> u32 {
    v[key.expect("the key must be set") as usize]
}
fn main() {
    let v: Vec<u32> = std::env::args().map(|a| a.len() as u32).collect();
    println!("{}", lookup(&v, v.first().copied()));
}
"""
RUST_HASH = re.compile(r"::h[0-9a-f]{16}$")  # legacy mangling's hash, the last path segment
RUST_CRATE_DISAMBIGUATOR = re.compile(r"(?<=\w)\[[0-9a-f]{1,16}\]")  # v0: std[e28293b1aa0f68bd]


@pytest.mark.skipif(shutil.which("rustc") is None, reason="rustc is not installed")
def test_rust_names_are_demangled_like_gdb_without_hashes(tmp_path):
    """Legacy (``_ZN…17h<hash>E``) and v0 (``_R…``) names: gdb's ``info symbol`` name (its
    minimal symbols are demangled verbosely), without the legacy hash and v0's crate
    disambiguators, as gdb prints the same functions from DWARF and as CONTRACT.md says."""
    source = tmp_path / "names.rs"
    source.write_text(RUST_PROGRAM)
    binary = str(tmp_path / "names")
    subprocess.run(["rustc", "-g", "-o", binary, str(source)], check=True, capture_output=True)
    with ElfFile.open(binary) as elf:
        symbols = [s for s in elf.symbols(".symtab") if s.type == STT_FUNC and s.value]
    # identical code folding puts several functions at one address; gdb and we may
    # choose other aliases there (the alias rule is tested above): single names only
    count = collections.Counter(s.value for s in symbols)
    functions = sorted({(s.value, s.name) for s in symbols if count[s.value] == 1
                        and s.size > 4 and s.name.startswith(("_R", "_ZN"))})
    v0 = [item for item in functions if item[1].startswith("_R")]
    legacy = [item for item in functions if re.search(r"^_ZN.*17h[0-9a-f]{16}E$", item[1])]
    assert len(v0) > 20 and len(legacy) > 5  # std is v0-mangled, this program legacy-mangled
    chosen = v0[::max(1, len(v0) // 20)] + legacy[::max(1, len(legacy) // 10)]
    symbolizer = Symbolizer(FileSpace(binary))
    module = symbolizer.space.module
    answers = gdb_lookup(binary, [address for address, _ in chosen])
    checked = 0
    for (address, raw), (symbol_text, _line) in zip(chosen, answers):
        match = re.match(r"^(.*?) in section ", symbol_text)
        assert match, (raw, symbol_text)
        gdb_name = RUST_CRATE_DISAMBIGUATOR.sub("", RUST_HASH.sub("", match.group(1)))
        ours = symbolizer.symbolize(module, address)
        assert ours.raw_name == raw
        assert ours.name == gdb_name, (raw, symbol_text)
        assert "::h" not in ours.name or not RUST_HASH.search(ours.name)
        checked += 1
    assert checked == len(chosen)
    assert demangle("_ZN5panic6lookup17h06e10958f83e97f8E") == "panic::lookup"
    assert demangle("_RNvNtNtNtCsjrHSEGnQ3l9_3std3sys3pal4unix14abort_internal") == \
        "std::sys::pal::unix::abort_internal"


def _every_name(tables):
    """What address_of answered before it searched the bytes: an index of every name
    (first table, then first entry wins; a version suffix dropped)."""
    import struct

    from coredumpd.symbolize.symbols import NAMED_TYPES

    names = {}
    for data, strings in tables:
        for st_name, info, _other, shndx, value, _size in struct.iter_unpack(
                "<IBBHQQ", data[:len(data) - len(data) % 24]):
            if (info & 0xF) in NAMED_TYPES and value and shndx not in (0, 0xFFF1):
                end = strings.find(b"\0", st_name)
                raw = strings[st_name:end if end >= 0 else len(strings)]
                names.setdefault(raw.decode("utf-8", "surrogateescape").partition("@")[0], value)
    return names


@pytest.mark.parametrize("path", [LIBC, LIBSTDCXX, "libc-debug"])
def test_address_of_agrees_with_an_index_of_every_name(path):
    """address_of searches the name's bytes instead of indexing every name: the same
    address for every name the tables hold (aliases, versioned names, tails of other
    strings), None for names they do not define."""
    from coredumpd.symbolize.symbols import SymbolTable

    if path == "libc-debug":
        with ElfFile.open(LIBC) as elf:
            path = build_id_path(elf.build_id)
    with ElfFile.open(path) as elf:
        tables = [raw for raw in (elf.raw_symbols(".symtab"), elf.raw_symbols(".dynsym"))
                  if raw is not None]
    table = SymbolTable()
    for data, strings in tables:
        table.add_table(data, strings)
    table.finish()
    expected = _every_name(tables)
    assert len(expected) > 1000
    for name, value in expected.items():
        assert table.address_of(name) == (value if name else None), name
    for name in ("no_such_symbol_anywhere", "abort@GLIBC_2.2.5", "abor", "", "a\0b"):
        assert table.address_of(name) is None


def test_address_of_a_name_written_many_times_scans_once():
    """A table naming one string more often than MAX_NAME_SEARCHES (hostile, or merged
    tails) is scanned in one pass: the first defining entry wins, undefined ones and
    those at 0 are skipped."""
    import struct

    from coredumpd.symbolize.symbols import MAX_NAME_SEARCHES, SymbolTable

    count = MAX_NAME_SEARCHES * 4
    strings = b"\0" + b"".join(b"__abort_msg\0" for _ in range(count)) + b"x__abort_msg@V1\0"
    entries = [struct.pack("<IBBHQQ", 1 + 12 * number, 0x11, 0, 0, 0x1000 + number, 8)
               for number in range(count)]  # undefined (st_shndx 0): skipped
    entries.append(struct.pack("<IBBHQQ", 1 + 12 * 7, 0x11, 0, 5, 0, 8))  # at 0: skipped
    entries.append(struct.pack("<IBBHQQ", len(strings) - 15, 0x11, 0, 5, 0x5000, 8))
    entries.append(struct.pack("<IBBHQQ", 1 + 12 * 3, 0x11, 0, 5, 0x6000, 8))
    table = SymbolTable()
    table.add_table(b"".join(entries), strings)
    table.finish()
    assert table.address_of("__abort_msg") == 0x5000
    assert table.address_of("x__abort_msg") is None  # "x__abort_msg@V1" starts at its x
