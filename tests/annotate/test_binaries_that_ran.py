"""The binaries that ran (issue 10): a deleted executable, a replaced one, a container's own.

Each scenario crashes a real program through the kernel and the coredumpd handler
(programs/ran/run.sh).  The handler gives every mapped file a verdict and keeps a
copy of the files the host path no longer gives (store/binaries.py); the analysis
names the frames from that copy.  The reference is gdb on the same core and the kept
copy: every frame of the crashed thread that gdb shows must carry gdb's name.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import time
from typing import Any

import pytest

from tests.annotate.crashing import PROGRAMS, Crash, crash

pytestmark = pytest.mark.kernel

def _run(scenario: Any, tmp_path: Any, how: str, *more: str) -> tuple[Any, Crash]:
    out = scenario("ran")
    result = crash(["/bin/sh", str(PROGRAMS / "ran" / "run.sh"), str(out), how, *more],
                   tmp_path, pidfile=str(out / "prog.pid"))
    assert result.via == "handler"
    return out, result


def _main_module(result: Crash) -> dict[str, Any]:
    frames = result.analysis["threads"][0]["frames"]
    main = next(frame for frame in frames if frame["symbol"] == "main")
    return next(module for module in result.analysis["modules"]
                if module["path"] == main["module"])


GDB_FRAMES = """
frame = gdb.newest_frame()
while frame is not None:
    print("FRAME", frame.name())  # inlined calls too: they are frames of ours as well
    frame = frame.older()
"""


def _gdb_names(result: Crash, binary: str, tmp_path: Any) -> list[str]:
    """The function of each frame of the crashed thread (inlined calls included), as gdb
    names it."""
    from coredumpd.store.lz4seek import open_core_source
    source = open_core_source(result.core_path)
    raw = tmp_path / "core.raw"
    with open(raw, "wb") as handle:
        offset = 0
        while offset < source.size:
            chunk = source.pread(offset, 1 << 20)
            handle.write(chunk)
            offset += len(chunk)
    script = tmp_path / "frames.py"
    script.write_text(GDB_FRAMES)
    text = subprocess.run(["gdb", "-batch", "-nx", "-ex", "set pagination off", "-x",
                           str(script), binary, str(raw)],
                          capture_output=True, text=True, check=True).stdout
    return [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("FRAME ")]


def _plain(name: str | None) -> str | None:
    """One spelling for gdb's DWARF names and our ELF ones: ``__GI__dl_catch_exception`` and
    ``_dl_catch_exception``, ``___dlopen`` and ``dlopen`` (aliases of one address)."""
    if name is None:
        return None
    return name.removeprefix("__GI_").lstrip("_")


def _same_names_as_gdb(result: Crash, gdb: list[str]) -> None:
    ours = [frame["symbol"] for frame in result.analysis["threads"][0]["frames"]]
    assert [_plain(name) for name in ours[:len(gdb)]] == [_plain(name) for name in gdb], \
        (ours, gdb)


def _check_frames_as_gdb(result: Crash, kept: str, tmp_path: Any) -> None:
    gdb = _gdb_names(result, kept, tmp_path)
    assert gdb[:3] == ["ran_crash", "ran_middle", "main"], gdb
    _same_names_as_gdb(result, gdb)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_deleted_or_replaced_executable_named_from_the_kept_copy(scenario, tmp_path, how):
    out, result = _run(scenario, tmp_path, how)
    module = _main_module(result)
    assert module["path"] == str(out / "prog")
    assert module["state"] == how
    kept = module["kept"]
    assert kept and os.path.isfile(kept)
    assert kept.endswith(module["build_id"][2:]) and module["file_build_id"] == module["build_id"]
    assert os.path.dirname(os.path.dirname(kept)) == os.path.join(
        os.path.dirname(result.core_path), "binaries")
    _check_frames_as_gdb(result, kept, tmp_path)
    assert "library-modified-in-place" not in result.ids
    assert "null-deref" in result.ids
    assert "library-replaced" in result.ids  # the right annotation: the program ran an old copy
    libc = next(m for m in result.analysis["modules"] if "/libc.so" in m["path"])
    assert libc["state"] == "same" and libc["kept"] is None


CONTAINER_ID = "c0ffee" + "5" * 58


@pytest.fixture
def docker_cgroup():
    """A cgroup v2 directory shaped like docker's (systemd driver), removed afterwards."""
    unified = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else \
        "/sys/fs/cgroup"
    parent = os.path.join(unified, f"coredumpd-test-{os.getpid()}.slice")
    path = os.path.join(parent, f"docker-{CONTAINER_ID}.scope")
    try:
        os.makedirs(path)
    except OSError as err:
        pytest.skip(f"cannot make a cgroup under {unified}: {err}")
    yield path
    for directory in (path, parent):
        for _ in range(100):  # the crashed process leaves its cgroup when it is reaped
            try:
                os.rmdir(directory)
                break
            except OSError:
                time.sleep(0.05)


