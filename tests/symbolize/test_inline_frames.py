"""Inlined calls as gdb shows them, on a real -O2 program crashed through the kernel.

``load_config`` calls ``total`` which calls ``first_value``; gcc -O2 inlines both,
so the fault is in ``load_config``'s code at a line of ``first_value``.  gdb's
``bt`` shows three frames for that one physical frame: ``first_value`` (line
of the fault), ``total`` (the line where it calls first_value), ``load_config``
(the line where it calls total).  coredumpd's stored analysis must have the
same frames with the same lines, the first two ``inlined: true`` and sharing
the physical frame's pc, in the report's text, its JSON and the journal.
"""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from tests.support.crash import compile_c, registered_handler

SOURCE = r"""#include <stdio.h>
#include <stdlib.h>
struct config { int *values; int count; };
static inline int first_value(const struct config *c) {
    int value = c->values[0];               /* line 5: the fault (values is NULL) */
    if (value < 0)
        abort();
    return value;
}
static inline int total(const struct config *c) {
    return first_value(c) + c->count;       /* line 11 */
}
__attribute__((noinline)) int load_config(struct config *c) {
    return total(c) * 2;                    /* line 14 */
}
int main(int argc, char **argv) {
    struct config c = { argc > 5 ? &argc : NULL, argc };
    printf("%d\n", load_config(&c));        /* line 18 */
    return 0;
}
"""

GDB_SCRIPT = r'''
import gdb
frame = gdb.newest_frame()
while frame is not None:
    sal = frame.find_sal()
    name = frame.name()
    kind = {gdb.INLINE_FRAME: "INLINE", gdb.NORMAL_FRAME: "NORMAL"}.get(frame.type(), "OTHER")
    print("FRAME", kind, frame.pc(), name,
          sal.symtab.filename if sal.symtab else None, sal.line)
    if name == "main":
        break
    frame = frame.older()
'''


def gdb_frames(binary: str, core: pathlib.Path, tmp_path: pathlib.Path) -> list[tuple]:
    script = tmp_path / "frames.py"
    script.write_text(GDB_SCRIPT)
    out = subprocess.run(["gdb", "-batch", "-nx", "-ex", "set debuginfod enabled off",
                          "-x", str(script), binary, str(core)],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    frames = []
    for line in out.splitlines():
        if line.startswith("FRAME "):
            kind, pc, name, file, number = line.split()[1:]
            frames.append((kind, int(pc), name, pathlib.Path(file).name, int(number)))
    return frames


@pytest.mark.kernel
def test_inlined_c_functions_are_frames_as_gdb_shows_them(tmp_path: pathlib.Path) -> None:
    import lz4.frame

    from coredumpd.model import AnalysisResult, format_frame
    from coredumpd.report.text import FRAME_STYLE

    binary = compile_c(SOURCE, tmp_path, flags=("-g", "-O2"), name="inline_o2")
    with registered_handler(tmp_path, journal=False) as handler:
        row = handler.crash([binary])
    core = tmp_path / "core"
    core.write_bytes(lz4.frame.decompress(pathlib.Path(row["core_path"]).read_bytes()))
    theirs = gdb_frames(binary, core, tmp_path)
    assert [f[2] for f in theirs] == ["first_value", "total", "load_config", "main"]
    assert [f[0] for f in theirs] == ["INLINE", "INLINE", "NORMAL", "NORMAL"]

    analysis = AnalysisResult.from_json(row["analysis"])
    frames = analysis.crashed_thread.frames[:len(theirs)]
    ours = [("INLINE" if f.inlined else "NORMAL", f.pc, f.symbol,
             pathlib.Path(f.file or "").name, f.line) for f in frames]
    assert ours == theirs
    assert [f.line for f in frames[:3]] == [5, 11, 14]
    text = [format_frame(frame, FRAME_STYLE) for frame in frames[:3]]
    assert "first_value" in text[0] and text[0].endswith("[inlined]")
    assert "0x" not in text[0].split("first_value")[0]  # no pc, as gdb prints none
    assert "load_config+" in text[2] and text[2].endswith("[context]")
