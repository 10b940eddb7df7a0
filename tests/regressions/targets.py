"""What the fuzzer (bench/fuzz.py) feeds each input to, shared with the replay test.

A target takes the input bytes and runs one of coredumpd's parsers of hostile
data the way the product does.  It may end in a clean result or in one of our
own errors (:class:`coredumpd.errors.CoredumpdError`); anything else — another
exception, a hang past the alarm, MemoryError under the RLIMIT_AS the fuzzer
sets — is a crash, i.e. a bug in the part named by ``OWNERS``.

Targets:

``reader``   :meth:`coredumpd.elf.core.Core.open` and the read paths (threads,
             registers, memory at pc/sp, NT_FILE, auxv).
``stream``   :func:`coredumpd.ingest.stream.read_core`, the handler's on-the-fly
             parser of the kernel pipe (here a memfd), head only.
``lz4``      :class:`coredumpd.store.lz4seek.SeekableLz4Reader` on a mutated stored
             core (block index and trailer CRC recomputed, so mutations get past
             the checksum), then the core model on top of it.
``unwind``   the reader, then address space, unwinder and disassembly of the
             crashed thread (needs coredumpd.image.space).
``analysis`` :func:`coredumpd.analysis.analyze` (reader, unwinder, symbolizer, rules).
``cache``    the same analysis without and then with a module cache
             (:mod:`coredumpd.store.modcache`) that this process's earlier inputs
             filled: the two results must be the same (the cache is only a
             speed-up; issue 15: same frames and annotations, byte for byte), so a
             core whose entries would change a later core's answers is a finding.
``answer``   what the analysis job does with a sandbox's answer (JSON that a child
             a core took over writes as it likes): read it
             (:func:`coredumpd.pipeline.analyze_job.read_answer`), store it in an
             index and read the row back, the journal entry, ``corectl show``'s
             text and JSON; none of it may raise.
``args``     :func:`coredumpd.ingest.args.parse_args` on a NUL-separated argv.
``procfs``   the /proc capture on a fake procfs tree (input: a JSON file tree),
             needs coredumpd.ingest.procfs.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from coredumpd.errors import CoredumpdError

OWNERS = {
    "reader": "coredumpd/elf/core.py, coredumpd/elf/notes.py",
    "stream": "coredumpd/ingest/stream.py, coredumpd/elf/notes.py",
    "lz4": "coredumpd/store/lz4seek.py",
    "unwind": "coredumpd/image/space.py, coredumpd/unwind/ (unwinder.py, cfi.py), coredumpd/symbolize/disasm.py",
    "analysis": "coredumpd/analysis/, coredumpd/annotate/",
    "cache": "coredumpd/store/modcache.py, coredumpd/symbolize/ (symbols.py, decoded.py)",
    "answer": "coredumpd/pipeline/analyze_job.py (read_answer), coredumpd/model.py, "
              "coredumpd/report/, coredumpd/store/index.py",
    "args": "coredumpd/ingest/args.py",
    "procfs": "coredumpd/ingest/procfs.py",
}
EXPECTED = (CoredumpdError,)


def run_reader(data: bytes) -> Any:
    from coredumpd.elf.core import Core
    from coredumpd.errors import MemoryReadError
    from coredumpd.source import BytesSource

    core = Core.open(BytesSource(data))
    summary = [repr(core), len(core.problems), core.truncated, dict(core.auxv)]
    for thread in core.threads[:64]:
        registers = thread.registers
        for name in ("rip", "rsp"):
            address = registers.get(name, 0)
            try:
                summary.append(core.read_memory(address, 64))
            except MemoryReadError:
                summary.append(core.read_memory_partial(address, 64))
        summary.append(core.segment_at(registers.get("rsp", 0)))
    summary.extend(core.files[:256])
    summary.append((core.siginfo, core.prpsinfo, core.crashing_thread))
    return summary


class _NullWriter:
    """A CoreWriter that counts bytes (the store is not what is fuzzed here)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)

    def copy_from(self, fd: int, limit: int | None = None) -> int:
        copied = 0
        while limit is None or copied < limit:
            chunk = os.read(fd, 1 << 20 if limit is None else min(1 << 20, limit - copied))
            if not chunk:
                break
            copied += len(chunk)
        self.size += copied
        return copied


