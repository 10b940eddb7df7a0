"""The C++ runtime's exception objects in a core: libstdc++'s layouts and their readers.

libstdc++ keeps a header in front of every thrown object (libsupc++/unwind-cxx.h,
GCC 12; the Itanium C++ ABI section 2.2)::

    struct __cxa_refcounted_exception {       // what __cxa_allocate_exception returns
        _Atomic_word referenceCount;          //   0 (then padding: exc is 16-aligned)
        __cxa_exception exc;                  //  16
    };                                        // 128 bytes, then the thrown object
    struct __cxa_exception {
        std::type_info *exceptionType;        //   0
        void (*exceptionDestructor)(void *);  //   8
        unexpected_handler, terminate_handler, nextException, int handlerCount,
        int handlerSwitchValue, actionRecord, languageSpecificData, catchTemp,
        adjustedPtr;                          //  16 .. 79
        _Unwind_Exception unwindHeader;       //  80: exception_class, cleanup,
    };                                        //      private_1, private_2 (32 bytes)

The unwinder and the C++ runtime pass ``&unwindHeader`` around (``__cxa_throw``
hands it to ``_Unwind_RaiseException`` and, when no handler was found, to
``__cxa_begin_catch`` before ``std::terminate``), so the thrown object is
``unwindHeader + 32`` and the header's type at ``unwindHeader - 80``.  Its
``exception_class`` says what it is: ``"GNUCC++\\0"`` a primary exception,
``"GNUCC++\\1"`` a dependent one (``std::rethrow_exception``), whose first word
(``primaryException``) points at the primary's thrown object.

A ``std::type_info`` is ``{vptr, const char *__name}`` (libsupc++/typeinfo);
a class with one public non-virtual base has a ``__si_class_type_info`` that
adds ``const __class_type_info *__base_type`` (libsupc++/cxxabi.h).
``std::runtime_error`` and ``std::logic_error`` hold their message as a
``__cow_string _M_msg`` right after the vptr (libstdc++-v3/include/std/stdexcept):
one pointer to the characters, preceded by the copy-on-write string's
``_Rep {size_t _M_length, _M_capacity; int _M_refcount}``
(bits/cow_string.h).
"""

from __future__ import annotations

import struct

from coredumpd.errors import CoredumpdError
from coredumpd.image.types import AddressSpace
from coredumpd.patterns import Pattern
from coredumpd.symbolize.symbols import demangle
from coredumpd.values import Frozen

# unwind-cxx.h: __gxx_primary_exception_class / __gxx_dependent_exception_class
PRIMARY_CLASS = 0x474E5543432B2B00  # "GNUCC++\0", as the uint64 the unwinder compares
DEPENDENT_CLASS = 0x474E5543432B2B01  # "GNUCC++\1"
UNWIND_HEADER_OFFSET = 80  # offsetof(__cxa_exception, unwindHeader)
UNWIND_HEADER_SIZE = 32  # sizeof(_Unwind_Exception), __attribute__((aligned)) on x86-64
REFCOUNTED_HEADER_SIZE = 128  # sizeof(__cxa_refcounted_exception): the object follows
WORD = struct.Struct("<Q")
COW_REP = struct.Struct("<QQi")  # _Rep: _M_length, _M_capacity, _M_refcount
assert COW_REP.size == 20
MAX_NAME = 1024
MAX_MESSAGE = 4096
MAX_BASES = 16
TYPE_NAME = Pattern(rb"^\*?[A-Za-z0-9_$.]+$")  # a mangled type (gcc puts '*' on local ones)
SI_CLASS_VTABLE = "_ZTVN10__cxxabiv120__si_class_type_infoE"
MESSAGE_BASES = ("St13runtime_error", "St11logic_error")  # their _M_msg is what() returns
# what() of the standard exceptions that hold no message (libsupc++, libstdc++ sources;
# printed by a g++ 12 program on this machine)
CONSTANT_WHAT = {
    "St9exception": "std::exception", "St9bad_alloc": "std::bad_alloc",
    "St20bad_array_new_length": "std::bad_array_new_length", "St8bad_cast": "std::bad_cast",
    "St10bad_typeid": "std::bad_typeid", "St13bad_exception": "std::bad_exception",
    "St17bad_function_call": "bad_function_call",
}


class ThrownException(Frozen):
    """One C++ exception found in a core (addresses are the process's)."""

    unwind_header: int  # &__cxa_exception.unwindHeader
    dependent: int | None  # &unwindHeader of the __cxa_dependent_exception it was found by
    thrown_object: int
    type_info: int
    mangled_type: str  # std::type_info::__name, e.g. "St13runtime_error"
    type_name: str  # demangled: "std::runtime_error"
    bases: tuple[str, ...]  # mangled names of the single-inheritance base chain
    message: str | None  # what(), where the core holds it
    message_source: str | None  # how the message was read


