"""corectl fleet's text: fits the terminal, escapes what came from other hosts' processes."""

from __future__ import annotations

from coredumpd.cli.fleet import render_groups, render_list

GROUP = {"signature": "9c1f3e0a7b2d" + "0" * 28, "frames": "parse_header | main | " * 8,
         "root_cause": "null-deref", "crashes": 12345, "hosts": 678,
         "first_seen": "2026-11-30T10:00:00.000000Z", "last_seen": "2026-12-01T10:00:00.000000Z",
         "versions": ["1.2-3", "1.2-4"], "example": {"host": "web-\x1b[31m1", "id": "5d1c0e9f2a41"}}
CRASH = {"timestamp": "2026-12-01T10:00:00.000000Z", "host": "web-1", "id": "5d1c0e9f2a41",
         "pid": 4242, "signal_name": "SIGSEGV", "comm": "prog",
         "exe": "/opt/a/very/long/path/to/some/deeply/nested/install/bin/the-program-name",
         "root_cause": "null-deref"}


def test_groups_fit_the_width_and_escape() -> None:
    for width in (60, 80, 120):
        text = render_groups([GROUP], width)
        assert max(len(line) for line in text.splitlines()) <= width
    text = render_groups([GROUP], 200)
    assert "12345" in text and "678" in text and "hash 9c1f3e0a7b2d" in text
    assert "versions 1.2-3, 1.2-4" in text and "\x1b" not in text
    assert text.endswith("1 signature, 12345 crashes.\n")


def test_list_fits_the_width_keeping_the_end_of_the_path() -> None:
    text = render_list([CRASH, {**CRASH, "host": "db-2", "id": "0123456789ab"}], 80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "the-program-name" in lines[1] and lines[1].count("…") == 1
    assert lines[-1] == "2 crashes on 2 hosts."
    assert render_list([CRASH], 80, legend=False).count("\n") == 1
