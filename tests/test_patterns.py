"""coredumpd.patterns: a pattern is compiled on its first use, or by compile_all()."""

from __future__ import annotations

import re

from coredumpd import patterns
from coredumpd.patterns import Pattern


def test_a_pattern_compiles_on_first_use_and_answers_as_re_does() -> None:
    pattern = Pattern(r"(?P<word>a+)b", re.IGNORECASE)
    assert pattern._compiled is None
    match = pattern.search("xxAAb")
    assert match is not None and match.group("word") == "AA"
    assert pattern.compiled is pattern.compiled  # compiled once
    assert pattern.match("xab") is None and pattern.fullmatch("ab") is not None
    assert [m.group() for m in pattern.finditer("ab aab")] == ["ab", "aab"]
    assert pattern.sub("-", "ab aab") == "- -"
    assert Pattern(rb"\d+").search(b"x12").group() == b"12"  # type: ignore[union-attr]


def test_compile_all_compiles_what_is_left() -> None:
    pattern = Pattern(r"left")
    assert patterns.compile_all() >= 1
    assert pattern._compiled is not None
    assert patterns.compile_all() == 0
