"""Random access to the bytes of a core, whatever holds them.

The core reader only needs ``size`` and ``pread``; a raw ELF core file and a
stored seekable-lz4 core (:mod:`coredumpd.store.lz4seek`) both provide them.
"""

from __future__ import annotations

import os
from typing import Protocol, Self

from coredumpd.errors import StoreError


class ByteSource(Protocol):
    """Read-only random access to a byte string that may not fit in memory."""

    @property
    def size(self) -> int:
        """Number of bytes (of the *uncompressed* core)."""
        ...

    def pread(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; shorter only at the end."""
        ...

    def close(self) -> None: ...


class RawFileSource:
    """A plain file, read with ``os.pread``."""

    def __init__(self, path: str, fd: int | None = None) -> None:
        """Open ``path``; or, with ``fd``, read that open descriptor (``path`` then
        only names it in errors) and close it with the source."""
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC) if fd is None else fd
            self._size = os.fstat(self._fd).st_size
        except OSError as err:
            raise StoreError(f"cannot open {path}: {err.strerror}") from err
        self.path = path

    @property
    def size(self) -> int:
        return self._size

    def pread(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError(f"negative offset or size: {offset}, {size}")
        try:
            return os.pread(self._fd, size, offset)
        except OSError as err:
            raise StoreError(f"cannot read {self.path} at {offset:#x}: {err.strerror}") from err

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BytesSource:
    """An in-memory byte string (tests, small synthetic cores)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def pread(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError(f"negative offset or size: {offset}, {size}")
        return self._data[offset:offset + size]

    def close(self) -> None:
        pass