def test_container_program_named_from_its_own_file(scenario, tmp_path, docker_cgroup):
    """unshare -m, the program bind-mounted over /usr/bin/true, in a cgroup shaped like a
    docker container's: the host's /usr/bin/true is another file; the frames come from the
    container's, which is not "replaced"; the container's id is in the row's facts, the
    JSON and the journal fields."""
    out, result = _run(scenario, tmp_path, "container", docker_cgroup)
    module = _main_module(result)
    assert module["path"] == "/usr/bin/true"
    assert module["state"] == "other-namespace"
    assert module["kept"] and not module["replaced"] and not module["deleted"]
    with open(out / "prog", "rb") as mine, open(module["kept"], "rb") as kept:
        assert mine.read() == kept.read()
    _check_frames_as_gdb(result, module["kept"], tmp_path)
    assert "library-replaced" not in result.ids
    assert "library-modified-in-place" not in result.ids
    assert "null-deref" in result.ids
    files = result.facts["proc"]["files"]
    assert files["/usr/bin/true"]["state"] == "other-namespace"
    assert files["/usr/bin/true"]["host"]["inode"] != files["/usr/bin/true"]["mapped"]["inode"]
    container = result.facts["container"]
    assert container["engine"] == "docker" and container["id"] == CONTAINER_ID
    assert container["own_mount_namespace"] and container["root"]
    from coredumpd.model import CrashRecord
    from coredumpd.report import journal, jsonout
    record = CrashRecord.from_json(result.row)
    assert jsonout.list_object(record)["container_id"] == CONTAINER_ID
    assert jsonout.show_object(record)["container"]["engine"] == "docker"
    fields = journal.journal_fields(record)
    assert fields["COREDUMP_CONTAINER_ID"] == CONTAINER_ID
    assert fields["COREDUMP_CONTAINER_ENGINE"] == "docker"
    assert result.row["container_id"] == CONTAINER_ID  # an index column, for MATCH
    _corectl_lists_by_container(tmp_path, result.row["id"])


