"""Symbolization: runtime pc -> plain function name, offset, source file and line.

Symbols are merged, per module (cached), from the separate debug file's
``.symtab`` (build-id or debuglink, :mod:`coredumpd.image.debuginfo`), the
module's own ``.symtab``, MiniDebugInfo and ``.dynsym``.  The choice of symbol
follows gdb's ``lookup_minimal_symbol_by_pc_section()`` (gdb/minsyms.c): the
last symbol at or before the pc whose size covers it; a sized symbol that
does not cover the pc loses to a later zero-sized one, else there is no
symbol.  PLT entries are named ``name@plt`` as gdb does.

Among aliases at one address the plain name is chosen (docs/ARCHITECTURE.md,
fixtures/cores/expected.py ``plain_name``): not a glibc-internal ``__GI_``
alias; fewest leading underscores (``read`` over ``__read`` and
``__libc_read``); GLOBAL, WEAK, LOCAL (as elfutils' ``dwfl_module_addrsym``:
``raise`` over ``gsignal``); shortest; alphabetical.
Version suffixes (``@GLIBC_2.2.5``) are dropped; C++ and Rust names are
demangled as gdb does, with binutils' ``bfd_demangle`` (libiberty, through
ctypes), else (C++ only) with the C++ runtime's ``__cxa_demangle``.  Rust
names come in two manglings (libiberty's rust-demangle.c handles both): the
legacy one, an Itanium ``_ZN…E`` path ending in a ``17h<16 hex digits>``
hash, and v0 (``_R…``, RFC 2603), which rustc's std uses today.  gdb asks
for them without ``DMGL_VERBOSE`` (gdb/rust-lang.c, ``gdb_demangle(mangled,
DMGL_PARAMS | DMGL_ANSI)``), so the legacy hash and v0's crate
disambiguators (``std[e28293b1aa0f68bd]``) are left out.
"""

from __future__ import annotations

import array
import bisect
import functools
import os
import struct
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from coredumpd.arch import for_machine
from coredumpd.elf import layouts as L
from coredumpd.elf.elffile import (
    STT_FUNC,
    STT_GNU_IFUNC,
    STT_NOTYPE,
    STT_OBJECT,
    ElfFile,
)
from coredumpd.errors import CoredumpdError, FormatError
from coredumpd.image import debuginfo
from coredumpd.image.types import AddressSpace, Module
from coredumpd.patterns import Pattern
from coredumpd.store.modcache import ModuleCache, file_identity
from coredumpd.symbolize.types import InlinedCall, Symbol
from coredumpd.values import Value

if TYPE_CHECKING:
    from coredumpd.symbolize.lines import DwarfLines

SHN_ABS = 0xFFF1
BINDING_RANK = {1: 0, 2: 1, 0: 2}  # STB_GLOBAL, STB_WEAK, STB_LOCAL
MAX_DEMANGLE = 4096
CODE_TYPES = frozenset({STT_FUNC, STT_GNU_IFUNC, STT_NOTYPE})
NAMED_TYPES = frozenset({STT_FUNC, STT_GNU_IFUNC, STT_NOTYPE, STT_OBJECT})
RELA = struct.Struct("<QQq")  # Elf64_Rela
FORMAT = 2  # of SymbolTable.columns() and of a module's cached answers
ST_NAME = struct.Struct("<I")
NATIVE_WORD = struct.Struct("=I")  # array("I") of this host
MAX_NAME_SEARCHES = 32  # address_of: more places naming the name are scanned in one pass


LIBBFD_GLOBS = ("/usr/lib/x86_64-linux-gnu/libbfd*.so*", "/usr/lib64/libbfd*.so*",
                "/usr/lib/libbfd*.so*")
DMGL_PARAMS, DMGL_ANSI, DMGL_VERBOSE = 1, 2, 8  # include/demangle.h
# libiberty rust-demangle.c: a legacy Rust path ends with "17h" and 16 hex digits, then "E"
RUST_LEGACY = Pattern(r"^_ZN.*17h[0-9a-f]{16}E$")


