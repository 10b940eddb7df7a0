"""A frame's ``cfa`` is gdb's "frame at" (``info frame``), thread by thread, frame by frame.

gdb reads the same fixture core (decompressed) with the fixture's binary; every
normal frame gdb shows (inline and tail-call frames have no CFA of their own; the
outermost frame of a thread, ``clone3``, is "frame at 0x0" in gdb) must be one of
ours with the same pc and the same canonical frame address.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

from tests.support.analysis import analyze_json
from tests.support.fixtures import load_fixture

GDB_SCRIPT = r'''
import gdb, re
for thread in gdb.selected_inferior().threads():
    thread.switch()
    frame = gdb.newest_frame()
    while frame is not None:
        if frame.type() == gdb.NORMAL_FRAME:
            frame.select()
            found = re.search(r"frame at (0x[0-9a-f]+)", gdb.execute("info frame", to_string=True))
            if found and int(found[1], 16):  # 0: gdb's outermost frame (no frame id)
                print("CFA", thread.ptid[1], frame.pc(), int(found[1], 16))
        frame = frame.older()
'''


def gdb_cfas(binary: pathlib.Path, core: pathlib.Path, tmp_path: pathlib.Path) -> set[tuple[int, int, int]]:
    script = tmp_path / "cfa.py"
    script.write_text(GDB_SCRIPT)
    out = subprocess.run(["gdb", "-batch", "-nx", "-ex", "set debuginfod enabled off",
                          "-ex", f"source {script}", str(binary), str(core)],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    return {(int(tid), int(pc), int(cfa)) for line in out.splitlines()
            if line.startswith("CFA ") for tid, pc, cfa in [line.split()[1:]]}


@pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb")
@pytest.mark.parametrize("name", ["abort", "o0-fp-pie", "threads", "sighandler", "cxx"])
def test_cfa_is_gdbs_frame_address(name: str, tmp_path: pathlib.Path) -> None:
    import lz4.frame

    from coredumpd.store.lz4seek import open_core_source

    fixture = load_fixture(name)
    core = tmp_path / "core"
    core.write_bytes(lz4.frame.decompress(fixture.core_path.read_bytes()))
    source = open_core_source(str(fixture.core_path))
    try:
        result = analyze_json(source, None, str(fixture.binary_path))
    finally:
        source.close()
    ours = {(thread["tid"], frame["pc"], frame["cfa"]) for thread in result["threads"]
            for frame in thread["frames"]}
    theirs = gdb_cfas(fixture.binary_path, core, tmp_path)
    assert len(theirs) >= 4
    assert theirs <= ours, sorted(theirs - ours)
