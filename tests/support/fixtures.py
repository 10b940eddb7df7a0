"""The fixture cores of ``fixtures/cores/`` (see its README.md), for tests and benches.

Fixtures are found relative to this file, never the current directory.  Each
fixture directory holds the binary, the compressed core and the reference
outputs of gdb and eu-stack recorded when the core was made; MANIFEST.json
says how it was made and which shared libraries (by build-id) the references
were taken with.  :func:`load_fixture` skips the calling test, with the reason,
when this machine's libraries differ, since then gdb's references no longer
describe what the unwinder will see.

:func:`parse_gdb_backtrace` turns the text of ``thread apply all bt`` into
frames; ``make_cores.py`` stores its result as ``gdb-frames.json``.  The
format it parses is gdb's ``print_frame()`` (gdb/stack.c)::

    Thread 2 (Thread 0x7ffff7d866c0 (LWP 1235) "name"):
    #0  0x00007ffff7e4f1f1 in __GI___libc_read (fd=3, ...) at ../sysdeps/.../read.c:26
    #1  store_id (r=0x0, id=1) at o0_fp.c:7          <- no pc: pc is a line's first insn
    #2  <signal handler called>
    #3  0x0000000000000000 in ?? ()
    #4  0x00007ffff7df3d8a in foo () from /lib/x86_64-linux-gnu/libc.so.6
    Backtrace stopped: previous frame inner to this frame (corrupt stack?)
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any

FIXTURES_DIR = pathlib.Path(__file__).resolve().parent.parent.parent / "fixtures" / "cores"
MANIFEST_PATH = FIXTURES_DIR / "MANIFEST.json"


# ------------------------------------------------------------------ gdb text


@dataclasses.dataclass
class GdbFrame:
    """One line of gdb's ``bt``.  ``pc`` is None where gdb did not print it."""

    index: int
    pc: int | None
    function: str | None  # None for "??"; "<signal handler called>" kept verbatim
    args: str | None
    file: str | None
    line: int | None
    library: str | None  # "from LIB" (no debug info)

    @property
    def is_signal_trampoline(self) -> bool:
        return self.function == "<signal handler called>"


@dataclasses.dataclass
class GdbThread:
    num: int
    tid: int
    frames: list[GdbFrame]
    stopped: str | None  # "Backtrace stopped: ..." reason, if gdb printed one


THREAD_RE = re.compile(r"^Thread (\d+) \((?:Thread 0x[0-9a-f]+ \()?LWP (\d+)\)?(?: \"(.*)\")?\):$")
FRAME_RE = re.compile(r"^#(\d+)\s+(?:(0x[0-9a-f]+) in )?(.*)$")
AT_RE = re.compile(r" at (\S+):(\d+)$")
FROM_RE = re.compile(r" from (\S+)$")
STOPPED = "Backtrace stopped: "


def _quoted_positions(text: str) -> list[bool]:
    """For each character: is it inside a "..." or '...' literal (gdb escapes with \\)."""
    inside = [False] * len(text)
    quote = ""
    escaped = False
    for position, char in enumerate(text):
        if quote:
            inside[position] = True
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
            inside[position] = True
    return inside


def _split_function_args(text: str) -> tuple[str, str | None]:
    """``name (args)`` -> (name, args): the last balanced parenthesis group is the args.

    C++ names contain parentheses themselves (``f(int)::{lambda()#1}::operator()() const``),
    and arguments contain quoted strings, so match from the end, skipping literals.
    """
    if not text.endswith(")"):
        return text, None
    inside = _quoted_positions(text)
    depth = 0
    for position in range(len(text) - 1, -1, -1):
        if inside[position]:
            continue
        if text[position] == ")":
            depth += 1
        elif text[position] == "(":
            depth -= 1
            if depth == 0:
                if position == 0 or text[position - 1] != " ":
                    return text, None
                return text[:position - 1], text[position + 1:-1]
    return text, None


def _parse_frame(match: re.Match[str]) -> GdbFrame:
    index, pc_text, rest = int(match[1]), match[2], match[3]
    file = library = None
    line = None
    if (at := AT_RE.search(rest)) is not None:
        file, line, rest = at[1], int(at[2]), rest[:at.start()]
    elif (from_ := FROM_RE.search(rest)) is not None:
        library, rest = from_[1], rest[:from_.start()]
    if rest == "<signal handler called>":
        function, args = rest, None
    else:
        function, args = _split_function_args(rest)
    return GdbFrame(index, int(pc_text, 16) if pc_text else None,
                    None if function == "??" else function, args, file, line, library)


