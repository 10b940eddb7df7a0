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

    def fileno(self) -> int:
        return self._fd

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


def file_descriptor(source: ByteSource) -> int | None:
    """The open descriptor of a raw core file (a :class:`RawFileSource`), or None."""
    return source.fileno() if isinstance(source, RawFileSource) else None


COPY_BLOCK = 1 << 20


def copy_to_memfd(source: ByteSource, name: str = "coredumpd-core", limit: int | None = None
                  ) -> int:
    """The uncompressed bytes of ``source`` in a sealed memfd (memfd_create(2)); the
    caller closes the descriptor.

    For tools that want a core as a file (pystack opens a path): the memfd's file
    mode is 0777, so another uid can open it through ``/proc/self/fd/N``, and the
    seals keep it from changing.  It costs memory the size of the core (tmpfs
    pages) while it is open.  Raises StoreError past ``limit`` bytes or when the
    memfd cannot be written (e.g. RLIMIT_FSIZE 0: EFBIG).
    """
    import fcntl

    if limit is not None and source.size > limit:
        raise StoreError(f"core of {source.size} bytes is over the {limit}-byte limit "
                         "for a decompressed copy")
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        for offset in range(0, source.size, COPY_BLOCK):
            data = memoryview(source.pread(offset, COPY_BLOCK))
            while data:
                data = data[os.write(fd, data):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW |
                    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    except OSError as err:
        os.close(fd)
        raise StoreError(f"cannot copy the core into a memfd: {err.strerror}") from err
    except BaseException:
        os.close(fd)
        raise
    return fd


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
