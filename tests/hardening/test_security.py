"""Security properties of the handler and the store, checked with real crashes.

- a process that changed credentials (dump mode 2) gets a root-only core, no ACL;
  an ordinary user's core gets the ACL entry for that user (the control);
- a storage directory that is a symlink is not followed;
- nothing lands in the crashing user's cwd or TMPDIR;
- the index (it holds environments and fd lists) is unreadable for other users;
- a hostile process name never reaches corectl's terminal output unescaped.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.hardening.helpers import crash_under, rows_for
from tests.support.crash import compile_c, handler_pattern, write_config

pytestmark = [pytest.mark.kernel, pytest.mark.fault_case]

USER = 1000  # a regular uid present on the test machines (Debian's first user)
NULL_DEREF = "int main(void){ *(volatile int *)0 = 1; return 0; }\n"
DROP_THEN_CRASH = r"""
#define _GNU_SOURCE
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    uid_t uid = (uid_t)atoi(argv[1]);
    if (setresgid(uid, uid, uid) || setresuid(uid, uid, uid)) return 2;
    *(volatile int *)0 = 1;   /* credentials changed: dumpable = suid_dumpable */
    return 0;
}
"""
ACL_XATTR = "system.posix_acl_access"


def store_config(tmp_path: pathlib.Path, **settings) -> tuple[str, str]:
    directory = str(tmp_path / "store")
    path = os.path.join(tempfile.mkdtemp(prefix="cdh", dir="/tmp"), "c.conf")
    write_config(path, directory, **({"journal": False, "analysis": False} | settings))
    return path, directory


def world_readable_dir(tmp_path: pathlib.Path, name: str) -> pathlib.Path:
    """A directory the test user can use (tmp_path is 0700 root)."""
    path = pathlib.Path("/tmp") / f"cdsec-{os.getpid()}-{name}"
    path.mkdir(mode=0o755)
    os.chown(path, USER, USER)
    return path


def acl_users(path: str) -> list[int]:
    """uids with an ACL_USER entry in the file's access ACL ([] when there is none)."""
    try:
        raw = os.getxattr(path, ACL_XATTR)
    except OSError:
        return []
    users = []
    for offset in range(4, len(raw), 8):
        tag, _perm, ident = (int.from_bytes(raw[offset:offset + 2], "little"),
                             int.from_bytes(raw[offset + 2:offset + 4], "little"),
                             int.from_bytes(raw[offset + 4:offset + 8], "little"))
        if tag == 0x02:
            users.append(ident)
    return users


def test_credentials_changed_core_stays_root_only(tmp_path):
    program = compile_c(DROP_THEN_CRASH, tmp_path, name="dropper")
    config, _ = store_config(tmp_path)
    pid, returncode, _ = crash_under(handler_pattern(config), [program, str(USER)],
                                     suid_dumpable="2")
    assert returncode == -11
    row = rows_for(config, pid)[0]
    assert row["dump_mode"] == 2
    stat = os.stat(row["core_path"])
    assert (stat.st_uid, stat.st_mode & 0o777) == (0, 0o640)
    assert acl_users(row["core_path"]) == []


def test_ordinary_user_gets_read_access_through_an_acl(tmp_path):
    """The control for the test above: the same kind of crash, dump mode 1."""
    home = world_readable_dir(tmp_path, "acl")
    try:
        program = compile_c(NULL_DEREF, home, name="usercrash")
        config, _ = store_config(tmp_path)
        pid, returncode, _ = crash_under(handler_pattern(config), [program], user=USER,
                                         cwd=str(home))
        assert returncode == -11
        row = rows_for(config, pid)[0]
        assert row["dump_mode"] == 1 and row["uid"] == USER
        assert acl_users(row["core_path"]) == [USER]
        stat = os.stat(row["core_path"])
        assert stat.st_uid == 0 and stat.st_mode & 0o007 == 0
    finally:
        shutil.rmtree(home)


