"""Facts about the crashed process, read from /proc/PID while the kernel holds it.

With ``kernel.core_pipe_limit`` > 0 the dying process is not reaped before the
handler closes the pipe (fs/coredump.c: wait_for_dump_helpers()), so
/proc/PID is complete until then.  Everything goes through :func:`procfs_path`
(psutil's ``get_procfs_path()`` idea) so tests can point it elsewhere, and every
item degrades to ``missing[key] = reason`` instead of raising: a crash is
stored whatever /proc says.  All text is attacker-controlled (names with
spaces, newlines, escape sequences, invalid UTF-8): it is decoded with
``surrogateescape`` and never interpreted.

Formats: proc(5) — /proc/PID/stat, status, maps (``\\012`` escapes newlines in
paths, `` (deleted)`` marks unlinked files), limits, mountinfo, ns/, fdinfo.
"""

from __future__ import annotations

import errno as errno_
import os
import struct
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_PROCFS = "/proc"
MAX_MAPS = 65536
MAX_FDS = 4096
MAX_LINES = 4096
MAX_READ = 4 << 20
AUXV_ENTRY = struct.Struct("<QQ")  # Elf64_auxv_t (same layout as elf.layouts.AUXV_ENTRY)
UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".timer", ".swap", ".path",
                 ".target", ".device", ".automount")
NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")


def procfs_path() -> str:
    """The mount point of procfs (``/proc`` unless a test changed it)."""
    return _PROCFS


def set_procfs_path(path: str) -> None:
    """Point every /proc read of this module at ``path`` (tests)."""
    global _PROCFS
    _PROCFS = path


def proc(pid: int | str, *parts: str) -> str:
    return os.path.join(procfs_path(), str(pid), *parts)


