"""corectl analyze on the repository's fixture cores (no store, no root needed)."""

from __future__ import annotations

import json
import pathlib

import jsonschema
import pytest

from coredumpd.cli.corectl import ExitStatus, main
from coredumpd.report import schema

CORES = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "cores"
FIXTURES = sorted(p.parent.name for p in CORES.glob("*/core.lz4"))


@pytest.mark.parametrize("name", FIXTURES)
def test_analyze_json_follows_the_schema(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--json", "analyze", str(CORES / name / "core.lz4")], env={})
    assert status == ExitStatus.OK
    show = json.loads(capsys.readouterr().out)
    jsonschema.validate(show, schema.SHOW)
    assert show["id"] is None and show["core"]["state"] in ("present", "truncated")
    assert show["analysis"]["state"] in ("done", "failed") and show["threads"]


def test_analyze_text_of_the_abort_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    directory = CORES / "abort"
    status = main(["--no-pager", "analyze", str(directory / "core.lz4"),
                   "--exe", str(directory / "abort")], env={})
    out = capsys.readouterr().out
    assert status == ExitStatus.OK
    assert out.startswith("Root cause")
    assert "Signal: 6 (SIGABRT), si_code -6 (SI_TKILL)" in out
    assert "Thread " in out and ", crashed:" in out and "=> 0x" in out
    assert "abort+" in out and "main+" in out and "Modules:" in out


def test_analyze_raw_elf_like_lz4(tmp_path: pathlib.Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    import lz4.frame

    stored = CORES / "abort" / "core.lz4"
    raw = tmp_path / "core"
    raw.write_bytes(lz4.frame.decompress(stored.read_bytes()))
    outputs = []
    for core in (raw, stored):
        assert main(["--json", "analyze", str(core)], env={}) == ExitStatus.OK
        show = json.loads(capsys.readouterr().out)
        outputs.append([[f["pc"] for f in t["frames"]] for t in show["threads"]])
    assert outputs[0] == outputs[1]
