"""Which container a crashed process ran in: engine and id from its cgroup path, its root.

Container engines name the cgroup of a container after its id, in a few shapes
(the cgroup v2 path, or any v1 hierarchy's on a hybrid system):

- docker: ``/docker/ID`` (cgroupfs driver), ``…/docker-ID.scope`` (systemd driver);
- podman: ``…/libpod-ID.scope`` (also in a user's slice when rootless),
  ``/libpod_parent/libpod-ID`` (cgroupfs); ``libpod-conmon-ID.scope`` is its monitor,
  not the container;
- containerd / Kubernetes: ``…/kubepods…/pod<UID>…/cri-containerd-ID.scope``,
  ``/kubepods/<qos>/pod<UID>/ID`` (cgroupfs), ``…/crio-ID.scope`` (CRI-O),
  ``/system.slice/containerd.service/<namespace>-<name>`` is containerd's own shim;
- systemd-nspawn: ``/machine.slice/systemd-nspawn@NAME.service/…``,
  ``/machine.slice/machine-NAME.scope`` (machinectl / machined).

IDs are 64 hex digits, except nspawn's machine name.  Everything here is pure
text work on what the handler already read, done after the kernel released the
process (the facts' ``container``, docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

HEX_ID = r"[0-9a-f]{64}"
# (engine, pattern of one path component; group "id"), most specific first
SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("docker", re.compile(rf"docker-(?P<id>{HEX_ID})\.scope")),
    ("podman", re.compile(rf"libpod-(?P<id>{HEX_ID})(?:\.scope)?")),
    ("containerd", re.compile(rf"cri-containerd-(?P<id>{HEX_ID})\.scope")),
    ("cri-o", re.compile(rf"crio-(?P<id>{HEX_ID})\.scope")),
    ("systemd-nspawn", re.compile(r"systemd-nspawn@(?P<id>[^/]+)\.service")),
    ("systemd-nspawn", re.compile(r"machine-(?P<id>[^/]+)\.scope")),
)
KUBE_POD = re.compile(r"(?:kubepods-(?:besteffort-|burstable-)?)?pod(?P<pod>[0-9a-f_-]{36})"
                      r"(?:\.slice)?")
BARE_ID = re.compile(HEX_ID)


def _component(parts: list[str], index: int) -> dict[str, str] | None:
    part = parts[index]
    for engine, shape in SHAPES:
        match = shape.fullmatch(part)
        if match:
            return {"engine": engine, "id": match["id"]}
    if BARE_ID.fullmatch(part) and index > 0:  # cgroupfs drivers: the parent says whose
        parent = parts[index - 1]
        if parent == "docker":
            return {"engine": "docker", "id": part}
        if KUBE_POD.fullmatch(parent):
            return {"engine": "kubernetes", "id": part}
    return None


def from_cgroup_path(path: str) -> dict[str, str] | None:
    """``{"engine", "id"[, "pod"]}`` of the innermost container in one cgroup path."""
    parts = [part for part in path.split("/") if part]
    found: dict[str, str] | None = None
    pod = None
    for index in range(len(parts)):
        match = KUBE_POD.fullmatch(parts[index])
        if match:
            pod = match["pod"].replace("_", "-")
        found = _component(parts, index) or found
    if found is not None and pod is not None:
        found["pod"] = pod
        if found["engine"] in ("containerd", "cri-o"):
            found["engine"] = f"kubernetes ({found['engine']})"
    return found


def from_cgroup(text: str) -> dict[str, str] | None:
    """The container of /proc/PID/cgroup: the v2 line first, then each v1 hierarchy's."""
    lines = text.splitlines()
    lines.sort(key=lambda line: not line.startswith("0::"))
    for line in lines:
        found = from_cgroup_path(line.split(":", 2)[-1])
        if found is not None:
            return found
    return None


def _root_mount(mountinfo: list[str]) -> str | None:
    """The process's ``/`` mount (proc(5) mountinfo): "FSTYPE SOURCE [upperdir=…]"."""
    for line in mountinfo:
        fields = line.split(" ")
        if len(fields) > 6 and fields[4] == "/" and " - " in line:
            fstype, source, options = (line.split(" - ", 1)[1].split(" ") + ["", ""])[:3]
            upper = next((opt for opt in options.split(",") if opt.startswith("upperdir=")),
                         None)
            return " ".join(item for item in (fstype, source, upper) if item)
    return None


def describe(proc: dict[str, Any]) -> dict[str, Any] | None:
    """The facts' ``container``: engine, id, pod, namespace PID, root; None when the
    process ran in the host's PID and mount namespaces and no container's cgroup."""
    found: dict[str, Any] = dict(from_cgroup(str(proc.get("cgroup") or "")) or {})
    namespaces = proc.get("namespaces") or {}
    own = {name: (namespaces.get(name) or {}).get("same_as_init") is False
           for name in ("mnt", "pid")}
    root = proc.get("root")
    if not found and not any(own.values()) and root in (None, "/"):
        return None
    nspid = ((proc.get("status") or {}).get("NSpid") or [None])[-1]
    found["namespace_pid"] = nspid if own["pid"] else None
    found["own_mount_namespace"] = own["mnt"]
    if root not in (None, "/"):
        found["root"] = root  # a chroot: the path on this machine
    elif own["mnt"]:
        found["root"] = _root_mount(proc.get("mountinfo") or [])
    return found
