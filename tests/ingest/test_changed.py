"""Mapped objects changed on disk: held open while the process lives, versions read after."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from coredumpd.ingest import procfs
from coredumpd.ingest.changed import hold_changed_objects, read_held_objects
from tests.support.crash import compile_c

LIB = "int foo(void) { return 1; }\n"
VERSIONS = "FOO_1.0 { global: foo; local: *; };\n"
MAIN = r"""
#include <unistd.h>
int foo(void);
int main(void) { foo(); pause(); }
"""


@pytest.fixture
def process_with_lib(tmp_path):
    (tmp_path / "v.map").write_text(VERSIONS)
    lib = compile_c(LIB, tmp_path, name="libfoo.so.1",
                    flags=("-shared", "-fPIC", f"-Wl,--version-script={tmp_path}/v.map",
                           "-Wl,-soname,libfoo.so.1"))
    exe = compile_c(MAIN, tmp_path, name="user", libs=(f"-L{tmp_path}", "-l:libfoo.so.1"))
    proc = subprocess.Popen([exe], env={"LD_LIBRARY_PATH": str(tmp_path)})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/maps") as handle:
            if "libfoo.so.1" in handle.read():
                break
        time.sleep(0.01)
    try:
        yield proc, lib
    finally:
        proc.kill()
        proc.wait()


def _changed(proc):
    missing: dict[str, str] = {}
    facts = procfs.collect_process(proc.pid, missing)
    held = hold_changed_objects(proc.pid, facts, missing)
    proc.kill()  # the versions must come from the held fd, not from /proc
    proc.wait()
    return read_held_objects(held, missing)


def test_unchanged_library_is_not_held(process_with_lib):
    proc, _lib = process_with_lib
    assert _changed(proc) == {}


@pytest.mark.parametrize("how", ["deleted", "replaced", "modified"])
def test_changed_library_versions_read_from_the_mapped_copy(process_with_lib, how):
    proc, lib = process_with_lib
    if how == "deleted":
        os.unlink(lib)
    elif how == "replaced":
        shutil.copy(lib, lib + ".new")
        os.rename(lib + ".new", lib)  # new inode, like install(1) or a package upgrade
    else:
        time.sleep(0.1)
        with open(lib, "r+b") as handle:  # same inode, like cp(1) over it
            handle.seek(os.path.getsize(lib) - 1)
            handle.write(handle.read(1) or b"\0")
        os.utime(lib)
    objects = _changed(proc)
    assert list(objects) == [lib]
    entry = objects[lib]
    assert entry["reason"] == how
    assert entry["soname"] == "libfoo.so.1"
    assert "FOO_1.0" in entry["verdefs"] and entry["defines"]["foo"] == ["FOO_1.0"]
