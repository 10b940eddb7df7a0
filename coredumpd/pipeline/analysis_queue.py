"""The crashes of a store still waiting for their analysis: one marker file each.

``DIR/analysis-queue/ID`` (root's, 0700) is made by the handler once the index row
of crash ``ID`` exists, just before it starts the crash's analysis job; it holds
the path of the configuration file the handler read (empty: the default).  It is
removed once the crash's analysis is stored, never before.  So:

* **A claim is an exclusive flock(2) on the marker** (:func:`claim`): whoever holds
  it analyses the crash; the kernel drops it whatever way that process ends, so a
  killed analysis leaves the marker, unclaimed, for the next one.  After the lock,
  a marker whose link count is 0 was finished by the previous holder between our
  open and our lock: nothing left to do.
* **A drainer** (:func:`coredumpd.pipeline.analyze_job.drain`) lists the markers
  and claims, one after the other, those nobody holds, instead of one process
  (and one sandbox) per crash.  The job of a crash whose marker is gone when it
  gets its analysis slot exits at once, having imported nothing but this module.
* A crash whose core lives only in its job's inherited descriptor (Storage=none,
  rate limited) gets no marker: nobody else can read its core.

The CPU of a job that found its crash analysed already is added to
``DIR/analysis-queue.cpu`` (:func:`add_waiting_cpu`), which the next stored
analysis takes into its ``analysis_cpu_ms`` (:func:`take_waiting_cpu`): what a storm's
analyses cost counts every process they started.

Imported by the analysis job before anything else: only os and fcntl.
"""

from __future__ import annotations

import fcntl
import os

QUEUE_DIRECTORY = "analysis-queue"

CONFIG_MAX = 4096  # bytes of a marker read back (a path)


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
    text = os.pread(fd, CONFIG_MAX, 0)
    return os.fsdecode(text) or None


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
