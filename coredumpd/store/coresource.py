"""Opening a core whatever holds it: a raw ELF file or our seekable lz4.

Apart from :mod:`coredumpd.store.lz4seek` (which re-exports it) so that opening a
raw core imports neither the lz4 writer's threads nor the lz4 binding: ``corectl
analyze CORE`` on a raw core pays ~4 ms less start-up.
"""

from __future__ import annotations

import os

from coredumpd.elf.structs import ELFMAG
from coredumpd.errors import StoreError
from coredumpd.source import ByteSource, RawFileSource


def open_core_source(path_or_fd: str | int) -> ByteSource:
    """Open a core whatever holds it: a raw ELF file or our seekable lz4.

    ``path_or_fd``: a path, or an open fd that the source duplicates (the caller
    keeps and closes its own).  A plain LZ4 frame without our block index (``lz4``
    CLI, other tools) cannot be read at random; decompress it first (``lz4 -d``).
    """
    path = path_or_fd if isinstance(path_or_fd, str) else f"the core (fd {path_or_fd})"
    try:
        if isinstance(path_or_fd, int):
            magic = os.pread(path_or_fd, len(ELFMAG), 0)
        else:
            with open(path_or_fd, "rb") as handle:
                magic = handle.read(len(ELFMAG))
    except OSError as err:
        raise StoreError(f"cannot open {path}: {err.strerror}") from err
    if magic == ELFMAG:
        if isinstance(path_or_fd, str):
            return RawFileSource(path_or_fd)
        return RawFileSource(path, os.dup(path_or_fd))
    from coredumpd.store.lz4format import FRAME_MAGIC, LZ4_FRAME_MAGIC

    if len(magic) == 4 and FRAME_MAGIC.unpack(magic)[0] == LZ4_FRAME_MAGIC:
        from coredumpd.store.lz4reader import SeekableLz4Reader

        try:
            return SeekableLz4Reader(path_or_fd)
        except StoreError as err:
            raise StoreError(f"{path}: an LZ4 frame without a usable coredumpd block index "
                             f"({err}); decompress it with `lz4 -d` first") from err
    raise StoreError(f"{path}: neither an ELF core nor a seekable lz4 core "
                     f"(starts with {magic.hex() or 'nothing'})")
