"""Rust's panic machinery in a core: which frames are the runtime's, the panic's kind,
and its location and message where the stack still holds them.

Frames: a Rust function's demangled name starts with its crate; the standard
library's crates (``std``, ``core``, ``alloc``, the panic runtimes and
``__rustc``, the crate rustc gives symbols the standard library exports to
the runtime) are the runtime, and so are their trait impls (``<alloc::vec::
Vec<T,A> as core::ops::index::Index<I>>::index``), while ``<mycrate::T as
core::fmt::Display>::fmt`` is the user's code.

Kind: the function of core or std that started the panic says what failed
(library/core/src/option.rs ``expect_failed``/``unwrap_failed``,
result.rs ``unwrap_failed``, panicking.rs ``panic_bounds_check``,
``panic_const_*``, ``panic_cannot_unwind``…; rustc 1.95).

Location and message: ``core::panic::Location`` is ``{file: &str, line: u32,
col: u32}`` (library/core/src/panic/location.rs; rustc orders the fields
``ptr, len, line, col`` on x86-64), a ``&'static`` in the binary's read-only
data.  The panic handler (library/std/src/panicking.rs) keeps the payload in
its own frame while the hook runs and until the process aborts: a
``FormatStringPayload`` whose ``String`` the hook formatted (``cap, ptr,
len``; the heap), or a ``StaticStrPayload(&'static str)``.  Neither layout is
stable across rustc versions, so they are found by what they are: the words
of the panic frames' stack that point at such a Location or at valid UTF-8 text.
"""

from __future__ import annotations

import collections
import struct

from coredumpd.annotate.context import ThreadTrace
from coredumpd.errors import CoredumpdError
from coredumpd.image.types import AddressSpace
from coredumpd.patterns import Pattern
from coredumpd.values import Frozen

RUNTIME_CRATES = frozenset({"std", "core", "alloc", "panic_abort", "panic_unwind", "__rustc"})
# Runtime entry points without a crate path (older rustc) or in the C library
RUNTIME_NAMES = frozenset({"rust_begin_unwind", "rust_panic", "__rust_start_panic",
                           "__rust_abort", "abort", "raise", "__pthread_kill_implementation"})
# A frame of these starts or runs a panic (std::panicking, core::panicking; both crates)
# (Patterns compiled when first used: most crashes are not Rust panics and never use them.)
PANICKING = Pattern(r"^(std|core)::panicking::|^(__rustc::)?rust_begin_unwind$")
PANICKING_STARTS = ("std::panicking::", "core::panicking::", "__rustc::rust_begin_unwind",
                    "rust_begin_unwind")  # what every name PANICKING matches starts with
CRATE = Pattern(r"^(?:&(?:mut )?|\*(?:const|mut) )?(?P<crate>[A-Za-z_][A-Za-z0-9_]*)::")

# (pattern on the function that started the panic, kind) — first match wins
KINDS = (
    (Pattern(r"^core::option::expect_failed$"), "Option::expect() on a None value"),
    (Pattern(r"^core::option::unwrap_failed$"), "Option::unwrap() on a None value"),
    (Pattern(r"^core::result::unwrap_failed$"),
     "Result::unwrap() or Result::expect() on an Err value"),
    (Pattern(r"^core::panicking::panic_bounds_check$"), "index out of bounds"),
    (Pattern(r"^core::(slice::index::slice_\w+_fail|str::slice_error_fail\w*)"),
     "slice or string range out of bounds"),
    (Pattern(r"^core::panicking::assert_failed"), "assert_eq!/assert_ne! failed"),
    (Pattern(r"^core::panicking::panic_const::panic_const_(div|rem)_by_zero$"),
     "division by zero"),
    (Pattern(r"^core::panicking::panic_const::panic_const_\w+_overflow$"),
     "arithmetic overflow"),
    (Pattern(r"^core::panicking::panic_cannot_unwind$"),
     "panic in a function that cannot unwind (extern \"C\" or nounwind)"),
    (Pattern(r"^core::panicking::panic_in_cleanup$"),
     "panic while cleaning up after another panic (in a drop)"),
    (Pattern(r"^core::cell::panic_already_(mutably_)?borrowed$"),
     "RefCell already borrowed"),
    (Pattern(r"^std::(panicking|rt)::begin_panic\b"), "explicit panic!()"),
    (Pattern(r"^core::panicking::(panic_fmt|panic|panic_str\w*|panic_display\w*|"
             r"panic_explicit|unreachable_display\w*)$|^core::panicking::panic_display<"),
     "explicit panic!() (or assert!/unreachable!)"),
)

WORD = struct.Struct("<Q")
LOCATION = struct.Struct("<QQII")  # file.ptr, file.len, line, col
MAX_FILE = 1024
MAX_MESSAGE = 4096
MAX_STACK_WORDS = 8192


def is_panicking(name: str | None) -> bool:
    """A frame that starts or runs a panic (PANICKING)."""
    return name is not None and name.startswith(PANICKING_STARTS) and \
        PANICKING.search(name) is not None


