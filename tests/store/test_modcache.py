"""The module cache: same analysis cold, warm and without it; trusted only when the files
it was derived from are the files read now; bounded; counted and emptied by vacuum."""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest

from coredumpd.analysis import analyze
from coredumpd.store.lz4seek import open_core_source
from coredumpd.store.modcache import ModuleCache
from coredumpd.symbolize import symbols

CORES = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "cores"
# a C program, C++, a CPython process, a static executable, threads, Rust
SAMPLE = ("abort", "cxx", "python", "static", "threads", "rust-panic")


def _exe(name: str) -> str | None:
    candidate = CORES / name / name
    return str(candidate) if candidate.is_file() else None


def _analysis(name: str, cache: ModuleCache | None, exe: str | None = None) -> dict[str, object]:
    source = open_core_source(str(CORES / name / "core.lz4"))
    try:
        result = analyze(source, None, exe or _exe(name), cache=cache).to_json()
    finally:
        source.close()
    result.pop("duration_ms")
    return result


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The modules whose symbol tables were read from their files (the real method runs)."""
    seen: list[str] = []
    real = symbols.Symbolizer._load_tables

    def counting(self: symbols.Symbolizer, module, elf, table, problems):  # type: ignore[no-untyped-def]
        seen.append(module.host_path or module.path)
        return real(self, module, elf, table, problems)

    monkeypatch.setattr(symbols.Symbolizer, "_load_tables", counting)
    return seen


@pytest.fixture
def store(tmp_path: pathlib.Path) -> str:
    directory = tmp_path / "store"
    directory.mkdir()
    return str(directory)


@pytest.mark.parametrize("name", SAMPLE)
def test_warm_cache_gives_the_same_analysis_without_reading_the_tables(
        name: str, store: str, parsed: list[str]) -> None:
    plain = _analysis(name, None)
    cache = ModuleCache(store)
    assert cache.writable  # the test's own directory
    cold = _analysis(name, cache)
    read_cold = list(parsed)
    assert cold == plain
    assert any(path.endswith("libc.so.6") for path in read_cold) or name == "static"
    parsed.clear()
    warm = _analysis(name, cache)
    assert warm == plain
    # only what has no file on disk (the vDSO) is read again
    assert [path for path in parsed if path != "[vdso]"] == []
    assert cache.usage() > 0


def test_a_changed_file_is_a_miss_not_an_answer(store: str, tmp_path: pathlib.Path,
                                                parsed: list[str]) -> None:
    exe = tmp_path / "abort"
    shutil.copy2(CORES / "abort" / "abort", exe)
    cache = ModuleCache(store)
    first = _analysis("abort", cache, str(exe))
    parsed.clear()
    assert _analysis("abort", cache, str(exe)) == first
    assert str(exe) not in parsed
    # the same build-id, another file (a copy: another inode) must be read again
    os.rename(exe, tmp_path / "old")
    shutil.copy2(tmp_path / "old", exe)
    parsed.clear()
    assert _analysis("abort", cache, str(exe)) == first
    assert str(exe) in parsed


def test_an_entry_not_written_by_the_owner_is_ignored(store: str, parsed: list[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    cache = ModuleCache(store)
    _analysis("abort", cache)
    for name in os.listdir(cache.path):
        os.chown(os.path.join(cache.path, name), 65534, 65534)
    parsed.clear()
    _analysis("abort", cache)
    assert any(path.endswith("libc.so.6") for path in parsed)


def test_garbage_entries_are_misses(store: str, parsed: list[str]) -> None:
    cache = ModuleCache(store)
    _analysis("abort", cache)
    for name in os.listdir(cache.path):
        with open(os.path.join(cache.path, name), "r+b") as handle:
            handle.truncate(40)
    parsed.clear()
    plain = _analysis("abort", None)
    assert _analysis("abort", cache) == plain
    assert any(path.endswith("libc.so.6") for path in parsed)


def test_no_store_no_cache_written(tmp_path: pathlib.Path) -> None:
    cache = ModuleCache(str(tmp_path / "missing"))
    assert not cache.writable
    _analysis("abort", cache)
    assert not (tmp_path / "missing").exists()


def test_bounded_oldest_entries_go_first(store: str) -> None:
    cache = ModuleCache(store, max_bytes=3 * 8192)
    for number in range(6):
        assert cache.store(bytes([number]) * 20, {"data": os.urandom(6000)})
        path = os.path.join(cache.path, (bytes([number]) * 20).hex() + ".mod")
        os.utime(path, (1_000_000 + number, 1_000_000 + number))
        cache.trim()
    assert cache.usage() <= 3 * 8192
    assert cache.load(bytes([5]) * 20) is not None
    assert cache.load(bytes([0]) * 20) is None


def test_vacuum_counts_the_cache_and_empties_it_before_any_core(tmp_path: pathlib.Path) -> None:
    from coredumpd.config import Config
    from coredumpd.store.index import Index
    from coredumpd.store.retention import vacuum

    directory = tmp_path / "store"
    directory.mkdir()
    config = Config(directory=str(directory))
    cache = ModuleCache(str(directory))
    assert cache.store(b"\x01" * 20, {"data": os.urandom(200_000)})
    used = cache.usage()
    index = Index(config.index_path)
    try:
        result = vacuum(config, index, max_use=0, keep_free=0)
        assert result.used_bytes >= used and cache.usage() == used  # counted, not over
        result = vacuum(config, index, max_use=4096, keep_free=0)
        assert cache.usage() == 0 and result.freed_bytes >= used
    finally:
        index.close()


def test_vacuum_counts_fetched_debug_files_and_removes_them_before_any_core(
        tmp_path: pathlib.Path) -> None:
    """DIR/debuginfod (DebuginfodURLs=) is part of the store: counted, emptied first."""
    from coredumpd.config import Config
    from coredumpd.store.index import Index
    from coredumpd.store.retention import vacuum

    directory = tmp_path / "store"
    fetched = directory / "debuginfod" / ("ab" * 20)
    fetched.mkdir(parents=True)
    (fetched / "debuginfo").write_bytes(os.urandom(200_000))
    outside = tmp_path / "outside"
    outside.write_bytes(b"not ours")
    (fetched / "executable").symlink_to(outside)  # never followed, never removed
    config = Config(directory=str(directory))
    index = Index(config.index_path)
    try:
        result = vacuum(config, index, max_use=0, keep_free=0)
        assert result.used_bytes >= 200_000 and (fetched / "debuginfo").exists()
        result = vacuum(config, index, max_use=4096, keep_free=0)
        assert not (fetched / "debuginfo").exists() and result.freed_bytes >= 200_000
        assert outside.read_bytes() == b"not ours"
    finally:
        index.close()


def test_entries_of_another_symbol_format_are_misses(store: str, parsed: list[str]) -> None:
    """An entry in the format before the names index was dropped (symbols as four items,
    a names dict), or whose tables are not bytes, is read again from the files."""
    cache = ModuleCache(store)
    plain = _analysis("abort", cache)
    libc = [name for name in os.listdir(cache.path)
            if (entry := _entry(cache, name)) is not None and any(
                str(path[0]).endswith("libc.so.6") for path in entry["files"] if path)]
    assert libc
    for name in libc:
        entry = _entry(cache, name)
        assert entry is not None
        version, tables, columns = entry["symbols"]
        for symbols_field in ((1, tables, columns, {"abort": 1}),
                              (version, [(1, 2, False)], columns)):
            cache.store(bytes.fromhex(name.removesuffix(".mod")),
                        dict(entry, symbols=symbols_field))
            parsed.clear()
            assert _analysis("abort", cache) == plain
            assert any(path.endswith("libc.so.6") for path in parsed)


def _entry(cache: ModuleCache, name: str) -> dict[str, object] | None:
    return cache.load(bytes.fromhex(name.removesuffix(".mod")))
