"""The crashes of a store still waiting for their analysis: one marker file each.

``DIR/analysis-queue/ID`` (root's, 0700) is made by the handler once the index row
of crash ``ID`` exists, before it decides whether to start an analysis job; it holds
the path of the configuration file the handler read (empty: the default), then,
once a job tried, ``\\0ATTEMPTS\\0LAST ERROR`` (``ATTEMPTSj`` once an attempt sent the
crash's journal entry: :func:`mark_journaled`).  It is removed once the crash's
analysis is stored, or once it failed :data:`ATTEMPTS_MAX` times, never before.  So:

* **A claim is an exclusive flock(2) on the marker** (:func:`claim`): whoever holds
  it analyses the crash; the kernel drops it whatever way that process ends, so a
  killed analysis leaves the marker, unclaimed, for the next one.  After the lock,
  a marker whose link count is 0 was finished by the previous holder between our
  open and our lock: nothing left to do.  Each claim counts an attempt in the marker
  before the analysis (:func:`begin_attempt`): a crash whose analysis fails, or kills
  its job, again and again is marked failed instead of blocking the queue.
* **A drainer** (:class:`coredumpd.pipeline.analyze_job.Drain`) lists the markers
  and claims, one after the other, those nobody holds, instead of one process
  (and one sandbox) per crash.
* **A drainer holds a drain lock** (:func:`take_drain_lock`), an exclusive flock(2) on
  one of ``DIR/analysis-queue.drainers/KEY.N`` (``KEY``: the configuration's, ``N`` <
  the analysis slots): whoever holds one drains the crashes of that configuration after
  any moment it held it.  The handler queues the marker first, then takes a free drain
  lock for the job it starts; when every one is held it starts no job at all (a storm
  costs one job, not one interpreter per crash).  A holder that lets go lists the queue
  again and takes a lock back if something it can claim is left (:func:`claimable`):
  a marker queued before the release is seen by that listing, one queued after it
  finds the lock free.
* A crash whose core lives only in its job's inherited descriptor (Storage=none,
  rate limited) gets no marker: nobody else can read its core.

The CPU of a job that found nothing to analyse (and of the waiting process of one that
did: :func:`coredumpd.pipeline.analyze_job.main`) is added to
``DIR/analysis-queue.cpu`` (:func:`add_waiting_cpu`), which the next stored
analysis takes into its ``analysis_cpu_ms`` (:func:`take_waiting_cpu`): what a storm's
analyses cost counts every process they started.

Imported by the analysis job before anything else: only os and fcntl.
"""

from __future__ import annotations

import fcntl
import os

QUEUE_DIRECTORY = "analysis-queue"
DRAINERS_SUFFIX = ".drainers"  # DIR/analysis-queue.drainers: the drain locks

MARKER_MAX = 8192  # bytes of a marker read back (a path, a count, an error)
ERROR_MAX = 1000  # characters of the last error kept in a marker
ATTEMPTS_MAX = 3  # analyses of one crash that failed (or ended their job) before it is given up


def queue_path(directory: str) -> str:
    """``DIR/analysis-queue`` of the store at ``directory``."""
    return os.path.join(directory, QUEUE_DIRECTORY)


def enqueue(directory: str, row_id: str, config_path: str | None) -> str | None:
    """Make the marker of crash ``row_id``; its path, or None when it cannot be made
    (the crash's own job then analyses it alone, as without a queue)."""
    queue = queue_path(directory)
    try:
        try:
            os.mkdir(queue, 0o700)
        except FileExistsError:
            pass
        path = os.path.join(queue, row_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, os.fsencode(config_path or ""))
        finally:
            os.close(fd)
    except OSError:
        return None
    return path


def waiting(queue: str) -> list[str]:
    """The markers' paths, oldest first (none when there is no queue)."""
    found: list[tuple[int, str]] = []
    try:
        with os.scandir(queue) as entries:
            for entry in entries:
                try:
                    found.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.path))
                except OSError:
                    continue  # finished meanwhile
    except OSError:
        return []
    return [path for _, path in sorted(found)]


def claim(path: str, wait: bool = False) -> int | None:
    """The locked descriptor of the marker at ``path``, or None when it is gone or (not
    ``wait``) someone else holds it.  ``wait``: sleep until its holder is done."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        if os.fstat(fd).st_nlink == 0:
            raise FileNotFoundError(path)  # finished between our open and our lock
    except OSError:
        os.close(fd)
        return None
    return fd


def exists(path: str) -> bool:
    """The marker is still there (its crash is not analysed yet)."""
    try:
        os.lstat(path)
    except OSError:
        return False
    return True


def config_of(fd: int) -> str | None:
    """The configuration path a claimed marker names (None: the default)."""
    return read_marker(fd)[0]


JOURNALED = b"j"  # after a marker's attempts: an attempt sent the crash's journal entry


def read_marker(fd: int) -> tuple[str | None, int, str]:
    """What a claimed marker says: configuration path (None: the default), attempts made,
    the last attempt's error ("" when none was recorded)."""
    config, attempts, _journaled, error = _fields(fd)
    return config, attempts, error


