"""Hypothesis properties of the handler's parsing of kernel-provided text.

Process names are chosen by the process (prctl(PR_SET_NAME), the file name):
spaces, newlines and parentheses included.  The fake procfs is written the way
the kernel writes it (fs/proc/array.c do_task_stat: "%d (%s) %c ...",
fs/proc/task_mmu.c show_map_vma: path padded to column 73, "\\n" in a path
escaped as "\\012"), and the parsers must give back exactly what went in.
"""

from __future__ import annotations

import json
import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from coredumpd.ingest import procfs
from coredumpd.ingest.args import RLIM_INFINITY, SPECIFIERS, parse_args

HOSTILE = st.sampled_from(list("()) (a b\n\t\x1b0123456789-:%/\\"))
COMM = st.lists(HOSTILE, min_size=0, max_size=15).map("".join)  # TASK_COMM_LEN 16


def write_stat(root: str, pid: int, comm: str, start_ticks: int) -> None:
    fields = ["S", "1", str(pid), str(pid), "0", "-1", "4194560"] + ["0"] * 12 + \
        [str(start_ticks)] + ["0"] * 30
    os.makedirs(os.path.join(root, str(pid)), exist_ok=True)
    with open(os.path.join(root, str(pid), "stat"), "w", encoding="utf-8") as handle:
        handle.write(f"{pid} ({comm}) " + " ".join(fields) + "\n")


@settings(max_examples=300, deadline=None)
@given(comm=COMM, start=st.integers(min_value=0, max_value=2**63))
def test_start_time_whatever_the_process_name(comm, start):
    root = tempfile.mkdtemp(prefix="cdprops")
    saved = procfs.procfs_path()
    try:
        write_stat(root, 4242, comm, start)
        procfs.set_procfs_path(root)
        assert procfs.start_time_ticks(4242) == start
        assert procfs.read_stat_fields(4242)[0] == "S"
    finally:
        procfs.set_procfs_path(saved)
        for name in ("4242/stat",):
            os.unlink(os.path.join(root, name))
        os.rmdir(os.path.join(root, "4242"))
        os.rmdir(root)


PATH_PART = st.lists(st.sampled_from(list("ab ()\n-_.x")), min_size=1, max_size=12).map(
    "".join)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(PATH_PART, min_size=1, max_size=3), deleted=st.booleans(),
       start=st.integers(min_value=0, max_value=2**47), inode=st.integers(0, 2**63))
def test_maps_line_gives_back_the_path(parts, deleted, start, inode):
    path = "/" + "/".join(parts)
    if path.endswith(" (deleted)"):
        return  # a name that ends like the kernel's marker is ambiguous by design
    shown = path.replace("\n", "\\012") + (" (deleted)" if deleted else "")
    head = f"{start:08x}-{start + 4096:08x} r-xp 00001000 fe:01 {inode}"
    line = head.ljust(73) + shown
    parsed = procfs.parse_maps_line(line)
    assert parsed["path"] == path
    assert parsed["deleted"] is deleted
    assert (parsed["start"], parsed["end"], parsed["inode"]) == (start, start + 4096, inode)


ARG = st.one_of(st.integers(-5, 2**65).map(str), st.text(max_size=20),
                st.sampled_from(["--config", "--config=", "", " ", "host name"]))


@settings(max_examples=500, deadline=None)
@given(argv=st.lists(ARG, max_size=16))
def test_handler_arguments_never_raise(argv):
    parsed = parse_args(argv)
    json.dumps(parsed.facts())
    for field, _spec, kind in SPECIFIERS:
        value = getattr(parsed, field)
        if kind == "int" and value is not None:
            assert 0 <= value <= RLIM_INFINITY


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(0, RLIM_INFINITY), min_size=11, max_size=11),
       hostname=st.text(alphabet=st.characters(blacklist_characters="\0"), min_size=1,
                        max_size=64).filter(lambda h: not h.startswith("--config")))
def test_well_formed_arguments_round_trip(values, hostname):
    argv = [str(v) for v in values]
    argv[8] = hostname  # %h: one argument even with spaces (split before expansion)
    parsed = parse_args(argv)
    assert parsed.hostname == hostname
    assert parsed.pid == (values[0] or None)
    assert parsed.signal == values[5]
    assert parsed.rlimit_core == values[7]
