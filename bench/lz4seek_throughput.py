#!/usr/bin/env python3
"""Throughput of the seekable lz4 writer against `cat >/dev/null` and `lz4 -1`.

Each contender is a separate process reading a pipe, as a core_pattern handler
reads the kernel's; this process writes the same in-memory data (default 1 GiB:
25% zero pages, 25% random, 50% text from the system's headers and docs) into
the pipe.  Prints, per contender, the wall time until its exit, MB/s and the
stored size against ``lz4 -1``; for our writer (with and without a spill file)
also the time until the pipe was drained and stdin closed (when the kernel would
reap the crashed process; includes importing the module), the peak RSS (VmHWM)
and how much went through the spill file.  Not a test: figures only.

The defaults are the handler's own settings, imported from
coredumpd.pipeline.handler: block size ``BLOCK_SIZE``, pipe size ``PIPE_SIZE``,
``COMPRESS_THREADS`` worker threads and no spill file; the line of that
configuration is marked ``= handler``.  Every contender is a process, ours too
(the handler's writer alone, not the whole handler).

    .venv/bin/python bench/lz4seek_throughput.py [--size 1G] [--layout pages|runs]
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.provenance import measured_line
from coredumpd.pipeline.handler import PIPE_SIZE
from coredumpd.pipeline.intake import BLOCK_SIZE, COMPRESS_THREADS

PAGE = 4096
F_SETPIPE_SZ = 1031  # fcntl.h

WRITER = r"""
import os, sys, time, fcntl
start = time.perf_counter()
from coredumpd.store.lz4seek import SeekableLz4Writer
threads, block_size, acceleration, pipe_size = map(int, sys.argv[2:6])
spill_dir = sys.argv[6] or None
if pipe_size:
    fcntl.fcntl(0, 1031, pipe_size)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
writer = SeekableLz4Writer(fd, block_size, threads=threads, acceleration=acceleration,
                           spill_dir=spill_dir)
