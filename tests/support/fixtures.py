"""The fixture cores of ``fixtures/cores/`` (see its README.md), for tests and benches.

Fixtures are found relative to this file, never the current directory.  Each
fixture directory holds the binary, the compressed core and the reference
outputs of gdb and eu-stack recorded when the core was made; MANIFEST.json
says how it was made and which shared libraries (by build-id) the references
were taken with.

When this machine's libraries differ (a libc update), the committed cores and
gdb's references no longer describe what the unwinder will see.  Then
:func:`load_fixture` has ``make_cores.py --out`` build, crash and record the
affected fixtures again, once, into a cache outside the repository
(``/var/cache/coredumpd-tests/fixtures/<libc build-id>-<key>/``), and the tests
compare against gdb's references recomputed there.  Where that is impossible
(not root, gcc or gdb missing) the test fails when ``CI`` is set in the
environment and is skipped with the reason otherwise: a skipped comparison is
never a pass in CI.

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
import fcntl
import functools
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, NoReturn

FIXTURES_DIR = pathlib.Path(__file__).resolve().parent.parent.parent / "fixtures" / "cores"
MANIFEST_PATH = FIXTURES_DIR / "MANIFEST.json"
MAKE_CORES = FIXTURES_DIR / "make_cores.py"
# What make_cores.py reads besides the sources in src/: a change regenerates the cache.
GENERATOR_FILES = ("make_cores.py", "expected.py", "notes_text.py", "gdb_frames.py")
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
DEFAULT_CACHE = pathlib.Path("/var/cache/coredumpd-tests/fixtures")
# Switches of the test suite, read here only (coredumpd never reads them): the
# manifest to check against (a copy with another build-id simulates a library
# update) and where regenerated fixtures go.
MANIFEST_ENV = "COREDUMPD_TEST_FIXTURE_MANIFEST"
CACHE_ENV = "COREDUMPD_TEST_FIXTURE_CACHE"
REGENERATION_TOOLS = ("gcc", "g++", "rustc", "objcopy", "setarch", "gdb", "eu-stack", "eu-readelf",
                      "c++filt")
REGENERATION_TIMEOUT = 1800  # seconds; all twelve fixtures take about 10 s here


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


def manifest_path() -> pathlib.Path:
    """The manifest the fixtures are checked against: the committed one, unless the
    suite is pointed at another (``COREDUMPD_TEST_FIXTURE_MANIFEST``)."""
    return pathlib.Path(os.environ.get(MANIFEST_ENV) or MANIFEST_PATH)


def read_manifest(path: pathlib.Path | None = None) -> dict[str, Any]:
    path = manifest_path() if path is None else path
    if not path.exists():
        return {"fixtures": {}}
    result: dict[str, Any] = json.loads(path.read_text())
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


def in_ci() -> bool:
    """CI services set ``CI`` (``CI=true``) in the environment."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """End a test that cannot compare here: a failure in CI, a skip elsewhere."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI is set: a comparison that cannot run is a failure, "
                    "not a skip)", pytrace=False)
    pytest.skip(reason)


def load_fixture(name: str, check_libraries: bool = True) -> Fixture:
    """Load a fixture whose references hold on this machine.

    When this machine's libraries differ from the manifest, the fixture comes from
    the regenerated cache (:func:`regenerated_fixtures`).  ``check_libraries=False``
    loads the committed files as they are (tests of the references themselves).
    Inside a test, a fixture that cannot be had ends the test (:func:`unavailable`).
    """
    entry = read_manifest()["fixtures"].get(name)
    if entry is None:
        raise KeyError(f"no fixture {name!r} in {manifest_path()}")
    directory = FIXTURES_DIR / name
    if check_libraries and (reason := library_mismatch(entry)) is not None:
        regenerated = regenerated_fixtures(str(manifest_path()), str(cache_root()))
        if regenerated.problem is not None:
            unavailable(f"{reason}; {regenerated.problem}")
        entry = regenerated.manifest["fixtures"][name]
        directory = regenerated.directory / name
    core = core_file(directory)
    if core is None:
        unavailable(f"{directory} has no core: run fixtures/cores/make_cores.py --only {name}")
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


# ------------------------------------------------------------------ regeneration


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


@dataclasses.dataclass
class Regenerated:
    """The fixtures made again for this machine's libraries, or why they could not be."""

    directory: pathlib.Path  # DIR/NAME/ per fixture, DIR/MANIFEST.json
    manifest: dict[str, Any]
    problem: str | None


