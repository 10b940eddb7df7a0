"""Byte-for-byte outputs of corectl and the journal entry, against goldens.

The goldens in ``golden/out/`` were written by ``python -m tests.report.goldens``
(see that module for what each file is and how the inputs were made); this test
recomputes each output with the current code.  A change of any byte fails:
when a change is intended (a new field), rerun the script and commit the goldens
with the change, so the diff shows exactly what users will see differ.
"""

from __future__ import annotations

import difflib
import json
import os
from typing import Any

import pytest

from tests.report import goldens
from tests.support.fixtures import library_mismatch, read_manifest

GOLDEN_NAMES = sorted(path.name for path in goldens.OUT.iterdir())


@pytest.fixture(scope="module")
def outputs() -> dict[str, str]:
    return goldens.all_outputs()


def _skip_reason(name: str) -> str | None:
    """Analyses depend on the host's libraries; the stored report does not."""
    if name.startswith("fixture-"):
        fixture = name.removeprefix("fixture-").rsplit("-", 1)[0]
        entry: dict[str, Any] = read_manifest()["fixtures"][fixture]
        return library_mismatch(entry)
    if name.endswith(("-analyze.txt", "-analyze.json")):
        return goldens.library_mismatch()
    return None


def test_every_output_has_a_golden(outputs: dict[str, str]) -> None:
    assert sorted(outputs) == GOLDEN_NAMES


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_output_is_byte_identical(name: str, outputs: dict[str, str]) -> None:
    if (reason := _skip_reason(name)) is not None:
        # A skipped comparison is not a pass (issue 13): in CI a library update fails
        # loudly until the goldens are remade (the gdb comparisons regenerate by themselves).
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: the golden was made with other libraries; check that the "
                        "gdb comparisons pass, then remake it with python -m tests.report.goldens")
        pytest.skip(reason)
    expected = (goldens.OUT / name).read_text()
    actual = outputs.get(name)
    assert actual is not None, f"{name} is no longer produced"
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            f"golden/{name}", "now", n=2))
        pytest.fail(f"{name} differs from its golden:\n{diff[:6000]}")


def test_goldens_cover_every_kind_of_output() -> None:
    """show text and JSON, list text and JSON, analyze text and JSON, journal fields."""
    kinds = {name.rsplit("-", 1)[-1] for name in GOLDEN_NAMES}
    assert {"show.txt", "show.json", "list.txt", "list.json", "analyze.txt", "analyze.json",
            "journal.json", "devtext.txt"} <= kinds
    shows = [json.loads((goldens.OUT / n).read_text()) for n in GOLDEN_NAMES
             if n.endswith("-show.json")]
    assert len(shows) >= 4 and all(show["threads"] for show in shows)