@functools.cache
def _demanglers() -> list[tuple[str, Any]]:
    """gdb's demangler first (binutils' ``bfd_demangle``, gdb/cp-support.c
    ``gdb_demangle``), then the C++ runtime's ``__cxa_demangle``.  ctypes is
    imported only here, for the first mangled name (it costs ~11 ms to import)."""
    import ctypes
    import ctypes.util
    import glob

    found: list[tuple[str, Any]] = []
    for pattern in LIBBFD_GLOBS:
        for path in sorted(glob.glob(pattern)):
            try:
                function = ctypes.CDLL(path).bfd_demangle
            except (OSError, AttributeError):
                continue
            function.restype = ctypes.c_void_p
            function.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
            found.append(("bfd", function))
            break
        if found:
            break
    name = ctypes.util.find_library("stdc++")
    try:
        cxa = ctypes.CDLL(name).__cxa_demangle if name else None
    except (OSError, AttributeError):
        cxa = None
    if cxa is not None:
        cxa.restype = ctypes.c_void_p
        cxa.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                        ctypes.POINTER(ctypes.c_int)]
        found.append(("cxa", cxa))
    return found


def _call_demangler(kind: str, function: Any, raw: bytes, rust: bool) -> str | None:
    import ctypes

    if kind == "bfd":
        options = DMGL_PARAMS | DMGL_ANSI | (0 if rust else DMGL_VERBOSE)
        pointer = function(None, raw, options)
    elif rust:
        return None  # __cxa_demangle knows only C++: a Rust name stays mangled
    else:
        status = ctypes.c_int(0)
        pointer = function(raw, None, None, ctypes.byref(status))
        if status.value != 0:
            pointer = None
    if not pointer:
        return None
    try:
        return ctypes.string_at(pointer).decode("utf-8", "replace")
    finally:
        _libc().free(ctypes.c_void_p(pointer))


@functools.cache
def _libc() -> Any:
    import ctypes

    libc = ctypes.CDLL(None)
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


@functools.lru_cache(maxsize=65536)
def demangle(name: str) -> str:
    """The demangled form of a C++ or Rust ``name``, as gdb prints it (unchanged if not
    mangled): ``panic::lookup`` for ``_ZN5panic6lookup17h06e10958f83e97f8E``."""
    if not name.startswith(("_Z", "_R")) or len(name) > MAX_DEMANGLE:
        return name
    rust = name.startswith("_R") or RUST_LEGACY.match(name) is not None
    raw = name.encode("utf-8", "surrogateescape")
    for kind, function in _demanglers():
        result = _call_demangler(kind, function, raw, rust)
        if result is not None:
            return result
    return name


def plain_name(raw: str) -> str:
    """``memcpy@@GLIBC_2.14`` -> ``memcpy``; demangled; ``puts@plt`` stays as gdb shows it."""
    if raw.endswith("@plt"):
        return demangle(raw[:-4].split("@", 1)[0]) + "@plt"
    return demangle(raw.split("@", 1)[0])


def inlined_name(raw: str | None) -> str | None:
    """An inlined function's DWARF name as frames show names: demangled, without
    glibc's ``__GI_`` prefix (gdb prints ``__GI___libc_read``, we ``__libc_read``)."""
    if not raw:
        return None
    return plain_name(raw).removeprefix("__GI_")


class _Alias(NamedTuple):
    raw: str
    base: str  # raw without its version
    bind: int


def _rank(alias: _Alias) -> tuple[bool, int, int, int, str]:
    name = alias.base
    underscores = len(name) - len(name.lstrip("_"))
    return (name.startswith("__GI_"), underscores, BINDING_RANK.get(alias.bind, 3), len(name),
            name)


