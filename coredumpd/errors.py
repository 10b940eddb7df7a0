"""The one exception tree of coredumpd.

Every layer raises a subclass of :class:`CoredumpdError`; third-party errors
(lz4, capstone, struct, OSError) are translated at one choke point per layer with
``raise ... from err``.  Attributes are structured so callers never parse
messages.
"""

from __future__ import annotations


class CoredumpdError(Exception):
    """Base of every error coredumpd raises on purpose."""


class ConfigError(CoredumpdError):
    """The configuration file or a command-line value is invalid."""


class FormatError(CoredumpdError):
    """Input bytes do not have the expected layout.

    ``offset`` is the file offset (or address) where the problem was found,
    when known, so that messages can say where a hostile core lies.
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message if offset is None else f"{message} (at offset {offset:#x})")
        self.offset = offset


class TruncatedError(FormatError):
    """A read needed bytes past the end of the available data."""

    def __init__(self, what: str, offset: int, wanted: int, available: int) -> None:
        super().__init__(
            f"{what}: wanted {wanted} bytes at {offset:#x}, only {available} available", offset
        )
        self.wanted = wanted
        self.available = available


class MemoryReadError(CoredumpdError):
    """An address of the crashed process cannot be read (not dumped, not mapped)."""

    def __init__(self, address: int, size: int, reason: str = "not in the core") -> None:
        super().__init__(f"cannot read {size} bytes at {address:#x}: {reason}")
        self.address = address
        self.size = size
        self.reason = reason


class StoreError(CoredumpdError):
    """The storage directory, a stored core or the index cannot be used."""


class LimitExceeded(CoredumpdError):
    """A cap on work (frames, bytes, steps, time) was reached; partial results stand."""
