"""The unwinder's view of memory: page-cached reads with a byte budget."""

from __future__ import annotations

import struct

from coredumpd.errors import CoredumpdError, LimitExceeded, MemoryReadError
from coredumpd.image.types import AddressSpace
from coredumpd.unwind.dwarf_expr import MASK

PAGE = 4096  # the cache's granule (not the machine's page size, which may be larger)
CACHED_SPAN = 16  # reads spanning up to this many pages go through the page cache
WORD_FORMATS = {4: "I", 8: "Q"}  # little-endian machines


class CachedMemory:
    """Page-cached reads through an AddressSpace, counting bytes against a budget."""

    def __init__(self, space: AddressSpace, budget: int) -> None:
        self.space = space
        self.word_size = space.arch.word_size
        self._format = WORD_FORMATS[self.word_size]
        self._word = struct.Struct("<" + self._format)
        self.budget = budget
        self.bytes_read = 0
        self.pages: dict[int, bytes | None] = {}

    def _page(self, number: int) -> bytes | None:
        if number in self.pages:
            return self.pages[number]
        self._charge(PAGE)
        try:
            data: bytes | None = self.space.read(number * PAGE, PAGE)
        except CoredumpdError:
            data = None  # partly unreadable page: callers fall back to exact reads
        self.pages[number] = data
        return data

    def _charge(self, size: int) -> None:
        self.bytes_read += size
        if self.bytes_read > self.budget:
            raise LimitExceeded(f"unwinding read more than {self.budget} bytes")

    def read(self, address: int, size: int) -> bytes:
        if address < 0 or size < 0 or address + size > MASK:
            raise MemoryReadError(address & MASK, size, "outside the address space")
        first, last = address // PAGE, (address + size - 1) // PAGE
        if first == last:
            page = self.pages[first] if first in self.pages else self._page(first)
            if page is not None:
                offset = address - first * PAGE
                return page[offset:offset + size]
        elif last - first < CACHED_SPAN:
            pages = [self._page(number) for number in range(first, last + 1)]
            if all(page is not None for page in pages):
                joined = b"".join(pages)  # type: ignore[arg-type]
                offset = address - first * PAGE
                return joined[offset:offset + size]
        self._charge(size)
        return self.space.read(address, size)

    def word(self, address: int) -> int:
        return int(self._word.unpack(self.read(address, self.word_size))[0])

    def words(self, address: int, count: int) -> tuple[int, ...]:
        """``count`` consecutive words from ``address``."""
        return struct.unpack(f"<{count}{self._format}", self.read(address, count * self.word_size))
