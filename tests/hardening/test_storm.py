"""Crash storms under the handler exactly as ``coredumpd install`` registers it (issue 9).

64 distinct programs crashing at the same moment, four of them with 192 MiB
cores, analysis on: every crash gets its row and its verified core.  64
crashes of one program: 64 rows, RateLimitBurst cores, the others skipped with
the reason.  The storm never sets core_pipe_limit: install's value must do.
Figures (crashed, stored, memory, lock time) are printed with ``-s`` and by
bench/hardening_report.py; the assertions are about losing nothing and bounded
memory, never about speed.
"""

from __future__ import annotations

import pytest

from coredumpd.config import Config
from coredumpd.pipeline import install, slots
from tests.hardening.storm import run_storm

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

COUNT = 64
LARGE = 4
LARGE_MIB = 192
# Memory the design allows (man page coredumpd(8), "CRASH STORMS"): a working handler
# peaks at ~40-50 MiB RSS, a waiting one holds ~3 MiB of its own (PSS ~4 MiB).
WORKING_MIB = 64
WAITING_MIB = 6


def test_storm_of_distinct_programs_loses_nothing(tmp_path):
    result = run_storm(tmp_path, count=COUNT, large=LARGE, large_mib=LARGE_MIB,
                       wait_analysis=True)
    print(result.as_dict())
    assert result.pipe_limit_after == result.pipe_limit_found  # left as found
    assert result.pipe_limit == install.PIPE_LIMIT >= COUNT  # install's own value was used
    assert result.crashed == COUNT
    assert (result.lost, result.duplicated, result.bad) == ([], [], [])
    assert result.stored == COUNT and result.core_states == {"present": COUNT}
    assert len(result.large_cores_mib) == LARGE
    assert all(size >= LARGE_MIB for size in result.large_cores_mib)
    assert result.analysis_states == {"done": COUNT}, result.analysis_errors
    # Each handler streams: its peak RSS stays far below the 192 MiB it stored ...
    assert result.handler_max_rss_mib is not None
    assert result.handler_max_rss_mib < LARGE_MIB / 2
    # ... and only a few work at once while the others wait, small.
    assert result.handler_pss_sum_mib is not None
    assert result.handler_pss_sum_mib < (slots.handler_slots() * WORKING_MIB
                                         + COUNT * WAITING_MIB)
    assert 0 < result.handlers_working_max <= slots.handler_slots()
    # one sandbox (started, or forked by the job's zygote) per analysis slot at most
    assert result.sandboxes_alive_max <= slots.analysis_slots()
    assert result.zygotes_alive_max <= slots.analysis_slots()
    assert result.sandboxes_alive_max + result.zygotes_alive_max > 0


def test_storm_of_one_program_gives_every_row(tmp_path):
    result = run_storm(tmp_path, count=COUNT, large=0, programs="one", wait_analysis=True)
    print(result.as_dict())
    burst = Config().rate_limit_burst
    assert result.pipe_limit == install.PIPE_LIMIT
    assert result.pipe_limit_after == result.pipe_limit_found
    assert result.crashed == COUNT and result.rows == COUNT
    assert (result.lost, result.duplicated) == ([], [])
    assert result.core_states == {"present": burst, "none": COUNT - burst}
    assert result.stored == burst
    assert all(reason.startswith("rate limited: ") and f"RateLimitBurst={burst}" in reason
               for reason in result.core_reasons), result.core_reasons
