"""Finding a module's debug information: separate debug files and MiniDebugInfo.

Search order, as gdb's "Separate Debug Files" (GDB manual, 18.3):

1. by build-id: ``<debugdir>/.build-id/xx/yyyy….debug`` (checked: same build-id);
2. by ``.gnu_debuglink``: next to the file, in its ``.debug/`` directory, and
   under ``<debugdir>/<dir of the file>`` (checked: CRC32 of the debug file);
3. MiniDebugInfo: the xz-compressed ELF in ``.gnu_debugdata`` (Fedora and
   others; https://sourceware.org/gdb/current/onlinedocs/gdb.html/MiniDebugInfo.html),
   decompressed under a size cap.

Line numbers from the files found here: :mod:`coredumpd.symbolize.lines`.
"""

from __future__ import annotations

import lzma
import os
import zlib

from coredumpd.elf.elffile import ElfFile
from coredumpd.errors import CoredumpdError, FormatError

DEBUG_DIRS = ("/usr/lib/debug",)
MAX_MINIDEBUGINFO = 64 << 20  # decompressed
MAX_MINIDEBUGINFO_XZ = 16 << 20
MAX_CRC_CHECK = 512 << 20


def build_id_path(build_id: bytes, debug_dir: str = DEBUG_DIRS[0]) -> str:
    text = build_id.hex()
    return os.path.join(debug_dir, ".build-id", text[:2], text[2:] + ".debug")


def same_build_id(path: str, build_id: bytes) -> bool:
    """True when the ELF file at ``path`` has ``build_id``."""
    try:
        with ElfFile.open(path) as elf:
            return elf.build_id == build_id
    except CoredumpdError:
        return False


def _crc32(path: str) -> int | None:
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > MAX_CRC_CHECK:
            return None
        crc = 0
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
        return crc
    except OSError:
        return None


def find_debug_file(host_path: str | None, build_id: bytes | None, debuglink: tuple[str, int] | None,
                    root: str = "/", debug_dirs: tuple[str, ...] = DEBUG_DIRS) -> str | None:
    """Path of the separate debug file for a module, or None."""
    roots = [root, "/"] if root not in ("", "/") else ["/"]
    dirs = [os.path.join(r, d.lstrip("/")) for r in roots for d in debug_dirs]
    if build_id:
        for debug_dir in dirs:
            candidate = build_id_path(build_id, debug_dir)
            if os.path.isfile(candidate) and same_build_id(candidate, build_id):
                return candidate
    if debuglink and host_path:
        name, crc = debuglink
        name = os.path.basename(name)  # a file name, never a path (GDB manual 18.3)
        here = os.path.dirname(host_path)
        for candidate in [os.path.join(here, name), os.path.join(here, ".debug", name),
                          *(os.path.join(d, here.lstrip("/"), name) for d in dirs)]:
            if candidate != host_path and os.path.isfile(candidate):
                found = _crc32(candidate)
                if found == crc or (found is None and build_id and
                                    same_build_id(candidate, build_id)):
                    return candidate
    return None


def minidebuginfo(elf: ElfFile) -> ElfFile | None:
    """The ELF inside ``.gnu_debugdata`` (xz), decompressed under a cap; None if absent."""
    compressed = elf.gnu_debugdata(MAX_MINIDEBUGINFO_XZ)
    if not compressed:
        return None
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        data = decompressor.decompress(compressed, max_length=MAX_MINIDEBUGINFO)
    except lzma.LZMAError as err:
        raise FormatError(f"{elf.name}: .gnu_debugdata is not valid xz: {err}") from err
    if not decompressor.eof:
        raise FormatError(f"{elf.name}: .gnu_debugdata over {MAX_MINIDEBUGINFO} bytes")
    return ElfFile.from_bytes(data, f"{elf.name}[.gnu_debugdata]")