class SymbolTable:
    """Code symbols of one module by link-time address; names, as asked, for address_of.

    An Elf64_Sym is three little-endian 8-byte words (st_name|st_info|st_other|
    st_shndx, st_value, st_size), so a table is read as three columns by
    ``memoryview.cast("Q")`` slices — C speed — and sorted once by address; types
    are checked and names decoded only around the addresses looked up.  (The
    per-entry Python loop this replaces spent ~9 ms on libc's 10,000 symbols, a
    quarter of a python3 core's whole backtrace.)
    """

    def __init__(self) -> None:
        self._tables: list[tuple[bytes, bytes, bool]] = []  # (symbols, strings, is PLT)
        self._heads: list[int] = []  # st_name | st_info << 32 | st_other << 40 | st_shndx << 48
        self._values: list[int] = []
        self._sizes: list[int] = []
        self._table_of: list[int] = []
        self._order: list[int] = []  # entry numbers sorted by address
        self._chosen: dict[int, tuple[int, _Alias | None] | None] = {}  # start -> (size, alias)
        self._named: dict[str, int | None] = {}  # address_of's answers
        self._st_names: dict[int, bytes] = {}  # table -> its st_name column
        self.starts: list[int] = []  # addresses of self._order, for bisect

    def add_table(self, data: bytes, strings: bytes) -> None:
        """One .symtab or .dynsym."""
        count = len(data) // L.SYM.size
        if sys.byteorder == "little":
            words = memoryview(data)[:count * L.SYM.size].cast("Q")
            heads, values, sizes = words[0::3].tolist(), words[1::3].tolist(), words[2::3].tolist()
        else:  # not an x86-64 host: the same columns, slowly
            rows = list(L.SYM.iter_unpack(data[:count * L.SYM.size]))
            heads = [name | info << 32 | other << 40 | shndx << 48
                     for name, info, other, shndx, _, _ in rows]
            values, sizes = [row[4] for row in rows], [row[5] for row in rows]
        self._append(data, strings, False, heads, values, sizes)

    def add_plt(self, starts: list[int], st_names: list[int], strings: bytes,
                entry_size: int) -> None:
        """PLT stubs (``puts@plt``), which no table holds, like bfd's synthetic symbols.
        They win over table symbols at the same address."""
        head = STT_FUNC << 32 | 1 << 36 | 1 << 48  # a global function in some section
        self._append(b"", strings, True, [head | name for name in st_names], starts,
                     [entry_size] * len(starts))

    def _append(self, data: bytes, strings: bytes, plt: bool, heads: list[int],
                values: list[int], sizes: list[int]) -> None:
        self._table_of += [len(self._tables)] * len(heads)
        self._tables.append((data, strings, plt))
        self._heads += heads
        self._values += values
        self._sizes += sizes

    def finish(self) -> None:
        values = self._values
        self._order = sorted(range(len(values)), key=values.__getitem__)
        self.starts = [values[number] for number in self._order]

    def columns(self) -> tuple[Any, ...]:
        """Everything the table holds as bytes: its columns as arrays of 8-byte words,
        which load at C speed (:mod:`coredumpd.store.modcache`).  No index of names:
        :meth:`address_of` searches the tables' bytes, which the entry holds."""
        columns = [array.array("Q", column).tobytes() for column in (
            self._heads, self._values, self._sizes, self._table_of, self._order)]
        return (FORMAT, self._tables, columns)

    @classmethod
    def from_columns(cls, columns: Any) -> SymbolTable | None:
        """The table :meth:`columns` gave, or None when ``columns`` is not one."""
        if not isinstance(columns, tuple) or len(columns) != 3 or columns[0] != FORMAT \
                or not isinstance(columns[1], list) or not isinstance(columns[2], list) \
                or len(columns[2]) != 5:
            return None
        table = cls()
        table._tables = [tuple(entry) for entry in columns[1]]
        if not all(len(entry) == 3 and isinstance(entry[0], bytes)
                   and isinstance(entry[1], bytes) for entry in table._tables):
            return None
        lists = []
        for raw in columns[2]:
            words = array.array("Q")
            words.frombytes(raw)
            lists.append(words.tolist())
        table._heads, table._values, table._sizes, table._table_of, table._order = lists
        count = len(table._heads)
        if any(len(column) != count for column in lists) or (count and (
                max(table._table_of) >= len(table._tables) or max(table._order) >= count)):
            return None
        table.starts = [table._values[number] for number in table._order]
        return table

    def _is_code(self, number: int) -> bool:
        head = self._heads[number]
        shndx = head >> 48
        return ((head >> 32) & 0xF in CODE_TYPES and self._values[number] != 0
                and shndx != L.SHN_UNDEF and shndx != SHN_ABS)

    def _first(self, position: int) -> int:
        """The first position holding the same address as ``position``."""
        start = self.starts[position]
        while position > 0 and self.starts[position - 1] == start:
            position -= 1
        return position

    def _symbol_at(self, start: int, first: int, last: int) -> tuple[int, _Alias | None] | None:
        """Largest size and chosen alias of the code symbols at positions first..last
        (None: no code symbol there)."""
        if start in self._chosen:
            return self._chosen[start]
        size, plt = -1, None
        aliases: dict[str, _Alias] = {}
        for position in range(first, last + 1):
            number = self._order[position]
            if not self._is_code(number):
                continue
            size = max(size, self._sizes[number])
            _, strings, is_plt = self._tables[self._table_of[number]]
            name = _cstring(strings, self._heads[number] & 0xFFFFFFFF)
            if is_plt:
                plt = _Alias(name + "@plt", name + "@plt", 1)
                continue
            base = name.partition("@")[0]
            if base and not base.startswith((".L", "$")):
                aliases.setdefault(base, _Alias(name, base, (self._heads[number] >> 36) & 0xF))
        alias = plt or (min(aliases.values(), key=_rank) if aliases else None)
        chosen = (size, alias) if size >= 0 else None
        self._chosen[start] = chosen
        return chosen

    def lookup(self, address: int) -> tuple[int, str] | None:
        """(symbol start, raw name) for link-time ``address``, by gdb's minsyms rule:
        the nearest symbol below whose size covers it, else the nearest zero-sized one."""
        position = bisect.bisect_right(self.starts, address) - 1
        zero_sized: tuple[int, _Alias | None] | None = None
        while position >= 0:
            start, first = self.starts[position], self._first(position)
            found = self._symbol_at(start, first, position)
            position = first - 1
            if found is None:
                continue  # no code symbol here (data, section, file symbols)
            size, alias = found
            if size == 0:
                if zero_sized is None:
                    zero_sized = (start, alias)
                continue
            if address < start + size:
                return (start, alias.raw) if alias is not None else None
            break
        if zero_sized is not None and zero_sized[1] is not None:
            return zero_sized[0], zero_sized[1].raw
        return None

    def address_of(self, name: str) -> int | None:
        """Link-time address of a function or object named ``name`` (the first table
        defining it wins, and in it the first entry).

        The name's bytes are searched in each table's strings, then their offsets
        among the table's st_name words (C speed both, ~0.1-0.4 ms): indexing every
        name of libc's debug file instead cost ~5 ms of CPU, for the one name a rule
        asked.  A name followed by ``@`` in the strings is that name with a
        version, as everywhere here."""
        if name not in self._named:
            self._named[name] = self._find_name(name)
        return self._named[name]

    def _find_name(self, name: str) -> int | None:
        try:
            wanted = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # not a name any table's bytes decode to
            return None
        if not wanted or b"\0" in wanted or b"@" in wanted:
            return None  # no table's name is empty or holds these (partition("@"))
        for number, (data, strings, plt) in enumerate(self._tables):
            if plt:
                continue
            offsets = _name_offsets(strings, wanted)
            if not offsets:
                continue
            st_names = self._st_names.get(number)
            if st_names is None:
                st_names = self._st_names[number] = _st_name_column(data)
            entry = _first_named(data, st_names, offsets)
            if entry is not None:
                return entry
        return None

    def __len__(self) -> int:
        """Code symbols in the tables."""
        return sum(1 for number in range(len(self._heads)) if self._is_code(number))


