"""Import time of the handler's held phase and of ``corectl analyze`` (issue 12).

    .venv/bin/python bench/import_time.py [--runs N] [--tree DIR ...]

For each code tree (default: this checkout; ``--tree`` another checkout, e.g. a
``git worktree`` of an older commit, imported through ``PYTHONPATH``), runs,
``N`` times each, interleaving the trees so that the load of a shared machine
falls on all of them alike:

* ``held``: ``python -X importtime -c "import coredumpd.pipeline.main,
  coredumpd.pipeline.handler"`` with an empty environment and cwd ``/``, as
  the kernel starts the handler: everything the handler imports before it
  closes the pipe;
* ``analyze``: ``python -X importtime -m coredumpd.cli.corectl --json analyze
  fixtures/cores/abort/core.lz4``: every import the command makes, the lazy
  ones included.

The figure is the sum of the top-level cumulative times that ``-X importtime``
prints, minus the modules that ``python -c pass`` imports too (the
interpreter's own start-up), in milliseconds; the median, the quartiles and the
minimum of the runs are printed (on a shared machine the minimum is the least
disturbed figure).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
HELD = ["-c", "import coredumpd.pipeline.main, coredumpd.pipeline.handler"]
ANALYZE = ["-m", "coredumpd.cli.corectl", "--json", "analyze",
           str(REPO / "fixtures" / "cores" / "abort" / "core.lz4")]


def top_level(stderr: str) -> dict[str, int]:
    """module -> cumulative µs, for the imports at nesting level 0."""
    result = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, field = line.split("|")
        if field.startswith("   "):  # nested (two spaces a level): counted in its parent
            continue
        result[field.strip()] = int(cumulative)
    return result


def import_ms(tree: str, args: list[str], startup: set[str]) -> float:
    env = {"PYTHONPATH": tree} if tree else {}
    done = subprocess.run([sys.executable, "-X", "importtime", *args], env=env, cwd="/",
                          capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{args}: exit {done.returncode}: {done.stderr[-500:]}")
    times = top_level(done.stderr)
    return sum(us for name, us in times.items() if name not in startup) / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--tree", action="append", default=[],
                        help="another checkout to compare (imported through PYTHONPATH)")
    options = parser.parse_args()
    trees = ["", *[os.path.abspath(t) for t in options.tree]]
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env={},
                          capture_output=True, text=True, check=True)
    startup = set(top_level(done.stderr))
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(options.runs):
        for tree in trees:
            for label, args in (("held", HELD), ("analyze", ANALYZE)):
                samples.setdefault((tree or str(REPO), label), []).append(
                    import_ms(tree, args, startup))
    for (tree, label), values in samples.items():
        q1, median, q3 = statistics.quantiles(values, n=4)
        print(f"{label:8} {tree}: median {median:.1f} ms (quartiles {q1:.1f}-{q3:.1f}, "
              f"minimum {min(values):.1f}, {len(values)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