def _fields(fd: int) -> tuple[str | None, int, bool, str]:
    config, _, rest = os.pread(fd, MARKER_MAX, 0).partition(b"\0")
    attempts, _, error = rest.partition(b"\0")
    journaled = attempts.endswith(JOURNALED)
    attempts = attempts.removesuffix(JOURNALED)
    return (os.fsdecode(config) or None, int(attempts) if attempts.isdigit() else 0,
            journaled, error.decode("utf-8", "replace"))


def journaled(fd: int) -> bool:
    """An earlier attempt at the claimed marker's crash sent its journal entry (or its
    kmsg line): a crash has one entry, however many attempts its analysis took."""
    return _fields(fd)[2]


def mark_journaled(fd: int) -> None:
    """Note in the claimed marker that the crash's journal entry went out (before the
    result is stored: an attempt that fails or is killed after it must not send another)."""
    config, attempts, _, error = _fields(fd)
    _write_marker(fd, config, attempts, error, journaled=True)


def begin_attempt(fd: int) -> tuple[int, str]:
    """Count one more attempt in a claimed marker, before the analysis (a job killed during
    it has counted it too, with no error); the attempts made before and the last one's
    error (empty: its job ended during it)."""
    config, attempts, sent, error = _fields(fd)
    _write_marker(fd, config, attempts + 1, "", sent)
    return attempts, error


def record_error(fd: int, error: str) -> None:
    """Keep why the attempt that holds the claimed marker failed."""
    config, attempts, sent, _ = _fields(fd)
    _write_marker(fd, config, attempts, error[:ERROR_MAX], sent)


def _write_marker(fd: int, config: str | None, attempts: int, error: str,
                  journaled: bool = False) -> None:
    text = os.fsencode(config or "") + b"\0%d%s\0" % (attempts, JOURNALED if journaled else b"") \
        + error.encode("utf-8", "replace")
    os.pwrite(fd, text, 0)
    os.ftruncate(fd, len(text))


def drain_key(config_path: str | None) -> str:
    """The drain locks' name for a configuration: FNV-1a (64 bits) of its path, in hex
    (the path itself may be longer than a file name; hashlib would cost the handler's
    job start more than the analysis queue's whole import)."""
    value = 0xCBF29CE484222325
    for byte in os.fsencode(config_path or ""):
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{value:016x}"


def take_drain_lock(queue: str, config_path: str | None, count: int) -> int | None:
    """The descriptor of a free drain lock of ``config_path`` (one of ``count``), now held;
    None when all are held (their holders will drain what is queued now).  OSError when
    there are none to be had (no drainer can be told apart then: start a job anyway)."""
    directory = queue + DRAINERS_SUFFIX
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    key = drain_key(config_path)
    for number in range(max(1, count)):
        fd = os.open(os.path.join(directory, f"{key}.{number}"),
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except OSError:
            os.close(fd)
            raise
        return fd
    return None


def claimable(queue: str, config_path: str | None) -> bool:
    """Some marker of ``config_path`` is queued that nobody holds (a drainer would take it)."""
    for marker in waiting(queue):
        fd = claim(marker)
        if fd is None:
            continue
        try:
            if config_of(fd) == config_path:
                return True
        except OSError:
            continue
        finally:
            os.close(fd)
    return False


def finish(path: str, fd: int) -> None:
    """The crash's analysis is stored: remove its marker, then drop the claim."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def add_waiting_cpu(queue: str, milliseconds: int) -> None:
    """Count the CPU of a job that had nothing left to analyse (see the module)."""
    _update_waiting_cpu(queue, milliseconds)


def take_waiting_cpu(queue: str) -> int:
    """The CPU counted by :func:`add_waiting_cpu` since the last call (reset to 0)."""
    return _update_waiting_cpu(queue, None)


def _update_waiting_cpu(queue: str, add: int | None) -> int:
    path = queue + ".cpu"  # DIR/analysis-queue.cpu
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = os.pread(fd, 32, 0).strip()
        total = int(text) if text.isdigit() else 0
        value = total + add if add is not None else 0
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(value).encode(), 0)
        return total
    except OSError:
        return 0
    finally:
        os.close(fd)