def parse_gdb_backtrace(text: str) -> list[GdbThread]:
    """Threads in the order gdb printed them (``thread apply all`` goes from the highest
    thread number down).  Lines that are neither a thread header, a frame nor a
    ``Backtrace stopped`` line (gdb's warnings, "[New LWP ...]") are ignored."""
    threads: list[GdbThread] = []
    for raw_line in text.splitlines():
        line = raw_line.rstrip()
        if (header := THREAD_RE.match(line)) is not None:
            threads.append(GdbThread(int(header[1]), int(header[2]), [], None))
        elif threads and (frame := FRAME_RE.match(line)) is not None:
            parsed = _parse_frame(frame)
            if parsed.index != len(threads[-1].frames):
                raise ValueError(f"gdb frame #{parsed.index} out of order: {line!r}")
            threads[-1].frames.append(parsed)
        elif threads and line.startswith(STOPPED):
            threads[-1].stopped = line[len(STOPPED):]
    return threads


def gdb_threads_to_json(threads: list[GdbThread]) -> list[dict[str, Any]]:
    return [{"num": t.num, "tid": t.tid, "stopped": t.stopped,
             "frames": [dataclasses.asdict(f) for f in t.frames]} for t in threads]


def gdb_threads_from_json(data: list[dict[str, Any]]) -> list[GdbThread]:
    return [GdbThread(t["num"], t["tid"], [GdbFrame(**{k: f[k] for k in (
        "index", "pc", "function", "args", "file", "line", "library")}) for f in t["frames"]],
        t["stopped"]) for t in data]


# ------------------------------------------------------------------ fixtures


@dataclasses.dataclass
class Fixture:
    name: str
    directory: pathlib.Path
    core_path: pathlib.Path
    binary_path: pathlib.Path
    gdb_frames: list[GdbThread]
    gdb_api: dict[str, Any]  # gdb-api.json: gdb's Python view (pc and type of each frame)
    expected: list[dict[str, Any]]  # expected.json: the physical frames we must produce
    gdb_text: str
    eu_stack_text: str
    notes: dict[str, Any]  # notes.json: eu-readelf -n and gdb's info threads, parsed
    manifest: dict[str, Any]


def read_manifest() -> dict[str, Any]:
    if not MANIFEST_PATH.exists():
        return {"fixtures": {}}
    result: dict[str, Any] = json.loads(MANIFEST_PATH.read_text())
    return result


def fixture_names() -> list[str]:
    """Every fixture listed in MANIFEST.json, sorted."""
    return sorted(read_manifest()["fixtures"])


def library_mismatch(entry: dict[str, Any]) -> str | None:
    """Why this machine cannot reproduce the fixture's references, or None.

    Compares the build-id of every shared library the core mapped (recorded in
    the manifest) with the file at the same path here.
    """
    for path, build_id in entry.get("libraries", {}).items():
        here = file_build_id(path)
        if here != build_id:
            return (f"{path} here has build-id {here or 'none (missing)'}, the fixture "
                    f"was made with {build_id}; regenerate with fixtures/cores/make_cores.py")
    return None


def core_file(directory: pathlib.Path) -> pathlib.Path | None:
    """The stored core: ``core.lz4`` (committed) or a raw ``core`` (local only)."""
    for name in ("core.lz4", "core"):
        if (directory / name).exists():
            return directory / name
    return None


def load_fixture(name: str, check_libraries: bool = True) -> Fixture:
    """Load a fixture; inside a test, skip it when it cannot be meaningful here."""
    import pytest

    entry = read_manifest()["fixtures"].get(name)
    if entry is None:
        raise KeyError(f"no fixture {name!r} in {MANIFEST_PATH}")
    if check_libraries and (reason := library_mismatch(entry)) is not None:
        pytest.skip(reason)
    directory = FIXTURES_DIR / name
    core = core_file(directory)
    if core is None:
        pytest.skip(f"{directory} has no core: run fixtures/cores/make_cores.py --only {name}")
    return Fixture(
        name=name, directory=directory, core_path=core,
        binary_path=directory / entry["binary"],
        gdb_frames=gdb_threads_from_json(json.loads((directory / "gdb-frames.json").read_text())),
        gdb_api=json.loads((directory / "gdb-api.json").read_text()),
        expected=json.loads((directory / "expected.json").read_text()),
        gdb_text=(directory / "gdb-bt.txt").read_text(),
        eu_stack_text=(directory / "eu-stack.txt").read_text(),
        notes=json.loads((directory / "notes.json").read_text()),
        manifest=entry,
    )


def file_build_id(path: str) -> str | None:
    """The NT_GNU_BUILD_ID of an ELF file, hex, or None (no file, no note, not ELF)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as handle:
            elf = ELFFile(handle)
            for segment in elf.iter_segments():
                if segment.header.p_type != "PT_NOTE":
                    continue
                for note in segment.iter_notes():  # type: ignore[attr-defined]
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return str(note["n_desc"])
    except (OSError, ELFError):
        return None
    return None
