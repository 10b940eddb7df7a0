"""Moving the calling process into the cgroups of another (the analysis worker's children
into their client's): cgroups(7).

A process started by the worker is in the worker's cgroups, those of the service that
runs ``coredumpd serve``; a user's command run there would escape the limits of that
user's own cgroup (systemd's ``MemoryMax=``, ``TasksMax=`` of ``user-UID.slice``).  So
each child joins, before it reads anything the client sent, the cgroup its client is in
in every hierarchy mounted here: the unified one (cgroup v2) and, on a hybrid system, the
v1 ones whose controllers hold the limits.
"""

from __future__ import annotations

import os

from coredumpd.values import Frozen

PROC_ROOT = "/proc"


class Membership(Frozen):
    """One line of /proc/PID/cgroup: ``hierarchy-ID:controller-list:cgroup-path``."""

    controllers: frozenset[str]  # empty: the unified (v2) hierarchy
    path: str  # relative to the reader's cgroup namespace root

    @property
    def unified(self) -> bool:
        return not self.controllers


def read_memberships(pid: int | str) -> list[Membership]:
    """The cgroups of ``pid``, one per hierarchy (OSError when it cannot be read)."""
    with open(f"{PROC_ROOT}/{pid}/cgroup", encoding="utf-8", errors="surrogateescape") as handle:
        lines = handle.read().splitlines()
    memberships = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, colon, path = rest.partition(":")
        if not colon or not hierarchy.isdigit() or not path.startswith("/"):
            raise OSError(f"{PROC_ROOT}/{pid}/cgroup: unexpected line {line!r}")
        names = frozenset(name for name in controllers.split(",") if name)
        memberships.append(Membership(names if hierarchy != "0" else frozenset(), path))
    return memberships


class Mount(Frozen):
    """A cgroup file system mounted here, from /proc/self/mountinfo (proc(5))."""

    root: str  # the cgroup at its mount point
    mount_point: str
    options: frozenset[str]  # its super options (the v1 controllers, name=...)
    unified: bool


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (``\\040`` for a space): fs/proc_namespace.c."""
    return field.encode("latin-1").decode("unicode_escape").encode("latin-1").decode(
        "utf-8", "surrogateescape")


def cgroup_mounts(mountinfo: str = f"{PROC_ROOT}/self/mountinfo") -> list[Mount]:
    """The cgroup and cgroup2 mounts of our mount namespace."""
    mounts = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            fields = line.split()
            if "-" not in fields:
                continue
            dash = fields.index("-")
            fstype = fields[dash + 1] if len(fields) > dash + 1 else ""
            if fstype not in ("cgroup", "cgroup2") or len(fields) < dash + 4:
                continue
            mounts.append(Mount(_unescape(fields[3]), _unescape(fields[4]),
                                frozenset(fields[dash + 3].split(",")), fstype == "cgroup2"))
    return mounts


def _mount_of(membership: Membership, mounts: list[Mount]) -> Mount | None:
    for mount in mounts:
        if membership.unified and mount.unified:
            return mount
        if not membership.unified and not mount.unified and \
                membership.controllers <= mount.options:
            return mount
    return None


def _directory(membership: Membership, mount: Mount) -> str:
    """Where ``membership``'s cgroup is under ``mount`` (OSError: not below its root)."""
    root = mount.root.rstrip("/")
    if membership.path != root and not membership.path.startswith(root + "/"):
        raise OSError(f"cgroup {membership.path} is not below {mount.mount_point}")
    return mount.mount_point.rstrip("/") + membership.path[len(root):]


def join(memberships: list[Membership], mounts: list[Mount]) -> None:
    """Move the calling process into each of ``memberships`` mounted here (writing to
    ``cgroup.procs``: cgroup-v2.rst "Organizing Processes"; not where it is already, a
    move costs ~0.1 ms); OSError when one cannot be joined, or when there is a unified
    hierarchy but it is not mounted here."""
    own = set(read_memberships("self"))
    for membership in memberships:
        if membership in own:
            continue
        mount = _mount_of(membership, mounts)
        if mount is None:
            if membership.unified:
                raise OSError("the unified cgroup hierarchy is not mounted here")
            continue  # a v1 hierarchy mounted nowhere: nobody set limits through it
        path = os.path.join(_directory(membership, mount), "cgroup.procs")
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")  # 0: the writer itself
        finally:
            os.close(fd)
