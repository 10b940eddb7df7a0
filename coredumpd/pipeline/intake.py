"""Taking a core in, for both front doors: the pipe handler and the socket server.

Whatever the kernel hands the core through (fd 0 of the pipe handler, or an
accepted connection on the coredump socket), the bytes go the same way: a
:class:`~coredumpd.ingest.stream.CoreStream` on that fd, the configuration's
limits (ExternalSizeMax, RLIMIT_CORE), an unnamed file in the store and the
seekable lz4 writer, and the signal's sender read from NT_SIGINFO.  The front
doors differ only in how they learn the facts and when the kernel lets go.

Imported by the pipe handler while the kernel holds the crashed process, so
it imports no more than that phase already needs.
"""

from __future__ import annotations

import os

from coredumpd.errors import CoredumpdError
from coredumpd.ingest import procfs
from coredumpd.ingest.args import RLIM_INFINITY
from coredumpd.ingest.stream import SMALL_CORE
from coredumpd.pipeline.state import CrashState

# 4 MiB blocks, lz4's own default (-B7): measured smaller than `lz4 -1` on the bench's
# 1 GiB core (1 MiB blocks: 0.03% larger) and 13% less CPU; a read decompresses one block.
BLOCK_SIZE = 4 << 20
COMPRESS_THREADS = 1  # lz4 releases the GIL: compression overlaps the pipe reads; more
# threads measured no faster on 2 CPUs shared with the dumping process


def core_limit(crash: CrashState) -> int | None:
    """Bytes we may store: ExternalSizeMax and RLIMIT_CORE (``%c``), like a file core."""
    limit: int = crash.load_config().external_size_max
    rlimit = crash.args.rlimit_core
    if rlimit is not None and rlimit != RLIM_INFINITY:
        limit = min(limit, rlimit)
    return limit


def core_wanted(crash: CrashState) -> bool:
    """False when RLIMIT_CORE (``%c``) is below a page: the process asked for no core.

    As systemd-coredump (save_external_coredump(): "Resource limits disable core
    dumping"): the crash still gets its row and journal entry, without a core."""
    rlimit = crash.args.rlimit_core
    if rlimit is not None and rlimit < os.sysconf("SC_PAGE_SIZE"):
        crash.skip_core = (f"resource limits disable core dumping: RLIMIT_CORE is {rlimit},"
                           " below a page")
        return False
    return True


def prepare_store(crash: CrashState, threads: int = COMPRESS_THREADS) -> None:
    """Configuration, storage directory, unnamed file and lz4 writer (``threads``: its
    compression workers; 0: inline)."""
    config = crash.load_config()
    if config.storage == "none":
        crash.skip_core = "Storage=none"  # still written (unnamed) for the analysis
    from coredumpd.ingest.output import TempCore, open_directory  # not needed for small cores
    try:
        if crash.dir_fd < 0:
            crash.dir_fd = open_directory(config.directory)
        crash.temp = TempCore(crash.dir_fd)
        from coredumpd.store.lz4seek import SeekableLz4Writer
        crash.writer = SeekableLz4Writer(crash.temp.fd, BLOCK_SIZE, threads=threads)
    except (CoredumpdError, OSError) as err:
        crash.core_failure = f"cannot create the core file: {err}"


def drain(crash: CrashState) -> None:
    """The rest of the stream into the lz4 writer, within :func:`core_limit`."""
    if crash.writer is None or crash.core_stream is None:
        return
    crash.stream = crash.core_stream.drain_into(crash.writer, core_limit(crash))
    if crash.stream.write_error:
        crash.core_failure = crash.stream.write_error


def read_sender(crash: CrashState) -> None:
    """Who sent the fatal signal (NT_SIGINFO with si_code <= 0), read from /proc."""
    sender = crash.stream.sender()
    if sender is None or sender[1] <= 0:
        return
    code, pid, uid = sender
    crash.sender = procfs.collect_sender(pid, crash.missing)
    crash.sender.update({"si_code": code, "si_uid": uid})


def hold_small_core(crash: CrashState, spool_fd: int) -> bool:
    """While the process is held: copy a small core into ``spool_fd`` (an unnamed file,
    closed here if unused; in memory when it is -1); True when all of it was read (the
    rest: :func:`drain`).  A core whose program headers say it is bigger than
    SMALL_CORE goes straight to :func:`drain`."""
    assert crash.core_stream is not None
    expected = crash.stream.expected_size
    if expected is not None and expected > SMALL_CORE:  # its head says it is big: no detour
        if spool_fd >= 0:                                # through the spool
            os.close(spool_fd)
        return False
    if spool_fd < 0:
        return crash.core_stream.buffer(SMALL_CORE)
    return crash.core_stream.spool(spool_fd, SMALL_CORE)


def store_buffered(crash: CrashState) -> None:
    """After the release: a small core held by :func:`hold_small_core` goes to the store."""
    config = crash.load_config()
    if crash.dir_fd < 0:
        try:
            from coredumpd.ingest.output import open_directory
            crash.dir_fd = open_directory(config.directory)
        except CoredumpdError as err:
            crash.problems.append(str(err))
            return
    if crash.writer is None and crash.core_failure is None and core_wanted(crash):
        prepare_store(crash, threads=0)  # read from a file, the process gone: no overlap to win
        drain(crash)