def _read_bytes(path: str, limit: int = MAX_READ) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        chunks = []
        total = 0
        while total < limit:
            chunk = os.read(fd, min(1 << 16, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _read_text(path: str) -> str:
    return _text(_read_bytes(path))


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.errno is not None:
        return errno_.errorcode.get(err.errno, str(err.errno))
    return f"{type(err).__name__}: {err}"


class Collector:
    """Runs each reader, putting its value in ``out`` or its failure in ``missing``."""

    def __init__(self, missing: dict[str, str]) -> None:
        self.missing = missing

    def get(self, key: str, reader: Callable[[], Any]) -> Any:
        try:
            return reader()
        except (OSError, ValueError, IndexError, KeyError, struct.error) as err:
            self.missing[key] = _reason(err)
            return None


def read_comm(pid: int) -> str:
    return _read_text(proc(pid, "comm")).rstrip("\n")


def read_cmdline(pid: int) -> list[str]:
    raw = _read_bytes(proc(pid, "cmdline"))
    return [_text(part) for part in raw.split(b"\0")[:-1 if raw.endswith(b"\0") else None]]


def read_stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat fields after ``comm`` (field 3 is index 0); comm may hold ')'."""
    raw = _read_text(proc(pid, "stat"))
    return raw[raw.rindex(")") + 2:].split()


def start_time_ticks(pid: int) -> int:
    return int(read_stat_fields(pid)[19])  # field 22, starttime (clock ticks since boot)


def boot_time_us() -> int:
    """Wall-clock time of boot: CLOCK_REALTIME - CLOCK_BOOTTIME."""
    realtime = time.clock_gettime_ns(time.CLOCK_REALTIME)
    boottime = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    return (realtime - boottime) // 1000


_STATUS_INT_LISTS = ("NSpid", "NStgid", "NSpgid", "NSsid", "Uid", "Gid", "Groups")
_STATUS_INTS = ("Seccomp", "NoNewPrivs", "PPid", "TracerPid", "Threads", "Tgid", "Pid")
_STATUS_TEXT = ("SigIgn", "SigBlk", "SigCgt", "SigPnd", "ShdPnd", "CapEff", "CapPrm",
                "CapBnd", "State", "Name", "Umask")


def read_status(pid: int) -> dict[str, Any]:
    status: dict[str, Any] = {}
    for line in _read_text(proc(pid, "status")).splitlines():
        key, _sep, value = line.partition(":")
        value = value.strip()
        if key in _STATUS_INT_LISTS:
            status[key] = [int(item) for item in value.split()]
        elif key in _STATUS_INTS:
            status[key] = int(value)
        elif key in _STATUS_TEXT:
            status[key] = value
    return status


def parse_maps_line(line: str) -> dict[str, Any]:
    """One /proc/PID/maps line; ``path`` keeps spaces, un-escapes ``\\012``."""
    fields = line.split(None, 5)
    start, end = (int(part, 16) for part in fields[0].split("-", 1))
    path = fields[5] if len(fields) > 5 else ""
    deleted = path.endswith(" (deleted)") and path.startswith("/")
    if deleted:
        path = path[:-len(" (deleted)")]
    return {"start": start, "end": end, "perms": fields[1], "offset": int(fields[2], 16),
            "dev": fields[3], "inode": int(fields[4]), "path": path.replace("\\012", "\n"),
            "deleted": deleted}


def read_maps(pid: int) -> list[dict[str, Any]]:
    lines = _read_text(proc(pid, "maps")).splitlines()[:MAX_MAPS]
    return [parse_maps_line(line) for line in lines if line]


def _stat_dict(st: os.stat_result) -> dict[str, int]:
    return {"dev": st.st_dev, "inode": st.st_ino, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _stat_or_error(path: str) -> dict[str, Any]:
    try:
        return _stat_dict(os.stat(path))
    except OSError as err:
        return {"error": _reason(err)}


def map_files_name(entry: dict[str, Any]) -> str:
    return f"{entry['start']:x}-{entry['end']:x}"


def _same_view(pid: int) -> bool:
    """True when PID resolves paths as the handler does: same mount namespace, root ``/``."""
    try:
        return os.readlink(proc(pid, "ns", "mnt")) == os.readlink(proc("self", "ns", "mnt")) \
            and os.readlink(proc(pid, "root")) == "/"
    except OSError:
        return False


def read_files(pid: int, maps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each mapped file: what is mapped (via map_files/) and what is on disk now.

    "now" is looked up through /proc/PID/root, i.e. in the crashed process's
    mount namespace and chroot; "host" (only when those differ from the
    handler's) is the same path as this machine's tools would open it.
    """
    files: dict[str, dict[str, Any]] = {}
    root = proc(pid, "root")
    same_view = _same_view(pid)
    for entry in maps:
        path = entry["path"]
        if entry["inode"] == 0 or not path.startswith("/") or path in files:
            continue
        files[path] = {
            "now": _stat_or_error(root + path),
            "mapped": _stat_or_error(proc(pid, "map_files", map_files_name(entry))),
        }
        if not same_view:
            files[path]["host"] = _stat_or_error(path)
    return files


def read_limits(pid: int) -> dict[str, list[str]]:
    """/proc/PID/limits: name -> [soft, hard, units] (columns are 2+ spaces apart)."""
    limits: dict[str, list[str]] = {}
    for line in _read_text(proc(pid, "limits")).splitlines()[1:]:
        parts = [part for part in line.split("  ") if part.strip()]
        if len(parts) >= 3:
            limits[parts[0].strip()] = [part.strip() for part in parts[1:4]]
    return limits


def read_fds(pid: int) -> list[dict[str, Any]]:
    fd_dir = proc(pid, "fd")
    fds = []
    for name in sorted(os.listdir(fd_dir), key=lambda n: int(n) if n.isdigit() else -1)[:MAX_FDS]:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError as err:
            target = f"<{_reason(err)}>"
        fds.append({"fd": int(name), "target": target})
    return fds


def read_auxv(pid: int) -> list[list[int]]:
    raw = _read_bytes(proc(pid, "auxv"))
    entries = []
    for offset in range(0, len(raw) - AUXV_ENTRY.size + 1, AUXV_ENTRY.size):
        a_type, a_val = AUXV_ENTRY.unpack_from(raw, offset)
        if a_type == 0:
            break
        entries.append([a_type, a_val])
    return entries


def _init_namespace(name: str) -> tuple[str | None, str]:
    """PID 1's namespace, or — when PID 1 is not dumpable and hides it — the
    handler's own, which the kernel starts in the initial namespaces (FACTS.md)."""
    for reference, pid in (("pid1", "1"), ("handler", "self")):
        try:
            return os.readlink(proc(pid, "ns", name)), reference
        except OSError:
            continue
    return None, "none"


def read_namespaces(pid: int) -> dict[str, dict[str, Any]]:
    """Each namespace of the process, and whether it is the initial one."""
    result: dict[str, dict[str, Any]] = {}
    for name in NAMESPACES:
        try:
            ident = os.readlink(proc(pid, "ns", name))
        except OSError:
            continue
        init, reference = _init_namespace(name)
        result[name] = {"id": ident, "same_as_init": None if init is None else init == ident,
                        "compared_with": reference}
    return result


def read_threads(pid: int) -> list[dict[str, Any]]:
    task = proc(pid, "task")
    threads = []
    for name in sorted(os.listdir(task), key=int)[:MAX_MAPS]:
        try:
            comm = _read_text(os.path.join(task, name, "comm")).rstrip("\n")
        except OSError:
            comm = None
        threads.append({"tid": int(name), "comm": comm})
    return threads


def unit_from_cgroup(cgroup: str) -> dict[str, str | None]:
    """systemd unit, user unit and slice from the v2 cgroup path.

    Like systemd's cg_path_get_unit()/cg_path_get_user_unit()
    (src/basic/cgroup-util.c): the first path component that is a unit name
    and not a slice; the user unit is the first one below ``user@UID.service``.
    """
    path = ""
    for line in cgroup.splitlines():
        if line.startswith("0::"):
            path = line[3:]
    unit = user_unit = slice_ = None
    below_user_manager = False
    for part in path.strip("/").split("/"):
        if part.endswith(".slice"):
            slice_ = part if unit is None else slice_
        elif part.endswith(UNIT_SUFFIXES):
            if unit is None:
                unit = part
                below_user_manager = part.startswith("user@") and part.endswith(".service")
            elif below_user_manager and user_unit is None:
                user_unit = part
    return {"unit": unit, "user_unit": user_unit, "slice": slice_}


def collect_process(pid: int, missing: dict[str, str], *, environ: bool = True) -> dict[str, Any]:
    """The ``proc`` object of the facts (docs/ARCHITECTURE.md)."""
    collector = Collector(missing)

    def get(key: str, reader: Callable[[], Any]) -> Any:
        return collector.get(f"proc.{key}", reader)

    out: dict[str, Any] = {}
    out["comm"] = get("comm", lambda: read_comm(pid))
    out["exe"] = get("exe", lambda: os.readlink(proc(pid, "exe")))
    out["cmdline"] = get("cmdline", lambda: read_cmdline(pid))
    out["cwd"] = get("cwd", lambda: os.readlink(proc(pid, "cwd")))
    out["root"] = get("root", lambda: os.readlink(proc(pid, "root")))
    out["cgroup"] = get("cgroup", lambda: _read_text(proc(pid, "cgroup")).rstrip("\n"))
    out.update(unit_from_cgroup(out["cgroup"] or ""))
    out["status"] = get("status", lambda: read_status(pid))
    out["start_time_ticks"] = get("start_time_ticks", lambda: start_time_ticks(pid))
    if out["start_time_ticks"] is not None:
        out["start_time_us"] = (boot_time_us()
                                + out["start_time_ticks"] * 1_000_000 // os.sysconf("SC_CLK_TCK"))
    out["threads"] = get("threads", lambda: read_threads(pid))
    out["maps"] = get("maps", lambda: read_maps(pid))
    out["files"] = get("files", lambda: read_files(pid, out["maps"] or []))
    out["limits"] = get("limits", lambda: read_limits(pid))
    out["fds"] = get("fds", lambda: read_fds(pid))
    out["mountinfo"] = get("mountinfo",
                           lambda: _read_text(proc(pid, "mountinfo")).splitlines()[:MAX_LINES])
    out["auxv"] = get("auxv", lambda: read_auxv(pid))
    out["namespaces"] = get("namespaces", lambda: read_namespaces(pid))
    if environ:
        out["environ"] = get("environ", lambda: [
            _text(item) for item in _read_bytes(proc(pid, "environ")).split(b"\0") if item])
    return out


def collect_sender(pid: int, missing: dict[str, str]) -> dict[str, Any]:
    """Who sent the fatal signal (si_code <= 0): read while the crasher is held."""
    get = Collector(missing).get
    status = get("sender.status", lambda: read_status(pid)) or {}
    uids = status.get("Uid") or [None]
    return {
        "pid": pid, "uid": uids[0],
        "comm": get("sender.comm", lambda: read_comm(pid)),
        "exe": get("sender.exe", lambda: os.readlink(proc(pid, "exe"))),
        "cmdline": get("sender.cmdline", lambda: read_cmdline(pid)),
    }


def pidfd_pid(pidfd: int) -> int | None:
    """The PID a pidfd refers to (``Pid:`` in /proc/self/fdinfo/FD), -1 once reaped."""
    for line in _read_text(os.path.join(procfs_path(), "self", "fdinfo", str(pidfd))).splitlines():
        if line.startswith("Pid:"):
            return int(line.split()[1])
    return None
