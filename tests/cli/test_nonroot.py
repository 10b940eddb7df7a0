"""A user reads their own crashes, and nothing of root's (issue 5, coredumpd.store.userview).

Real crashes through the real handler: one as root, one as an unprivileged user
(``setpriv``), then ``corectl`` run as that user.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from coredumpd.model import Facts
from coredumpd.paths import view_path
from coredumpd.store.index import Index
from tests.support.crash import compile_c, registered_handler

pytestmark = pytest.mark.kernel

NOBODY = 65534
SEGV = "int main(void) { *(volatile int *)0 = 1; return 0; }\n"
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _corectl_as_nobody(config: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    repo = pathlib.Path(__file__).resolve().parents[2]
    return subprocess.run([*AS_NOBODY, sys.executable, "-m", "coredumpd.cli.corectl",
                           "--config", str(config), "--no-pager", *args],
                          capture_output=True, text=True, check=False, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo)})


@pytest.fixture
def public_dir():
    """A directory nobody may traverse (pytest's tmp_path is 0700)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="cdnr", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_user_sees_only_their_own_crash_without_root_only_facts(public_dir):
    if subprocess.run([*AS_NOBODY, sys.executable, "-c", "pass"], check=False).returncode:
        pytest.skip("this interpreter cannot be run by an unprivileged user here")
    program = compile_c(SEGV, public_dir, name="segv")
    store = public_dir / "cores"
    with registered_handler(public_dir, directory=str(store)) as handler:
        root_row = handler.crash([program], env={"SECRET_TOKEN": "root-secret"})
        user_row = handler.crash([*AS_NOBODY, program], env={"SECRET_TOKEN": "user-secret"})
        config = public_dir / "c.conf"
        shutil.copy(handler.config_path, config)
        os.chmod(config, 0o644)
    assert user_row["uid"] == NOBODY and root_row["uid"] == 0
    index_path = store / "index.sqlite"
    with Index(str(index_path), create=False) as index:
        main_facts = index.get(user_row["id"]).facts
    assert any("user-secret" in item for item in main_facts.proc["environ"])
    view = pathlib.Path(view_path(str(index_path), NOBODY))
    assert view.stat().st_uid == 0 and view.stat().st_mode & 0o777 == 0o640
    assert not pathlib.Path(view_path(str(index_path), 0)).exists()

    listed = _corectl_as_nobody(config, "--json", "list")
    assert listed.returncode == 0, listed.stderr
    assert [entry["id"] for entry in json.loads(listed.stdout)] == [user_row["id"]]
    shown = _corectl_as_nobody(config, "--json", "show", root_row["id"])
    assert shown.returncode == 1 and shown.stderr == "No coredumps found.\n"
    shown = _corectl_as_nobody(config, "--json", "show", user_row["id"])
    assert shown.returncode == 0, shown.stderr
    assert "user-secret" not in shown.stdout and "root-secret" not in shown.stdout
    # The core itself: readable by its user through the ACL the handler set.
    out = public_dir / "out"
    out.mkdir()
    os.chown(out, NOBODY, NOBODY)
    dumped = _corectl_as_nobody(config, "dump", user_row["id"], "-o", str(out / "core"))
    assert dumped.returncode == 0, dumped.stderr
    assert (out / "core").read_bytes()[:4] == b"\x7fELF"
    # Without the ACL (a core of changed credentials stays root's): a clear refusal.
    core = store / user_row["core_path"]
    os.removexattr(core, "system.posix_acl_access")
    refused = _corectl_as_nobody(config, "dump", user_row["id"], "-o", str(out / "core2"))
    assert refused.returncode != 0 and refused.stderr.startswith("corectl: error:")
    assert "ermission denied" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr


def test_views_follow_updates_and_deletes(tmp_path):
    from coredumpd.store.index import CrashRecord

    index = Index(str(tmp_path / "index.sqlite"))
    record = CrashRecord(pid=10, tid=10, uid=1000, gid=1000, signal=11, timestamp_us=1,
                         facts=Facts.from_json({"proc": {"environ": ["A=b"], "fds": [{"fd": 0}], "cwd": "/"}}))
    crash = index.insert(record)
    path = view_path(index.path, 1000)
    with Index(path, create=False) as view:
        row = view.get(crash)
        assert row is not None and row.facts.proc["environ"] is None
        assert row.facts.proc["fds"] is None and row.facts.proc["cwd"] == "/"
    index.update(crash, root_cause="null-deref")
    with Index(path, create=False) as view:
        assert view.get(crash).root_cause == "null-deref"
    index.delete(crash)
    with Index(path, create=False) as view:
        assert view.find() == []
    assert os.getxattr(path, "system.posix_acl_access")  # the user's read entry
    index.close()