def crate_of(name: str | None) -> str | None:
    """``std`` for ``std::process::abort``; for a trait impl ``<TYPE as TRAIT>::f`` the
    crate of TYPE, or of TRAIT when TYPE is a primitive (``<usize as core::…>``)."""
    if not name:
        return None
    if name.startswith("<"):
        implementer, separator, trait = name[1:].partition(" as ")
        match = CRATE.match(implementer)
        if match is None and separator:
            match = CRATE.match(trait)
        return match.group("crate") if match else None
    match = CRATE.match(name)
    return match.group("crate") if match else None


def is_runtime(name: str | None) -> bool:
    """A frame of the standard library or the panic runtime (by its demangled name)."""
    if name is None:
        return False
    return name in RUNTIME_NAMES or crate_of(name) in RUNTIME_CRATES


def kind_of(names: list[str]) -> tuple[str, str] | None:
    """(kind, the function that says so) from the runtime frames nearest the panic site
    first."""
    for name in names:
        for pattern, kind in KINDS:
            if pattern.search(name):
                return kind, name
    return None


class Location(Frozen):
    file: str
    line: int
    column: int
    address: int  # of the core::panic::Location

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class Text(Frozen):
    text: str
    address: int  # of the characters
    holder: int  # stack address of the (ptr, len) pair
    owned: bool  # a String on the heap (the formatted payload), not a &'static str


def _word(space: AddressSpace, address: int) -> int | None:
    try:
        return int(WORD.unpack(space.read(address, WORD.size))[0])
    except CoredumpdError:
        return None


def _utf8(space: AddressSpace, address: int, length: int) -> str | None:
    try:
        data = space.read(address, length)
        text = data.decode("utf-8")
    except (CoredumpdError, UnicodeDecodeError):
        return None
    if any(ord(c) < 32 and c not in "\n\t" or c == "\x7f" for c in text):
        return None
    return text


def location_at(space: AddressSpace, address: int) -> Location | None:
    try:
        pointer, length, line, column = LOCATION.unpack(space.read(address, LOCATION.size))
    except CoredumpdError:
        return None
    if not 3 < length <= MAX_FILE or line == 0 or column == 0:
        return None
    file = _utf8(space, pointer, length)
    if file is None or not file.endswith(".rs"):
        return None
    return Location(file, line, column, address)


def stack_words(space: AddressSpace, low: int, high: int) -> list[tuple[int, int]]:
    words = []
    for address in range(low, min(high, low + 8 * MAX_STACK_WORDS), 8):
        value = _word(space, address)
        if value is not None:
            words.append((address, value))
    return words


def find_location(space: AddressSpace, words: list[tuple[int, int]]) -> Location | None:
    """The Location most often pointed to from these stack words (the panic's, passed
    down the #[track_caller] chain); the youngest on a tie."""
    found: dict[int, Location | None] = {}
    counts: collections.Counter[int] = collections.Counter()
    for _address, value in words:
        if value not in found:
            found[value] = location_at(space, value)
        if found[value] is not None:
            counts[value] += 1
    if not counts:
        return None
    return found[max(counts, key=counts.__getitem__)]  # the first (youngest) on a tie


def find_message(space: AddressSpace, words: list[tuple[int, int]],
                 exclude: frozenset[int]) -> Text | None:
    """The panic message: a heap String (``cap, ptr, len``) first, the one the hook
    formatted; else the &str most often pointed to (a static payload)."""
    strings: list[Text] = []
    for position in range(len(words) - 1):
        (holder, pointer), (_, length) = words[position], words[position + 1]
        if not 1 < length <= MAX_MESSAGE or pointer in exclude:
            continue
        text = _utf8(space, pointer, length)
        if text is None:
            continue
        capacity = words[position - 1][1] if position > 0 else 0
        strings.append(Text(text, pointer, holder, _is_heap_string(space, pointer, length,
                                                                   capacity)))
    owned = [candidate for candidate in strings if candidate.owned]
    if owned:
        return owned[0]
    if not strings:
        return None
    counts = collections.Counter(candidate.address for candidate in strings)
    return max(strings, key=lambda candidate: counts[candidate.address])


def _is_heap_string(space: AddressSpace, pointer: int, length: int, capacity: int) -> bool:
    """A String's buffer: capacity >= len, in writable memory that maps no file."""
    if not length <= capacity <= MAX_MESSAGE * 4:
        return False
    mapping = space.mapping_at(pointer)
    return (mapping is not None and "w" in mapping.perms
            and not (mapping.path or "").startswith("/"))  # anonymous or [heap]


def frame_holding(thread: ThreadTrace, address: int) -> int | None:
    """The position of the frame whose stack (sp up to its CFA) holds ``address``."""
    for position, frame in enumerate(thread.frames):
        if frame.sp <= address < (frame.cfa or frame.sp):
            return position
    return None