def run_stream(data: bytes) -> Any:
    from coredumpd.ingest.stream import read_core

    fd = os.memfd_create("fuzz-core", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        result = read_core(fd, _NullWriter(), limit=len(data) // 2 or None)
        return (result.size, result.problems, result.truncated, result.threads, result.files)
    finally:
        os.close(fd)


def run_unwind(data: bytes) -> Any:
    from coredumpd.elf.core import Core
    from coredumpd.image.space import build_address_space
    from coredumpd.source import BytesSource
    from coredumpd.symbolize import disasm
    from coredumpd.unwind.types import Caps
    from coredumpd.unwind.unwinder import Unwinder

    core = Core.open(BytesSource(data))
    space = build_address_space(core, None, root="/")
    out = []
    unwinder = Unwinder(space, Caps(max_frames=64))
    try:
        for thread in core.threads[:4]:
            result = unwinder.unwind(thread.registers)
            out.append(result)
            out.append(disasm.decode(space, thread.registers.get("rip", 0), 8))
    finally:
        unwinder.close()
        space.close()
    return out


class _SwallowedErrors(logging.Handler):
    """Collects the exceptions analyze() catches and logs (its stages never raise)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


def run_analysis(data: bytes) -> Any:
    """analyze() never raises by contract, so its stages' caught exceptions count too.

    A stage that failed with one of our errors is the design working; one that
    failed with TypeError, IndexError... is a bug the isolation hid: it is
    re-raised here with its original traceback.
    """
    return _analysis_checked(data, None)


def _analysis_checked(data: bytes, cache: Any) -> dict[str, Any]:
    from coredumpd.analysis import analyze
    from coredumpd.source import BytesSource

    logger = logging.getLogger("coredumpd")
    catcher = _SwallowedErrors()
    logger.addHandler(catcher)
    saved_level, logger.level = logger.level, logging.DEBUG
    try:
        result: dict[str, Any] = analyze(BytesSource(data), cache=cache).to_json()
    finally:
        logger.removeHandler(catcher)
        logger.setLevel(saved_level)
    for error in catcher.errors:
        if not isinstance(error, EXPECTED):
            raise error
    json.dumps(result)  # the result must be JSON-able: the index stores it
    if result.get("state") not in ("done", "failed"):
        raise AssertionError(f"analysis state {result.get('state')!r}")
    return result


class CacheMismatch(AssertionError):
    """The analysis with the module cache differs from the one without."""


_STORE_DIRECTORY: list[str] = []  # this process's store directory (cache, answer)


def _process_store() -> str:
    """A store directory of this process (root's, so its cache is writable and trusted),
    removed when the process exits (a fuzz worker ends through multiprocessing)."""
    if not _STORE_DIRECTORY or not os.path.isdir(_STORE_DIRECTORY[0]):
        import multiprocessing.util

        directory = tempfile.mkdtemp(prefix="fuzz-store-", dir="/tmp")
        multiprocessing.util.Finalize(None, shutil.rmtree, args=(directory, True),
                                      exitpriority=0)
        _STORE_DIRECTORY[:] = [directory]
    return _STORE_DIRECTORY[0]


def run_cache(data: bytes) -> Any:
    """The analysis of ``data`` without a cache, then with this process's module cache
    (filled by the inputs before, and by this one); the results must be equal."""
    from coredumpd.store.modcache import ModuleCache

    plain = _analysis_checked(data, None)
    cached = _analysis_checked(data, ModuleCache(_process_store()))
    for result in (plain, cached):
        result.pop("duration_ms", None)
    if plain != cached:
        difference = next(key for key in plain if plain.get(key) != cached.get(key)) \
            if set(plain) == set(cached) else "keys"
        raise CacheMismatch(f"{difference}: {plain.get(difference)!r:.600} without the "
                            f"cache, {cached.get(difference)!r:.600} with it")
    return cached


def run_answer(data: bytes) -> Any:
    """The analysis job's side of a sandbox answer, ``data`` (see the module docstring)."""
    import time

    from coredumpd.model import CoreState, CrashRecord
    from coredumpd.pipeline.analyze_job import read_answer
    from coredumpd.pipeline.sandbox import _verdict
    from coredumpd.pipeline.sandbox_cache import _valid_report
    from coredumpd.report import journal, jsonout, text
    from coredumpd.store.index import Index

    answer = _verdict(0, data, b"", None, time.monotonic())  # type: ignore[arg-type]
    _valid_report(answer.pop("module_lookups", None), {"/usr/lib/libc.so.6": b"\x01"})
    result = read_answer(answer)
    record = CrashRecord(pid=4242, timestamp_us=1_700_000_000_000_000, uid=1000, gid=1000,
                         signal=11, comm="fuzz", exe="/usr/bin/fuzz", core_path="/x.lz4",
                         core_state=CoreState.PRESENT)
    index = Index(os.path.join(_process_store(), "index.sqlite"))
    try:
        index.insert(record)
        record.set_analysis(result)
        entry = journal.encode_entry(journal.journal_fields(record))
        index.update(record.id, **record.analysis_columns(), path_taken={"journal": "sent"})
        back = index.get(record.id)
        assert back is not None
        index.delete(record.id)  # the index stays small over a campaign
    finally:
        index.close()
    show = jsonout.show_object(back)
    return entry, json.dumps(show), text.render_show(jsonout.show_object(back, None, False),
                                                     back.analysis)


def run_lz4(data: bytes) -> Any:
    """A stored seekable-lz4 core (``corectl analyze`` accepts any user's file)."""
    from coredumpd.elf.core import Core
    from coredumpd.errors import MemoryReadError
    from coredumpd.store.lz4reader import SeekableLz4Reader

    fd = os.memfd_create("fuzz-lz4", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        reader = SeekableLz4Reader(fd)
        out = [reader.size, reader.truncated, reader.pread(0, 4096),
               reader.pread(max(0, reader.size - 70000), 140000)]
        core = Core.open(reader)
        for thread in core.threads[:8]:
            try:
                out.append(core.read_memory(thread.registers.get("rsp", 0), 512))
            except MemoryReadError:
                pass
        return out
    finally:
        os.close(fd)


def run_args(data: bytes) -> Any:
    from coredumpd.ingest.args import parse_args

    argv = data.decode("utf-8", "surrogateescape").split("\0")
    parsed = parse_args(argv)
    facts = parsed.facts()
    json.dumps(facts)
    return facts, parsed.problems


def run_procfs(data: bytes) -> Any:
    """``data`` is JSON {path under /proc/PID: content} for a fake procfs root.

    Content is a string (a file), ``{"symlink": target}``, or null: unreadable
    even for root, i.e. a directory where a file should be (read() fails with
    EISDIR).  A missing file is an absent key.
    """
    from coredumpd.ingest import procfs

    tree = json.loads(data.decode("utf-8", "surrogateescape"))
    root = tempfile.mkdtemp(prefix="fuzz-procfs-")
    saved = procfs.procfs_path()
    try:
        _write_tree(pathlib.Path(root), tree if isinstance(tree, dict) else {})
        procfs.set_procfs_path(root)
        missing: dict[str, str] = {}
        facts = procfs.collect_process(4242, missing)
        sender = procfs.collect_sender(4242, missing)
        json.dumps([facts, sender, missing])
        return facts
    finally:
        procfs.set_procfs_path(saved)
        shutil.rmtree(root, ignore_errors=True)


def _write_tree(root: pathlib.Path, tree: dict[str, Any]) -> None:
    for relative, content in tree.items():
        path = root / "4242" / str(relative).lstrip("/").replace("..", "_")
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            path.symlink_to(str(content.get("symlink", "")) or "/nonexistent")
        elif isinstance(content, str):
            path.write_bytes(content.encode("utf-8", "surrogateescape"))
        elif not path.exists():
            path.mkdir()


TARGETS: dict[str, Callable[[bytes], Any]] = {
    "reader": run_reader, "stream": run_stream, "lz4": run_lz4, "unwind": run_unwind,
    "analysis": run_analysis, "cache": run_cache, "answer": run_answer, "args": run_args,
    "procfs": run_procfs,
}


def available(target: str) -> str | None:
    """None when ``target`` can run here, else why not (its module has not landed)."""
    modules = {"unwind": "coredumpd.image.space", "analysis": "coredumpd.analysis",
               "cache": "coredumpd.store.modcache", "answer": "coredumpd.pipeline.sandbox",
               "procfs": "coredumpd.ingest.procfs"}
    try:
        module = __import__(modules.get(target, "coredumpd"), fromlist=["_"])
    except ImportError as err:
        return str(err)
    if target == "analysis" and not hasattr(module, "analyze"):
        return "coredumpd.analysis.analyze is missing"
    if target == "procfs" and not hasattr(module, "collect_process"):
        return "coredumpd.ingest.procfs.collect_process is missing"
    return None
