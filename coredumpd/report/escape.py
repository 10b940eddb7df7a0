"""Make strings from a crashed process safe to print on a terminal.

Command names, command lines, paths and strings read from memory are chosen
by whoever crashed: an ESC or CSI (C0 0x1b, C1 0x9b) in them could move the
cursor, rewrite earlier lines or set the window title.  Like systemd's
``cescape()`` (src/basic/escape.c) we write control characters as C escapes,
and also Unicode format characters (bidi overrides such as U+202E, which
reorder what is displayed) and undecodable bytes (kept by
``surrogateescape``) so what is printed is what the process had.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\a": "\\a", "\b": "\\b", "\f": "\\f",
          "\v": "\\v", "\\": "\\\\"}


def _escape_char(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    # Code points from U+0080 on are written \\u, keeping \\x80-\\xff for raw
    # bytes, so that a C1 control and an undecodable byte never look the same.
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _unsafe(char: str) -> bool:
    if char == "\\":
        return True
    # Cc: C0, DEL, C1; Cf: format (bidi, zero-width); Cs: lone surrogates;
    # Zl/Zp: line and paragraph separators.
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")


def escape(text: object) -> str:
    """``text`` with every control or format character written as an escape.

    Backslashes are doubled so that an escape cannot be forged by the
    process (``a\\x1b`` prints differently from ``a`` + ESC).  ``None``
    gives ``"-"``; other objects are converted with ``str``.
    """
    if text is None:
        return "-"
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    text = str(text)
    if text.isprintable() and "\\" not in text:
        return text  # fast path: isprintable() is False for every unsafe class
    return "".join(_escape_char(c) if _unsafe(c) else c for c in text)


def escape_cmdline(argv: object) -> str:
    """A command line (list of arguments, or one string) for display."""
    if isinstance(argv, (list, tuple)):
        return " ".join(_quote(escape(arg)) for arg in argv)
    return escape(argv)


def _quote(arg: str) -> str:
    """Quote an (escaped) argument holding spaces, so word boundaries show."""
    if arg and not any(c in arg for c in " '\""):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"