def _debuglink(elf: ElfFile) -> tuple[str, int] | None:
    try:
        return elf.debuglink
    except CoredumpdError:
        return None


def _name_offsets(strings: bytes, wanted: bytes) -> set[int]:
    """Offsets in a string table where the name ``wanted`` starts: ``wanted`` then
    NUL, ``@`` or the table's end (a string may be the tail of a longer one)."""
    offsets: set[int] = set()
    position = strings.find(wanted)
    while position >= 0:
        after = position + len(wanted)
        if after == len(strings) or strings[after] in b"\0@":
            offsets.add(position)
        position = strings.find(wanted, position + 1)
    return offsets


def _st_name_column(data: bytes) -> bytes:
    """Every entry's st_name (the first 4-byte word of each 24-byte Elf64_Sym), as
    native 4-byte words: searched with bytes.find, which runs at memchr speed."""
    words = array.array("I")
    words.frombytes(data[:len(data) - len(data) % L.SYM.size])
    if sys.byteorder != "little":
        words.byteswap()
    return words[0::L.SYM.size // words.itemsize].tobytes()


def _first_named(data: bytes, st_names: bytes, offsets: set[int]) -> int | None:
    """st_value of the first entry named at one of ``offsets`` that defines a function
    or an object (not undefined, not absolute, not at 0)."""
    if len(offsets) > MAX_NAME_SEARCHES:  # one pass over the column instead
        return _first_named_scanning(data, st_names, offsets)
    first: tuple[int, int] | None = None  # (entry, st_value)
    for offset in offsets:
        index = _index(st_names, offset, 0)
        while index is not None and (first is None or index < first[0]):
            _, info, _, shndx, value, _ = L.SYM.unpack_from(data, index * L.SYM.size)
            if (info & 0xF) in NAMED_TYPES and value and shndx not in (L.SHN_UNDEF, SHN_ABS):
                first = (index, value)
                break
            index = _index(st_names, offset, index + 1)
    return first[1] if first is not None else None


def _first_named_scanning(data: bytes, st_names: bytes, offsets: set[int]) -> int | None:
    """:func:`_first_named` in one pass (a table naming one string very often: the
    searches would be quadratic)."""
    for index, (st_name,) in enumerate(NATIVE_WORD.iter_unpack(st_names)):
        if st_name in offsets:
            _, info, _, shndx, value, _ = L.SYM.unpack_from(data, index * L.SYM.size)
            if (info & 0xF) in NAMED_TYPES and value and shndx not in (L.SHN_UNDEF, SHN_ABS):
                return int(value)
    return None


def _index(words: bytes, value: int, start: int) -> int | None:
    """The first word at or after word ``start`` that equals ``value``."""
    needle = NATIVE_WORD.pack(value)
    position = words.find(needle, start * NATIVE_WORD.size)
    while position >= 0 and position % NATIVE_WORD.size:
        position = words.find(needle, position + 1)
    return position // NATIVE_WORD.size if position >= 0 else None


def _cstring(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    if offset >= len(table):
        return ""
    return table[offset:end if end >= 0 else len(table)].decode("utf-8", "surrogateescape")


def _plt_entries(elf: ElfFile, dynsym: tuple[bytes, bytes]) -> \
        tuple[list[int], list[int], int]:
    """PLT entry addresses, their symbols' st_name and the entry size, from .rela.plt
    order (the module's psABI: :attr:`coredumpd.arch.Arch.plt`).  Names are decoded
    only when looked up.

    With IBT the callable stubs are in ``.plt.sec`` (one per relocation);
    otherwise ``.plt`` starts with the resolver stub and then has one entry per
    relocation.
    """
    try:
        layout = for_machine(elf.e_machine).plt
    except FormatError:
        return [], [], 0
    rela = elf.section(".rela.plt")
    plt_sec, plt = elf.section(".plt.sec"), elf.section(".plt")
    if rela is None or (plt_sec is None and plt is None):
        return [], [], 0
    base = plt_sec.sh_addr if plt_sec is not None else \
        plt.sh_addr + layout.entry_size * layout.reserved_entries  # type: ignore[union-attr]
    data = elf.section_data(rela)
    symbols = dynsym[0]
    count = min(len(data) // RELA.size, 1 << 16)
    symbol_count = len(symbols) // L.SYM.size
    starts: list[int] = []
    st_names: list[int] = []
    for index, (_offset, info, _addend) in enumerate(RELA.iter_unpack(data[:count * RELA.size])):
        symbol_index = info >> 32
        if info & 0xFFFFFFFF == layout.jump_slot and 0 < symbol_index < symbol_count:
            starts.append(base + layout.entry_size * index)
            st_names.append(ST_NAME.unpack_from(symbols, symbol_index * L.SYM.size)[0])
    return starts, st_names, layout.entry_size


# what symbolize() said about one link-time address: symbol start, raw and plain name
# (None: no symbol), file, line, inlined calls as (name, call file, call line)
Answer = tuple[int | None, str | None, str | None, str | None, int | None,
               tuple[tuple[str | None, str | None, int | None], ...]]


class _ModuleInfo(Value):
    table: SymbolTable
    lines: DwarfLines | None
    problems: list[str]
    lines_from: str | None = None  # "debug" or "module": the file DWARF lines are read from
    lines_opened: bool = True  # False: ``lines`` is opened on the first answer not cached
    answers: dict[tuple[int, bool], Answer] = {}  # noqa: RUF012 - one per instance (values.py)
    cache_key: bytes | None = None  # the module file's build-id, when its answers are kept
    cache_files: list[Any] = []  # noqa: RUF012 - one per instance (values.py)
    debuglink: tuple[str, int] | None = None
    changed: bool = False  # answers or tables the cache does not hold yet


class Symbolizer:
    """Symbols and lines for the modules of an address space, cached per module."""

    def __init__(self, space: AddressSpace, debug_dirs: tuple[str, ...] = debuginfo.DEBUG_DIRS,
                 root: str = "/", cache: ModuleCache | None = None) -> None:
        self.space = space
        self.debug_dirs = debug_dirs
        self.root = root
        self.cache = cache  # a module's tables and answers, kept across crashes by build-id
        self._modules: dict[tuple[str, int], _ModuleInfo] = {}

    def symbolize(self, module: Module | None, lookup_pc: int, lines: bool = True) -> Symbol:
        """What is known about runtime ``lookup_pc`` in ``module`` (never raises).

        ``lines=False`` leaves out file:line (no DWARF is read: names only, like
        ``eu-stack`` without ``-s``)."""
        if module is None:
            return Symbol(None)
        info = self._info(module)
        address = lookup_pc - module.load_bias
        answer = info.answers.get((address, lines))
        if answer is None:
            answer = info.answers[(address, lines)] = self._answer(info, address, lines)
            info.changed = True
        start, raw, name, file, line, calls = answer
        inlined = tuple(InlinedCall(*call) for call in calls)
        if start is None:
            return Symbol(None, 0, None, file, line, inlined)
        return Symbol(name, address - start, raw, file, line, inlined)

    def _answer(self, info: _ModuleInfo, address: int, lines: bool) -> Answer:
        found = info.table.lookup(address)
        dwarf = self._dwarf(info) if lines else None
        row = dwarf.lookup(address) if dwarf is not None else None
        file, line = (row.file, row.line) if row is not None and row.line else (None, None)
        calls = tuple((inlined_name(call.name), call.call_file, call.call_line)
                      for call in dwarf.inlined(address)) \
            if file and dwarf is not None else ()
        if found is None:
            return (None, None, None, file, line, calls)
        start, raw = found
        return (start, raw, plain_name(raw), file, line, calls)

    def _dwarf(self, info: _ModuleInfo) -> DwarfLines | None:
        """The module's DWARF lines, opened now when its tables came from the cache."""
        if not info.lines_opened:
            info.lines_opened = True
            path = info.cache_files[1 if info.lines_from == "debug" else 0] \
                if info.lines_from else None
            if path is not None:
                from coredumpd.symbolize.lines import DwarfLines  # not for cached answers

                lines = DwarfLines(path[0])
                if lines.available:
                    info.lines = lines
                else:
                    lines.close()
        return info.lines

    def address_of(self, name: str, module: Module | None = None) -> int | None:
        """Runtime address of ``name`` in ``module``, or in the first module defining it."""
        for candidate in [module] if module is not None else list(self.space.modules):
            value = self._info(candidate).table.address_of(name)
            if value is not None:
                return value + candidate.load_bias
        return None

    def problems(self, module: Module) -> list[str]:
        return self._info(module).problems

    def close(self) -> None:
        """Close the modules' files; what the cache does not hold yet is written to it."""
        for info in self._modules.values():
            if info.lines is not None:
                info.lines.close()
            if self.cache is not None and info.cache_key is not None and info.changed:
                self._keep(info)
        self._modules.clear()

    def _keep(self, info: _ModuleInfo) -> None:
        assert self.cache is not None and info.cache_key is not None
        self.cache.store(info.cache_key, {
            "format": FORMAT, "root": self.root, "debug_dirs": list(self.debug_dirs),
            "files": info.cache_files, "debuglink": info.debuglink,
            "lines_from": info.lines_from, "problems": info.problems,
            "symbols": info.table.columns(), "answers": info.answers})

    def _cache_key(self, module: Module) -> bytes | None:
        """The build-id to keep ``module``'s tables under: a file on disk, not the vDSO."""
        if self.cache is None or module.is_vdso or module.host_path is None:
            return None
        return module.file_build_id or None

    def _cached(self, module: Module, key: bytes) -> _ModuleInfo | None:
        """The module's info from the cache, when the files it was derived from are the
        files this analysis would read (a build-id alone is only a claim)."""
        assert self.cache is not None and module.host_path is not None
        entry = self.cache.load(key)
        if (entry is None or entry.get("format") != FORMAT or entry.get("root") != self.root
                or tuple(entry.get("debug_dirs") or ()) != self.debug_dirs):
            return None
        files, debuglink = entry.get("files"), entry.get("debuglink")
        here = file_identity(module.host_path)
        if (not isinstance(files, list) or len(files) != 2 or here is None
                or files[0] is None or tuple(files[0][1:]) != here[1:]):
            return None
        debug_path = module.debug_path
        if debug_path is None:
            debug_path = debuginfo.find_debug_file(
                module.host_path, module.build_id or module.file_build_id,
                tuple(debuglink) if debuglink else None, self.root, self.debug_dirs)
        debug_then = files[1]
        if (debug_path is None) != (debug_then is None) or (
                debug_path is not None and file_identity(debug_path) != tuple(debug_then)):
            return None
        table = SymbolTable.from_columns(entry.get("symbols"))
        answers, problems = entry.get("answers"), entry.get("problems")
        if table is None or not isinstance(answers, dict) or not isinstance(problems, list):
            return None
        module.debug_path = debug_path
        return _ModuleInfo(table, None, problems, entry.get("lines_from"), False, answers,
                           key, [here, files[1]], debuglink)

    # ------------------------------------------------------------ per module

    def _info(self, module: Module) -> _ModuleInfo:
        key = (module.path, module.start)
        info = self._modules.get(key)
        if info is None:
            info = self._modules[key] = self._load(module)
        return info

    def _open(self, module: Module) -> ElfFile | None:
        opener = getattr(self.space, "open_elf", None)
        if opener is not None:
            elf: ElfFile | None = opener(module)
            return elf
        if module.host_path is None:
            return None
        try:
            return ElfFile.open(module.host_path)
        except CoredumpdError:
            return None

    def _load(self, module: Module) -> _ModuleInfo:
        key = self._cache_key(module)
        if key is not None:
            cached = self._cached(module, key)
            if cached is not None:
                return cached
        table = SymbolTable()
        problems: list[str] = []
        elf = self._open(module)
        lines = None
        if elf is not None or module.build_id:
            try:
                lines = self._load_tables(module, elf, table, problems)
            except CoredumpdError as err:
                problems.append(f"{module.path}: symbols unreadable: {err}")
        table.finish()
        info = _ModuleInfo(table, lines, problems)
        if key is not None and elf is not None and module.host_path is not None:
            host = file_identity(module.host_path)
            debug = file_identity(module.debug_path) if module.debug_path else None
            if host is not None and (debug is not None or module.debug_path is None):
                info.cache_key, info.cache_files, info.changed = key, [host, debug], True
                info.debuglink = _debuglink(elf)
                info.lines_from = None if lines is None else \
                    "debug" if lines.path == module.debug_path else "module"
        return info

    def _load_tables(self, module: Module, elf: ElfFile | None, table: SymbolTable,
                     problems: list[str]) -> DwarfLines | None:
        """Symbols of the debug file, the module's file, MiniDebugInfo, .dynsym, PLT.

        Without a trusted file (deleted, replaced), the debug file found by the
        build-id in the core still describes the mapped object.
        """
        debug = self._debug_elf(module, elf, problems)
        try:
            if elf is None:
                sources = [debug]
            else:
                sources = [debug, elf] if debug is not None else [elf, self._mini(elf, problems)]
            full = False
            for source in sources:
                raw = source.raw_symbols(".symtab") if source is not None else None
                if raw is not None:
                    table.add_table(*raw)
                    full = full or source is debug
            if elf is None:
                return self._lines(debug, None)
            raw = elf.raw_symbols(".dynsym")
            if raw is not None:
                if not full:  # a debug file's .symtab holds every .dynsym function too
                    table.add_table(*raw)
                starts, st_names, entry_size = _plt_entries(elf, raw)
                table.add_plt(starts, st_names, raw[1], entry_size)
            return self._lines(debug, elf)
        finally:  # the tables are copies; DwarfLines opens the file again if it needs it
            if debug is not None:
                debug.close()

    def _debug_elf(self, module: Module, elf: ElfFile | None,
                   problems: list[str]) -> ElfFile | None:
        if module.debug_path is None and not module.is_vdso:
            build_id = module.build_id or (elf.build_id if elf is not None else None)
            module.debug_path = debuginfo.find_debug_file(
                module.host_path, build_id, elf.debuglink if elf is not None else None,
                self.root, self.debug_dirs)
        if module.debug_path is None:
            return None
        try:
            return ElfFile.open(module.debug_path)
        except CoredumpdError as err:
            problems.append(f"debug file unreadable: {err}")
            return None

    @staticmethod
    def _mini(elf: ElfFile, problems: list[str]) -> ElfFile | None:
        try:
            return debuginfo.minidebuginfo(elf)
        except CoredumpdError as err:
            problems.append(str(err))
            return None

    @staticmethod
    def _lines(debug: ElfFile | None, elf: ElfFile | None) -> DwarfLines | None:
        """DWARF lines from the debug file, else from the module itself (files only)."""
        from coredumpd.symbolize.lines import DwarfLines  # a warm cache needs no DWARF reader

        for candidate in (debug, elf):
            if (candidate is None or not os.path.isfile(candidate.name)
                    or candidate.section(".debug_line") is None):
                continue
            lines = DwarfLines(candidate.name)
            if lines.available:
                return lines
            lines.close()
        return None
