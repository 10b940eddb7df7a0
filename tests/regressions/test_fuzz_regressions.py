"""Replay every input the fuzzer ever found (tests/regressions/inputs/*.json).

Each ``NAME.json`` describes a finding (target, signature, the traceback when it
was found, the owning files) and ``NAME.bin.xz`` holds the minimized input.
The replay runs in a child process under the same alarm and RLIMIT_AS as the
fuzzer, so a hang, a runaway allocation or a fatal signal fails the test
instead of the test run.  Only our own errors (CoredumpdError) are clean.
"""

from __future__ import annotations

import json
import lzma
import pathlib
import sys

import pytest

from tests.regressions import targets as T

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "bench"))
import fuzz

CASES = sorted((HERE / "inputs").glob("*.json"))


def replay_in_child(target: str, data: bytes) -> tuple[str, str, str] | None:
    """``fuzz.execute`` in a forked child with the fuzzer's limits; its outcome."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def child() -> None:
        fuzz._limit(1 << 30)
        sender.send(fuzz.execute(target, data, 20.0))

    process = context.Process(target=child)
    process.start()
    sender.close()
    try:
        outcome = receiver.recv()
    except EOFError:
        outcome = ("signal", f"replay killed (exit status {process.exitcode})", "")
    process.join()
    return outcome


def test_inputs_directory_is_consistent():
    for case in CASES:
        assert case.with_suffix("").with_suffix(".bin.xz").exists() or \
            pathlib.Path(str(case)[:-5] + ".bin.xz").exists(), case


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_fuzz_finding_stays_fixed(case):
    meta = json.loads(case.read_text())
    if T.available(meta["target"]) is not None:
        pytest.skip(T.available(meta["target"]))
    data = lzma.decompress(pathlib.Path(str(case)[:-5] + ".bin.xz").read_bytes())
    outcome = replay_in_child(meta["target"], data)
    assert outcome is None, (f"{meta['signature']} (owner: {meta['owner']})\n"
                             f"{outcome[2] if outcome else ''}")
