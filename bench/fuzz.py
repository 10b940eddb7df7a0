#!/usr/bin/env python3
"""Fuzz coredumpd's parsers of hostile input with mutated real cores.

Usage (as root for --make-seeds, which crashes two small programs through the
real kernel pipe; tests.support.kernel.core_pattern locks and restores)::

    .venv/bin/python bench/fuzz.py --target reader --count 100000
    .venv/bin/python bench/fuzz.py --target analysis --count 2000 --time-limit 10
    .venv/bin/python bench/fuzz.py --target cache --count 1000 --time-limit 10
    .venv/bin/python bench/fuzz.py --target answer --count 20000
    .venv/bin/python bench/fuzz.py --target args --count 20000 --save

Seeds: the cores in ``fixtures/cores/*/`` (any file named ``core*``, raw or
seekable lz4) and our own small cores under ``--seed-dir`` (made once with
``--make-seeds``, or automatically when none exist).  The mutator knows the
layout of a core — ELF header, program headers, note headers, NT_FILE counts —
and sets those integer fields to boundary values, flips bits, splices in bytes
from another seed, shifts the note area and truncates (structure-aware random
mutation; not coverage-guided).  Input *i* of a run is a pure function of
``--seed`` and *i*, so any input can be regenerated from its index.

Each input runs under an alarm (``--time-limit``) in a worker process with
RLIMIT_AS (``--memory-max``).  A finding is any exception other than our
``CoredumpdError``, an alarm, or the worker dying of a signal; findings are
deduplicated by (exception type, innermost coredumpd frame), and with
``--save`` minimized (shortest reproducing prefix) and written to
``tests/regressions/inputs/`` where tests/regressions/test_fuzz_regressions.py
replays them.  The last line of output is a JSON summary.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import dataclasses
import faulthandler
import hashlib
import json
import lzma
import multiprocessing
import pathlib
import random
import resource
import signal
import struct
import sys
import time
import traceback
import zlib
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.provenance import measured_line
from tests.regressions import targets as T

SEED_DIR = pathlib.Path("/var/tmp/coredumpd-fuzz/seeds")
INPUTS = REPO / "tests" / "regressions" / "inputs"
SEED_MAX = 16 << 20
INTERESTING = (0, 1, 2, 3, 4, 7, 8, 16, 56, 64, 0x7F, 0x80, 0xFF, 0x100, 0x1000, 0xFFFF,
               0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1, 1 << 63,
               (1 << 64) - 8, (1 << 64) - 1)
NOTE_TYPES = (1, 2, 3, 4, 6, 0x46494C45, 0x53494749, 0x200, 0x202, 0x8000)
PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr
NHDR = struct.Struct("<III")  # Elf64_Nhdr


class FuzzTimeout(BaseException):
    """The per-input alarm; a BaseException so that ``except Exception`` cannot eat it."""


# ----------------------------------------------------------------- core layout

@dataclasses.dataclass
class Layout:
    """Where a seed core's integer fields and head regions are (found leniently)."""

    fields: list[tuple[int, int]]  # (offset, width)
    hot: list[tuple[int, int]]  # (start, end) of header, program headers, notes
    notes: tuple[int, int]


def core_layout(data: bytes) -> Layout:
    fields = [(0x10, 2), (0x12, 2), (0x20, 8), (0x28, 8), (0x36, 2), (0x38, 2), (0x3A, 2),
              (0x3C, 2), (0x3E, 2)]
    hot = [(0, 64)]
    phoff, phnum = struct.unpack_from("<Q", data, 0x20)[0], struct.unpack_from("<H", data, 0x38)[0]
    notes = (64, 64)
    for index in range(min(phnum, 4096)):
        offset = phoff + index * PHDR.size
        if offset + PHDR.size > len(data):
            break
        fields += [(offset, 4), (offset + 4, 4)] + [(offset + 8 + 8 * k, 8) for k in range(6)]
        p_type, _f, p_offset, _v, _p, p_filesz, _m, _a = PHDR.unpack_from(data, offset)
        if p_type == 4 and notes == (64, 64):
            notes = (p_offset, min(len(data), p_offset + p_filesz))
    hot.append((phoff, min(len(data), phoff + phnum * PHDR.size)))
    hot.append(notes)
    fields += _note_fields(data, *notes)
    return Layout(fields, [span for span in hot if span[1] > span[0]], notes)


