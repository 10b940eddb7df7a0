"""The corectl commands that read core files: dump, debug, analyze.

A stored core is our seekable lz4 (store/lz4seek.py); ``dump`` and ``debug``
decompress it block by block, never holding it in memory.
"""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING, Any, BinaryIO

from coredumpd.cli.commands import Context, newest_record, print_show
from coredumpd.cli.exitcodes import ExitStatus
from coredumpd.cli.output import ignoring_sigint
from coredumpd.errors import CoredumpdError, StoreError
from coredumpd.model import CoreState, CrashRecord
from coredumpd.report.escape import escape
from coredumpd.source import ByteSource

if TYPE_CHECKING:
    from coredumpd.elf.core import Core

CHUNK = 1 << 20
PROGRESS_MIN_SIZE = 32 << 20  # a progress bar only for cores that take a moment


class NoCore(CoredumpdError):
    """The crash is recorded but its core is not stored (exit status 4)."""


def stored_core_path(ctx: Context, record: CrashRecord) -> str:
    """The path of the record's core; NoCore when none is stored."""
    state, path = record.core_state, record.core_path
    if not state.stored or not path:
        reason = f": {escape(record.core_reason)}" if record.core_reason else ""
        raise NoCore(f"crash {escape(record.id)} (PID {escape(record.pid)}) has no "
                     f"stored core (state {escape(state.value)}{reason})")
    if not os.path.isabs(path):
        path = os.path.join(ctx.config.directory, path)
    return str(path)


def open_source(path: str) -> ByteSource:
    from coredumpd.store.coresource import open_core_source

    return open_core_source(path)


def copy_core(source: ByteSource, target: BinaryIO, progress: Any = None) -> int:
    """Copy every byte of ``source`` to ``target``; returns the count."""
    offset = 0
    while offset < source.size:
        data = source.pread(offset, min(CHUNK, source.size - offset))
        if not data:
            raise StoreError(f"the core ends at {offset:#x}, before its size {source.size:#x}")
        target.write(data)
        offset += len(data)
        if progress is not None:
            progress(offset, source.size)
    target.flush()
    return offset


def _progress_bar(ctx: Context) -> Any:
    def show(done: int, total: int) -> None:
        width = 40
        filled = width * done // max(total, 1)
        ctx.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                         f"{done >> 20}/{total >> 20} MiB")
        if done >= total:
            ctx.stderr.write("\n")
        ctx.stderr.flush()
    return show


def _open_output(ctx: Context, name: str | None) -> BinaryIO:
    """The file to write a core into; never a terminal."""
    if name is None or name == "-":
        if ctx.stdout.isatty():
            raise CoredumpdError("refusing to write a core to a terminal: use -o FILE or "
                                 "redirect standard output")
        ctx.stdout.flush()
        return os.fdopen(os.dup(ctx.stdout.fileno()), "wb")
    try:
        # 0600: a core holds the process's memory, passwords included.
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise CoredumpdError(f"cannot write {name}: {err.strerror}") from err
    if os.isatty(fd):
        os.close(fd)
        raise CoredumpdError(f"refusing to write a core to a terminal ({name})")
    return os.fdopen(fd, "wb")


def cmd_dump(ctx: Context) -> int:
    record = newest_record(ctx, ctx.args.match)
    path = stored_core_path(ctx, record)
    if ctx.args.with_binaries:
        return _dump_with_binaries(ctx, record, path)
    target = _open_output(ctx, ctx.args.output)
    source = open_source(path)
    try:
        truncated = getattr(source, "truncated", None)
        if truncated:
            ctx.warn(f"the stored core is truncated: {escape(truncated)}")
        big = source.size >= PROGRESS_MIN_SIZE and ctx.stderr.isatty()
        copy_core(source, target, _progress_bar(ctx) if big else None)
    finally:
        source.close()
        target.close()
    return ExitStatus.OK


def _dump_with_binaries(ctx: Context, record: CrashRecord, path: str) -> int:
    """``dump -o DIR --with-binaries``: DIR/core and the binaries that ran, as a sysroot."""
    from coredumpd.cli import binaries

    directory = ctx.args.output
    if not directory or directory == "-":
        raise CoredumpdError("--with-binaries needs -o DIR (a directory)")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if os.listdir(directory):
            raise CoredumpdError(f"{escape(directory)} is not empty")
        core_file = os.path.join(directory, "core")
        source = open_source(path)
        try:
            with _open_output(ctx, core_file) as target:
                copy_core(source, target)
        finally:
            source.close()
        files = binaries.ran_files(record)
        for problem in binaries.lay_out(files, directory, copy=True):
            ctx.warn(escape(problem))
    except OSError as err:
        raise CoredumpdError(f"cannot write {escape(directory)}: {err.strerror}") from err
    main = next((item for item in files if item.main and item.source), None)
    exe = shlex.quote(os.path.join(directory, main.path.lstrip("/"))) if main else "EXE"
    root = shlex.quote(os.path.abspath(directory))
    ctx.stdout.write(f"gdb -ex {shlex.quote('set sysroot ' + root)} {exe} "
                     f"{shlex.quote(core_file)}\n")
    return ExitStatus.OK


