"""File names of stored cores, the way systemd-coredump names them.

systemd's src/coredump/coredump.c (make_filename) builds
``core.COMM.UID.BOOTID.PID.USEC`` plus a compression suffix, each field passed
through ``filename_escape(s) = xescape(s, "./ ")`` (src/basic/escape.c): bytes
below 0x20, bytes from 0x7f up, the backslash and the "bad" characters ``.``,
``/`` and space become ``\\xHH`` (lower-case hex), so a COMM can neither
add a path component nor shift the dot-separated fields.  The boot id is the
128-bit id from /proc/sys/kernel/random/boot_id printed as 32 hex digits
(SD_ID128_FORMAT_STR, no dashes).
"""

from __future__ import annotations

import re

from coredumpd.errors import StoreError
from coredumpd.values import Frozen

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
SUFFIX = ".lz4"
_BAD = frozenset(b"./ \\")
_NAME_RE = re.compile(
    r"core\.(?P<comm>[^.]*)\.(?P<uid>\d+)\.(?P<boot_id>[0-9a-f]{32})\.(?P<pid>\d+)"
    r"\.(?P<timestamp_us>\d+)(?P<suffix>(?:\.[a-z0-9]+)?)"
)


def escape_component(text: str | bytes) -> str:
    """systemd's ``xescape(s, "./ ")``: safe as one dot-separated name field.

    ``str`` input is encoded as UTF-8 with surrogateescape, so bytes that the
    caller decoded with surrogateescape come back unchanged before escaping.
    """
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    out = []
    for byte in raw:
        if byte < 0x20 or byte >= 0x7F or byte in _BAD:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(chr(byte))
    return "".join(out)


def unescape_component(text: str) -> bytes:
    """Undo :func:`escape_component` (for display of names found on disk)."""
    return re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]),
                  text.encode("ascii", "backslashreplace"))


def read_boot_id(path: str = BOOT_ID_PATH) -> str:
    """The current boot id as 32 lower-case hex digits."""
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise StoreError(f"cannot read the boot id from {path}: {err}") from err
    return normalize_boot_id(text)


def normalize_boot_id(text: str) -> str:
    """``8d2a…-…`` or 32 hex digits -> 32 lower-case hex digits."""
    digits = text.replace("-", "").lower()
    if not re.fullmatch(r"[0-9a-f]{32}", digits):
        raise StoreError(f"not a boot id: {text!r}")
    return digits


def core_filename(comm: str | bytes, uid: int, boot_id: str, pid: int, timestamp_us: int,
                  suffix: str = SUFFIX) -> str:
    """``core.COMM.UID.BOOTID.PID.USEC.lz4`` with COMM escaped like systemd."""
    if uid < 0 or pid <= 0 or timestamp_us < 0:
        raise StoreError(f"invalid core name fields: uid={uid} pid={pid} usec={timestamp_us}")
    return (f"core.{escape_component(comm)}.{uid}.{normalize_boot_id(boot_id)}.{pid}"
            f".{timestamp_us}{suffix}")


class CoreName(Frozen):
    """The fields of a core file name (as systemd's coredump-vacuum.c reads them)."""

    comm: bytes
    uid: int
    boot_id: str
    pid: int
    timestamp_us: int
    suffix: str


def parse_core_filename(name: str) -> CoreName | None:
    """The fields of ``name``, or None when it is not a core file name."""
    match = _NAME_RE.fullmatch(name)
    if not match:
        return None
    return CoreName(
        unescape_component(match["comm"]), int(match["uid"]), match["boot_id"],
        int(match["pid"]), int(match["timestamp_us"]), match["suffix"],
    )