def regeneration_blockers() -> list[str]:
    """What stops make_cores.py here: it swaps core_pattern (root) and runs these tools."""
    from tests.support.kernel import can_swap_core_pattern

    blockers = [] if can_swap_core_pattern() else ["not root with a writable core_pattern"]
    missing = [tool for tool in REGENERATION_TOOLS if shutil.which(tool) is None]
    if missing:
        blockers.append(f"{', '.join(missing)} not found on PATH")
    return blockers


def _tool_version(tool: str) -> str:
    try:
        return subprocess.run([tool, "--version"], capture_output=True, text=True,
                              check=False).stdout.split("\n", 1)[0]
    except OSError:
        return f"{tool}: none"


def cache_key(names: list[str], manifest: dict[str, Any]) -> str:
    """``<libc build-id>-<digest>``: the digest covers everything the regenerated
    references depend on (this machine's libraries, the generator and sources,
    the compilers and gdb), so a change of any of them makes a new directory."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        for path in sorted(manifest["fixtures"][name].get("libraries", {})):
            digest.update(f"{path}={file_build_id(path)}\0".encode())
    sources = [FIXTURES_DIR / name for name in GENERATOR_FILES]
    for path in sorted(sources) + sorted((FIXTURES_DIR / "src").iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for tool in ("gcc", "g++", "rustc", "gdb", "eu-stack"):
        digest.update(_tool_version(tool).encode() + b"\0")
    return f"{file_build_id(LIBC) or 'no-libc'}-{digest.hexdigest()[:16]}"


def _usable(directory: pathlib.Path, names: list[str]) -> dict[str, Any] | None:
    """The cache's manifest when it holds every fixture, made with these libraries."""
    manifest = read_manifest(directory / "MANIFEST.json")
    entries = manifest["fixtures"]
    for name in names:
        if name not in entries or library_mismatch(entries[name]) is not None:
            return None
        if core_file(directory / name) is None:
            return None
    return manifest


def _run_make_cores(names: list[str], work: pathlib.Path) -> str | None:
    """make_cores.py --out WORK for ``names``; None, or what went wrong."""
    command = [sys.executable, str(MAKE_CORES), "--out", str(work)]
    for name in names:
        command += ["--only", name]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False,
                                timeout=REGENERATION_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"{' '.join(command)} took over {REGENERATION_TIMEOUT} s"
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-12:]
        return f"{' '.join(command)} failed ({result.returncode}):\n" + "\n".join(tail)
    return None


@functools.cache
def regenerated_fixtures(manifest_file: str, root: str) -> Regenerated:
    """Every fixture of ``manifest_file`` whose libraries differ here, made again.

    Once per test process; across processes a lock on the cache root lets one
    run make_cores.py while the others wait and then reuse its directory.
    """
    manifest = read_manifest(pathlib.Path(manifest_file))
    names = sorted(name for name, entry in manifest["fixtures"].items()
                   if library_mismatch(entry) is not None)
    directory = pathlib.Path(root) / cache_key(names, manifest)
    if (blockers := regeneration_blockers()):
        cached = _usable(directory, names) if directory.exists() else None
        if cached is not None:
            return Regenerated(directory, cached, None)
        return Regenerated(directory, {"fixtures": {}},
                           f"cannot regenerate the fixtures here: {'; '.join(blockers)}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(directory.parent / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (cached := _usable(directory, names)) is not None:
            warnings.warn(f"this machine's libraries differ from {manifest_file}: {len(names)} "
                          f"fixtures and gdb's references from {directory}, made for them",
                          stacklevel=2)
            return Regenerated(directory, cached, None)
        return _regenerate_into(directory, names, manifest_file)
    finally:
        os.close(lock)


def _regenerate_into(directory: pathlib.Path, names: list[str],
                     manifest_file: str) -> Regenerated:
    work = pathlib.Path(tempfile.mkdtemp(prefix=".new-", dir=directory.parent))
    started = time.monotonic()
    problem = _run_make_cores(names, work)
    if problem is None:
        shutil.rmtree(directory, ignore_errors=True)
        os.rename(work, directory)
        made = _usable(directory, names)
        if made is not None:
            warnings.warn(f"this machine's libraries differ from {manifest_file}: "
                          f"{len(names)} fixtures made again with gdb's references in "
                          f"{directory} ({time.monotonic() - started:.1f} s)", stacklevel=2)
            return Regenerated(directory, made, None)
        problem = f"{directory}: make_cores.py left fixtures that still do not match"
    shutil.rmtree(work, ignore_errors=True)
    return Regenerated(directory, {"fixtures": {}}, problem)
