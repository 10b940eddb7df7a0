"""Where a small core waits while the kernel holds the crashed process.

The handler releases the kernel before it loads the configuration or the lz4
writer (those imports cost more than the whole of the held phase), so a small
core is first copied as it comes into an unnamed spool file, and compressed
into the store once the process is gone: read once from the pipe, never held
whole in memory.

The spool goes into the storage directory, read here from the configuration
file with a few lines instead of configparser (19 ms of imports measured with
``python -X importtime``).  Nothing depends on finding the same directory as
:func:`coredumpd.config.load_config`: the spool is unnamed and dropped after
use; the directory only has to be root-owned and writable by no one else.
When none qualifies (first crash ever, odd configuration), the handler keeps
the small core in memory, bounded by :data:`coredumpd.ingest.stream.SMALL_CORE`.
"""

from __future__ import annotations

import os
import stat

from coredumpd.paths import DEFAULT_CONFIG_PATH, DEFAULT_DIRECTORY, TEMPORARY_FILE_MODE

MAX_CONFIG_BYTES = 1 << 20


def configured_directory(config_path: str | None) -> str:
    """``Directory=`` of the [Coredump] section (last one wins), else the default."""
    try:
        with open(config_path or DEFAULT_CONFIG_PATH, "rb") as handle:
            text = handle.read(MAX_CONFIG_BYTES).decode("utf-8", "replace")
    except OSError:
        return DEFAULT_DIRECTORY
    directory, section = DEFAULT_DIRECTORY, ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == "Coredump" and "=" in line and not line.startswith(("#", ";")):
            key, value = (part.strip() for part in line.split("=", 1))
            value = _strip_inline_comment(value)
            if key == "Directory" and value.startswith("/"):
                directory = value
    return directory


def _strip_inline_comment(value: str) -> str:
    """configparser's inline_comment_prefixes: '#' or ';' after white space."""
    for index, char in enumerate(value):
        if char in "#;" and index > 0 and value[index - 1].isspace():
            return value[:index].rstrip()
    return value


def open_spool(config_path: str | None, min_free: int = 0) -> int:
    """An unnamed file in the storage directory; -1 when no safe directory exists or
    its file system has less than ``min_free`` bytes free."""
    return open_spool_in(configured_directory(config_path), min_free)


def has_room(fd: int, min_free: int) -> bool:
    """At least ``min_free`` bytes free on the file system of ``fd``."""
    try:
        space = os.fstatvfs(fd)
    except OSError:
        return False
    return space.f_bavail * space.f_frsize >= min_free


def open_spool_in(directory: str, min_free: int = 0) -> int:
    """:func:`open_spool` in ``directory`` (the socket server has the configuration)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        info = os.fstat(dir_fd)
        if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return -1
        if not has_room(dir_fd, min_free):
            return -1
        return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, TEMPORARY_FILE_MODE,
                       dir_fd=dir_fd)
    except OSError:
        return -1
    finally:
        os.close(dir_fd)
