"""analyze() for tests that check the JSON of its result (docs/ARCHITECTURE.md).

:func:`analyze_json` takes the facts as JSON and returns the result's JSON, the
shape the index stores and the sandbox sends; :func:`expand_json` unfolds the
JSON frames of a thread as :func:`coredumpd.analysis.shape.expand_frames` does
for records; :func:`native_json` leaves out the interpreted frames.
"""

from __future__ import annotations

from typing import Any

from coredumpd.analysis import analyze
from coredumpd.analysis.shape import expand_frames
from coredumpd.model import Facts, Frame
from coredumpd.source import ByteSource
from coredumpd.unwind.types import Caps


def analyze_json(source: ByteSource, facts: dict[str, Any] | None = None,
                 exe: str | None = None, root: str = "/",
                 caps: Caps | None = None) -> dict[str, Any]:
    record = Facts.from_json(facts) if facts is not None else None
    return analyze(source, record, exe, root, caps).to_json()


def expand_json(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [frame.to_json() for frame in expand_frames([Frame.from_json(f) for f in frames])]


def native_json(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The machine-code frames, which gdb and eu-stack show: interpreted (Python)
    frames left out (tests/analysis/test_python_frames.py compares those with pystack)."""
    return [frame for frame in frames if not frame.get("language")]
