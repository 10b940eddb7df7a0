"""coredumpd's handler as the bench and the storm test run it: the product's own
handler (:func:`coredumpd.pipeline.handler.run`), then its timings and peak RSS
written into the crash's facts, ``facts.handler_rusage``.

Nothing of this is in the product: the kernel runs a script written by
:func:`write_script` (``core_pattern`` = ``|SCRIPT %P %i ...``), which imports
this module first, so :data:`STARTED` is taken before coredumpd is imported.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()

import os
import sys

SCRIPT = """#!{python}{flags}
# Written by tests/support/measured_handler.py: coredumpd's handler plus its own timings.
import sys
sys.path[:0] = {paths!r}
from tests.support.measured_handler import main
sys.exit(main())
"""


def main(argv: list[str] | None = None) -> int:
    from coredumpd.pipeline.handler import run

    crash = run(sys.argv[1:] if argv is None else argv, started=STARTED)
    if crash.row_id is not None and crash.config is not None:
        record_rusage(crash)
    return crash.status


def record_rusage(crash) -> None:
    """Handler timings and peak RSS, in the facts of the crash's row."""
    import resource

    from coredumpd.elf.layouts import signal_name
    from coredumpd.store.index import Index

    usage = resource.getrusage(resource.RUSAGE_SELF)
    measures = {"maxrss_kib": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime,
                "main_monotonic": STARTED, "released_monotonic": crash.released,
                "held_ms": (crash.released - crash.started) * 1000,
                "reap_wait_ms": crash.reap_wait_ms,
                "total_ms": (time.monotonic() - crash.started) * 1000,
                "signal_name": signal_name(crash.args.signal or 0)}
    with Index(crash.config.index_path) as index:
        stored = index.get(crash.row_id)
        facts = stored.facts.to_json() if stored is not None and stored.facts is not None else {}
        facts["handler_rusage"] = measures
        index.update(crash.row_id, facts=facts)


def write_script(directory: str, *, isolated: bool = True) -> str:
    """An executable ``DIRECTORY/coredumpd-measured`` for ``core_pattern``; its path.

    ``isolated``: started as ``coredumpd install``'s launcher is (``python -I -S``
    and the package's paths); else as the venv's console script (``site`` runs).
    """
    from coredumpd.pipeline.install import launcher_paths

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "coredumpd-measured")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(SCRIPT.format(python=sys.executable, flags=" -IS" if isolated else "",
                                   paths=launcher_paths()))
    os.chmod(path, 0o755)
    return path
