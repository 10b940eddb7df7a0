"""Parse ``--since``/``--until`` values, a subset of systemd.time(7).

Accepted: ``now``, ``today``, ``yesterday``, ``tomorrow``, ``@EPOCH``, ISO 8601
dates and times (``2026-11-22``, ``2026-11-22 07:35``, ``2026-11-22T07:35:02Z``;
local time unless a zone is given), and spans in the past (``2h``, ``-2h``,
``2h ago``, spans as in coredumpd.conf: s, min, h, d, w).
"""

from __future__ import annotations

import datetime
import re

from coredumpd.config import parse_timespan
from coredumpd.errors import ConfigError


def _local_midnight(now: datetime.datetime, days: int) -> datetime.datetime:
    local = now.astimezone()
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + datetime.timedelta(days=days)


def parse_time(text: str, now: datetime.datetime | None = None) -> int:
    """Microseconds since the Epoch for ``text``; ConfigError when unreadable."""
    now = now or datetime.datetime.now(datetime.UTC)
    value = text.strip()
    relative = {"now": None, "today": 0, "yesterday": -1, "tomorrow": 1}
    if value in relative:
        days = relative[value]
        moment = now if days is None else _local_midnight(now, days)
        return int(moment.timestamp() * 1_000_000)
    if value.startswith("@"):
        try:
            return int(float(value[1:]) * 1_000_000)
        except ValueError as err:
            raise ConfigError(f"invalid time {text!r}") from err
    span = re.fullmatch(r"-?\s*(\S+?)(?:\s+ago)?", value)
    if span and not re.match(r"\d{4}-", value):
        try:
            seconds = parse_timespan(span.group(1))
        except ConfigError:
            pass
        else:
            return int((now.timestamp() - seconds) * 1_000_000)
    return _parse_iso(text, value)


def _parse_iso(text: str, value: str) -> int:
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError as err:
        raise ConfigError(f"invalid time {text!r} (expected e.g. 2026-11-22 07:35, "
                          f"today, @1763796902 or 2h)") from err
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive: local time, as systemd.time(7)
    return int(moment.timestamp() * 1_000_000)
