"""Package versions from dpkg's database: a made-up one, and this machine's against
dpkg-query (the independent tool), for files without an ELF package note."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

from coredumpd.fleet import dpkg
from coredumpd.fleet.record import build_record, same_inode
from coredumpd.model import Facts, Module
from tests.fleet.test_record import crash_record

STATUS = """Package: libfoo1
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 1.0-1
Description: foo
 a continuation line: Version: 9

Package: libfoo1
Status: install ok installed
Architecture: i386
Multi-Arch: same
Version: 1.0-1

Package: foo-tools
Status: install ok installed
Architecture: amd64
Version: 2:3.4-5+deb12u1

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 0.1
"""


def admin_directory(root: pathlib.Path) -> str:
    info = root / "info"
    info.mkdir(parents=True)
    (info / "libfoo1:amd64.list").write_text(
        "/.\n/lib\n/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu/libfoo.so.1\n")
    (info / "libfoo1:i386.list").write_text("/lib/i386-linux-gnu/libfoo.so.1\n")
    (info / "foo-tools.list").write_text(f"/usr/bin/foo\n{root.parent}/bin/foo\n")
    (info / "gone.list").write_text("/usr/bin/gone\n")
    (root / "status").write_text(STATUS)
    return str(root)


def test_owners_and_versions_from_a_made_up_database(tmp_path: pathlib.Path) -> None:
    admin = admin_directory(tmp_path / "dpkg")
    found = dpkg.packages(["/usr/lib/x86_64-linux-gnu/libfoo.so.1",  # merged /usr spelling
                           "/lib/i386-linux-gnu/libfoo.so.1", "/bin/foo", "/usr/bin/gone",
                           "/opt/nobody"], admin)
    assert found == {
        "/usr/lib/x86_64-linux-gnu/libfoo.so.1": {"type": "deb", "name": "libfoo1",
                                                  "version": "1.0-1", "architecture": "amd64"},
        "/lib/i386-linux-gnu/libfoo.so.1": {"type": "deb", "name": "libfoo1",
                                            "version": "1.0-1", "architecture": "i386"},
        "/bin/foo": {"type": "deb", "name": "foo-tools", "version": "2:3.4-5+deb12u1",
                     "architecture": "amd64"}}  # "gone" is not installed
    assert dpkg.spellings("/usr/lib64/ld.so") == ("/usr/lib64/ld.so", "/lib64/ld.so")
    assert dpkg.spellings("/bin/sh") == ("/bin/sh", "/usr/bin/sh")
    assert dpkg.spellings("/usr/share/x") == ("/usr/share/x",)
    assert dpkg.packages(["/bin/foo"], str(tmp_path / "none")) == {}


def dpkg_query(path: str) -> dict[str, str]:
    """The owner of ``path`` (either /usr spelling) and its version, as dpkg-query says."""
    for spelling in dpkg.spellings(path):
        done = subprocess.run(["dpkg-query", "-S", spelling], capture_output=True, text=True,
                              check=False)
        if done.returncode == 0:
            package = done.stdout.split(":")[0] if done.stdout.count(":") == 1 else \
                ":".join(done.stdout.split(":")[:2])
            shown = subprocess.run(["dpkg-query", "-W", "-f",
                                    "${Package} ${Version} ${Architecture}", package],
                                   capture_output=True, text=True, check=True).stdout.split()
            return {"type": "deb", "name": shown[0], "version": shown[1],
                    "architecture": shown[2]}
    raise AssertionError(f"dpkg-query knows no owner of {path}")


def test_this_machines_database_agrees_with_dpkg_query() -> None:
    libc = os.path.realpath("/usr/lib/x86_64-linux-gnu/libc.so.6")
    paths = [os.path.realpath(shutil.which(name) or name) for name in ("dash", "sleep", "gdb")]
    paths.append(libc)
    found = dpkg.packages(paths)
    assert found == {path: dpkg_query(path) for path in paths}


def facts_for(path: str) -> Facts:
    """What the handler records of a mapped file (ingest.procfs.read_files), here and now."""
    st = os.stat(path)
    stat = {"dev": st.st_dev, "inode": st.st_ino, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}
    return Facts(proc={"files": {path: {"now": dict(stat), "mapped": dict(stat)}}})


def test_the_database_is_trusted_only_for_the_inode_that_ran(tmp_path: pathlib.Path) -> None:
    admin = admin_directory(tmp_path / "dpkg")
    exe = tmp_path / "bin" / "foo"
    exe.parent.mkdir()
    exe.write_bytes(b"not an ELF file: no package note")
    record = crash_record(exe=str(exe), build_id=None)
    record.facts = facts_for(str(exe))
    assert same_inode(record, str(exe))
    fleet = build_record(record, host="h", machine_id="", dpkg_admin=admin)
    assert fleet.modules[0].package == {"type": "deb", "name": "foo-tools",
                                        "version": "2:3.4-5+deb12u1", "architecture": "amd64"}
    assert fleet.modules[0].package_from == "dpkg"
    assert fleet.product_version == "2:3.4-5+deb12u1"
    # an upgrade after the crash: dpkg unpacks a new file over the path (a new inode)
    replacement = tmp_path / "bin" / "foo.dpkg-new"
    replacement.write_bytes(b"the next version")
    os.rename(replacement, exe)
    assert not same_inode(record, str(exe))
    fleet = build_record(record, host="h", machine_id="", dpkg_admin=admin)
    assert fleet.modules[0].package is None and fleet.product_version is None
    # a process in another mount namespace: the host's database says nothing of its files
    record.facts = facts_for(str(exe))
    record.facts.proc["files"][str(exe)]["host"] = {"error": "ENOENT"}
    assert not same_inode(record, str(exe))
    # a module the analysis found replaced at dump time is not looked up either
    record.facts = facts_for(str(exe))
    assert record.analysis is not None
    record.analysis.modules = [Module(path=str(exe), start=0, end=1, replaced=True)]
    assert build_record(record, host="h", machine_id="",
                        dpkg_admin=admin).modules[0].package is None
