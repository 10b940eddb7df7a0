"""Strings from the crashed process never reach a terminal with control characters."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from coredumpd.report.escape import escape, escape_cmdline


def test_plain_text_is_unchanged() -> None:
    assert escape("/usr/bin/node") == "/usr/bin/node"
    assert escape("café ünïcode 名前") == "café ünïcode 名前"


def test_terminal_sequences_are_escaped() -> None:
    assert escape("evil\x1b]0;pwned\x07") == "evil\\x1b]0;pwned\\a"
    assert escape("csi\x9b2J") == "csi\\u009b2J"  # C1 CSI, read by some terminals
    assert escape("a\nb\tc\rd\x7f") == "a\\nb\\tc\\rd\\x7f"


def test_bidi_overrides_and_separators_are_escaped() -> None:
    assert escape("gpj.\u202eexe") == "gpj.\\u202eexe"
    assert escape("x\u2028y") == "x\\u2028y"


def test_undecodable_bytes_show_as_hex() -> None:
    assert escape(b"ab\xff\x1b") == "ab\\xff\\x1b"
    assert escape("ab\udcff") == "ab\\xff"


def test_backslash_is_doubled_so_escapes_cannot_be_forged() -> None:
    assert escape("a\\x1b") == "a\\\\x1b"
    assert escape("a\\x1b") != escape("a\x1b")


def test_none_and_numbers() -> None:
    assert escape(None) == "-"
    assert escape(42) == "42"


def test_cmdline_quotes_arguments_with_spaces() -> None:
    assert escape_cmdline(["prog", "a b", "c\x1b"]) == "prog 'a b' c\\x1b"
    assert escape_cmdline("prog a\x1b") == "prog a\\x1b"


@given(st.text())
def test_output_has_no_unsafe_character(text: str) -> None:
    out = escape(text)
    for char in out:
        assert unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Zl", "Zp"), repr(char)


@given(st.text(st.characters(codec=None, exclude_categories=())),
       st.text(st.characters(codec=None, exclude_categories=())))
def test_escaping_is_injective(a: str, b: str) -> None:
    if a != b:
        assert escape(a) != escape(b)


def test_c1_control_and_raw_byte_differ() -> None:
    assert escape("\x9b") != escape(b"\x9b")
