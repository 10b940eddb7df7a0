"""``coredumpd install`` / ``uninstall``: register the handler in kernel.core_pattern.

The pattern is ``|/abs/path/coredumpd`` followed by the specifiers the handler
parses (:data:`coredumpd.ingest.args.PATTERN_ARGS`) and ``--config FILE`` when
given.  The kernel keeps at most 127 bytes (CORENAME_MAX_SIZE is 128 with the
NUL, fs/coredump.c) and splits the pattern at spaces without quoting, so a
longer pattern or a path with a space is refused before anything changes.
``core_pipe_limit`` must be > 0 so that /proc/PID survives until the handler
closes the pipe (FACTS.md).  It is also the most crashes the kernel hands over
at once: over it, a crash is dropped before any handler runs ("over
core_pipe_limit, skipping core dump"; systemd's 16 lost 11 of 64 crashes in a
storm here).  So :data:`PIPE_LIMIT` is high — 1 per 32 MiB of RAM, 64 to 1024
— and the handlers' memory is bounded by their own back-pressure instead
(:mod:`coredumpd.pipeline.slots`): a few work, the rest wait at ~3 MiB each,
so even the limit's worth of waiting handlers stays near a tenth of the RAM.
The values found are saved (:mod:`coredumpd.pipeline.saved`) and restored by
``uninstall``.  Once saved, they are not replaced by a pattern of coredumpd's own —
a socket pattern, or the pipe handler of any coredumpd (another checkout, another
configuration, a test's): the file is the machine's one memory of what it had
before coredumpd, and such a pattern may be in force only for a while.  And
``uninstall`` restores no pattern that would lose every crash — a pipe program
that is no longer there, a coredumpd handler whose configuration file is gone, a
socket path with no socket — but the kernel's default (``core``), and says so.

The registered ``coredumpd`` is a launcher written by ``install``
(:data:`LAUNCHER_DIR`): the same entry point as the console script, but started
with ``python -I -S`` and the package's paths baked in.  The crashed process
waits for the interpreter to start, and ``site`` alone — with an editable
install's path finder (pathlib, urllib, ipaddress...) — measured 50-100 ms of
a 90 ms tiny-core reap here, against 15 ms for ``python -I -S``.
"""

from __future__ import annotations

import os
import stat
import sys

from coredumpd.errors import ConfigError
from coredumpd.ingest.args import PATTERN_ARGS
from coredumpd.paths import DEFAULT_SOCKET_PATH, SAVED_SYSCTL_PATH
from coredumpd.pipeline import saved

CORE_PATTERN = "/proc/sys/kernel/core_pattern"
CORE_PIPE_LIMIT = "/proc/sys/kernel/core_pipe_limit"
LAUNCHER_DIR = "/usr/local/lib/coredumpd"
LAUNCHER = """#!{python} -IS
# Written by `coredumpd install`: the kernel's core_pattern handler, started
# without site (-S) and isolated (-I); the paths below were current at install.
import sys
sys.path[:0] = {paths!r}
from coredumpd.pipeline.main import main
sys.exit(main())
"""
PATTERN_MAX = 127
KERNEL_DEFAULT_PATTERN = "core"  # fs/coredump.c: core_pattern's initial value
PIPE_LIMIT_MIN = 64  # a storm of 64 at once (issue 9) loses nothing, even on a small machine
PIPE_LIMIT_MAX = 1024
RAM_PER_WAITING_HANDLER = 32 << 20  # one allowed per 32 MiB: ~3 MiB each, under 10% of RAM


def pipe_limit(meminfo: str = "/proc/meminfo") -> int:
    """kernel.core_pipe_limit for this machine: MemTotal / 32 MiB, within 64..1024."""
    try:
        with open(meminfo, encoding="ascii") as handle:
            kib = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal:"))
    except (OSError, ValueError, IndexError, StopIteration):
        return PIPE_LIMIT_MIN
    return min(PIPE_LIMIT_MAX, max(PIPE_LIMIT_MIN, (kib << 10) // RAM_PER_WAITING_HANDLER))


PIPE_LIMIT = pipe_limit()


def launcher_paths() -> list[str]:
    """Where the package and its dependencies are: what ``site`` would have added."""
    import site

    import coredumpd
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(coredumpd.__file__)))
    paths = [package_root]
    for directory in site.getsitepackages():
        if directory not in paths:
            paths.append(directory)
    return paths