def read_word(space: AddressSpace, address: int) -> int | None:
    try:
        return int(WORD.unpack(space.read(address, WORD.size))[0])
    except CoredumpdError:
        return None


def exception_at(space: AddressSpace, unwind_header: int,
                 si_class_vtable: int | None) -> ThrownException | None:
    """The exception whose ``unwindHeader`` is at ``unwind_header``, or None when the
    bytes there are not a C++ exception of this runtime."""
    exception_class = read_word(space, unwind_header)
    dependent = unwind_header if exception_class == DEPENDENT_CLASS else None
    if exception_class != PRIMARY_CLASS and dependent is None:
        return None
    if dependent is not None:  # __cxa_dependent_exception.primaryException: the primary's object
        primary_object = read_word(space, unwind_header - UNWIND_HEADER_OFFSET)
        if not primary_object:
            return None
        unwind_header = primary_object - UNWIND_HEADER_SIZE
        if read_word(space, unwind_header) != PRIMARY_CLASS:
            return None
    type_info = read_word(space, unwind_header - UNWIND_HEADER_OFFSET)
    name_pointer = read_word(space, type_info + 8) if type_info else None
    mangled = _type_name(space, name_pointer) if name_pointer else None
    if type_info is None or mangled is None:
        return None
    thrown = unwind_header + UNWIND_HEADER_SIZE
    bases = _bases(space, type_info, si_class_vtable)
    message, source = _message(space, thrown, mangled, bases)
    return ThrownException(unwind_header, dependent, thrown, type_info, mangled,
                           demangle_type(mangled), bases, message, source)


def demangle_type(mangled: str) -> str:
    """``St13runtime_error`` -> ``std::runtime_error``, as c++filt -t (gdb) prints types."""
    plain = mangled.lstrip("*")
    text = demangle("_ZTS" + plain)
    prefix = "typeinfo name for "
    return text[len(prefix):] if text.startswith(prefix) else plain


def _type_name(space: AddressSpace, address: int) -> str | None:
    try:
        data = space.read(address, MAX_NAME)
    except CoredumpdError:
        data = b""
        for size in (256, 64):  # the name may end near the end of a mapping
            try:
                data = space.read(address, size)
                break
            except CoredumpdError:
                continue
    name = data.split(b"\0", 1)[0]
    if b"\0" not in data or not TYPE_NAME.match(name):
        return None
    return name.decode("ascii")


def _bases(space: AddressSpace, type_info: int, si_class_vtable: int | None) -> tuple[str, ...]:
    """Mangled names of the base chain while each type_info is a __si_class_type_info."""
    bases: list[str] = []
    current = type_info
    while si_class_vtable is not None and len(bases) < MAX_BASES:
        if read_word(space, current) != si_class_vtable + 16:  # vptr: vtable + 2 words
            break
        base = read_word(space, current + 16)
        name_pointer = read_word(space, base + 8) if base else None
        name = _type_name(space, name_pointer) if name_pointer else None
        if base is None or name is None:
            break
        bases.append(name)
        current = base
    return tuple(bases)


def _message(space: AddressSpace, thrown: int, mangled: str,
             bases: tuple[str, ...]) -> tuple[str | None, str | None]:
    """what() of the thrown object, and how it was read."""
    chain = (mangled, *bases)
    for base in MESSAGE_BASES:
        if base in chain:
            return _cow_message(space, thrown, demangle_type(base))
    constant = CONSTANT_WHAT.get(mangled)
    if constant is not None:
        return constant, f"{demangle_type(mangled)}::what() returns a constant"
    return None, None


def _cow_message(space: AddressSpace, thrown: int, base: str) -> tuple[str | None, str | None]:
    characters = read_word(space, thrown + 8)  # after the vptr: __cow_string _M_msg
    if not characters:
        return None, None
    try:
        length, _capacity, _refcount = COW_REP.unpack(
            space.read(characters - 24, COW_REP.size))
        if length > MAX_MESSAGE:
            return None, None
        data = space.read(characters, length + 1)
    except CoredumpdError:
        return None, None
    if data[-1:] != b"\0":
        return None, None
    text = data[:-1].decode("utf-8", "backslashreplace")
    return text, (f"the {base} message string (_M_msg) at {characters:#x}, "
                  f"{length} bytes by its copy-on-write header")
