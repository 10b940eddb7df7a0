"""The module cache across the sandbox (coredumpd.pipeline.sandbox_cache).

The handler's analyses read the cache through descriptors the root parent passes;
the entries are derived by the parent from system files alone, for the addresses
the child asked about, so a child taken over by a hostile core cannot poison them.
"""

from __future__ import annotations

import marshal
import os
import pathlib
import time

import pytest

from coredumpd.config import Config
from coredumpd.image.types import Module
from coredumpd.pipeline import sandbox, sandbox_cache
from coredumpd.store.modcache import ModuleCache
from coredumpd.symbolize.symbols import Symbolizer
from tests.support import sandbox_hooks
from tests.support.crash import compile_c, registered_handler

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="the sandbox drops privileges as root")
LIBC = os.path.realpath("/usr/lib/x86_64-linux-gnu/libc.so.6")
PROGRAM = "#include <stdlib.h>\nint main(void) { abort(); }\n"


def _entry_path(directory: str, build_id: bytes) -> pathlib.Path:
    return pathlib.Path(directory, "cache", build_id.hex() + ".mod")


def _wait_for(path: pathlib.Path, timeout: float = 30.0) -> None:
    """The analysis job writes the cache after the row: wait for the file."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)


def _truth(path: str, build_id: bytes, address: int) -> tuple:
    """What the symbolizer answers for ``address`` from the file, without any cache."""
    symbolizer = Symbolizer(sandbox_cache._NoModules())  # type: ignore[arg-type]
    module = Module(path=path, start=0, end=0, load_bias=0, file_build_id=build_id,
                    host_path=path)
    symbol = symbolizer.symbolize(module, address)
    symbolizer.close()
    return (symbol.name, symbol.file, symbol.line)


def test_system_files_are_only_roots(tmp_path):
    assert sandbox_cache.system_file(LIBC)
    mine = tmp_path / "lib.so"
    mine.write_bytes(b"\x7fELF")
    assert not sandbox_cache.system_file(str(mine))  # /tmp is writable by all
    link = tmp_path / "link"
    link.symlink_to(LIBC)
    assert not sandbox_cache.system_file(str(link))
    assert not sandbox_cache.system_file("relative/path")


@needs_root
@pytest.mark.kernel
def test_handler_analyses_share_the_cache_through_the_parent(tmp_path):
    """The first crash's job writes libc's entry (derived by the parent, with the
    addresses the sandbox asked about); the next crash's sandbox reads that entry
    through the descriptor the parent passed: a name root put in the entry shows up."""
    program = compile_c(PROGRAM, tmp_path, name="aborts")
    build_id = sandbox_cache.file_build_id(LIBC)
    assert build_id is not None
    with registered_handler(tmp_path, rate_limit_burst=100) as handler:
        first = handler.crash([program])
        entry = _entry_path(handler.directory, build_id)
        _wait_for(entry)
        assert entry.stat().st_uid == 0 and entry.stat().st_mode & 0o777 == 0o600
        payload = ModuleCache(handler.directory).load(build_id)
        assert payload is not None and payload["answers"]
        frames = first["analysis"]["threads"][0]["frames"]
        assert "abort" in [frame["symbol"] for frame in frames]
        for (address, lines), answer in payload["answers"].items():  # the files' answers
            if lines:
                assert (answer[2], answer[3], answer[4]) == _truth(LIBC, build_id, address)
        # root edits its own entry: the next analysis must be using it
        blob = marshal.loads(entry.read_bytes())
        for key, answer in blob["payload"]["answers"].items():
            if answer[2] == "abort":
                blob["payload"]["answers"][key] = (answer[0], answer[1], "abort_from_cache",
                                                   *answer[3:])
        entry.write_bytes(marshal.dumps(blob))
        second = handler.crash([program])
    symbols = [frame["symbol"] for frame in second["analysis"]["threads"][0]["frames"]]
    assert "abort_from_cache" in symbols, symbols


@needs_root
@pytest.mark.fault_case
def test_a_taken_over_child_cannot_poison_the_cache(tmp_path):
    """A child that lies in its report (as one taken over by a hostile core would): only
    system files the parent offered, by the build-id the parent read, get an entry, and
    its answers are the files' own, whatever the child claimed."""
    own = compile_c(PROGRAM, tmp_path, name="own")  # a user's file: never parsed by root
    own_id = sandbox_cache.file_build_id(own)
    libc_id = sandbox_cache.file_build_id(LIBC)
    assert own_id is not None and libc_id is not None
    truth = _truth(LIBC, libc_id, 0x1000)
    store = tmp_path / "store"
    store.mkdir()
    facts = {"proc": {"maps": [{"path": LIBC}, {"path": own}]}}
    offer = sandbox_cache.Offer(str(store), facts, "/")
    assert offer.files == {LIBC: libc_id}  # the user's file is not offered
    lies = [
        {"path": LIBC, "build_id": libc_id.hex(), "lookups": [[0x1000, True], [-1, True],
                                                              ["x", True], [2**70, False]],
         "answers": {"4096": "forged"}},
        {"path": own, "build_id": own_id.hex(), "lookups": [[0x1000, True]]},
        {"path": LIBC, "build_id": own_id.hex(), "lookups": [[0x2000, True]]},
        "not a module",
    ]
    result = sandbox.run_analysis(Config(analysis_timeout=20.0), _core(tmp_path),
                                  facts | {"lies": lies}, None,
                                  child_command=sandbox_hooks.command("lie"), entries=offer)
    offer.close()
    assert result["state"] == "done", result
    assert offer.remember(result.pop("module_lookups")) == 1
    assert sorted(os.listdir(store / "cache")) == [libc_id.hex() + ".mod"]
    payload = ModuleCache(str(store)).load(libc_id)
    assert payload is not None
    assert list(payload["answers"]) == [(0x1000, True)]
    answer = payload["answers"][(0x1000, True)]
    assert (answer[2], answer[3], answer[4]) == truth