def debugger_command(ctx: Context) -> list[str]:
    command = ctx.args.debugger or ctx.env.get("COREDUMPD_DEBUGGER") or "gdb"
    argv = shlex.split(command)
    if not argv:
        raise CoredumpdError("the debugger command is empty")
    return argv


def cmd_debug(ctx: Context) -> int:
    record = newest_record(ctx, ctx.args.match)
    path = stored_core_path(ctx, record)
    exe = record.exe
    argv = debugger_command(ctx)
    import shutil  # it imports bz2 and lzma: ~8 ms of the start-up of `analyze`
    import tempfile  # with subprocess, for `debug` only (start-up of `analyze`)

    # A private directory (mode 0700): the decompressed core is as secret as
    # the process's memory, and nobody may swap it under the debugger.
    workdir = tempfile.mkdtemp(prefix="corectl-", dir=ctx.env.get("TMPDIR") or "/var/tmp")
    try:
        core_file = os.path.join(workdir, "core")
        source = open_source(path)
        try:
            with open(core_file, "wb") as target:
                copy_core(source, target)
        finally:
            source.close()
        program, sysroot = _binaries_for_debugger(record, workdir, argv[0])
        if sysroot is not None:
            argv += ["-iex", f"set sysroot {sysroot}"]  # before gdb loads anything
        if isinstance(program, str) and os.path.isfile(program):
            argv += [program, core_file]
        else:
            ctx.warn(f"executable {escape(exe)} not found; debugging the core alone")
            argv += ["-c", core_file] if os.path.basename(argv[0]) == "gdb" else [core_file]
        return _run_debugger(argv)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _binaries_for_debugger(record: CrashRecord, workdir: str,
                           debugger: str) -> tuple[str | None, str | None]:
    """(executable, sysroot) for the debugger: the kept copy of a changed executable, and
    for gdb a sysroot of links to the binaries that ran when any of them changed."""
    from coredumpd.cli import binaries

    files = binaries.ran_files(record)
    main = next((item for item in files if item.main), None)
    exe = main.source if main is not None and main.source else record.exe
    if not binaries.changed(files) or os.path.basename(debugger) != "gdb":
        return exe, None
    root = os.path.join(workdir, "root")
    binaries.lay_out(files, root, copy=False)
    return exe, root


def _run_debugger(argv: list[str]) -> int:
    import subprocess

    try:
        with ignoring_sigint():  # Ctrl-C interrupts the debuggee, not corectl
            return subprocess.run(argv, check=False).returncode
    except OSError as err:
        raise CoredumpdError(f"cannot run the debugger {argv[0]}: {err.strerror}") from err


def core_record(source: ByteSource, path: str, core: Core | None = None) -> CrashRecord:
    """A crash record from the core's own notes, for a core without an index row
    (``core``: ``source`` opened already)."""
    from coredumpd.elf.core import Core

    core = core if core is not None else Core.open(source)
    record = CrashRecord(pid=None, timestamp_us=None, core_path=os.path.abspath(path),
                         core_size=source.size, analysis_state=None,
                         core_state=CoreState.TRUNCATED if core.truncated else CoreState.PRESENT)
    if core.prpsinfo is not None:
        info = core.prpsinfo
        record.pid, record.uid, record.gid = info.pr_pid, info.pr_uid, info.pr_gid
        record.comm, record.cmdline = info.pr_fname, info.pr_psargs.rstrip()
    if core.files:
        record.exe = core.files[0].path
    if core.siginfo is not None:
        record.signal, record.si_code = core.siginfo.si_signo, core.siginfo.si_code
        record.fault_address = core.siginfo.si_addr
    return record


def cmd_analyze(ctx: Context) -> int:
    from coredumpd.analysis import analyze
    from coredumpd.elf.core import Core
    from coredumpd.store.modcache import ModuleCache

    path = ctx.args.core
    source = open_source(path)
    try:
        core = Core.open(source)  # once, for the record and the analysis
        record = core_record(source, path, core)
        from coredumpd.image.debuginfod import Debuginfod  # DEBUGINFOD_URLS: fetch what lacks
        # the store's module cache, read and filled only by the store's owner
        result = analyze(source, facts=None, exe=ctx.args.exe,
                         debuginfod=Debuginfod.from_env(ctx.env),
                         cache=ModuleCache(ctx.config.directory), core=core)
    finally:
        source.close()
    if ctx.args.exe:
        record.exe = ctx.args.exe
    return print_show(ctx, record, result)