def write_launcher(directory: str = LAUNCHER_DIR) -> str:
    """Write ``DIRECTORY/coredumpd`` (root-owned, 0755, replaced atomically); its path."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    info = os.stat(directory)
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise ConfigError(f"{directory} must be owned by us and not writable by others")
    path = os.path.join(directory, "coredumpd")
    temp = f"{path}.tmp{os.getpid()}"
    python = os.path.realpath(sys.executable) if " " in sys.executable else sys.executable
    with open(temp, "w", encoding="utf-8") as handle:
        handle.write(LAUNCHER.format(python=python, paths=launcher_paths()))
    os.chmod(temp, 0o755)
    os.replace(temp, path)
    return path


def build_pattern(handler: str, config_path: str | None = None) -> str:
    """The core_pattern for ``handler``; ConfigError if the kernel could not take it."""
    words = [handler] + ([os.path.abspath(config_path)] if config_path else [])
    for word in words:
        if any(ch.isspace() for ch in word):
            raise ConfigError(f"{word!r} contains white space, which core_pattern cannot quote")
    pattern = f"|{handler} {PATTERN_ARGS}"
    if config_path:
        pattern += f" --config {os.path.abspath(config_path)}"
    size = len(pattern.encode())
    if size > PATTERN_MAX:
        raise ConfigError(
            f"the core_pattern would be {size} bytes, over the kernel's limit of {PATTERN_MAX}:"
            f" {pattern!r}; install coredumpd or the configuration file under a shorter path")
    return pattern


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().rstrip("\n")


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(value)


def install(config_path: str | None = None, saved_path: str = SAVED_SYSCTL_PATH,
            handler: str | None = None, launcher_dir: str = LAUNCHER_DIR) -> str:
    """Register the handler (by default a fresh launcher in ``launcher_dir``);
    returns the pattern written.  Changes nothing in the kernel on error."""
    if config_path is not None and not os.path.isfile(config_path):
        raise ConfigError(f"configuration file {config_path} does not exist")
    validate_config(config_path)
    build_pattern(handler or os.path.join(launcher_dir, "coredumpd"), config_path)  # fits?
    if handler is None:
        try:
            handler = write_launcher(launcher_dir)
        except OSError as err:
            raise ConfigError(f"cannot write the launcher in {launcher_dir}: {err}") from err
    pattern = build_pattern(handler, config_path)
    try:
        current = {"core_pattern": _read(CORE_PATTERN), "core_pipe_limit": _read(CORE_PIPE_LIMIT)}
        if not (is_coredumpd_pattern(current["core_pattern"]) and os.path.exists(saved_path)):
            saved.write(saved_path, current)  # never a coredumpd's over the values saved
        _write(CORE_PIPE_LIMIT, str(PIPE_LIMIT))
        _write(CORE_PATTERN, pattern)
    except OSError as err:
        raise ConfigError(f"cannot register the handler: {err}") from err
    return pattern


def is_coredumpd_pattern(pattern: str) -> bool:
    """A socket pattern (``@@PATH``, what ``coredumpd serve`` is switched to), or the pipe
    pattern of any coredumpd handler: ``|PROGRAM`` and our specifiers, maybe ``--config``."""
    if pattern.startswith("@@"):
        return True
    words, specifiers = pattern.split(), PATTERN_ARGS.split()
    rest = words[1 + len(specifiers):]
    return pattern.startswith("|") and words[1:1 + len(specifiers)] == specifiers and \
        (rest == [] or (len(rest) == 2 and rest[0] == "--config"))


def lost_crashes_reason(pattern: str) -> str | None:
    """Why every crash would be lost with ``pattern`` now, or None: a pipe program that
    is not an executable file, a coredumpd handler's configuration file that is gone, a
    socket path where no socket is (nothing can listen there)."""
    if pattern.startswith("|"):
        words = pattern[1:].split()
        program = words[0] if words else ""
        if program.startswith("/") and not (os.path.isfile(program)
                                            and os.access(program, os.X_OK)):
            return f"its program {program} is not there"
        if is_coredumpd_pattern(pattern) and words[-2:-1] == ["--config"] and \
                not os.path.isfile(words[-1]):
            return f"its configuration file {words[-1]} is not there"
    elif pattern.startswith("@"):
        path = pattern.lstrip("@")
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                return None
        except OSError:
            pass
        return f"no socket is at {path}"
    return None


def validate_config(config_path: str | None) -> None:
    """Refuse a configuration the handler could not read whole (ConfigFileError names
    each bad key and line): at crash time such a value would silently be its default."""
    from coredumpd.config import ConfigFileError, load_config
    try:
        load_config(config_path, strict=True)
    except ConfigFileError as err:
        raise ConfigFileError(f"{err} (nothing installed)", err.problems) from err


def install_mode(config_path: str | None = None, mode: str | None = None,
                 saved_path: str = SAVED_SYSCTL_PATH, handler: str | None = None,
                 socket_path: str = DEFAULT_SOCKET_PATH) -> str:
    """``coredumpd install [--socket|--pipe]``: the pipe handler first (registered, the
    previous values saved), then for the socket a supervised server that switches
    core_pattern to ``@@PATH`` once it accepts (an ``@@`` pattern found is never saved
    as the previous one once values are saved: it is ours, or nobody serves it).  ``mode`` None: the socket where the
    kernel has it (Linux 6.16+), else the pipe.  Returns the core_pattern in force."""
    from coredumpd.ingest.coredump_socket import kernel_supports_socket
    from coredumpd.pipeline.daemon import start_supervisor, stop_supervisor
    if mode is None:
        mode = "socket" if kernel_supports_socket() else "pipe"
    if mode == "socket" and not kernel_supports_socket():
        raise ConfigError(f"this kernel ({os.uname().release}) has no coredump socket"
                          " (Linux 6.16 or later); use --pipe")
    if config_path is not None and not os.path.isfile(config_path):
        raise ConfigError(f"configuration file {config_path} does not exist")
    validate_config(config_path)  # as install() checks, before anything changes
    build_pattern(handler or os.path.join(LAUNCHER_DIR, "coredumpd"), config_path)  # fits?
    stop_supervisor(saved_path)  # an earlier install --socket: started afresh or not at all
    pattern = install(config_path, saved_path, handler)
    if mode == "socket":
        if not start_supervisor(saved_path, config_path, socket_path, handler):
            raise ConfigError("coredumpd serve did not start accepting; the pipe handler "
                              f"stays registered ({pattern})")
        pattern = _read(CORE_PATTERN)
    return pattern


def uninstall(saved_path: str = SAVED_SYSCTL_PATH,
              launcher_dir: str = LAUNCHER_DIR) -> dict[str, str]:
    """Restore the values saved by :func:`install` and remove the launcher; returns the
    values written, with ``not_restored`` and ``reason`` when the saved pattern would have
    lost every crash and the kernel's default was written instead."""
    from coredumpd.pipeline.daemon import stop_supervisor
    stop_supervisor(saved_path)  # what install started, before the pattern it restores
    try:
        previous = saved.previous_sysctls(saved_path)
        reason = lost_crashes_reason(previous["core_pattern"])
        if reason is not None:
            previous.update(not_restored=previous["core_pattern"], reason=reason,
                            core_pattern=KERNEL_DEFAULT_PATTERN)
        _write(CORE_PATTERN, previous["core_pattern"])
        _write(CORE_PIPE_LIMIT, previous["core_pipe_limit"])
        os.unlink(saved_path)
    except FileNotFoundError as err:
        raise ConfigError(f"nothing to restore: {saved_path} does not exist "
                          "(was coredumpd installed?)") from err
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot restore from {saved_path}: {err}") from err
    remove_launcher(launcher_dir, keep_if_used_by=previous["core_pattern"])
    return previous


def remove_launcher(directory: str = LAUNCHER_DIR, keep_if_used_by: str = "") -> bool:
    """Delete the launcher written by :func:`write_launcher` (and its directory when
    empty), unless the pattern being restored still runs it; True if removed."""
    path = os.path.join(directory, "coredumpd")
    if keep_if_used_by.startswith(f"|{path} ") or keep_if_used_by == f"|{path}":
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise ConfigError(f"restored kernel.core_pattern, but cannot remove {path}: {err}") \
            from err
    try:
        os.rmdir(directory)
    except OSError:
        pass  # not empty, or already gone: leave it
    return True