writer.copy_from(0)
os.close(0)  # what the handler does: the kernel reaps the crashed process now
drained = time.perf_counter() - start
writer.finish()
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(f"{drained:.3f} {hwm} {writer.spilled_bytes}")
"""


def text_corpus(limit: int = 64 << 20) -> bytes:
    """Real text from the system (headers, docs), as a core holds strings and source."""
    chunks, total = [], 0
    for pattern in ("/usr/include/**/*.h", "/usr/share/doc/**/*", "/usr/share/perl*/**/*.pm"):
        for path in glob.iglob(pattern, recursive=True):
            try:
                with open(path, "rb") as handle:
                    data = handle.read(1 << 20)
            except OSError:
                continue
            if data and b"\0" not in data[:4096]:
                chunks.append(data)
                total += len(data)
            if total >= limit:
                return b"".join(chunks)
    return b"".join(chunks) or b"no text found on this system\n" * 4096


def make_data(size: int, layout: str, seed: int = 42) -> bytearray:
    """25% zero, 25% random, 50% text pages; `pages` interleaves single pages,
    `runs` uses runs of 1-256 pages (zero runs as in a heap or an idle stack)."""
    rnd = random.Random(seed)
    text = text_corpus()
    noise = os.urandom(64 << 20)
    data = bytearray(size)  # zero by default
    page = 0
    pages = size // PAGE
    while page < pages:
        run = 1 if layout == "pages" else rnd.randint(1, 256)
        run = min(run, pages - page)
        kind = rnd.choice("ZRTT")
        start, end = page * PAGE, (page + run) * PAGE
        if kind == "R":
            at = rnd.randrange(0, len(noise) - (end - start)) if end - start < len(noise) else 0
            data[start:end] = noise[at:at + end - start]
        elif kind == "T":
            for offset in range(start, end, PAGE):
                at = rnd.randrange(0, max(1, len(text) - PAGE))
                data[offset:offset + PAGE] = text[at:at + PAGE].ljust(PAGE, b" ")
        page += run
    return data


def run_contender(argv: list[str], data: bytearray, stdout_path: str | None,
                  pipe_size: int, capture: bool) -> tuple[float, str]:
    """Feed ``data`` to ``argv`` through a pipe; (seconds, what the child printed)."""
    read_end, write_end = os.pipe()
    if pipe_size:
        import fcntl
        fcntl.fcntl(write_end, F_SETPIPE_SZ, pipe_size)
    out: object = subprocess.PIPE if capture else subprocess.DEVNULL
    if stdout_path:
        out = open(stdout_path, "wb")  # noqa: SIM115 (closed after the child exits)
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdin=read_end, stdout=out)  # type: ignore[call-overload]
    os.close(read_end)
    view = memoryview(data)
    while view:
        view = view[os.write(write_end, view[:1 << 20]):]
    os.close(write_end)
    printed = child.stdout.read().decode() if child.stdout else ""
    child.wait()
    elapsed = time.perf_counter() - start
    if stdout_path:
        out.close()  # type: ignore[union-attr]
    if child.returncode != 0:
        raise SystemExit(f"{argv[0]} failed with {child.returncode}")
    return elapsed, printed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="bytes (K/M/G suffix)")
    parser.add_argument("--layout", choices=["pages", "runs"], default="pages")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender (median)")
    parser.add_argument("--threads", default="0,1,2", help="writer worker counts to try "
                        f"(the handler uses {COMPRESS_THREADS})")
    parser.add_argument("--block-size", default=str(BLOCK_SIZE),
                        help="default: the handler's BLOCK_SIZE")
    parser.add_argument("--acceleration", type=int, default=1)
    parser.add_argument("--pipe-size", default=str(PIPE_SIZE),
                        help="F_SETPIPE_SZ, 0 = kernel default; default: the handler's PIPE_SIZE")
    parser.add_argument("--dir", default="/dev/shm", help="where stored files go")
    args = parser.parse_args()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    parse = lambda text: int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    size, block_size, pipe_size = parse(args.size), parse(args.block_size), parse(args.pipe_size)
    data = make_data(size, args.layout)
    handler_like = (block_size, pipe_size, args.acceleration) == (BLOCK_SIZE, PIPE_SIZE, 1)
    print(measured_line("every contender a process reading a pipe; lz4seek = the handler's "
                        "writer (coredumpd.store.lz4seek) alone"))
    print(f"data: {size / 2**20:.0f} MiB, layout {args.layout}, block {block_size >> 10} KiB, "
          f"pipe {pipe_size >> 10} KiB, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    workdir = tempfile.mkdtemp(dir=args.dir, prefix="lz4bench.")
    try:
        stored = os.path.join(workdir, "out")
        contenders: list[tuple[str, list[str], str | None]] = [
            ("cat >/dev/null", ["cat"], None),
            ("lz4 -1", [shutil.which("lz4") or "lz4", "-1", "-c"], stored),
        ]
        for threads in map(int, args.threads.split(",")):
            for spill in ([""] if threads == 0 else ["", workdir]):
                label = f"lz4seek threads={threads}{' spill' if spill else ''}"
                if handler_like and threads == COMPRESS_THREADS and not spill:
                    label += " = handler"
                contenders.append((label, [
                    sys.executable, "-c", WRITER, stored, str(threads), str(block_size),
                    str(args.acceleration), str(pipe_size), spill], None))
        baseline = None
        for name, argv, stdout_path in contenders:
            runs = [run_contender(argv, data, stdout_path, pipe_size, name.startswith("lz4seek"))
                    for _ in range(args.repeat)]
            seconds = statistics.median(r[0] for r in runs)
            stored_size = os.path.getsize(stored) if name != "cat >/dev/null" else 0
            if name == "lz4 -1":
                baseline = stored_size
            ratio = f" ({stored_size / baseline:.4f}x lz4 -1)" if baseline and stored_size else ""
            extra = ""
            if name.startswith("lz4seek"):
                fields = [r[1].split() for r in runs]
                drained = statistics.median(float(f[0]) for f in fields)
                extra = (f"  drained in {drained:.3f} s ({size / drained / 1e6:.0f} MB/s)"
                         f"  peak RSS {max(int(f[1]) for f in fields) >> 10} MiB"
                         f"  spilled {max(int(f[2]) for f in fields) >> 20} MiB")
            print(f"{name:35} total {seconds:6.3f} s {size / seconds / 1e6:6.0f} MB/s"
                  f"  stored {stored_size:>11,}{ratio}{extra}"
                  f"  [{', '.join(f'{r[0]:.3f}' for r in runs)}]")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
