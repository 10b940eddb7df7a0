"""capstone's answers kept in the module cache: a warm analysis gives the same result
without importing capstone; an entry made by another capstone is not used."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from coredumpd.store.modcache import ModuleCache
from coredumpd.symbolize import decoded

REPO = pathlib.Path(__file__).resolve().parents[2]
CORES = REPO / "fixtures" / "cores"

ANALYSE = """
import json, sys
sys.path.insert(0, {repo!r})
from coredumpd.analysis import analyze
from coredumpd.store.lz4seek import open_core_source
from coredumpd.store.modcache import ModuleCache
source = open_core_source({core!r})
cache = ModuleCache({store!r}) if {store!r} else None
result = analyze(source, None, {exe!r}, cache=cache).to_json()
result.pop("duration_ms")
print(json.dumps({{"capstone": "capstone" in sys.modules, "result": result}}))
"""


def _analyse(name: str, store: str) -> dict[str, object]:
    """The analysis of fixture ``name`` in a fresh process, and whether it imported capstone."""
    exe = CORES / name / name
    code = ANALYSE.format(repo=str(REPO), core=str(CORES / name / "core.lz4"), store=store,
                          exe=str(exe) if exe.is_file() else None)
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    answer: dict[str, object] = json.loads(output)
    return answer


# strlen-null: the rules decode the faulting instruction's operands (capstone's detail
# mode); abort: the disassembly around the pc only
@pytest.mark.parametrize("name", ["strlen-null", "abort"])
def test_a_warm_analysis_does_not_import_capstone(name: str, tmp_path: pathlib.Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    plain = _analyse(name, "")
    assert plain["capstone"]  # without a cache capstone decodes
    cold = _analyse(name, str(store))
    warm = _analyse(name, str(store))
    assert cold["result"] == plain["result"] and warm["result"] == plain["result"]
    assert not warm["capstone"]
    assert ModuleCache(str(store)).load(decoded.ENTRY_KEY) is not None


def test_answers_of_another_capstone_are_not_used(tmp_path: pathlib.Path) -> None:
    cache = ModuleCache(str(tmp_path))
    key = ("lite", "CS_ARCH_X86", "CS_MODE_64", 0x1000, b"\xc3", 1)
    forged = ((0x1000, 1, "forged", ""),)
    identity = decoded.capstone_identity()
    assert identity is not None and identity[0] is not None
    other = [(identity[0][0], *identity[0][1:-1], identity[0][-1] + 1), identity[1]]
    assert cache.store(decoded.ENTRY_KEY, {"format": decoded.FORMAT, "capstone": other,
                                           "answers": {key: forged}})
    decoded.MEMO.answers.pop(key, None)
    decoded.load(cache)
    assert decoded.MEMO.get(key) is None
    assert cache.store(decoded.ENTRY_KEY, {"format": decoded.FORMAT, "capstone": identity,
                                           "answers": {key: forged}})
    decoded.load(cache)  # the same capstone: used (which is why only the owner writes)
    assert decoded.MEMO.get(key) == forged
    decoded.MEMO.answers.pop(key)


def test_the_memo_is_bounded() -> None:
    memo = decoded.DecodeMemo()
    for number in range(decoded.MAX_ANSWERS + 10):
        memo.put(("lite", number), ())
    assert len(memo.answers) == decoded.MAX_ANSWERS
    assert memo.get(("lite", 0)) is None and memo.get(("lite", decoded.MAX_ANSWERS + 9)) == ()
