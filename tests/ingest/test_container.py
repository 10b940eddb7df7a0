"""Container engine and id from cgroup path shapes; the facts' container (ingest/container.py)."""

from __future__ import annotations

import pytest

from coredumpd.ingest.container import describe, from_cgroup, from_cgroup_path

ID = "4f9c2a" + "0" * 52 + "abcdef"
POD = "8d5c3e1a-2b4f-4c6d-9e8f-0a1b2c3d4e5f"


@pytest.mark.parametrize(("path", "expected"), [
    (f"/system.slice/docker-{ID}.scope", {"engine": "docker", "id": ID}),
    (f"/docker/{ID}", {"engine": "docker", "id": ID}),
    (f"/machine.slice/libpod-{ID}.scope/container", {"engine": "podman", "id": ID}),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope",
     {"engine": "podman", "id": ID}),
    (f"/libpod_parent/libpod-{ID}", {"engine": "podman", "id": ID}),
    ((f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}"
     f".slice/cri-containerd-{ID}.scope"),
     {"engine": "kubernetes (containerd)", "id": ID, "pod": POD}),
    (f"/kubepods/burstable/pod{POD}/{ID}", {"engine": "kubernetes", "id": ID, "pod": POD}),
    (f"/kubepods.slice/kubepods-pod{POD.replace('-', '_')}.slice/crio-{ID}.scope",
     {"engine": "kubernetes (cri-o)", "id": ID, "pod": POD}),
    ("/machine.slice/systemd-nspawn@debian.service/payload",
     {"engine": "systemd-nspawn", "id": "debian"}),
    ("/machine.slice/machine-fedora.scope", {"engine": "systemd-nspawn", "id": "fedora"}),
    ("/system.slice/nginx.service", None),
    (f"/machine.slice/libpod-conmon-{ID}.scope", None),  # podman's monitor, not a container
    ("/user.slice/user-1000.slice/session-2.scope", None),
    (f"/system.slice/{ID}", None),  # a bare id under an unknown parent says nothing
])
def test_cgroup_shapes(path, expected):
    assert from_cgroup_path(path) == expected


def test_v1_hierarchy_on_a_hybrid_system():
    text = f"12:pids:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n"
    assert from_cgroup(text) == {"engine": "docker", "id": ID}


def _proc(**changes):
    proc = {"cgroup": "0::/system.slice/x.service", "root": "/",
            "status": {"NSpid": [4242]},
            "namespaces": {"mnt": {"same_as_init": True}, "pid": {"same_as_init": True}},
            "mountinfo": ["22 1 0:21 / / rw - ext4 /dev/vda1 rw"]}
    proc.update(changes)
    return proc


def test_a_host_process_has_no_container():
    assert describe(_proc()) is None


def test_container_with_its_namespaces_and_root():
    mountinfo = [("511 480 0:52 / / rw,relatime - overlay overlay rw,lowerdir=/l,"
                 "upperdir=/var/lib/docker/overlay2/abc/diff,workdir=/w")]
    found = describe(_proc(cgroup=f"0::/system.slice/docker-{ID}.scope",
                           status={"NSpid": [4242, 1]}, mountinfo=mountinfo,
                           namespaces={"mnt": {"same_as_init": False},
                                       "pid": {"same_as_init": False}}))
    assert found == {"engine": "docker", "id": ID, "namespace_pid": 1,
                     "own_mount_namespace": True,
                     "root": "overlay overlay upperdir=/var/lib/docker/overlay2/abc/diff"}


def test_chroot_without_engine():
    found = describe(_proc(root="/srv/jail"))
    assert found == {"namespace_pid": None, "own_mount_namespace": False, "root": "/srv/jail"}