@needs_root
@pytest.mark.fault_case
def test_passed_entries_are_read_only_in_the_child(tmp_path):
    """The child gets the entry's descriptor and can read it, but neither write it nor
    reopen it for writing through /proc, nor open the cache directory."""
    libc_id = sandbox_cache.file_build_id(LIBC)
    assert libc_id is not None
    store = tmp_path / "store"
    store.mkdir()
    cache = ModuleCache(str(store))
    assert cache.store(libc_id, {"format": 0})
    facts = {"proc": {"maps": [{"path": LIBC}]},  # a regular user's crash: runs as 1000
             "args": {"uid": 1000, "gid": 1000, "dump_mode": 1}}
    offer = sandbox_cache.Offer(str(store), facts, "/")
    assert offer.build_ids == [libc_id.hex()]
    result = sandbox.run_analysis(Config(analysis_timeout=20.0), _core(tmp_path), facts, None,
                                  child_command=sandbox_hooks.command("entries"), entries=offer)
    offer.close()
    assert result["state"] == "done", result
    attempts = result["entries"]
    assert attempts[libc_id.hex()] == {"read": "ok", "write": "EBADF", "reopen": "EACCES",
                                       "directory": "EACCES"}
    assert cache.load(libc_id) == {"format": 0}


def _core(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "core"
    path.write_bytes(b"\x7fELF" + bytes(60))
    path.chmod(0o640)
    return str(path)


@needs_root
@pytest.mark.kernel
def test_analysis_cache_no_keeps_nothing(tmp_path):
    program = compile_c(PROGRAM, tmp_path, name="aborts")
    with registered_handler(tmp_path, rate_limit_burst=100, analysis_cache=False) as handler:
        row = handler.crash([program])
        time.sleep(1.0)  # the job, still running after the row, would write the entry now
    assert "abort" in [frame["symbol"] for frame in row["analysis"]["threads"][0]["frames"]]
    assert not os.path.exists(os.path.join(handler.directory, "cache"))


def test_a_report_asks_for_at_most_max_lookups_in_all():
    """A core that makes its child ask about every address gets little derived: the
    parent's work for one report is bounded (and by DERIVE_SECONDS too)."""
    build_id = b"\x01" * 20
    many = [[address, True] for address in range(3 * sandbox_cache.MAX_LOOKUPS)]
    report = [{"path": LIBC, "build_id": build_id.hex(), "lookups": many}] * 3
    valid = sandbox_cache._valid_report(report, {LIBC: build_id})
    assert sum(len(lookups) for _, _, lookups in valid) == sandbox_cache.MAX_LOOKUPS
