"""64 processes crashing at the same moment, four of them with 192 MiB cores.

Figures (crashed, stored, handler peak RSS, lock time) are printed with
``-s`` and by bench/hardening_report.py; the assertions are about losing
nothing and bounded memory, never about speed.
"""

from __future__ import annotations

import pytest

from tests.hardening.storm import run_storm

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

COUNT = 64
LARGE = 4
LARGE_MIB = 192


def test_storm_loses_nothing_and_streams(tmp_path):
    result = run_storm(tmp_path, count=COUNT, large=LARGE, large_mib=LARGE_MIB)
    print(result.as_dict())
    assert result.crashed == COUNT
    assert result.lost == []
    assert result.duplicated == []
    assert result.bad == []
    assert result.stored == COUNT
    assert len(result.large_cores_mib) == LARGE
    assert all(size >= LARGE_MIB for size in result.large_cores_mib)
    # Each handler streams: its peak RSS stays far below the 192 MiB it stored.
    assert result.handler_max_rss_mib is not None
    assert result.handler_max_rss_mib < LARGE_MIB / 2


def test_storm_with_analysis_every_crash_analysed_in_its_sandbox(tmp_path):
    """16 at once with the analysis on: 16 sandboxes at the same time, all done."""
    result = run_storm(tmp_path, count=16, large=0, analysis=True, wait_analysis=True)
    print(result.as_dict())
    assert (result.crashed, result.stored, result.lost, result.duplicated) == (16, 16, [], [])
    assert result.analysis_states == {"done": 16}, result.analysis_errors