def _note_fields(data: bytes, start: int, end: int) -> list[tuple[int, int]]:
    fields = []
    position = start
    while position + NHDR.size <= end and len(fields) < 4096:
        namesz, descsz, note_type = NHDR.unpack_from(data, position)
        fields += [(position, 4), (position + 4, 4), (position + 8, 4)]
        desc = position + NHDR.size + ((namesz + 3) & ~3)
        if note_type in (0x46494C45, 6):  # NT_FILE count/page size, NT_AUXV entries
            fields += [(desc + 8 * k, 8) for k in range(min(8, descsz // 8))]
        else:
            fields += [(desc + 4 * k, 4) for k in range(0, min(descsz // 4, 32), 3)]
        position = desc + ((descsz + 3) & ~3)
    return [(offset, width) for offset, width in fields if offset + width <= len(data)]


# -------------------------------------------------------------------- mutation

def mutate_core(seeds: list[tuple[bytes, Layout]], rng: random.Random) -> bytes:
    seed, layout = rng.choice(seeds)
    data = bytearray(seed)
    for _ in range(rng.choice((1, 1, 2, 3, 4, 6))):
        if not data:
            break
        operation = rng.randrange(100)
        if operation < 40 and layout.fields:
            _set_field(data, rng.choice(layout.fields), rng)
        elif operation < 55:
            position = _hot_position(layout, rng, len(data))
            data[min(position, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif operation < 65:
            position = _hot_position(layout, rng, len(data))
            data[position:position + 8] = rng.randbytes(rng.randint(1, 8))
        elif operation < 72:
            other, other_layout = rng.choice(seeds)
            source = _hot_position(other_layout, rng, len(other))
            target = _hot_position(layout, rng, len(data))
            size = rng.randint(4, 256)
            data[target:target + size] = other[source:source + size]
        elif operation < 80:
            _shift_notes(data, layout, rng)
        elif operation < 86:
            _retype_note(data, layout, rng)
        else:
            cut = _hot_position(layout, rng, len(data)) if rng.random() < 0.6 else \
                rng.randrange(len(data) + 1)
            del data[cut:]
    return bytes(data)


def _hot_position(layout: Layout, rng: random.Random, size: int) -> int:
    start, end = rng.choice(layout.hot)
    return min(max(0, size - 1), rng.randrange(start, max(start + 1, end)))


def _set_field(data: bytearray, field: tuple[int, int], rng: random.Random) -> None:
    offset, width = field
    if offset + width > len(data):
        return
    mask = (1 << (8 * width)) - 1
    old = int.from_bytes(data[offset:offset + width], "little")
    choice = rng.randrange(4)
    if choice == 0:
        value = rng.choice(INTERESTING)
    elif choice == 1:
        value = old + rng.randint(-16, 16)
    elif choice == 2:
        value = old * rng.choice((2, 4, 16, 4096))
    else:
        value = rng.getrandbits(8 * width)
    data[offset:offset + width] = (value & mask).to_bytes(width, "little")


def _shift_notes(data: bytearray, layout: Layout, rng: random.Random) -> None:
    start, end = layout.notes[0], min(layout.notes[1], len(data))
    if end <= start:
        return
    position = rng.randrange(start, end)
    if rng.random() < 0.5:
        data[position:position] = rng.randbytes(rng.choice((1, 2, 4, 8, 12)))
    else:
        del data[position:position + rng.choice((1, 2, 4, 8, 12))]


def _retype_note(data: bytearray, layout: Layout, rng: random.Random) -> None:
    headers = [offset - 8 for offset, width in layout.fields
               if width == 4 and layout.notes[0] <= offset - 8 < layout.notes[1]]
    if headers:
        position = rng.choice(headers)
        data[position + 8:position + 12] = struct.pack("<I", rng.choice(NOTE_TYPES))


TEXT_SPECIALS = ("", " ", "\n", "(", ")", ") R (", "\0", "-1", "0", "00", "+5", " 7", "7 ",
                 "0x10", "1e3", "\u0661\u0662", "99999999999999999999999", "18446744073709551616",
                 "--config", "--config=", "\udcff", "\x1b[31m", "%s", "a b", "x" * 5000)


def mutate_text(seeds: list[bytes], rng: random.Random, separator: bytes) -> bytes:
    """Replace, insert, drop and duplicate separator-delimited fields and bytes."""
    parts = rng.choice(seeds).split(separator)
    for _ in range(rng.randint(1, 4)):
        operation = rng.randrange(6)
        index = rng.randrange(len(parts)) if parts else 0
        if operation == 0 and parts:
            parts[index] = rng.choice(TEXT_SPECIALS).encode("utf-8", "surrogateescape")
        elif operation == 1:
            parts.insert(index, rng.choice(TEXT_SPECIALS).encode("utf-8", "surrogateescape"))
        elif operation == 2 and parts:
            del parts[index]
        elif operation == 3 and parts:
            parts.insert(index, parts[index])
        elif operation == 4 and parts:
            raw = bytearray(parts[index])
            position = rng.randrange(len(raw) + 1)
            raw[position:position] = rng.choice((b"(", b")", b" ", b"\n", b"\xff", b"\x00"))
            parts[index] = bytes(raw)
        elif parts and parts[index]:
            parts[index] = parts[index][:rng.randrange(len(parts[index]))]
    return separator.join(parts)


ANSWER_VALUES = (None, True, False, 0, -1, 1, 1 << 63, 1 << 64, -(1 << 63) - 1, 10 ** 40, 0.5,
                 float("inf"), float("nan"), "", "x", "\x1b[31m", "\udcff", "\0", "a" * 5000,
                 [], {}, [None], [1], ["x"], [[]], [{}], {"x": 1}, {"tid": 1, "frames": [1]})


def mutate_answer(seeds: list[Any], rng: random.Random) -> bytes:
    """A sandbox answer (the JSON an analysis child sends) with values of other types and
    sizes, keys dropped, list items dropped or doubled, subtrees moved: what a child that
    a core took over could send (its JSON is well-formed: the parent's json.loads and
    its size cap come first)."""
    answer = json.loads(json.dumps(rng.choice(seeds)))
    for _ in range(rng.choice((1, 1, 2, 3))):
        nodes = list(_json_nodes(answer))
        parent, key = rng.choice(nodes)
        operation = rng.randrange(10)
        if operation < 5:  # a copy: a shared value mutated later would loop into itself
            parent[key] = copy.deepcopy(rng.choice(ANSWER_VALUES))
        elif operation < 7:
            other_parent, other_key = rng.choice(nodes)
            parent[key] = json.loads(json.dumps(other_parent[other_key]))
        elif isinstance(parent, dict):
            del parent[key]
        elif operation < 9:
            parent.insert(key, parent[key])
        else:
            del parent[key]
    return json.dumps(answer).encode()


def _json_nodes(tree: Any) -> Any:
    """(container, key) of every value under ``tree``."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) \
        if isinstance(tree, list) else ()
    for key, value in items:
        yield tree, key
        yield from _json_nodes(value)


def answer_seeds(core_seeds: list[bytes]) -> list[Any]:
    """The analysis results (JSON) of the seed cores, as a sandbox child sends them
    (duration 0, so that an input stays a function of the run's seed)."""
    from coredumpd.analysis import analyze
    from coredumpd.source import BytesSource

    return [analyze(BytesSource(seed)).to_json() | {"duration_ms": 0} for seed in core_seeds]


LZ4_TRAILER = struct.Struct("<8sHHIQIIQI")  # store/lz4seek.py TRAILER (crc last)
LZ4_ENTRY = 20  # store/lz4seek.py BLOCK_ENTRY "<QIII"


def mutate_lz4(seeds: list[bytes], rng: random.Random) -> bytes:
    """Mutate a stored core's block index/trailer (CRC fixed up) or its blocks."""
    data = bytearray(rng.choice(seeds))
    if len(data) < LZ4_TRAILER.size + 16:
        return bytes(data)
    trailer_at = len(data) - LZ4_TRAILER.size
    fields = LZ4_TRAILER.unpack_from(data, trailer_at)
    entries, reason_size = fields[5], fields[6]
    body_at = trailer_at - entries * LZ4_ENTRY - reason_size
    operation = rng.randrange(10)
    if operation < 5 and body_at >= 0:  # an index entry or trailer field, CRC recomputed
        offsets = [trailer_at + o for o in (8, 10, 12, 16, 24, 28, 32)] + \
            [body_at + LZ4_ENTRY * rng.randrange(max(1, entries)) + o for o in (0, 8, 12, 16)]
        offset = rng.choice(offsets)
        width = 8 if offset in (trailer_at + 16, trailer_at + 32) or \
            (offset < trailer_at and (offset - body_at) % LZ4_ENTRY == 0) else 4
        _set_field(data, (offset, width), rng)
        _fix_lz4_crc(data, body_at, trailer_at)
    elif operation < 8:  # corrupt compressed bytes or block size words
        position = rng.randrange(7, max(8, body_at))
        data[position:position + 4] = rng.randbytes(rng.randint(1, 4))
    else:
        del data[rng.randrange(len(data)):]
    return bytes(data)


def _fix_lz4_crc(data: bytearray, body_at: int, trailer_at: int) -> None:
    if body_at < 0:
        return
    crc = zlib.crc32(bytes(data[trailer_at:len(data) - 4]),
                     zlib.crc32(bytes(data[body_at:trailer_at])))
    data[len(data) - 4:] = struct.pack("<I", crc)


# ----------------------------------------------------------------------- seeds

SEED_PROGRAMS = {
    "null": "int main(void){ volatile int *p = 0; return *p; }\n",
    "threads": ("#include <pthread.h>\n#include <stdlib.h>\n#include <unistd.h>\n"
                "static void *idle(void *a){ (void)a; pause(); return 0; }\n"
                "int main(void){ pthread_t t[3]; pthread_attr_t a; pthread_attr_init(&a);"
                " pthread_attr_setstacksize(&a, 65536); for (int i = 0; i < 3; i++)"
                " pthread_create(&t[i], &a, idle, 0); usleep(50000); abort(); }\n"),
}


def make_seed_cores(directory: pathlib.Path) -> list[pathlib.Path]:
    """Crash two small programs through the kernel pipe; keep their raw cores."""
    import subprocess
    import tempfile

    from tests.support.crash import compile_c
    from tests.support.kernel import core_pattern, raw_core_pattern

    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cdfz", dir="/tmp") as spool:
        programs = {name: compile_c(source, spool, name=name)
                    for name, source in SEED_PROGRAMS.items()}
        made = []
        with core_pattern(raw_core_pattern(spool), pipe_limit=8):
            for name, program in programs.items():
                script = (f"ulimit -c unlimited; echo 1 > /proc/self/coredump_filter;"
                          f" exec {program}")  # coredump_filter 1: anonymous private only
                child = subprocess.Popen(["/bin/sh", "-c", script])
                child.wait()
                made.append((name, pathlib.Path(spool) / f"core.{child.pid}"))
            time.sleep(0.5)  # the shell started by the kernel finishes writing
        for name, core in made:
            if core.exists() and core.stat().st_size > 0:
                (directory / f"core.{name}").write_bytes(core.read_bytes())
    return sorted(directory.glob("core.*"))


def core_seed_paths(seed_dir: pathlib.Path) -> list[pathlib.Path]:
    fixtures = sorted(p for p in (REPO / "fixtures" / "cores").glob("*/core*") if p.is_file())
    return fixtures + sorted(seed_dir.glob("core.*"))


def load_core_seeds(paths: list[pathlib.Path]) -> list[bytes]:
    from coredumpd.store.lz4seek import open_core_source

    seeds = []
    for path in paths:
        source = open_core_source(str(path))
        try:
            seeds.append(source.pread(0, min(source.size, SEED_MAX)))
        finally:
            source.close()
    return seeds


def stored_seeds() -> list[bytes]:
    """The fixture cores as stored (seekable lz4), byte for byte."""
    return [path.read_bytes() for path in
            sorted((REPO / "fixtures" / "cores").glob("*/core.lz4"))]


ARGS_SEED = b"\0".join([b"4242", b"4243", b"1", b"1000", b"1000", b"11", b"1732260902",
                        b"18446744073709551615", b"host name", b"1", b"5", b"--config",
                        b"/etc/coredumpd/coredumpd.conf"])


def procfs_seed() -> bytes:
    """A /proc/PID tree like the kernel writes it, with a hostile comm."""
    comm = "we ird) (name"
    stat = f"4242 ({comm}) S 1 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + \
        " 20 0 1 0 12345 " + " ".join(["0"] * 30)
    maps = ("55d0c0000000-55d0c0001000 r-xp 00000000 fe:01 123 /usr/bin/a b\n"
            "7f0000000000-7f0000021000 rw-p 00000000 00:00 0 \n"
            "7f1000000000-7f1000001000 r--p 00001000 fe:01 77 /tmp/lib\\012x.so (deleted)\n")
    status = ("Name:\twe ird) (name\nState:\tR (running)\nTgid:\t4242\nPid:\t4242\nPPid:\t1\n"
              "Uid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nNSpid:\t4242\t1\n"
              "NStgid:\t4242\t1\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000004a02\n"
              "Seccomp:\t0\nNoNewPrivs:\t0\nCapEff:\t0000000000000000\n")
    tree = {"comm": comm + "\n", "stat": stat, "status": status, "maps": maps,
            "cmdline": "prog\0--flag\0a b\0", "environ": "A=1\0B=\x1b[31m\0",
            "cgroup": "0::/system.slice/x.service\n", "mountinfo": "1 0 fe:01 / / rw - ext4 x rw\n",
            "limits": "Limit Soft Units\nMax core file size unlimited unlimited bytes\n",
            "auxv": "\0" * 16, "exe": {"symlink": "/usr/bin/a b (deleted)"},
            "cwd": {"symlink": "/srv"}, "root": {"symlink": "/"},
            "fd/0": {"symlink": "/dev/pts/0"}, "fd/1": {"symlink": "pipe:[1234]"},
            "ns/pid": {"symlink": "pid:[4026531836]"}, "task/4242/comm": comm + "\n",
            "task/4243/comm": None}
    return json.dumps(tree).encode()


def procfs_mutate(seed: bytes, rng: random.Random) -> bytes:
    tree = json.loads(seed)
    keys = sorted(tree)
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(keys)
        choice = rng.randrange(5)
        if choice == 0:
            tree.pop(key, None)
        elif choice == 1:
            tree[key] = None
        elif isinstance(tree.get(key), str):
            separator = rng.choice((b"\n", b" ", b"\0", b"\t"))
            text = tree[key].encode("utf-8", "surrogateescape")
            tree[key] = mutate_text([text], rng, separator).decode("utf-8", "surrogateescape")
    return json.dumps(tree).encode()


# ------------------------------------------------------------------- campaign

class Generator:
    """Input ``i`` of a run, a pure function of (target, seeds, run seed, i)."""

    def __init__(self, target: str, core_seeds: list[bytes], run_seed: int) -> None:
        self.target = target
        self.run_seed = run_seed
        self.cores = [(seed, core_layout(seed)) for seed in core_seeds]
        self.stored = stored_seeds() if target == "lz4" else []
        self.answers = answer_seeds(core_seeds) if target == "answer" else []

    def input(self, index: int) -> bytes:
        rng = random.Random(f"{self.run_seed}:{index}")
        if self.target == "args":
            return mutate_text([ARGS_SEED], rng, b"\0")
        if self.target == "procfs":
            return procfs_mutate(procfs_seed(), rng)
        if self.target == "lz4":
            return mutate_lz4(self.stored, rng)
        if self.target == "answer":
            return mutate_answer(self.answers, rng)
        return mutate_core(self.cores, rng)


def _alarm(_signo: int, _frame: object) -> None:
    raise FuzzTimeout


def signature_of(err: BaseException) -> str:
    """Exception type and the innermost frame in coredumpd (else the innermost)."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [frame for frame in frames if "/coredumpd/" in frame.filename] or frames[-1:]
    where = ""
    if ours:
        frame = ours[-1]
        where = f" at {frame.filename.split('/coredumpd/')[-1]}:{frame.lineno} ({frame.name})"
    return f"{type(err).__name__}{where}"


# How an input that ran ended: a result, our own error, a finding (exception, alarm,
# memory), or the worker died of a signal while running it.
OUTCOME_KINDS = ("clean", "our-error", "finding", "killed")
Outcome = tuple[str, str, str]  # (kind, signature, traceback) of a finding


def run_input(target: str, data: bytes, time_limit: float) -> tuple[str, Outcome | None]:
    """Run one input; (how it ended: an OUTCOME_KINDS word, the finding or None)."""
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        T.TARGETS[target](data)
    except T.EXPECTED:
        return "our-error", None
    except FuzzTimeout as err:
        signal.setitimer(signal.ITIMER_REAL, 0)
        return "finding", (
            "timeout", f"timeout > {time_limit:g} s{signature_of(err)[len('FuzzTimeout'):]}",
            "".join(traceback.format_exception(err)[-6:]))
    except BaseException as err:  # noqa: BLE001 - that is what we look for
        signal.setitimer(signal.ITIMER_REAL, 0)
        kind = "memory" if isinstance(err, MemoryError) else "exception"
        return "finding", (kind, signature_of(err), "".join(traceback.format_exception(err)))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return "clean", None


def execute(target: str, data: bytes, time_limit: float) -> Outcome | None:
    """Run one input; None for a clean result or our error, else (kind, signature, traceback)."""
    return run_input(target, data, time_limit)[1]


def _limit(memory_max: int) -> None:
    faulthandler.disable()  # a worker's fatal signal is a finding, not a traceback dump
    resource.setrlimit(resource.RLIMIT_AS, (memory_max, memory_max))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # The kernel ignores RLIMIT_CORE for pipe and socket core_patterns: a crashing
    # worker went to the machine's coredumpd.  Not dumpable (with fs.suid_dumpable 0)
    # it dumps nowhere; the worker is forked, not exec'd, so the flag stays.
    _prctl(PR_SET_DUMPABLE, 0)
    signal.signal(signal.SIGALRM, _alarm)


PR_SET_DUMPABLE = 4  # include/uapi/linux/prctl.h


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value})")


RECYCLE = 2000  # inputs per worker: caches that grow across inputs must not pile up


def _worker(generator: Generator, start: int, stop: int, time_limit: float, memory_max: int,
            started: Any, counts: Any, conn: Any) -> None:
    """Run inputs [start, stop): ``started`` is one past the last input begun, ``counts``
    the inputs ended per OUTCOME_KINDS (shared memory: both survive the worker's death)."""
    _limit(memory_max)
    seen: set[str] = set()
    stop = min(stop, start + RECYCLE)
    index = start
    try:
        for index in range(start, stop):
            data = generator.input(index)
            started.value = index + 1
            kind, outcome = run_input(generator.target, data, time_limit)
            counts[OUTCOME_KINDS.index(kind)] += 1
            if outcome is not None and outcome[1] not in seen:
                seen.add(outcome[1])
                conn.send(("finding", index, outcome))
    except BaseException as err:
        conn.send(("fatal", index, ("fatal", f"worker died: {signature_of(err)}",
                                    "".join(traceback.format_exception(err)))))
        raise
    conn.send(("done", stop, None))


@dataclasses.dataclass
class Finding:
    target: str
    index: int
    kind: str
    signature: str
    traceback: str
    saved: str | None = None


def run_campaign(target: str, count: int, run_seed: int, core_seeds: list[bytes],
                 time_limit: float, memory_max: int, outcomes: dict[str, int],
                 start: int = 0) -> tuple[int, list[Finding]]:
    """Run inputs [start, start + count) in a worker, restarting it after a fatal signal.

    Returns the number of inputs that ran (an input whose worker died while running it
    counts, as ``killed``; one never begun does not) and the findings; ``outcomes``
    receives the inputs run per OUTCOME_KINDS word.
    """
    context = multiprocessing.get_context("fork")
    generator = Generator(target, core_seeds, run_seed)
    findings: dict[str, Finding] = {}
    counts = context.Array("q", len(OUTCOME_KINDS), lock=False)
    executed = 0
    position, stop = start, start + count
    while position < stop:
        started = context.Value("q", position, lock=False)
        receiver, sender = context.Pipe(duplex=False)
        worker = context.Process(target=_worker, args=(generator, position, stop, time_limit,
                                                       memory_max, started, counts, sender))
        worker.start()
        sender.close()
        kind, last = "", position
        while True:
            try:
                kind, last, outcome = receiver.recv()
            except EOFError:
                break
            if kind in ("finding", "fatal") and outcome[1] not in findings:
                findings[outcome[1]] = Finding(target, last, *outcome)
        worker.join()
        executed += started.value - position
        if worker.exitcode != 0 and kind not in ("fatal", "done"):
            name = signal.Signals(-worker.exitcode).name if worker.exitcode < 0 else \
                f"exit {worker.exitcode}"
            key = f"worker killed by {name}"
            findings.setdefault(key, Finding(target, started.value - 1, "signal", key, ""))
        if worker.exitcode == 0:
            position = started.value
        else:  # go on after the input that killed the worker (or could not be made)
            position = max(started.value, position + 1, last + 1 if kind == "fatal" else 0)
    outcomes.clear()
    outcomes.update(zip(OUTCOME_KINDS, counts))
    outcomes["killed"] = executed - sum(counts)
    return executed, list(findings.values())


# ------------------------------------------------------------ minimize and save

def _reproduces(target: str, data: bytes, signature: str, time_limit: float) -> bool:
    outcome = execute(target, data, time_limit)
    return outcome is not None and outcome[1] == signature


def _minimize_in_child(target: str, data: bytes, signature: str, time_limit: float,
                       memory_max: int, conn: Any) -> None:
    _limit(memory_max)
    best = data
    step = len(best) // 2
    tries = 0
    while step >= 16 and tries < 80:
        tries += 1
        candidate = best[:len(best) - step]
        if target not in ("args", "procfs", "lz4", "answer") and _reproduces(target, candidate, signature,
                                                            time_limit):
            best = candidate
        else:
            step //= 2
    conn.send(best)


def minimize(target: str, data: bytes, signature: str, time_limit: float,
             memory_max: int) -> bytes:
    """The shortest prefix of ``data`` that gives the same signature (in a child)."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_minimize_in_child,
                            args=(target, data, signature, time_limit, memory_max, sender))
    child.start()
    sender.close()
    try:
        best: bytes = receiver.recv()
    except EOFError:
        best = data
    child.join()
    return best


def save_finding(finding: Finding, data: bytes, command: str) -> pathlib.Path:
    """Write the input (xz) and its description under tests/regressions/inputs/."""
    INPUTS.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(f"{finding.target}:{finding.signature}".encode()).hexdigest()[:12]
    path = INPUTS / f"{finding.target}-{key}"
    meta = {"target": finding.target, "kind": finding.kind, "signature": finding.signature,
            "owner": T.OWNERS[finding.target], "size": len(data), "found_by": command,
            "index": finding.index, "traceback": finding.traceback}
    if not path.with_suffix(".json").exists():
        path.with_suffix(".bin.xz").write_bytes(lzma.compress(data))
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return path.with_suffix(".json")


# ------------------------------------------------------------------------ main

def fuzz(target: str, count: int, run_seed: int = 1, time_limit: float = 2.0,
         memory_max: int = 1 << 30, save: bool = False,
         seed_dir: pathlib.Path = SEED_DIR) -> dict[str, Any]:
    """One campaign; returns the summary (also used by bench/hardening_report.py)."""
    why_not = T.available(target)
    if why_not is not None:
        return {"target": target, "requested": count, "executions": 0, "skipped": why_not,
                "findings": []}
    paths: list[pathlib.Path] = []
    if target not in ("args", "procfs", "lz4"):
        paths = core_seed_paths(seed_dir)
        if not paths:
            make_seed_cores(seed_dir)
            paths = core_seed_paths(seed_dir)
    seeds = load_core_seeds(paths)
    started = time.monotonic()
    outcomes: dict[str, int] = {}
    executions, findings = run_campaign(target, count, run_seed, seeds, time_limit, memory_max,
                                        outcomes)
    seconds = time.monotonic() - started
    if save:
        generator = Generator(target, seeds, run_seed)
        for finding in findings:
            data = generator.input(finding.index)
            if finding.kind not in ("signal", "fatal"):
                data = minimize(target, data, finding.signature, time_limit, memory_max)
            command = (f"bench/fuzz.py --target {target} --seed {run_seed} "
                       f"(input {finding.index})")
            finding.saved = str(save_finding(finding, data, command).relative_to(REPO))
    return {"target": target, "requested": count,
            "executions": executions,  # inputs that ran, of the ``requested``
            "seconds": round(seconds, 1),
            "per_second": round(executions / seconds, 1) if seconds else None,
            "outcomes": outcomes,  # inputs run, by how they ended (OUTCOME_KINDS)
            "seeds": [str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)
                      for p in paths],
            "findings": [dataclasses.asdict(finding) for finding in findings]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=sorted(T.TARGETS), default="reader")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=2.0, help="seconds per input")
    parser.add_argument("--memory-max", type=int, default=1 << 30, help="RLIMIT_AS bytes")
    parser.add_argument("--save", action="store_true", help="keep findings as regressions")
    parser.add_argument("--seed-dir", type=pathlib.Path, default=SEED_DIR)
    parser.add_argument("--make-seeds", action="store_true")
    options = parser.parse_args(argv)
    print(measured_line(f"target {options.target}, {options.count} inputs requested, "
                        f"seed {options.seed}"))
    if options.make_seeds:
        print("\n".join(str(p) for p in make_seed_cores(options.seed_dir)))
    summary = fuzz(options.target, options.count, options.seed, options.time_limit,
                   options.memory_max, options.save, options.seed_dir)
    for finding in summary["findings"]:
        print(f"FINDING [{finding['kind']}] {finding['signature']} (input {finding['index']})"
              f"{' -> ' + finding['saved'] if finding['saved'] else ''}")
        print(finding["traceback"])
    print(json.dumps({key: value for key, value in summary.items() if key != "findings"}
                     | {"findings": len(summary["findings"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
