"""The handler's command line, as the kernel builds it from core_pattern.

``coredumpd install`` registers ``%P %i %p %u %g %s %t %c %h %d %F`` in this
order (:data:`SPECIFIERS`), optionally followed by ``--config FILE``.  Values
come from the kernel (fs/coredump.c: format_corename()) but the handler can
also be run by hand, so every field is parsed defensively: a missing or
malformed value becomes ``None`` and a line in ``problems``, never an
exception — the core must be stored whatever the arguments say.

Since Linux 5.7 the kernel splits the pattern at spaces *before* expanding
the specifiers, so ``%h`` keeps any space it contains in one argument.
"""

from __future__ import annotations

# (field, specifier, kind) in the order `coredumpd install` writes them.
SPECIFIERS: tuple[tuple[str, str, str], ...] = (
    ("pid", "%P", "int"),
    ("tid", "%i", "int"),
    ("ns_pid", "%p", "int"),
    ("uid", "%u", "int"),
    ("gid", "%g", "int"),
    ("signal", "%s", "int"),
    ("timestamp", "%t", "int"),
    ("rlimit_core", "%c", "int"),
    ("hostname", "%h", "str"),
    ("dump_mode", "%d", "int"),
    ("pidfd", "%F", "int"),
)
RLIM_INFINITY = (1 << 64) - 1
PATTERN_ARGS = " ".join(spec for _field, spec, _kind in SPECIFIERS)


class HandlerArgs:
    """The parsed specifiers; ``None`` where the kernel gave nothing usable.

    A plain class, not a dataclass: the handler imports as little as possible
    before it has drained the pipe (``dataclasses`` pulls in ``inspect``).
    """

    def __init__(self) -> None:
        self.pid: int | None = None
        self.tid: int | None = None
        self.ns_pid: int | None = None
        self.uid: int | None = None
        self.gid: int | None = None
        self.signal: int | None = None
        self.timestamp: int | None = None
        self.rlimit_core: int | None = None
        self.hostname: str | None = None
        self.dump_mode: int | None = None
        self.pidfd: int | None = None
        self.config_path: str | None = None
        self.problems: list[str] = []

    def facts(self) -> dict[str, object]:
        """The ``args`` object of the facts JSON (docs/ARCHITECTURE.md)."""
        out: dict[str, object] = {field: getattr(self, field) for field, _s, _k in SPECIFIERS}
        out["pidfd"] = self.pidfd is not None
        return out


def _to_int(text: str) -> int | None:
    try:
        value = int(text, 10)
    except ValueError:
        return None
    return value if 0 <= value <= RLIM_INFINITY else None


def parse_args(argv: list[str]) -> HandlerArgs:
    """Parse the handler's arguments (without argv[0]); never raises."""
    result = HandlerArgs()
    positional: list[str] = []
    position = 0
    while position < len(argv):
        item = argv[position]
        if item == "--config" and position + 1 < len(argv):
            result.config_path = argv[position + 1]
            position += 2
            continue
        if item.startswith("--config="):
            result.config_path = item.split("=", 1)[1]
        else:
            positional.append(item)
        position += 1
    _assign(result, positional)
    return result


def _assign(result: HandlerArgs, positional: list[str]) -> None:
    for index, (field, spec, kind) in enumerate(SPECIFIERS):
        if index >= len(positional):
            if field != "pidfd":  # %F expands to nothing on kernels without pidfds
                result.problems.append(f"argument {index + 1} ({spec}) missing")
            continue
        text = positional[index]
        if kind == "str":
            setattr(result, field, text)
            continue
        value = _to_int(text)
        if value is None and text != "":
            result.problems.append(f"argument {index + 1} ({spec}) is not a number: {text!r}")
        setattr(result, field, value)
    if len(positional) > len(SPECIFIERS):
        extra = positional[len(SPECIFIERS):]
        result.problems.append(f"{len(extra)} unexpected extra argument(s): {extra[:4]!r}")
    if result.pid is not None and result.pid == 0:
        result.problems.append("PID 0 is not a process")
        result.pid = None