def _corectl_lists_by_container(tmp_path: Any, crash_id: str) -> None:
    """``corectl list CONTAINER_ID=ID`` on the handler's store: that crash, and for
    another id, "No coredumps found." with exit status 1."""
    from coredumpd.cli.corectl import ExitStatus, main
    from tests.support.crash import write_config

    config = tmp_path / "corectl.conf"
    write_config(config, str(tmp_path / "cores"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["--config", str(config), "--json", "list", f"CONTAINER_ID={CONTAINER_ID}"],
                      env=env)
    assert status == ExitStatus.OK
    listed = json.loads(out.getvalue())
    assert [(e["id"], e["container_id"]) for e in listed] == [(crash_id, CONTAINER_ID)]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = main(["--config", str(config), "list", "COREDUMP_CONTAINER_ID=" + "0" * 64],
                      env=env)
    assert status == ExitStatus.NO_MATCH


def test_one_kept_copy_for_many_crashes(scenario, tmp_path):
    """Content-addressed: two crashes of the same deleted build share one copy."""
    out = scenario("ran")
    shutil.copy2(out / "prog", out / "prog.orig")
    kept = []
    for _ in range(2):
        shutil.copy2(out / "prog.orig", out / "prog")
        result = crash(["/bin/sh", str(PROGRAMS / "ran" / "run.sh"), str(out), "deleted"],
                       tmp_path, pidfile=str(out / "prog.pid"))
        kept.append(_main_module(result)["kept"])
    assert kept[0] == kept[1] and os.path.isfile(kept[0])
    binaries = os.path.dirname(os.path.dirname(kept[0]))
    assert [len(files) for _d, _s, files in os.walk(binaries)] == [0, 1]


def test_library_overwritten_in_place_found_from_relocated_pages(scenario, tmp_path):
    """incidents/library-overwritten-in-place.txt in milliseconds: ``cp -p`` of the same
    bytes over the mapped libzk.so.2 (same inode, old mtime kept), then a dlopen: the
    loader reads the library's DT_SONAME through its .dynamic, now unrelocated."""
    out = scenario("incident")
    result = crash(["/bin/sh", str(PROGRAMS / "incident" / "run.sh"), str(out)], tmp_path,
                   pidfile=str(out / "worker.pid"))
    assert result.via == "handler"
    lib = str(out / "libzk.so.2")
    assert result.facts["proc"]["files"][lib]["state"] == "same"  # no timestamp says it
    assert result.ids[0] == "library-modified-in-place", result.ids
    evidence = result.evidence("library-modified-in-place")
    assert "DT_STRTAB" in evidence and "unrelocated" in evidence
    assert "library-replaced" not in result.ids
    module = next(m for m in result.analysis["modules"] if m["path"] == lib)
    assert module["state"] == "modified" and module["kept"] is None
    others = [m for m in result.analysis["modules"] if m["path"] != lib]
    assert all(m["state"] == "same" for m in others), others
    gdb = _gdb_names(result, str(out / "worker"), tmp_path)  # the library's bytes are the same
    assert gdb[0] == "strcmp" and "_dl_map_object" in gdb and "main" in gdb, gdb
    _same_names_as_gdb(result, gdb)


def _gdb_output(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_dump_with_binaries_is_a_sysroot_for_gdb(scenario, tmp_path):
    """corectl dump -o DIR --with-binaries: the core and the files that ran, the deleted
    executable from its kept copy; gdb with that sysroot names the frames and reads every
    library from DIR."""
    from coredumpd.cli.corectl import main as corectl
    out, result = _run(scenario, tmp_path, "deleted")
    directory = tmp_path / "sysroot"
    env = {"COREDUMPD_CONFIG": _config_of(result)}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert corectl(["dump", result.row["id"], "-o", str(directory), "--with-binaries"],
                       env) == 0
    exe = directory / str(out / "prog").lstrip("/")
    assert exe.is_file() and (directory / "core").is_file()
    assert str(directory) in printed.getvalue() and "set sysroot" in printed.getvalue()
    text = _gdb_output(["gdb", "-batch", "-nx", "-ex", f"set sysroot {directory}",
                        "-ex", "echo BACKTRACE\\n", "-ex", "bt", "-ex", "info sharedlibrary",
                        str(exe), str(directory / "core")])
    after = text.split("BACKTRACE\n", 1)[1]
    assert "ran_crash" in after and "ran_middle" in after and "main" in after
    libraries = [line for line in after.splitlines() if ".so" in line and line.startswith("0x")]
    assert libraries and all(str(directory) in line for line in libraries), after


def test_debug_reads_the_binaries_that_ran(scenario, tmp_path, capfd):
    """corectl debug on a crash whose executable was replaced: gdb gets the kept copy and
    a sysroot without being told; the frames are the old build's (ran_*), not other_*."""
    from coredumpd.cli.corectl import main as corectl
    _out, result = _run(scenario, tmp_path, "replaced")
    status = corectl(["debug", result.row["id"], "--debugger",
                      "gdb -batch -nx -ex 'echo BACKTRACE\\n' -ex bt"],
                     {"COREDUMPD_CONFIG": _config_of(result)})
    assert status == 0
    text = capfd.readouterr().out.split("BACKTRACE\n", 1)[1]
    assert "ran_crash" in text and "ran_middle" in text and "other_" not in text


def _config_of(result: Crash) -> str:
    """A configuration naming the store that holds ``result`` (the handler's own file is
    gone with its ``registered_handler``)."""
    directory = os.path.dirname(result.core_path)
    path = os.path.join(os.path.dirname(directory), "corectl.conf")
    with open(path, "w") as handle:
        handle.write(f"[Coredump]\nDirectory={directory}\n")
    return path
