"""The relocated .dynamic in the core against the file now (image/relocated.py)."""

from __future__ import annotations

from coredumpd.elf import layouts as L
from coredumpd.image.relocated import _compare
from coredumpd.image.types import Module

BIAS = 0x7F0000000000
FILE = [(L.DT.NEEDED, 1), (L.DT.SONAME, 0xCC1), (L.DT.STRTAB, 0x1898), (L.DT.SYMTAB, 0x560),
        (L.DT.STRSZ, 0xCF8)]


def _module() -> Module:
    return Module(path="/usr/lib/libzk.so.2", start=BIAS, end=BIAS + 0x20000, load_bias=BIAS)


def _relocated(entries):
    return [(tag, value + BIAS if tag in (L.DT.STRTAB, L.DT.SYMTAB) else value)
            for tag, value in entries]


def test_untouched_file_no_evidence():
    assert _compare(_module(), BIAS + 0x3E00, FILE, _relocated(FILE)) == []


def test_reverted_pages_are_the_incident():
    lines = _compare(_module(), BIAS + 0x3E00, FILE, FILE)
    assert len(lines) == 1
    assert "DT_STRTAB 0x1898" in lines[0] and "unrelocated" in lines[0]


def test_another_layout_differs():
    new_file = [(tag, value + 0x4000 if tag == L.DT.STRTAB else value) for tag, value in FILE]
    lines = _compare(_module(), BIAS + 0x3E00, new_file, _relocated(FILE))
    assert len(lines) == 1 and "is not the file's now" in lines[0]
    assert f"DT_STRTAB {BIAS + 0x1898:#x} in the core" in lines[0]


def test_other_entries_and_counts():
    lines = _compare(_module(), 0, FILE + [(L.DT.DEBUG, 0)], _relocated(FILE))
    assert "6 in the file" in lines[0] or "5 entries in the core" in lines[0]