def test_symlinked_storage_directory_is_not_followed(tmp_path):
    program = compile_c(NULL_DEREF, tmp_path, name="symlinked")
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "store"
    link.symlink_to(target)
    config = os.path.join(tempfile.mkdtemp(prefix="cdh", dir="/tmp"), "c.conf")
    write_config(config, str(link), journal=False, analysis=False)
    _, returncode, _ = crash_under(handler_pattern(config), [program])
    assert returncode == -11  # the handler finished and let the kernel go
    assert list(target.iterdir()) == []
    assert link.is_symlink()


def test_nothing_is_written_to_the_crashers_cwd_or_tmpdir(tmp_path):
    home = world_readable_dir(tmp_path, "cwd")
    scratch = world_readable_dir(tmp_path, "tmpdir")
    binaries = world_readable_dir(tmp_path, "bin")
    try:
        program = compile_c(NULL_DEREF, binaries, name="cwdcrash")
        config, _ = store_config(tmp_path, analysis=True)
        before = set(os.listdir("/tmp"))
        pid, _, _ = crash_under(handler_pattern(config), [program], user=USER, cwd=str(home),
                                env={"TMPDIR": str(scratch), "HOME": str(home)})
        rows_for(config, pid, timeout=120, analysed=True)
        assert list(home.iterdir()) == []
        assert list(scratch.iterdir()) == []
        # /tmp itself is shared with other test runs: look for what would be ours, and
        # among the names with "core" in them only files: concurrent runs' tests make
        # directories there ("corectl-programs-*", "coredumpd-tests-default-*", ...).
        new = [name for name in set(os.listdir("/tmp")) - before
               if str(pid) in name or "cwdcrash" in name
               or ("core" in name.lower() and not os.path.isdir(os.path.join("/tmp", name)))]
        assert new == []
    finally:
        for path in (home, scratch, binaries):
            shutil.rmtree(path)


def test_index_with_environments_is_not_readable_by_other_users(tmp_path):
    program = compile_c(NULL_DEREF, tmp_path, name="secretenv")
    config, directory = store_config(tmp_path)
    pid, _, _ = crash_under(handler_pattern(config), [program],
                            env={"API_TOKEN": "hunter2-secret"})
    row = rows_for(config, pid)[0]
    assert "hunter2-secret" in json.dumps(row["facts"])  # recorded, for root
    os.chmod(tmp_path, 0o755)  # only the store's own modes protect it now
    index = os.path.join(directory, "index.sqlite")
    probe = subprocess.run(["/bin/cat", index], user=USER, group=USER, extra_groups=[],
                           capture_output=True, check=False)
    assert probe.returncode != 0 and b"Permission denied" in probe.stderr
    stat = os.stat(directory)
    # Others may traverse the store (to the cores and per-user views their ACLs
    # open to them, coredumpd.store.userview), never list or write it.
    assert stat.st_mode & 0o007 == 0o001


def test_hostile_process_name_is_escaped_in_corectl_output(tmp_path, monkeypatch):
    name = "ev\x1b[2Jil\x07"
    program = compile_c(NULL_DEREF, tmp_path, name=name)
    config, _ = store_config(tmp_path)
    pid, _, _ = crash_under(handler_pattern(config), [program, "\x1b]0;pwned\x07", "a\x9bb"])
    rows_for(config, pid)
    from coredumpd.cli import corectl

    outputs = []
    for argv in (["--no-pager", "list"], ["--no-pager", "show", str(pid)],
                 ["--json", "list"]):
        buffer = io.StringIO()
        monkeypatch.setattr(sys, "stdout", buffer)
        status = corectl.main(["--config", config, *argv], env={})
        outputs.append((status, buffer.getvalue()))
    for status, text in outputs[:2]:
        assert status == 0
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text
    assert "pwned" in outputs[1][1]  # the argument is shown, escaped
    assert "ev" in outputs[0][1]
    assert json.loads(outputs[2][1])[0]["comm"].startswith("ev\x1b")  # JSON keeps the truth
