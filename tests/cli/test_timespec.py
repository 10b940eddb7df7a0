"""--since/--until values."""

from __future__ import annotations

import datetime

import pytest

from coredumpd.cli.timespec import parse_time
from coredumpd.errors import ConfigError

NOW = datetime.datetime(2026, 11, 22, 8, 0, 0, tzinfo=datetime.UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW_US),
    ("@1795332902", 1795332902_000_000),
    ("2h", NOW_US - 7200_000_000), ("-2h", NOW_US - 7200_000_000),
    ("30min ago", NOW_US - 1800_000_000),
    ("2026-11-22T07:35:02Z", 1795332902_000_000),
    ("2026-11-22 07:35:02+00:00", 1795332902_000_000),
])
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text, NOW) == expected


def test_today_and_yesterday_are_local_midnights() -> None:
    today = parse_time("today", NOW)
    assert parse_time("yesterday", NOW) == today - 86400_000_000
    moment = datetime.datetime.fromtimestamp(today / 1e6).astimezone()
    assert (moment.hour, moment.minute, moment.second) == (0, 0, 0)


@pytest.mark.parametrize("text", ["next tuesday", "@x", "", "2026-13-45"])
def test_unreadable_times(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_time(text, NOW)
